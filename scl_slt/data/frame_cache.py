"""The frame cache: a dataset's frames decoded and resized once, stored as raw uint8 arrays.

Decoding PNG/JPEG and resizing dominate a frame loader's time; the cache pays that once. Layout::

    <cache>/index.json                      {"version", "resize", "resize_mode", "clips", "failed"}
    <cache>/clips/<name>.npy                uint8 (T, 3, H, W), frames already resized

``name`` is the record name (``train/<id>`` for PHOENIX14T, so it may hold a ``/``). Each clip is
written to a temporary file and renamed, so a clip file is either complete or absent; the index is
rewritten atomically every few hundred clips and at the end. An interrupted conversion resumes
where it stopped (clip files present are adopted, not redone). Clips whose frames cannot be read
are listed under ``failed`` with the reason and retried on the next run; the loader treats them as
bad samples (``data.on_bad_sample``).

Size: one byte per pixel and channel, e.g. 256x256x3 = 192 KiB per frame; PHOENIX14T (about 0.95M
frames) takes about 180 GiB, CSL-Daily about 2.4M frames / 450 GiB. The loader memory-maps each clip
and reads only the frames it samples.

    python -m scl_slt.data.frame_cache data=phoenix14t data.root=/data/PHOENIX-2014-T \\
        out=/fast/phoenix14t-cache [splits=train,dev,test] [workers=8]

``out`` defaults to ``data.frame_cache``; train with ``data.frame_cache=<out>``. The cache holds
frames at ``data.resize`` / ``data.resize_mode``; the loader refuses a cache built for other values.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from ..config import DataConfig, ResizeMode
from .dataset import Clip
from .frames import (
    ClipTransform,
    clip_frame_paths,
    clip_rng,
    decode_frames,
    resize_clip,
    temporal_indices,
    with_known_issue,
)
from .labels import SPLITS, DataError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX = "index.json"
CLIPS = "clips"
FLUSH_EVERY = 200  # clips between index rewrites during a conversion


def clip_relpath(name: str) -> Path:
    """``clips/<name>.npy``; names that would escape the cache folder are rejected."""
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
        raise DataError(f"sample name {name!r} cannot be a frame cache path")
    return Path(CLIPS, *parts[:-1], parts[-1] + ".npy")


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False))
    os.replace(tmp, path)


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
        """(T, H, W) of a cached clip."""
        if name not in self.clips:
            reason = self.failed.get(name)
            detail = f": conversion failed: {reason}" if reason else ""
            raise DataError(f"clip {name!r} is not in the frame cache {self.root}{detail}")
        t, h, w = self.clips[name]
        return t, h, w

    def open(self, name: str) -> np.ndarray:
        """The clip as a read-only memory map, uint8 (T, 3, H, W)."""
        t, h, w = self.shape(name)
        path = self.root / clip_relpath(name)
        try:
            arr = np.load(path, mmap_mode="r")
        except FileNotFoundError as e:
            raise DataError(f"frame cache file missing for {name!r}: {path}") from e
        except (ValueError, OSError) as e:
            raise DataError(f"frame cache file unreadable for {name!r}: {path}: {e}") from e
        if arr.dtype != np.uint8 or arr.shape != (t, 3, h, w):
            raise DataError(
                f"frame cache file {path}: {arr.dtype} {arr.shape}, index says uint8 {(t, 3, h, w)}"
            )
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
        try:
            frames = self.cache.open(record["name"])
        except DataError as e:
            raise DataError(with_known_issue(record, str(e))) from e
        rng = clip_rng(train and self.train, seed)
        indices = temporal_indices(frames.shape[0], self.max_frames, rng)
        clip = frames if len(indices) == frames.shape[0] else frames[indices]
        return self.transform(clip, rng)


# ------------------------------------------------------------------------------- conversion
def convert_clip(
    paths: Sequence[Path], target: Path, resize: int, mode: ResizeMode
) -> tuple[int, int, int]:
    """Decode, resize and store one clip atomically; returns (T, H, W)."""
    clip = resize_clip(decode_frames(list(paths)), resize, mode).numpy()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(clip))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return clip.shape[0], clip.shape[2], clip.shape[3]


def _convert_task(task: tuple[str, dict, str, str, int, str]) -> tuple[str, list[int] | None, str]:
    name, record, frame_root, root, resize, mode = task
    torch.set_num_threads(1)
    try:
        paths = clip_frame_paths(record, Path(frame_root))
        shape = convert_clip(paths, Path(root) / clip_relpath(name), resize, ResizeMode(mode))
        return name, list(shape), ""
    except DataError as e:
        return name, None, with_known_issue(record, str(e))


def _adopt(path: Path) -> list[int] | None:
    """(T, H, W) of a complete clip file left by an interrupted run, None if unusable."""
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError):
        return None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1] != 3:
        return None
    return [arr.shape[0], arr.shape[2], arr.shape[3]]


def build_frame_cache(
    cfg: DataConfig,
    out: str | os.PathLike,
    splits: Sequence[str] = SPLITS,
    workers: int = 0,
) -> dict[str, Any]:
    """Convert the frames of ``splits`` into a cache at ``out`` (resumable); returns the index."""
    from .datasets import frame_root_of, split_records

    root = Path(out).expanduser()
    (root / CLIPS).mkdir(parents=True, exist_ok=True)
    mode = ResizeMode(cfg.resize_mode)
    index: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "resize": cfg.resize,
        "resize_mode": mode.value,
        "clips": {},
        "failed": {},
    }
    if (root / INDEX).is_file():
        old = FrameCache(root)
        old.check_matches(cfg)
        index["clips"] = {n: s for n, s in old.clips.items() if (root / clip_relpath(n)).is_file()}
    frames_at = frame_root_of(cfg)
    tasks, queued, planned_frames = [], set(), 0
    for split in splits:
        for record in split_records(cfg, split):
            name = record["name"]
            if name in index["clips"] or name in queued:
                continue
            adopted = _adopt(root / clip_relpath(name))
            if adopted is not None:
                index["clips"][name] = adopted
                continue
            tasks.append((name, record, str(frames_at), str(root), cfg.resize, mode.value))
            queued.add(name)
            planned_frames += int(record.get("length") or 0)
    _write_json_atomic(root / INDEX, index)
    log.info(
        "frame cache %s: %d clips present, %d to convert (about %.1f GiB at %d px)",
        root,
        len(index["clips"]),
        len(tasks),
        planned_frames * 3 * cfg.resize**2 / 2**30,
        cfg.resize,
    )
    if workers > 0:
        # fork where available (as DataLoader workers): spawn re-imports torch in every worker
        methods = multiprocessing.get_all_start_methods()
        pool = multiprocessing.get_context("fork" if "fork" in methods else "spawn").Pool(workers)
        results = pool.imap_unordered(_convert_task, tasks, chunksize=2)
    else:
        pool, results = None, map(_convert_task, tasks)
    started = time.monotonic()
    try:
        for done, (name, shape, error) in enumerate(results, start=1):
            if shape is None:
                index["failed"][name] = error
                log.warning("frame cache: %s skipped: %s", name, error)
            else:
                index["clips"][name] = shape
                index["failed"].pop(name, None)
            if done % FLUSH_EVERY == 0:
                _write_json_atomic(root / INDEX, index)
                rate = done / max(time.monotonic() - started, 1e-9)
                log.info("frame cache: %d / %d clips (%.1f clips/s)", done, len(tasks), rate)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        _write_json_atomic(root / INDEX, index)
    return index


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m scl_slt.data.frame_cache data=<name|yaml> [data.key=value ...] out=DIR
    [splits=train,dev,test] [workers=N]``; exit code 1 when some clips could not be converted."""
    from .datasets import data_config_from_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg, extra = data_config_from_args(
        sys.argv[1:] if argv is None else argv, ("out", "splits", "workers")
    )
    out = extra.get("out") or cfg.frame_cache
    if not out:
        print("frame_cache: give out=DIR (or data.frame_cache=DIR)", file=sys.stderr)
        return 2
    splits = tuple(s for s in str(extra.get("splits", ",".join(SPLITS))).split(",") if s)
    index = build_frame_cache(cfg, out, splits, workers=int(extra.get("workers", 0)))
    print(f"frame cache {out}: {len(index['clips'])} clips, {len(index['failed'])} failed")
    for name, reason in sorted(index["failed"].items()):
        print(f"  failed {name}: {reason}")
    return 1 if index["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
