"""Stage 1 logs one ``batch_diagnostics`` record per epoch, about the batches it trains on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import fake_scored_reference

from scl_slt.config_checks import validate_train
from scl_slt.data.datasets import build_split
from scl_slt.rundir.layout import read_metrics
from scl_slt.stages import run_stage

QUICK = ["stage.eval_every=0", "stage.retrieval_every=0"]


def test_each_epoch_logs_the_diagnostics_of_its_batches(tiny_train_cfg, recorded, tmp_path):
    train = build_split(validate_train(tiny_train_cfg()).data, "train")
    delta = fake_scored_reference(
        tmp_path / "reference", train.names, 3, (0, 2), (0.0, 0.0), (0.25, 0.25, 0.25, 0.25)
    )
    cfg = tiny_train_cfg(*QUICK, f"selection.diagnostics_reference={tmp_path / 'reference'}")
    result = run_stage(validate_train(cfg))
    run_dir = Path(result["run_dir"])
    records = read_metrics(run_dir, "batch_diagnostics")
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["kind"] == "batch_diagnostics" for r in records)
    per_epoch = len(recorded) // 2
    for record, epoch in zip(records, (0, 1)):
        batches = recorded[epoch * per_epoch : (epoch + 1) * per_epoch]
        pairs = [(b[x], b[y]) for b in batches for x in range(len(b)) for y in range(x + 1, len(b))]
        same = sum(train.texts[a] == train.texts[b] for a, b in pairs)
        assert record["pairs"] == len(pairs)
        assert record["identical_share"] == pytest.approx(same / len(pairs))
        both = [float(delta[a, b]) for a, b in pairs] + [float(delta[b, a]) for a, b in pairs]
        assert record["delta_mean"] == pytest.approx(np.mean(both))
        assert "confusable_share" in record  # the synthetic data lists confusable twins
    # the numbers also go to TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "batch_diagnostics/identical_share" in tags
    assert len(events.Scalars("batch_diagnostics/delta_mean")) == 2


def test_diagnostics_off_logs_nothing_and_a_bad_reference_is_refused(tiny_train_cfg, tmp_path):
    result = run_stage(validate_train(tiny_train_cfg(*QUICK, "selection.diagnostics=false")))
    assert read_metrics(result["run_dir"], "batch_diagnostics") == []
    missing = tiny_train_cfg(f"selection.diagnostics_reference={tmp_path / 'nowhere'}")
    with pytest.raises(ValueError, match="selection.diagnostics_reference"):
        validate_train(missing)
