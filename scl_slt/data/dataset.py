"""The dataset every stage reads: a split's records and the clip source that loads them.

A split is a list of records (dicts with at least ``name`` and ``text``; see ``labels.py``) plus
a *clip source* that turns a record into a tensor: per-frame features ``(T, D)`` or frames
``(T, 3, H, W)``. Sources live next to their formats (``FeatureSource`` here, frame sources in
``frame_files.py`` and ``frame_store.py``), so the dataset itself knows nothing about files.
A record's ``question`` (question-based SLT, ``questions.py``) is passed on in its sample.
Samples become batches in ``batching.py`` (the batch contract is written there).

Bad samples (``data.on_bad_sample``): a source raises ``DataError`` for a missing or unreadable
clip, or one of the wrong shape or dtype (checked per sample as it loads: a wrong-width feature
file would otherwise fail the whole batch in the collator, naming no file). With ``error`` the dataset re-raises it naming the split, index, sample and path. With
``skip`` ``__getitem__`` returns None, counts it in a counter shared with DataLoader workers
(``SignDataset.bad_sample_count``; ``reset_bad_sample_count()`` once per epoch gives the epoch's
count to log) and the Collator drops it (what that means for a batch, and for the loop when a
whole batch failed: ``batching.py``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from ..config import BadSample
from .labels import DataError

log = logging.getLogger(__name__)


class Clip(NamedTuple):
    """One clip as a source loads it."""

    inputs: torch.Tensor  # (T, D) float32 features or (T, 3, H, W) frames
    colour: torch.Tensor | None = None  # (2, 3) float32: uint8 frames' colour change


class ClipSource(Protocol):
    def load(
        self, record: dict[str, Any], train: bool, seed: Sequence[int] | None = None
    ) -> Clip | torch.Tensor:
        """The clip of one record: (T, D) float32 features or (T, 3, H, W) frames (uint8
        pixels with their colour change, or normalised float32 with
        ``data.frames_uint8=false``); a bare tensor is a clip without colour change. ``seed``
        (the sample's key from ``SeededBatches``) seeds its augmentation when given."""

    def frame_count(self, record: dict[str, Any]) -> int:
        """Frames available for the record (before subsampling); DataError when unreadable."""


class FeatureWidth(NamedTuple):
    """The feature width every file of a split must have, and where that number comes from (so
    an error can name it): ``model.sign_embedding.feature_dim``, ``data.synthetic.feature_dim``
    or the split's first good file (``datasets.feature_width``)."""

    dim: int
    source: str

    def __str__(self) -> str:
        return f"width {self.dim} from {self.source}"


def feature_problem(shape: tuple[int, ...], dtype: np.dtype, width: FeatureWidth | None) -> str:
    """What is wrong with a feature array of ``shape`` and ``dtype`` ("" if nothing): it must be
    floating point, 2-D (T, D), T > 0 and D = ``width`` (any D when None). Shared by the loader
    and the start-up scan (``scan.py``), so the two never disagree."""
    if not np.issubdtype(dtype, np.floating):
        return f"dtype {dtype}, expected floating point"
    dim = "D" if width is None else str(width.dim)
    if len(shape) != 2:
        return f"shape {shape}, expected 2-D (T, {dim})"
    if shape[0] == 0:
        return f"shape {shape}: no rows"
    if width is not None and shape[1] != width.dim:
        return f"shape {shape}, expected (T, {width.dim}): {width}"
    return ""


class FeatureSource:
    """Per-sample arrays at ``<feature_root>/<name>.npy`` (``name`` may contain ``/``), each
    checked as it loads against ``feature_problem`` (floating point (T > 0, ``width``))."""

    def __init__(self, feature_root: str | os.PathLike, width: FeatureWidth | None = None):
        self.root = Path(feature_root)
        self.width = width

    def path(self, name: str) -> Path:
        return self.root / f"{name}.npy"

    def load(
        self, record: dict[str, Any], train: bool, seed: Sequence[int] | None = None
    ) -> torch.Tensor:
        path = self.path(record["name"])
        arr = open_array(path, "feature file", record["name"])  # header only so far
        problem = feature_problem(arr.shape, arr.dtype, self.width)
        if problem:
            raise DataError(f"feature file {path}: {problem}")
        return torch.from_numpy(np.array(arr, dtype=np.float32))  # (T, D), a copy off the map

    def frame_count(self, record: dict[str, Any]) -> int:
        """T from the array header (nothing else is read)."""
        path = self.path(record["name"])
        arr = open_array(path, "feature file", record["name"])
        if arr.ndim == 0:
            raise DataError(
                f"feature file unreadable for {record['name']!r}: {path}: a 0-d array has no rows"
            )
        return int(arr.shape[0])


def open_array(path: Path, what: str, name: str) -> np.ndarray:
    """The ``.npy`` file at ``path``, memory-mapped (only the header is read now); a missing or
    unreadable file raises DataError naming ``what`` it is, the sample and the path, so the
    dataset can treat it as a bad sample."""
    try:
        return np.load(path, mmap_mode="r")
    except FileNotFoundError as e:
        raise DataError(f"{what} missing for {name!r}: {path}") from e
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{what} unreadable for {name!r}: {path}: {e}") from e


def subsample_indices(length: int, max_frames: int) -> np.ndarray:
    """Evenly spaced frame indices when a clip is longer than ``max_frames`` (deterministic)."""
    if length <= max_frames:
        return np.arange(length)
    return np.linspace(0, length - 1, max_frames).round().astype(np.int64)


class BadSampleCounter:
    """Skipped-sample count shared by the main process and its DataLoader workers.

    One int64 slot per process in shared memory (slot 0: main process, 1 + worker id: workers),
    each written by its own process only, so no lock is needed; the total is their sum."""

    SLOTS = 64

    def __init__(self) -> None:
        self._slots = torch.zeros(self.SLOTS, dtype=torch.int64).share_memory_()
        self._local = threading.Lock()  # threads of one process share a slot

    def __getstate__(self) -> dict[str, Any]:
        return {"_slots": self._slots}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._slots = state["_slots"]
        self._local = threading.Lock()

    def increment(self) -> None:
        worker = get_worker_info()
        slot = 0 if worker is None else 1 + worker.id % (self.SLOTS - 1)
        with self._local:
            self._slots[slot] += 1

    @property
    def total(self) -> int:
        return int(self._slots.sum())

    def reset(self) -> int:
        """Zero the count (call while workers are idle, e.g. between epochs); returns it."""
        total = self.total
        self._slots.zero_()
        return total


class SignDataset(Dataset):
    """One split. ``train`` switches on the source's train-time augmentation; ``on_bad_sample``
    decides what a missing or unreadable clip does (see the module docstring)."""

    def __init__(
        self,
        records: Sequence[dict[str, Any]],
        source: ClipSource,
        max_frames: int = 300,
        train: bool = False,
        split: str = "train",
        on_bad_sample: BadSample | str = BadSample.error,
    ):
        if len(records) == 0:
            raise DataError(f"split {split!r} has no samples")
        self.records = list(records)
        self.source = source
        self.max_frames = max_frames
        self.train = train
        self.split = split
        self.on_bad_sample = BadSample(on_bad_sample)
        self._bad = BadSampleCounter()

    @property
    def bad_sample_count(self) -> int:
        """Samples skipped so far (all workers) since creation or the last reset."""
        return self._bad.total

    def reset_bad_sample_count(self) -> int:
        """The count so far, then zero: call once per epoch, between epochs, and log it."""
        return self._bad.reset()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def texts(self) -> list[str]:
        return [r["text"] for r in self.records]

    @property
    def names(self) -> list[str]:
        return [r["name"] for r in self.records]

    @property
    def questions(self) -> list[str]:
        """The records' questions (``data.assist``), [] when they carry none: e.g. extra
        training texts for the tiny tokenizer, so question words are in its vocabulary."""
        return [r["question"] for r in self.records if "question" in r]

    def __getitem__(self, key: int | tuple[int, Sequence[int]]) -> dict[str, Any] | None:
        """Sample ``key``: an index, or ``(index, seed)`` from ``SeededBatches`` (the seed of the
        sample's augmentation; without one it draws from torch's RNG)."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        record = self.records[index]
        try:
            loaded = (
                self.source.load(record, self.train)
                if seed is None
                else self.source.load(record, self.train, seed)
            )
        except DataError as e:
            where = f"{self.split} sample {index} {record['name']!r}"
            if self.on_bad_sample is BadSample.error:
                raise DataError(f"{where}: {e} (data.on_bad_sample=skip skips such samples)") from e
            self._bad.increment()
            log.warning("skipping %s: %s", where, e)
            return None
        clip, colour = loaded if isinstance(loaded, Clip) else (loaded, None)
        video_frames = clip.shape[0]  # before subsampling: SignCL's margin counts these
        if clip.shape[0] > self.max_frames:
            clip = clip[torch.from_numpy(subsample_indices(clip.shape[0], self.max_frames))]
        sample = {"index": index, "name": record["name"], "inputs": clip, "text": record["text"]}
        sample["video_frames"] = video_frames
        if "question" in record:  # question-based SLT (data.assist); batching.py encodes it
            sample["question"] = record["question"]
        if colour is not None:
            sample["colour"] = colour
        return sample
