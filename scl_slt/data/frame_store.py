"""Reading the frame cache: a dataset's frames decoded and resized once, stored as raw uint8 arrays.

Layout (written by ``frame_cache.py``, which also explains how to build one)::

    <cache>/index.json                      {"version", "resize", "resize_mode", "clips", "failed"}
    <cache>/clips/<name>.npy                uint8 (T, 3, H, W), frames already resized

``name`` is the record name (``train/<id>`` for PHOENIX14T, so it may hold a ``/``). The loader
memory-maps each clip and reads only the frames it samples: no decoding and no resize, the same
clip transform as the frame files. Clips the conversion could not read are listed under
``failed``; loading one raises DataError, so the dataset treats it as a bad sample. So does a clip
whose index entry or file is not uint8 (T > 0, 3, H, W) at the cache's size (e.g. a clip file of
another ``resize`` adopted by a rebuild), with a message naming the file and the shape.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..config import DataConfig, ResizeMode
from .dataset import Clip, open_array
from .frame_files import noting_known_issue, resized_size
from .frames import ClipTransform, clip_rng, temporal_indices
from .labels import DataError

FORMAT_VERSION = 1
INDEX = "index.json"
CLIPS = "clips"


def clip_relpath(name: str) -> Path:
    """``clips/<name>.npy``; names that would escape the cache folder are rejected."""
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
        raise DataError(f"sample name {name!r} cannot be a frame cache path")
    return Path(CLIPS, *parts[:-1], parts[-1] + ".npy")


class FrameCache:
    """Read side of a frame cache folder (the index is read once, clips on demand)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        path = self.root / INDEX
        if not path.is_file():
            raise DataError(
                f"data.frame_cache={self.root}: no {INDEX} there; build the cache with "
                f"`python -m scl_slt.data.frame_cache data=... out={self.root}` or unset "
                "data.frame_cache to read the frame files"
            )
        try:
            index = json.loads(path.read_text())
            self.version = int(index["version"])
            self.resize = int(index["resize"])
            self.resize_mode = ResizeMode(index["resize_mode"])
            self.clips: dict[str, list[int]] = dict(index["clips"])
            self.failed: dict[str, str] = dict(index.get("failed", {}))
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"frame cache index {path} is malformed: {e}") from e
        if self.version != FORMAT_VERSION:
            raise DataError(
                f"frame cache {path}: format version {self.version}, expected {FORMAT_VERSION}"
            )

    def check_matches(self, cfg: DataConfig) -> None:
        if self.resize != cfg.resize or self.resize_mode is not ResizeMode(cfg.resize_mode):
            raise DataError(
                f"frame cache {self.root} holds frames resized to {self.resize} "
                f"({self.resize_mode.value}) but data.resize={cfg.resize} "
                f"data.resize_mode={ResizeMode(cfg.resize_mode).value}; rebuild it or match them"
            )

    def __contains__(self, name: str) -> bool:
        return name in self.clips

    def shape(self, name: str) -> tuple[int, int, int]:
        """(T, H, W) of a cached clip; DataError naming its file if the index entry is bad."""
        if name not in self.clips:
            reason = self.failed.get(name)
            detail = f": conversion failed: {reason}" if reason else ""
            raise DataError(f"clip {name!r} is not in the frame cache {self.root}{detail}")
        problem = self.entry_problem(name)
        if problem:
            raise DataError(f"frame cache file {self.root / clip_relpath(name)}: {problem}")
        t, h, w = self.clips[name]
        return t, h, w

    def entry_problem(self, name: str) -> str:
        """What is wrong with the index entry of a listed clip ("" if nothing): it must be
        [T > 0, H, W] with H x W as ``resize`` / ``resize_mode`` leave frames."""
        entry = self.clips[name]
        if not (
            isinstance(entry, (list, tuple))
            and len(entry) == 3
            and all(type(v) is int for v in entry)
        ):
            return f"index entry {entry!r}, expected [T, H, W]"
        t, h, w = entry
        if t <= 0:
            return f"no frames (index entry {entry})"
        if h <= 0 or w <= 0 or resized_size(h, w, self.resize, self.resize_mode) != (h, w):
            return (
                f"frames of {h}x{w}, but the cache holds frames resized to {self.resize} "
                f"({self.resize_mode.value}); rebuild the clip"
            )
        return ""

    def file_problem(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> str:
        """What is wrong with a listed clip's file of ``shape`` / ``dtype`` ("" if nothing):
        uint8 (T, 3, H, W) as its (good) index entry says. Shared by the loader and the
        start-up scan (``scan.py``)."""
        t, h, w = self.clips[name]
        if dtype != np.uint8 or tuple(shape) != (t, 3, h, w):
            return f"{dtype} {tuple(shape)}, index says uint8 {(t, 3, h, w)}"
        return ""

    def open(self, name: str) -> np.ndarray:
        """The clip as a read-only memory map, uint8 (T, 3, H, W)."""
        self.shape(name)
        path = self.root / clip_relpath(name)
        arr = open_array(path, "frame cache file", name)
        problem = self.file_problem(name, arr.shape, arr.dtype)
        if problem:
            raise DataError(f"frame cache file {path}: {problem}")
        return arr


class CachedFrameSource:
    """Frames sliced from the frame cache: no decoding, no resize; same transform as files."""

    def __init__(
        self,
        cache: FrameCache,
        transform: ClipTransform,
        max_frames: int = 300,
        train: bool = False,
    ):
        self.cache = cache
        self.transform = transform
        self.max_frames = max_frames
        self.train = train

    def frame_count(self, record: dict[str, Any]) -> int:
        return self.cache.shape(record["name"])[0]

    def load(self, record: dict[str, Any], train: bool, seed: Sequence[int] | None = None) -> Clip:
        with noting_known_issue(record):
            frames = self.cache.open(record["name"])  # (T, 3, H, W) memory map
        rng = clip_rng(train and self.train, seed)
        indices = temporal_indices(frames.shape[0], self.max_frames, rng)
        clip = frames if len(indices) == frames.shape[0] else frames[indices]
        return self.transform(clip, rng)
