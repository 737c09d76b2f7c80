"""Exact resume: a run stopped by SIGTERM mid-epoch and resumed ends bit-identical (CPU) to the
uninterrupted run, with dropout on, shuffled or curriculum batches, and gradient accumulation."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import sigterm_at_call

import scl_slt
from scl_slt.config import ConfigError, to_container
from scl_slt.config_checks import validate_train
from scl_slt.rundir.checkpoint import load_train_state, load_weights
from scl_slt.rundir.layout import read_metrics
from scl_slt.stages import contrastive, run_stage, translate
from scl_slt.training.runtime import TrainingInterrupted


def _pair_scores(tmp_path, n: int) -> str:
    path = tmp_path / "pair_scores.npy"
    np.save(path, np.random.default_rng(3).normal(size=(n, n)).astype(np.float16))
    return str(path)


def _train_losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir, "train")]


CASES = {
    # stage module, extra overrides, SIGTERM during forward number, expected resume position
    "contrastive-random": (
        contrastive,
        ["stage.eval_every=1", "stage.keep_best=2", "stage.average_best=true"],
        5,
        (1, 2, 5),
    ),
    "contrastive-curriculum-accum": (
        contrastive,
        [
            "selection=trajectory",
            "selection.schedule=linear",
            "stage.grad_accum=2",
            "stage.eval_every=0",
        ],
        4,  # epoch 2's first window (2 batches) completes, then the stop is honoured
        (1, 2, 3),
    ),
    "translate-random": (translate, ["stage=translate", "stage.eval_every=0"], 2, (0, 2, 2)),
    # augmented frames through 2 workers: seeded per sample, so the resumed batches match too
    "translate-frames-workers": (
        translate,
        [
            "stage=translate",
            "stage.eval_every=0",
            "data=synthetic_frames",
            "data.synthetic.image_size=16",
            "data.resize=18",
            "data.crop=16",
            "data.num_workers=2",
        ],
        2,
        (0, 2, 2),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_interrupted_and_resumed_equals_uninterrupted(
    case, tiny_train_cfg, tmp_path, monkeypatch, caplog
):
    stage_module, extra, kill_call, expected_position = CASES[case]
    if "selection=trajectory" in extra:
        extra = [*extra, f"selection.pair_scores={_pair_scores(tmp_path, 24)}"]
    extra = [*extra, "model.dropout=0.3"]  # RNG consumed every step: it must be restored too

    straight = run_stage(tiny_train_cfg(*extra, f"run_dir={tmp_path / 'straight'}"))

    stopped_dir = tmp_path / "stopped"
    with monkeypatch.context() as m:
        sigterm_at_call(m, stage_module, kill_call)
        with pytest.raises(TrainingInterrupted) as stopped:
            run_stage(tiny_train_cfg(*extra, f"run_dir={stopped_dir}"))
    assert stopped.value.signum == signal.SIGTERM
    state = load_train_state(stopped.value.checkpoint)
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == expected_position

    resumed = run_stage(tiny_train_cfg(*extra, f"run_dir={stopped_dir}", "resume=auto"))

    a = load_weights(straight["last_checkpoint"])
    b = load_weights(resumed["last_checkpoint"])
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ after resume: {different[:5]}"
    assert _train_losses(straight["run_dir"]) == _train_losses(resumed["run_dir"])
    assert straight["steps"] == resumed["steps"]
    if case == "contrastive-random":
        _check_run_directory(straight, tiny_train_cfg(*extra, f"run_dir={tmp_path / 'straight'}"))
        _corrupt_newest_then_resume(straight, a, tiny_train_cfg, extra, caplog)


def _check_run_directory(result: dict, composed) -> None:
    """Resolved config, version, log, TensorBoard; best = average of the two kept best."""
    run_dir = Path(result["run_dir"])
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved == to_container(validate_train(composed))
    assert json.loads((run_dir / "meta.json").read_text())["version"] == scl_slt.__version__
    assert "saved checkpoint" in (run_dir / "train.log").read_text()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert [r["epoch"] for r in read_metrics(run_dir, "dev")] == [1, 2]
    assert Path(result["best_checkpoint"]).name == "best-avg"
    kept = [load_weights(run_dir / "checkpoints" / f"best-{step:09d}") for step in (3, 6)]
    averaged = load_weights(result["best_checkpoint"])
    for key, value in averaged.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (kept[0][key] + kept[1][key]) / 2)


def _corrupt_newest_then_resume(finished: dict, weights: dict, tiny_train_cfg, extra, caplog):
    """A crash that truncated the newest checkpoint: resume=auto reports it by path, falls back
    to the previous (epoch-end) one, drops the metrics logged after it, and ends the same."""
    newest = Path(finished["last_checkpoint"])
    target = newest / "model.safetensors"
    target.write_bytes(target.read_bytes()[:1000])
    losses = _train_losses(finished["run_dir"])
    caplog.set_level(logging.WARNING, logger="scl_slt")
    again = run_stage(tiny_train_cfg(*extra, f"run_dir={finished['run_dir']}", "resume=auto"))
    assert f"skipping corrupt checkpoint: {target}" in caplog.text
    rerun = load_weights(again["last_checkpoint"])
    assert all(torch.equal(rerun[k], weights[k]) for k in weights)
    assert _train_losses(finished["run_dir"]) == losses  # no duplicated steps in metrics.jsonl


def test_resume_with_changed_config_is_refused_listing_keys(tiny_train_cfg, tmp_path):
    run_dir = tmp_path / "r"
    run_stage(tiny_train_cfg(f"run_dir={run_dir}", "stage.max_steps=1", "stage.eval_every=0"))
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    with pytest.raises(ConfigError) as refused:
        run_stage(
            tiny_train_cfg(
                f"run_dir={run_dir}",
                "resume=auto",
                "stage.lr=0.01",
                "loss.label_smoothing=0.0",
                "stage.log_every=5",  # free to change: not listed
            )
        )
    message = str(refused.value)
    assert "stage.lr: 0.0001 -> 0.01" in message
    assert "loss.label_smoothing: 0.2 -> 0.0" in message
    assert "log_every" not in message
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before
    # Starting fresh over existing checkpoints is refused too (no silent mixing of runs).
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        run_stage(tiny_train_cfg(f"run_dir={run_dir}"))
