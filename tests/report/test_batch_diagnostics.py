"""The report's batch-diagnostics figure and table, from run directories written the way
training leaves them (``config.yaml``, ``metrics.jsonl`` with ``batch_diagnostics`` records)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from scl_slt.report.batch_diagnostics import diagnostics_figure, diagnostics_markdown
from scl_slt.report.runs import load_run


def make_stage1(path: Path, selection: str, seed: int, identical: list[float], schedule="log"):
    config = {
        "seed": seed,
        "data": {"name": "csl_daily"},
        "stage": {"name": "contrastive"},
        "selection": {"name": selection, "schedule": schedule},
    }
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [json.dumps({"split": "train", "step": 1, "loss": 2.0})]
    for epoch, share in enumerate(identical, start=1):
        record = {"split": "batch_diagnostics", "step": epoch, "kind": "batch_diagnostics",
                  "epoch": epoch, "identical_share": share, "near_identical_share": share / 2,
                  "delta_mean": -share, "share_HL": 0.1, "share_HH": 0.2, "share_LH": 0.3,
                  "share_LL": 0.4}  # fmt: skip
        lines.append(json.dumps(record))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return path


def make_translate(path: Path, stage1: Path) -> Path:
    config = {"seed": 0, "data": {"name": "csl_daily"},
              "stage": {"name": "translate", "init_from": str(stage1)}}  # fmt: skip
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


def test_last_epoch_table_and_figure(tmp_path):
    r0 = make_stage1(tmp_path / "r0", "random", 0, [0.01, 0.02, 0.03])
    r1 = make_stage1(tmp_path / "r1", "random", 1, [0.01, 0.02, 0.05])
    t0 = make_stage1(tmp_path / "t0", "text_semantic", 0, [0.0, 0.1, 0.2], schedule="linear")
    bad = make_stage1(tmp_path / "bad", "trajectory", 0, [0.5])
    with open(bad / "metrics.jsonl", "a") as f:
        f.write('{"split": "batch_diag')  # cut off by a crash
    # a two-stage run of r0 and r0 itself: r0's records count once
    paths = [r0, make_translate(tmp_path / "s2", r0), r1, t0, bad, tmp_path / "s2"]
    runs = [load_run(p) for p in paths]

    table = diagnostics_markdown(runs)
    rows = {line.split("|")[2].strip(): line for line in table.splitlines() if "csl_daily" in line}
    assert set(rows) == {"random", "text_semantic (linear)"}  # the unreadable run left out
    random = [c.strip() for c in rows["random"].split("|")[1:-1]]
    assert random[:4] == ["csl_daily", "random", "2", "3"]
    assert float(random[4]) == pytest.approx(100 * (0.03 + 0.05) / 2)  # identical %, mean
    assert float(random[5]) == pytest.approx(100 * (0.03 + 0.05) / 4)  # near-identical %
    assert random[6] == "–"  # no twins on real texts
    assert float(random[7]) == pytest.approx(-(0.03 + 0.05) / 2, abs=1e-4)  # mean δ
    assert float(random[-1]) == pytest.approx(40.0)  # L->L %

    path = diagnostics_figure(runs, tmp_path / "report")
    assert path == tmp_path / "report" / "batch_diagnostics.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nothing_to_show(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"stage": {"name": "contrastive"}}))
    runs = [load_run(run)]
    assert diagnostics_markdown(runs) == ""
    assert diagnostics_figure(runs, tmp_path / "out") is None


def test_report_shows_the_diagnostics(tmp_path):
    from scl_slt.report.build import build_report

    make_stage1(tmp_path / "runs" / "r0", "random", 0, [0.01, 0.02])
    make_stage1(tmp_path / "runs" / "t0", "text_semantic", 0, [0.0, 0.3])
    report = build_report([str(tmp_path / "runs")], out_dir=tmp_path / "report")
    assert report.files["batch_diagnostics.png"].stat().st_size > 0
    text = (tmp_path / "report" / "tables.md").read_text()
    section = text.split("## Batch diagnostics (stage 1, last epoch)", 1)[1]
    assert "text_semantic" in section and "random" in section
