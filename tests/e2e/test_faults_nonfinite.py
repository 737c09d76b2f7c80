"""Faults, round 2: a run that blew up (huge learning rate, weights gone non-finite) stops with
an error that names the cause, never deep inside beam search; and a resumed run writes the same
``train`` records as an uninterrupted one.

The tiny model on synthetic data (``tiny_train_cfg``): 24 train samples in batches of 8, so an
epoch is 3 optimizer steps.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import pytest
import torch

from scl_slt import losses
from scl_slt.eval.evaluator import evaluate_run
from scl_slt.models import builder
from scl_slt.rundir.checkpoint import (
    load_train_state,
    load_weights,
    read_marker,
    save_checkpoint,
)
from scl_slt.rundir.layout import read_metrics
from scl_slt.stages import run_stage
from scl_slt.training import loop
from scl_slt.training.optim import NonFiniteLossError, NonFiniteWeightsError

DIVERGE = ("stage=translate", "stage.lr=1e6")  # step 0's AdamW update moves weights by ~1e6


def _capture_model(monkeypatch) -> dict[str, torch.nn.Module]:
    """Keep the model the stage builds (to name its parameters in the assertions)."""
    built: dict[str, torch.nn.Module] = {}
    original = builder.build_model

    def build(*args, **kwargs):
        built["net"] = original(*args, **kwargs)
        return built["net"]

    monkeypatch.setattr(builder, "build_model", build)
    return built


# ---------------------------------------------------------------- A: a run that blew up
def test_diverged_run_in_skip_mode_stops_at_dev_evaluation_naming_the_cause(tiny_train_cfg):
    """Step 0 makes the weights huge but finite; steps 1 and 2 are skipped as non-finite; the
    dev evaluation at the end of epoch 1 is where decoding meets the non-finite outputs. It
    must say why: the skipped streak, the update that preceded it (its lr), the weights."""
    cfg = tiny_train_cfg(*DIVERGE, "stage.nonfinite=skip")  # eval_every=1, max_nonfinite=10
    with pytest.raises(NonFiniteLossError) as err:
        run_stage(cfg)
    message = str(err.value)
    assert "dev evaluation at step 3 (epoch 1) failed" in message
    assert "2 step(s) in a row skipped as non-finite" in message
    assert "since the update of step 0 (lr 1e+06, gradient norm " in message
    assert "the weights are finite (largest |weight| " in message
    assert "lower stage.lr" in message
    assert isinstance(err.value.__cause__, FloatingPointError)  # what decoding raised


def test_skip_streak_survives_epoch_boundaries_and_evaluations(tiny_train_cfg, monkeypatch):
    """Steps 2 (epoch 1's last) and 3 (epoch 2's first) are non-finite, with a dev evaluation
    between them: that is 2 in a row, and max_nonfinite=2 stops the run at step 3."""
    calls = {"n": 0}
    original = losses.translation_loss

    def nan_on_steps_2_and_3(logits, *args, **kwargs):
        calls["n"] += 1
        loss = original(logits, *args, **kwargs)
        return loss * float("nan") if calls["n"] in (3, 4) else loss

    monkeypatch.setattr(losses, "translation_loss", nan_on_steps_2_and_3)
    cfg = tiny_train_cfg("stage=translate", "stage.nonfinite=skip", "stage.max_nonfinite=2")
    with pytest.raises(NonFiniteLossError, match="2 non-finite steps in a row.*last at step 3"):
        run_stage(cfg)
    dev = read_metrics(Path(cfg.run_dir), "dev")
    assert [r["epoch"] for r in dev] == [1]  # the evaluation between them ran and was logged


@pytest.mark.parametrize("stage", ["translate", "contrastive"])
def test_error_mode_names_lr_and_gradient_norm_not_innocent_samples(stage, tiny_train_cfg):
    cfg = tiny_train_cfg(f"stage={stage}", "stage.lr=1e6")
    with pytest.raises(NonFiniteLossError) as err:
        run_stage(cfg)
    message = str(err.value)
    assert message.startswith("non-finite loss at step 1: lr 9.33e+05, gradient norm non-finite")
    assert "last update at step 0 with lr 1e+06 and gradient norm " in message
    assert "all 8 samples of a micro-batch implicated together" in message
    assert "synth-" not in message  # no sample is named: none has non-finite inputs
    assert "the model itself produced the non-finite values" in message


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_update_that_makes_weights_nonfinite_stops_naming_them(mode, tiny_train_cfg, monkeypatch):
    """An update from finite gradients that leaves NaN in a weight (as an overflowing learning
    rate does) is caught at that step, in either mode, naming the parameter."""
    built = _capture_model(monkeypatch)
    original = torch.optim.AdamW.step
    calls = {"n": 0}
    target = "visual_encoder.encoder.layers.0.fc1.weight"

    def step_then_poison(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # the update of step 1
            with torch.no_grad():
                built["net"].get_parameter(target)[0, :2] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_poison)
    cfg = tiny_train_cfg("stage=translate", f"stage.nonfinite={mode}")
    with pytest.raises(NonFiniteWeightsError) as err:
        run_stage(cfg)
    numel = built["net"].get_parameter(target).numel()
    message = str(err.value)
    assert message.startswith("the update of step 1 (lr ")
    assert f"made 1 tensor(s): {target} (2 of {numel} values non-finite)" in message
    assert "training stops whatever stage.nonfinite says" in message
    assert read_metrics(Path(cfg.run_dir), "train_epoch") == []  # stopped within epoch 1


def test_dev_evaluation_names_nonfinite_weights_instead_of_decoding(tiny_train_cfg, monkeypatch):
    """A NaN in a BatchNorm running statistic (no parameter: the per-step check cannot see it;
    eval mode reads it) is named before the dev evaluation decodes anything."""
    original = loop.TrainRun.end_epoch

    def end_epoch_then_poison(self, train_set):
        original(self, train_set)
        with torch.no_grad():
            self.net.sign_embedding.blocks[1].bn.running_var[4] = float("inf")

    monkeypatch.setattr(loop.TrainRun, "end_epoch", end_epoch_then_poison)
    with pytest.raises(NonFiniteWeightsError) as err:
        run_stage(tiny_train_cfg("stage=translate"))
    assert str(err.value).startswith(
        "dev evaluation at step 3 (epoch 1): non-finite weights in 1 tensor(s): "
        "sign_embedding.blocks.1.bn.running_var (1 of 32 values non-finite)"
    )


def test_evaluate_names_nonfinite_weights_of_a_checkpoint(tiny_train_cfg, tmp_path):
    result = run_stage(tiny_train_cfg("stage=translate", "stage.max_steps=1", "stage.eval_every=0"))
    weights = load_weights(result["last_checkpoint"])
    name = "decoder.final_logits_bias"
    weights[name] = weights[name].clone()
    weights[name][0, :3] = float("nan")
    broken = save_checkpoint(tmp_path / "broken", weights)
    with pytest.raises(NonFiniteWeightsError) as err:
        evaluate_run(result["run_dir"], checkpoint=str(broken), split="dev", device="cpu")
    numel = weights[name].numel()
    assert str(err.value).startswith(
        f"checkpoint {broken}: non-finite weights in 1 tensor(s): {name} (3 of {numel} values "
        "non-finite)"
    )


# ---------------------------------------------------------------- B: records are numbers
def test_train_records_hold_only_finite_numbers_when_steps_are_skipped(tiny_train_cfg, monkeypatch):
    """A record written at a skipped step reports the last update's gradient norm (finite), not
    the skipped step's NaN; its means cover only the updates."""
    calls = {"n": 0}
    original = losses.translation_loss

    def nan_on_step_3(logits, *args, **kwargs):
        calls["n"] += 1
        loss = original(logits, *args, **kwargs)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(losses, "translation_loss", nan_on_step_3)
    cfg = tiny_train_cfg(
        "stage=translate", "stage.nonfinite=skip", "stage.log_every=2", "stage.eval_every=0"
    )
    run_stage(cfg)
    records = read_metrics(Path(cfg.run_dir), "train")
    assert [r["step"] for r in records] == [2, 4, 6]  # step 4's record: steps 3 (skipped) and 4
    for record in records:
        numbers = [v for v in record.values() if isinstance(v, float)]
        assert record["grad_norm"] is not None and all(math.isfinite(v) for v in numbers), record


