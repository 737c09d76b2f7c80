"""Checkpoints: round trip, atomic writes, corruption detection and fallback, pruning, best-k."""

from __future__ import annotations

import errno
import json
import logging

import pytest
import torch
from torch import nn

from scl_slt.rundir import checkpoint as ck


class Tied(nn.Module):
    """Tied input/output embeddings (like MBart) plus a BatchNorm buffer."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.head = nn.Linear(4, 11, bias=False)
        self.head.weight = self.embed.weight
        self.norm = nn.BatchNorm1d(4)


def test_round_trip_keeps_values_and_ties(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    state = model.state_dict()
    state["extra.view"] = torch.arange(12.0).reshape(3, 4).t()  # non-contiguous
    state["extra.slice"] = state["embed.weight"][2:5]  # shares memory partially
    path = ck.save_checkpoint(tmp_path / "c", state, {"step": 3}, {"note": "x"})
    loaded = ck.load_weights(path)
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name
    assert loaded["head.weight"].data_ptr() == loaded["embed.weight"].data_ptr()
    assert ck.load_train_state(path) == {"step": 3}
    assert ck.read_marker(path)["meta"] == {"note": "x"}
    fresh = Tied()
    fresh.load_state_dict({k: v for k, v in loaded.items() if not k.startswith("extra")})
    assert torch.equal(fresh.head.weight, model.head.weight)


def test_failed_write_raises_names_path_and_leaves_nothing(tmp_path, monkeypatch, caplog):
    manager = ck.CheckpointManager(tmp_path, keep_last=1, keep_best=1)
    first = manager.save(1, Tied().state_dict(), {"step": 1}, {})

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", disk_full)
    caplog.set_level(logging.INFO, logger="scl_slt")
    caplog.clear()
    with pytest.raises(ck.CheckpointError, match="step-000000002.*No space left"):
        manager.save(2, Tied().state_dict(), {"step": 2}, {})
    assert "saved" not in caplog.text
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == [first.name]  # no partial, first kept
    assert ck.find_latest_checkpoint(root) == first


def test_unwritable_location_raises(tmp_path):
    blocker = tmp_path / "checkpoints"
    blocker.write_text("a file where the checkpoint folder should be")
    manager = ck.CheckpointManager(tmp_path, keep_last=1, keep_best=1)
    with pytest.raises(ck.CheckpointError, match=str(blocker)):
        manager.save(1, Tied().state_dict(), {}, {})


@pytest.mark.parametrize("damage", ["truncate", "flip", "marker", "state"])
def test_corrupt_checkpoint_is_reported_and_skipped(tmp_path, caplog, damage):
    root = tmp_path / "checkpoints"
    good = ck.save_checkpoint(root / "step-000000001", Tied().state_dict(), {"step": 1})
    bad = ck.save_checkpoint(root / "step-000000002", Tied().state_dict(), {"step": 2})
    weights = bad / ck.MODEL_FILE
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-10])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-3] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "marker":
        (bad / ck.MARKER).unlink()
    else:
        (bad / ck.STATE_FILE).unlink()
    with pytest.raises(ck.CorruptCheckpointError, match=str(bad)):
        ck.verify_checkpoint(bad)
    caplog.set_level(logging.WARNING, logger="scl_slt")
    assert ck.find_latest_checkpoint(root) == good
    assert str(bad) in caplog.text


def test_keep_last_prunes_only_complete_older(tmp_path):
    manager = ck.CheckpointManager(tmp_path, keep_last=2, keep_best=1)
    for step in (1, 2, 3, 4):
        manager.save(step, Tied().state_dict(), {"step": step}, {})
    names = [p.name for p in ck.step_checkpoints(tmp_path / "checkpoints")]
    assert names == ["step-000000003", "step-000000004"]
    assert ck.resolve_checkpoint(tmp_path, "last").name == "step-000000004"


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), value), "n": torch.tensor(int(value))}


def test_best_top_k_ranking_ties_and_average(tmp_path):
    manager = ck.CheckpointManager(tmp_path, keep_last=1, keep_best=2)
    results = [(1, 5.0, 1.0), (2, 7.0, 2.0), (3, 6.0, 3.0), (4, 7.0, 4.0), (5, 1.0, 5.0)]
    for epoch, bleu, value in results:
        entry = {"epoch": epoch, "step": epoch * 10, "bleu4": bleu, "rouge_l": 0.0}
        if manager.is_better(entry):
            manager.save_best(entry, _state(value))
    # Top-2 by BLEU-4; the tie at 7.0 goes to the later epoch.
    assert [e["epoch"] for e in manager.best] == [4, 2]
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("best-*")) == ["best-000000020", "best-000000040"]
    assert ck.resolve_checkpoint(tmp_path, "best").name == "best-000000040"
    assert json.loads((root / ck.BEST_INDEX).read_text())["best"] == "best-000000040"
    manager.save_average()
    averaged = ck.load_weights(ck.resolve_checkpoint(tmp_path, "best"))
    naive = (_state(4.0)["w"] + _state(2.0)["w"]) / 2
    assert torch.equal(averaged["w"], naive)
    assert averaged["n"].item() == 2  # integers come from the last listed, not averaged


def test_best_falls_back_to_last_without_dev_evaluation(tmp_path):
    manager = ck.CheckpointManager(tmp_path, keep_last=1, keep_best=1)
    manager.save(7, _state(1.0), {"step": 7}, {})
    assert ck.resolve_checkpoint(tmp_path, "best").name == "step-000000007"
    with pytest.raises(ck.CheckpointError, match="neither a checkpoint nor a run"):
        ck.resolve_checkpoint(tmp_path / "nowhere")


def test_partial_writes_are_cleaned(tmp_path):
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-000000009-123").mkdir(parents=True)
    ck.save_checkpoint(root / "step-000000001", _state(1.0), {})
    ck.clean_partial_writes(root)
    assert [p.name for p in root.iterdir()] == ["step-000000001"]
