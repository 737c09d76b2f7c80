"""The report's compute table against values worked out by hand, and how chains find their
report rows (the final run's row) and their CL-SLT partner (same pipeline, else same seed)."""

from __future__ import annotations

import json
from pathlib import Path

from scl_slt.report.compute import Chain, collect_chains, compute_markdown
from scl_slt.report.runs import Run, pipeline_records


def _rows(table: str) -> dict[str, list[str]]:
    lines = table.splitlines()
    assert lines[0].startswith("| row | chains | steps |")
    return {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in lines[2:]}


def test_means_spreads_and_paired_ratios(tmp_path):
    cl, own = ("2-random", "3-translate-random"), ("2-self_trajectory", "3-t")
    chains = [
        Chain("CL-SLT", 0, tmp_path / "seed0", cl, 100, 200),
        Chain("SCL-SLT (self-referenced)", 0, tmp_path / "seed0", own, 110, 210),
        Chain("CL-SLT", 1, tmp_path / "seed1", cl, 200, 400),
        Chain("SCL-SLT (self-referenced)", 1, tmp_path / "seed1", own, 200, 360),
        Chain("SCL-SLT", 5, tmp_path / "seed5", ("reference",), 50, 60),  # no CL-SLT partner
    ]
    rows = _rows(compute_markdown(chains))
    # CL-SLT: wall 100, 200 -> 150 ± 70.7; CPU 300 ± 141; its own ratio 1 (sd 0).
    assert rows["CL-SLT"][1:5] == ["2", "2-random, 3-translate-random", "150 ± 71", "300 ± 141"]
    # Self-referenced wall ratios 1.10, 1.00 -> 1.05 ± 0.0707, t(1) = 12.706:
    # half-width 12.706 * 0.0707 / sqrt(2) = 0.635 -> [0.41, 1.69]; CPU 1.05, 0.90 -> 0.975.
    assert rows["SCL-SLT (self-referenced)"][3] == "155 ± 64"
    assert rows["SCL-SLT (self-referenced)"][5] == "1.05 ± 0.07 [0.41, 1.69]"
    assert rows["SCL-SLT (self-referenced)"][6].startswith("0.98 ± 0.11")
    # A row without a CL-SLT partner has no ratio; one chain: no spread.
    assert rows["SCL-SLT"][1:7] == ["1", "reference", "50", "60", "–", "– |"]
    assert compute_markdown([]) == ""


def _pipeline(folder: Path, chains: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "pipeline.json").write_text(json.dumps({"_chains": chains, "_timings": {"a": 1}}))


def test_chains_take_their_final_runs_row_and_pair_by_seed_across_pipelines(tmp_path):
    """Question-based rows are "CL-SLT" chains of pipelines of their own: they are named by
    their final run's report row and compared with the video-only CL-SLT chain of their seed."""
    for row, wall in (("none", 100.0), ("ssaw", 150.0)):
        for seed in (0, 1):
            folder = tmp_path / row / f"seed{seed}"
            run = {"steps": ["2-random"], "run_dir": str(folder / "3-translate-random"),
                   "wall_s": wall + seed, "cpu_s": 2 * wall}  # fmt: skip
            _pipeline(folder, {"CL-SLT": run})
    runs = [
        Run(tmp_path / row / f"seed{seed}" / "3-translate-random", seed=seed, row=label)
        for row, label in (("none", "CL-SLT"), ("ssaw", "CL-SLT + question (ssaw, SSL)"))
        for seed in (0, 1)
    ]
    recorded = pipeline_records([r.path for r in runs], "_chains")
    assert len(recorded) == 4
    chains = collect_chains(recorded, runs)
    assert sorted({c.row for c in chains}) == ["CL-SLT", "CL-SLT + question (ssaw, SSL)"]
    rows = _rows(compute_markdown(chains))
    # ssaw / none per seed: 150 / 100 and 151 / 101 -> 1.5 and 1.495.
    assert rows["CL-SLT + question (ssaw, SSL)"][5].startswith("1.50 ± 0.00 [1.47, 1.53]")
    assert rows["CL-SLT + question (ssaw, SSL)"][6].startswith("1.50 ± 0.00 [1.50, 1.50]")
    assert rows["CL-SLT"][5].startswith("1.00 ± 0.00")
    # A chain whose final run the report did not read keeps the pipeline's label.
    assert {c.row for c in collect_chains(recorded, [])} == {"CL-SLT"}
