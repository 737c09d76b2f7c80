"""Stage 1 logs one ``batch_diagnostics`` record per epoch, about the batches it trains on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scl_slt.config_checks import validate_train
from scl_slt.data.datasets import build_split
from scl_slt.rundir.layout import read_metrics
from scl_slt.selection.tracker import names_hash
from scl_slt.stages import contrastive, run_stage

QUICK = ["stage.eval_every=0", "stage.retrieval_every=0"]


@pytest.fixture
def recorded(monkeypatch) -> list[list[int]]:
    """The sample indices of every training forward (one process: the global batch)."""
    batches: list[list[int]] = []
    original = contrastive.compute_losses

    def record(model, batch, cfg, runtime):
        batches.append(batch["indices"].tolist())
        return original(model, batch, cfg, runtime)

    monkeypatch.setattr(contrastive, "compute_losses", record)
    return batches


def _reference(folder: Path, names: list[str]) -> np.ndarray:
    """A scored reference run (score.py's layout) whose δ is a known random matrix."""
    n = len(names)
    rng = np.random.default_rng(3)
    (folder / "scores").mkdir(parents=True)
    (folder / "trajectory").mkdir()
    delta = rng.normal(size=(n, n)).astype(np.float16)
    np.save(folder / "pair_scores.npy", delta)
    for epoch in (0, 2):
        np.save(folder / "scores" / f"S-epoch-{epoch:04d}.npy", rng.normal(size=(n, n)))
    snapshots = [{"epoch": e, "scores": f"scores/S-epoch-{e:04d}.npy"} for e in (0, 2)]
    record = {"names_sha256": names_hash(names), "snapshots": snapshots}
    (folder / "pair_scores.json").write_text(json.dumps(record))
    shares = {"H->L": 0.25, "H->H": 0.25, "L->H": 0.25, "L->L": 0.25}
    summary = {"threshold": {"mode": "last_median", "first": 0.0, "last": 0.0}, "shares": shares}
    (folder / "trajectory" / "summary.json").write_text(json.dumps(summary))
    return delta


def test_each_epoch_logs_the_diagnostics_of_its_batches(tiny_train_cfg, recorded, tmp_path):
    train = build_split(validate_train(tiny_train_cfg()).data, "train")
    delta = _reference(tmp_path / "reference", train.names)
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
