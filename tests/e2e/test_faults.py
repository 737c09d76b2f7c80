"""Faults: non-finite losses (error and skip modes), SIGTERM/SIGINT, checkpoint write failures."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scl_slt import losses
from scl_slt.data.dataset import SignDataset
from scl_slt.rundir import checkpoint as ck
from scl_slt.rundir.layout import read_metrics
from scl_slt.stages import run_stage
from scl_slt.training.optim import NonFiniteLossError
from scl_slt.training.runtime import StopRequest

REPO = Path(__file__).resolve().parents[2]


def _poison_sample(monkeypatch, index: int = 5) -> dict[str, str]:
    """Make train sample ``index`` carry +inf features (a corrupt feature file, say)."""
    original = SignDataset.__getitem__
    poisoned: dict[str, str] = {}

    def getitem(self, key):
        item = original(self, key)
        i = key[0] if isinstance(key, tuple) else key  # training keys: (index, augmentation seed)
        if self.split == "train" and i == index:
            item["inputs"] = torch.full_like(item["inputs"], float("inf"))
            poisoned["name"] = item["name"]
        return item

    monkeypatch.setattr(SignDataset, "__getitem__", getitem)
    return poisoned


@pytest.mark.parametrize("stage", ["contrastive", "translate"])
def test_nonfinite_loss_stops_naming_step_rank_and_sample(stage, tiny_train_cfg, monkeypatch):
    poisoned = _poison_sample(monkeypatch)
    cfg = tiny_train_cfg(f"stage={stage}", "stage.eval_every=0")
    with pytest.raises(NonFiniteLossError) as err:
        run_stage(cfg)
    message = str(err.value)
    assert "non-finite loss at step" in message and "rank 0" in message
    assert f"non-finite inputs: ['{poisoned['name']}']" in message


def test_skip_mode_skips_the_step_and_training_continues(tiny_train_cfg, monkeypatch, caplog):
    poisoned = _poison_sample(monkeypatch)
    caplog.set_level(logging.WARNING, logger="scl_slt")
    result = run_stage(
        tiny_train_cfg("stage.nonfinite=skip", "stage.max_nonfinite=2", "stage.eval_every=0")
    )
    assert result["nonfinite_skipped"] == 2  # the poisoned sample, once in each of 2 epochs
    assert caplog.text.count("skipped step") == 2
    assert f"non-finite inputs: ['{poisoned['name']}']" in caplog.text
    weights = ck.load_weights(result["last_checkpoint"])
    assert all(bool(torch.isfinite(t).all()) for t in weights.values() if t.is_floating_point())
    records = read_metrics(result["run_dir"], "train")
    assert len(records) == result["steps"] - 2  # log_every=1: every step but the skipped ones
    assert all(r["loss"] == r["loss"] for r in records)  # no NaN got into the logged means
    epochs = read_metrics(result["run_dir"], "train_epoch")
    assert [r["nonfinite_skipped"] for r in epochs] == [1, 2]


def test_skip_mode_stops_after_max_in_a_row(tiny_train_cfg, monkeypatch):
    monkeypatch.setattr(
        losses, "translation_loss", lambda logits, *a, **k: logits.sum() * float("nan")
    )
    cfg = tiny_train_cfg(
        "stage=translate", "stage.nonfinite=skip", "stage.max_nonfinite=2", "stage.eval_every=0"
    )
    with pytest.raises(NonFiniteLossError, match="2 non-finite steps in a row.*step 1"):
        run_stage(cfg)


def test_stop_request_flags_signal_and_restores_handlers():
    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before


def test_checkpoint_write_failure_raises_and_never_logs_saved(tiny_train_cfg, monkeypatch, caplog):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", disk_full)
    caplog.set_level(logging.INFO, logger="scl_slt")
    with pytest.raises(ck.CheckpointError, match="No space left on device"):
        run_stage(tiny_train_cfg("stage.max_steps=1", "stage.eval_every=0"))
    assert "saved checkpoint" not in caplog.text


def test_cli_sigterm_saves_resumable_checkpoint_and_exits_cleanly(tiny_overrides, tmp_path):
    """The real entry point in a subprocess: SIGTERM mid-run -> checkpoint, exit 128 + 15."""
    run_dir = tmp_path / "cli"
    overrides = [o for o in tiny_overrides if not o.startswith("run_dir=")]
    command = [
        sys.executable,
        "-m",
        "scl_slt.train",
        *overrides,
        f"run_dir={run_dir}",
        "stage.epochs=100",
        "stage.eval_every=0",
    ]
    proc = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not read_metrics(run_dir, "train"):  # wait until a step has been taken
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "no training step within 120 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr.decode()[-3000:]
    assert "resumable checkpoint" in stderr.decode()
    latest = ck.find_latest_checkpoint(run_dir / "checkpoints")
    state = ck.load_train_state(latest)
    assert state["step"] >= 1 and state["epoch"] < 100
    assert "received SIGTERM" in (run_dir / "train.log").read_text()
