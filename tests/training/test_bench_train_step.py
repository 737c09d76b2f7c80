"""``scripts/bench_train_step.py`` runs end to end on the tiny model (seconds) and prints both
configurations per stage, their ratio, and the computed memory estimate. Its figures are not
asserted: they belong to the machine (the paper-scale run is the script's own job)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench_train_step.py"
SHARED = REPO.parent / "shared" / "data" / "phoenix14t" / "labels.train"

pytestmark = pytest.mark.skipif(
    not SHARED.is_file(), reason=f"needs the real annotation files ({SHARED} not present)"
)


def run(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_tiny_run_prints_both_configurations_and_their_ratio():
    out = run()
    assert re.search(r"^  plain: fp32, AdamW loop, eager, NCHW ResNet, float32 frames$", out, re.M)
    assert re.search(r"^  best: (bf16 autocast|fp32 \(no native bf16\)), AdamW foreach", out, re.M)
    for title in ("stage 1 (contrastive + translation)", "stage 2 (translation)", "beam-8"):
        assert title in out
    for name in ("plain", "best"):  # one row per stage: samples/s, step, the four parts
        rows = re.findall(rf"^{name} +(\d+\.\d+) +(\d+\.\d+) +\d+\.\d+", out, re.M)
        assert len(rows) == 3 and all(float(s) > 0 for s, _ in rows), out
    ratio = r"^best / plain: samples/s x\d+\.\d+ \(without the data part x\d+\.\d+\), peak memory x"
    assert len(re.findall(ratio, out, re.M)) == 3
    assert "COMPUTED (not measured)" in out
    assert re.search(r"total \(best\) +\d+\.\d+ GiB", out)


def test_tiny_run_with_checkpointing_in_features_mode():
    out = run("--mode", "features", "--checkpointing", "--stages", "1")
    assert re.search(r"^  best: .*checkpointing$", out, re.M)
    assert "NHWC" not in out  # no ResNet in features mode
    assert len(re.findall(r"^best / plain: samples/s x", out, re.M)) == 1
