"""Building the frame cache: a dataset's frames decoded and resized once, stored as raw uint8 arrays.

Decoding PNG/JPEG and resizing dominate a frame loader's time; the cache pays that once. The
layout and the reading side are in ``frame_store.py``. Each clip is written atomically
(``rundir.atomic``), so a clip file is either complete or absent; the index is rewritten
atomically every few hundred clips and at the end. An interrupted conversion resumes
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

import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DataConfig, ResizeMode
from ..rundir.atomic import atomic_path, write_json_atomic
from .datasets import data_config_from_args, frame_root_of, split_records
from .frame_files import (
    clip_frame_paths,
    decode_frames,
    resize_clip,
    resized_size,
    with_known_issue,
)
from .frame_store import CLIPS, FORMAT_VERSION, INDEX, FrameCache, clip_relpath
from .labels import SPLITS, DataError

log = logging.getLogger(__name__)

FLUSH_EVERY = 200  # clips between index rewrites during a conversion


# ------------------------------------------------------------------------------- conversion
def convert_clip(
    paths: Sequence[Path], target: Path, resize: int, mode: ResizeMode
) -> tuple[int, int, int]:
    """Decode, resize and store one clip atomically; returns (T, H, W)."""
    clip = resize_clip(decode_frames(list(paths)), resize, mode).numpy()  # (T, 3, H, W) uint8
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(clip))
    return clip.shape[0], clip.shape[2], clip.shape[3]


def _one_thread() -> None:
    """A pool worker converts one clip at a time on one thread (the workers are the parallelism);
    set in the workers only, never in the calling process."""
    torch.set_num_threads(1)


def _convert_task(task: tuple[str, dict, str, str, int, str]) -> tuple[str, list[int] | None, str]:
    name, record, frame_root, root, resize, mode = task
    try:
        paths = clip_frame_paths(record, Path(frame_root))
        shape = convert_clip(paths, Path(root) / clip_relpath(name), resize, ResizeMode(mode))
        return name, list(shape), ""
    except DataError as e:
        return name, None, with_known_issue(record, str(e))


def _write_index(root: Path, index: dict[str, Any]) -> None:
    """The index, compact (it lists every clip) and atomic: readers see the old or the new one."""
    write_json_atomic(root / INDEX, index, indent=None)


def _adopt(path: Path, resize: int, mode: ResizeMode) -> list[int] | None:
    """(T, H, W) of a complete clip file left by an interrupted run, None if unusable: not
    uint8 (T > 0, 3, H, W), or frames of another size (a file left by a build at another
    ``resize``, whose index was deleted)."""
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError):
        return None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1] != 3 or arr.shape[0] == 0:
        return None
    t, _, h, w = arr.shape
    if resized_size(h, w, resize, mode) != (h, w):
        return None
    return [t, h, w]


def build_frame_cache(
    cfg: DataConfig,
    out: str | os.PathLike,
    splits: Sequence[str] = SPLITS,
    workers: int = 0,
) -> dict[str, Any]:
    """Convert the frames of ``splits`` into a cache at ``out`` (resumable); returns the index."""
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
            adopted = _adopt(root / clip_relpath(name), cfg.resize, mode)
            if adopted is not None:
                index["clips"][name] = adopted
                continue
            tasks.append((name, record, str(frames_at), str(root), cfg.resize, mode.value))
            queued.add(name)
            planned_frames += int(record.get("length") or 0)
    _write_index(root, index)
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
        pool = multiprocessing.get_context("fork" if "fork" in methods else "spawn").Pool(
            workers, initializer=_one_thread
        )
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
                _write_index(root, index)
                rate = done / max(time.monotonic() - started, 1e-9)
                log.info("frame cache: %d / %d clips (%.1f clips/s)", done, len(tasks), rate)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        _write_index(root, index)
    return index


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m scl_slt.data.frame_cache data=<name|yaml> [data.key=value ...] out=DIR
    [splits=train,dev,test] [workers=N]``; exit code 1 when some clips could not be converted."""
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
