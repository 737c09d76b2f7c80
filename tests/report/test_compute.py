"""The report's compute table against values worked out by hand from two pipelines' chains."""

from __future__ import annotations

import json
from pathlib import Path

from scl_slt.report.compute import compute_markdown
from scl_slt.report.runs import pipeline_records


def _pipeline(folder: Path, chains: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "pipeline.json").write_text(json.dumps({"_chains": chains, "_timings": {"a": 1}}))
    run = folder / "2-random"
    run.mkdir()
    return run


def _chain(steps, wall, cpu):
    return {"steps": steps, "wall_s": wall, "cpu_s": cpu}


def test_means_spreads_and_paired_ratios(tmp_path):
    cl, self_ref = ["2-random", "3-translate-random"], ["2-self_trajectory", "3-t"]
    runs = [
        _pipeline(tmp_path / "seed0", {"CL-SLT": _chain(cl, 100, 200),
                                       "SCL-SLT (self-referenced)": _chain(self_ref, 110, 210)}),
        _pipeline(tmp_path / "seed1", {"CL-SLT": _chain(cl, 200, 400),
                                       "SCL-SLT (self-referenced)": _chain(self_ref, 200, 360)}),
        _pipeline(tmp_path / "seed2", {"SCL-SLT": _chain(["reference"], 50, 60)}),
    ]  # fmt: skip
    chains = pipeline_records(runs, "_chains")
    assert set(chains) == {tmp_path / f"seed{i}" for i in range(3)}
    table = compute_markdown(chains).splitlines()
    assert table[0].startswith("| row | pipelines | steps |")
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in table[2:]}
    # CL-SLT: wall 100, 200 -> 150 ± 70.7; CPU 300 ± 141; its own ratio 1 (sd 0).
    assert rows["CL-SLT"][1:5] == ["2", "2-random, 3-translate-random", "150 ± 71", "300 ± 141"]
    # Self-referenced wall ratios 1.10, 1.00 -> 1.05 ± 0.0707, t(1) = 12.706:
    # half-width 12.706 * 0.0707 / sqrt(2) = 0.635 -> [0.41, 1.69]; CPU 1.05, 0.90 -> 0.975.
    assert rows["SCL-SLT (self-referenced)"][3] == "155 ± 64"
    assert rows["SCL-SLT (self-referenced)"][5] == "1.05 ± 0.07 [0.41, 1.69]"
    assert rows["SCL-SLT (self-referenced)"][6].startswith("0.98 ± 0.11")
    # A row without a CL-SLT chain in its pipeline has no ratio; one pipeline: no spread.
    assert rows["SCL-SLT"][1:7] == ["1", "reference", "50", "60", "–", "– |"]


def test_no_chains_no_table(tmp_path):
    assert compute_markdown({}) == ""
    assert pipeline_records([_pipeline(tmp_path / "p", {})], "_chains") == {}
