"""The dataset every stage reads, and the collate function that turns samples into a batch.

A split is a list of records (dicts with at least ``name`` and ``text``; see ``labels.py``) plus
a *clip source* that turns a record into a tensor: per-frame features ``(T, D)`` or frames
``(T, 3, H, W)``. Sources live next to their formats (``FeatureSource`` here, frame sources in
``frames.py``), so the dataset itself knows nothing about files.

Batch contract (what ``Collator`` returns; every stage, the tracker and evaluation rely on it):

    indices        LongTensor (B,)        position of each sample in its split
    names          list[str]
    texts          list[str]              raw reference strings, never re-decoded
    inputs         FloatTensor (B, T, D) or (B, T, 3, H, W), zero-padded in time
    input_lengths  LongTensor (B,)
    text_ids       LongTensor (B, L)      tokenizer.encode_targets(texts): [lang] ... </s>, padded
    text_mask      BoolTensor (B, L)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .labels import DataError

log = logging.getLogger(__name__)


class ClipSource(Protocol):
    def load(self, record: dict[str, Any], train: bool) -> torch.Tensor:
        """The clip of one record: (T, D) features or (T, 3, H, W) frames, float32."""


class FeatureSource:
    """Per-sample arrays at ``<feature_root>/<name>.npy`` (``name`` may contain ``/``)."""

    def __init__(self, feature_root: str | os.PathLike):
        self.root = Path(feature_root)

    def path(self, name: str) -> Path:
        return self.root / f"{name}.npy"

    def load(self, record: dict[str, Any], train: bool) -> torch.Tensor:
        path = self.path(record["name"])
        try:
            arr = np.load(path, mmap_mode="r")
        except FileNotFoundError as e:
            raise DataError(f"feature file missing for {record['name']!r}: {path}") from e
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"feature file unreadable for {record['name']!r}: {path}: {e}") from e
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise DataError(f"feature file {path}: expected shape (T>0, D), got {arr.shape}")
        return torch.from_numpy(np.asarray(arr, dtype=np.float32))


def subsample_indices(length: int, max_frames: int) -> np.ndarray:
    """Evenly spaced frame indices when a clip is longer than ``max_frames`` (deterministic)."""
    if length <= max_frames:
        return np.arange(length)
    return np.linspace(0, length - 1, max_frames).round().astype(np.int64)


class SignDataset(Dataset):
    """One split. ``train`` switches on the source's train-time augmentation."""

    def __init__(
        self,
        records: Sequence[dict[str, Any]],
        source: ClipSource,
        max_frames: int = 300,
        train: bool = False,
        split: str = "train",
    ):
        if len(records) == 0:
            raise DataError(f"split {split!r} has no samples")
        self.records = list(records)
        self.source = source
        self.max_frames = max_frames
        self.train = train
        self.split = split

    def __len__(self) -> int:
        return len(self.records)

    @property
    def texts(self) -> list[str]:
        return [r["text"] for r in self.records]

    @property
    def names(self) -> list[str]:
        return [r["name"] for r in self.records]

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        clip = self.source.load(record, self.train)
        if clip.shape[0] > self.max_frames:
            clip = clip[torch.from_numpy(subsample_indices(clip.shape[0], self.max_frames))]
        return {"index": index, "name": record["name"], "inputs": clip, "text": record["text"]}


class Collator:
    """Pads clips in time and tokenises target texts (see the batch contract above)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        lengths = torch.tensor([s["inputs"].shape[0] for s in samples], dtype=torch.long)
        first = samples[0]["inputs"]
        inputs = first.new_zeros((len(samples), int(lengths.max()), *first.shape[1:]))
        for i, s in enumerate(samples):
            inputs[i, : s["inputs"].shape[0]] = s["inputs"]
        texts = [s["text"] for s in samples]
        text_ids, text_mask = self.tokenizer.encode_targets(texts)
        return {
            "indices": torch.tensor([s["index"] for s in samples], dtype=torch.long),
            "names": [s["name"] for s in samples],
            "texts": texts,
            "inputs": inputs,
            "input_lengths": lengths,
            "text_ids": text_ids,
            "text_mask": text_mask,
        }
