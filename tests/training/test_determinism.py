"""The determinism contract (docs/determinism.md): observing a run never changes it.

For each setting that only observes a run (the snapshot tracker and its interval, evaluation
frequency and batch size, retrieval evaluation, logging frequency, loader workers), two short runs
of the tiny model that differ only in it must end with bit-identical weights and, where the
records mean the same thing, identical training records. A control pair that differs in a setting
that does change training (the seed) must differ, so the comparison itself can fail.
"""

from __future__ import annotations

import pytest
import torch

from scl_slt.rundir.checkpoint import load_weights
from scl_slt.rundir.layout import read_metrics
from scl_slt.stages import run_stage

# Dropout on (the tiny model's 0.1): the training stream draws from torch's global RNG at every
# step, which is exactly what an observer must not touch.
BASE = ("stage.epochs=3", "stage.log_every=1", "stage.eval_every=0", "stage.retrieval_every=0")

# name: (stage, overrides of run A, overrides of run B, whether the train records must be equal)
MATRIX = {
    "tracker on/off": (
        "contrastive",
        ("tracker.enabled=false",),
        ("tracker.enabled=true", "tracker.interval=1"),
        True,
    ),
    "tracker interval": (
        "contrastive",
        ("tracker.enabled=true", "tracker.interval=1"),
        ("tracker.enabled=true", "tracker.interval=2"),
        True,
    ),
    "dev evaluation (stage 1)": ("contrastive", (), ("stage.eval_every=1",), True),
    "retrieval evaluation": ("contrastive", (), ("stage.retrieval_every=1",), True),
    "batch diagnostics": ("contrastive", ("selection.diagnostics=false",), (), True),
    "dev evaluation (stage 2)": ("translate", (), ("stage.eval_every=1",), True),
    "evaluation batch size": (
        "translate",
        ("stage.eval_every=1", "stage.eval_batch_size=8"),
        ("stage.eval_every=1", "stage.eval_batch_size=3"),
        True,
    ),
    # The records are means over different windows by design: weights only.
    "logging frequency": ("contrastive", (), ("stage.log_every=2",), False),
    "loader workers": ("translate", (), ("data.num_workers=2",), True),
}

_runs: dict[tuple[str, ...], dict] = {}


def _run(tiny_train_cfg, tmp_path_factory, stage: str, overrides: tuple[str, ...]) -> dict:
    """Train once per distinct setting (runs shared between pairs): last weights, train records."""
    key = (stage, *overrides)
    if key not in _runs:
        run_dir = tmp_path_factory.mktemp("determinism")
        cfg = tiny_train_cfg(f"stage={stage}", *BASE, *overrides, f"run_dir={run_dir}")
        result = run_stage(cfg)
        records = [
            {k: v for k, v in r.items() if k != "time"} for r in read_metrics(run_dir, "train")
        ]
        _runs[key] = {"weights": load_weights(result["last_checkpoint"]), "records": records}
    return _runs[key]


def _differences(a: dict, b: dict, compare_records: bool) -> list[str]:
    found = [k for k in a["weights"] if not torch.equal(a["weights"][k], b["weights"][k])]
    if set(a["weights"]) != set(b["weights"]):
        found.append("different parameter names")
    if compare_records and a["records"] != b["records"]:
        found.append("train records")
    return found


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_observing_a_run_does_not_change_it(name, tiny_train_cfg, tmp_path_factory):
    stage, a, b, compare_records = MATRIX[name]
    run_a = _run(tiny_train_cfg, tmp_path_factory, stage, a)
    run_b = _run(tiny_train_cfg, tmp_path_factory, stage, b)
    assert len(run_a["records"]) > 0
    differences = _differences(run_a, run_b, compare_records)
    assert not differences, f"{name}: runs differ in {differences[:5]}"


def test_a_setting_that_trains_differently_is_detected(tiny_train_cfg, tmp_path_factory):
    """The control: another seed must change the weights and records, or the matrix proves
    nothing."""
    run_a = _run(tiny_train_cfg, tmp_path_factory, "contrastive", ())
    run_b = _run(tiny_train_cfg, tmp_path_factory, "contrastive", ("seed=1",))
    assert _differences(run_a, run_b, True)
