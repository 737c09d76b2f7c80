"""The loaders the stages build: reference-run snapshots read through the loader workers, and
page-locked batches (``pin_memory``) wherever the device is CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from scl_slt.runtime import Runtime
from scl_slt.train import run_stage

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