# ---------------------------------------------------------------- C: resume keeps the window
def _train_records(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(run_dir, "train")]


def test_resumed_run_writes_the_same_train_records(tiny_train_cfg, tmp_path, caplog):
    """log_every=4 over 9 steps; stopped at step 5 (mid-epoch, mid-record-window) and resumed:
    the record of step 8 averages steps 5-8 in both runs."""
    common = ("stage=translate", "stage.epochs=3", "stage.log_every=4", "stage.eval_every=0")
    straight = run_stage(tiny_train_cfg(*common, f"run_dir={tmp_path / 'straight'}"))
    stopped_dir = tmp_path / "stopped"
    run_stage(tiny_train_cfg(*common, f"run_dir={stopped_dir}", "stage.max_steps=5"))
    state = load_train_state(stopped_dir / "checkpoints" / "step-000000005")
    old_dir = tmp_path / "old"
    shutil.copytree(stopped_dir, old_dir)  # for the old-checkpoint case below
    resumed = run_stage(tiny_train_cfg(*common, f"run_dir={stopped_dir}", "resume=auto"))
    assert straight["steps"] == resumed["steps"] == 9
    expected = _train_records(straight["run_dir"])
    assert [r["step"] for r in expected] == [4, 8]
    assert _train_records(resumed["run_dir"]) == expected
    assert state["loss_window"][0]["count"] == 1  # step 5's terms, not yet in a record

    # A checkpoint written before the loss window was saved still resumes, and says so.
    checkpoint = old_dir / "checkpoints" / "step-000000005"
    old_state = {k: v for k, v in state.items() if k != "loss_window"}
    meta = read_marker(checkpoint)["meta"]
    save_checkpoint(checkpoint, load_weights(checkpoint), old_state, meta)
    caplog.set_level(logging.WARNING, logger="scl_slt")
    again = run_stage(tiny_train_cfg(*common, f"run_dir={old_dir}", "resume=auto"))
    assert again["steps"] == 9
    assert "has no loss window (written by an older version)" in caplog.text
    old_records = _train_records(old_dir)
    assert [r["step"] for r in old_records] == [4, 8]
    assert old_records[0] == expected[0]
    assert old_records[1]["loss"] != expected[1]["loss"]  # steps 6-8 only, as announced
