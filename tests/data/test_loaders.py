"""The loaders the stages build: reference-run snapshots read through the loader workers,
page-locked batches (``pin_memory``) wherever the device is CUDA, and the workers' reused
hand-off buffers (``BatchLoader``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from scl_slt.data import batching as batching_module
from scl_slt.data.batching import BatchLoader, Collator, adopt_batch
from scl_slt.stages import run_stage
from scl_slt.training.runtime import Runtime

REFERENCE = ("tracker.enabled=true", "tracker.interval=1", "stage.epochs=1", "stage.eval_every=1")


def _snapshot_arrays(run_dir: str) -> dict[str, np.ndarray]:
    arrays = {}
    for path in sorted(Path(run_dir, "snapshots").glob("epoch-*/*.npy")):
        arrays[f"{path.parent.name}/{path.name}"] = np.load(path)
    return arrays


def test_reference_snapshots_through_workers_equal_the_in_process_ones(tiny_train_cfg, tmp_path):
    runs = {
        workers: run_stage(
            tiny_train_cfg(
                *REFERENCE, f"data.num_workers={workers}", f"run_dir={tmp_path / str(workers)}"
            )
        )
        for workers in (0, 2)
    }
    alone, through_workers = (_snapshot_arrays(runs[w]["run_dir"]) for w in (0, 2))
    assert sorted(alone) == sorted(through_workers)
    assert {key.split("/")[0] for key in alone} == {"epoch-0000", "epoch-0001"}
    for key, array in alone.items():
        assert np.array_equal(array, through_workers[key]), key


def test_every_loader_uses_the_workers_and_pins_on_cuda(tiny_train_cfg, tmp_path, monkeypatch):
    """The train, dev and tracker loaders are all built with ``data.num_workers`` workers and,
    with a CUDA runtime, pin_memory=True (checked on the arguments: this machine has no CUDA to
    pin for, and the recorded loaders run in-process); on CPU none pins."""
    assert Runtime(torch.device("cuda"), None, 0, 1).pins_memory
    assert not Runtime(torch.device("cpu"), None, 0, 1).pins_memory
    built: list[bool] = []
    workers: list[int] = []
    original = DataLoader.__init__

    def recording_init(self, *args, **kwargs):
        built.append(bool(kwargs.get("pin_memory", False)))
        workers.append(kwargs.get("num_workers", 0))
        kwargs.update(pin_memory=False, num_workers=0)  # nothing to pin; no need to fork
        original(self, *args, **kwargs)

    monkeypatch.setattr(DataLoader, "__init__", recording_init)
    run_stage(tiny_train_cfg(*REFERENCE, "data.num_workers=3", f"run_dir={tmp_path / 'cpu'}"))
    assert len(built) >= 3 and not any(built)  # tracker, dev and train loaders at least
    assert set(workers) == {3}
    built.clear()
    monkeypatch.setattr(Runtime, "pins_memory", property(lambda self: True))
    run_stage(tiny_train_cfg(*REFERENCE, f"run_dir={tmp_path / 'cuda'}"))
    assert len(built) >= 3 and all(built)


# ------------------------------------------------------- worker -> main hand-off (BatchLoader)
class _CodedClips(Dataset):
    """Clips of varying length whose pixels say which sample and frame they are."""

    def __init__(self, n: int = 24):
        self.lengths = [3 + (7 * i) % 11 for i in range(n)]

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict:
        t = self.lengths[i]
        clip = torch.empty((t, 3, 8, 8), dtype=torch.uint8)
        clip[:, 0] = i
        clip[:, 1] = torch.arange(t, dtype=torch.uint8).view(t, 1, 1)
        clip[:, 2] = 200
        return {"index": i, "name": f"s{i}", "inputs": clip, "text": "x" * (1 + i % 3)}


class _OneIdPerChar:
    def encode_targets(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(t) for t in texts)
        mask = torch.tensor([[j < len(t) for j in range(width)] for t in texts])
        return mask.long(), mask


def _reference_batch(dataset: Dataset, indices: list[int]) -> dict:
    return Collator(_OneIdPerChar())([dataset[i] for i in indices])


def _assert_same_batch(batch: dict, expected: dict) -> None:
    assert batch.keys() == expected.keys()  # no hand-off key left behind
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(batch[key], value), key
        else:
            assert batch[key] == value, key


@pytest.mark.parametrize("persistent", [False, True])
def test_reused_worker_buffers_hand_over_exact_batches_that_stay_intact(persistent):
    """Every batch through 2 workers that refill their buffers equals the in-process batch, and
    still does after the loader has gone on for two epochs (each batch was copied out before its
    buffer was refilled): the batches are kept and only compared at the end."""
    dataset = _CodedClips()
    loader = BatchLoader(
        dataset,
        batch_size=3,
        shuffle=False,
        num_workers=2,
        collate_fn=Collator(_OneIdPerChar()),
        persistent_workers=persistent,
    )
    assert loader.collate_fn.reuse_buffers
    kept = [batch for _ in range(2) for batch in loader]
    assert len(kept) == 16  # two epochs of 8 batches, 4 per worker: more than a ring holds
    for n, batch in enumerate(kept):
        start = 3 * (n % 8)
        _assert_same_batch(batch, _reference_batch(dataset, list(range(start, start + 3))))


def test_an_abandoned_epoch_leaves_the_next_one_exact():
    """Batches a persistent loader drops when an epoch is left early are never released; their
    buffers are not refilled, and the next epoch still gets exact batches."""
    dataset = _CodedClips()
    loader = BatchLoader(
        dataset, batch_size=2, num_workers=2, collate_fn=Collator(_OneIdPerChar()),
        persistent_workers=True,
    )  # fmt: skip
    for n, _ in enumerate(loader):
        if n == 1:
            break
    kept = list(loader)
    assert len(kept) == 12
    for n, batch in enumerate(kept):
        _assert_same_batch(batch, _reference_batch(dataset, [2 * n, 2 * n + 1]))


def test_a_worker_refills_a_buffer_only_once_it_is_released(monkeypatch):
    """The ring in one process standing in for a worker: an adopted (copied-out, released)
    batch's buffer is refilled by the next batch of the same size or smaller; a buffer still out
    is not; a larger batch gets a new buffer."""
    monkeypatch.setattr(batching_module, "get_worker_info", lambda: object())
    monkeypatch.setattr(batching_module, "_ring", None)
    dataset, collate = _CodedClips(), Collator(_OneIdPerChar(), reuse_buffers=True)

    def collated(indices):
        batch = collate([dataset[i] for i in indices])
        return batch, batch["inputs"].untyped_storage().data_ptr()

    assert [dataset.lengths[i] for i in (0, 1, 2, 4, 3, 6)] == [3, 10, 6, 9, 13, 12]
    first, first_buffer = collated([0, 1])  # 2 x 10 frames, buffer for 25 (25 % headroom)
    out, out_buffer = collated([0, 1])
    assert out_buffer != first_buffer  # first is still out
    expected = _reference_batch(dataset, [0, 1])
    _assert_same_batch(adopt_batch(first), expected)  # copied out, its buffer released
    again, again_buffer = collated([2, 4])  # 2 x 9 frames: fits
    assert again_buffer == first_buffer
    larger, larger_buffer = collated([3, 6])  # 2 x 13 frames: too large for any buffer so far
    assert larger_buffer not in (first_buffer, out_buffer)
    _assert_same_batch(adopt_batch(out), expected)  # its buffer was never refilled
    _assert_same_batch(adopt_batch(again), _reference_batch(dataset, [2, 4]))
    _assert_same_batch(adopt_batch(larger), _reference_batch(dataset, [3, 6]))


def test_pinned_and_plain_loaders_do_not_reuse_buffers():
    dataset = _CodedClips(4)
    pinned = BatchLoader(
        dataset, batch_size=2, num_workers=2, pin_memory=True, collate_fn=Collator(_OneIdPerChar())
    )
    assert not pinned.collate_fn.reuse_buffers  # the pinning thread's copies never release
    plain = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=Collator(_OneIdPerChar()))
    for n, batch in enumerate(plain):
        _assert_same_batch(batch, _reference_batch(dataset, [2 * n, 2 * n + 1]))
