"""Generating the synthetic dataset on first use, into a cache shared by every run.

``data=synthetic`` needs labels and features (or frames) on disk in the GFSLT-style format the
real loaders read (``labels.{train,dev,test}`` + one array or frame folder per clip). They are
generated from the configuration (``language.py``, ``plan.py``, ``render.py``) into
``<cache_dir>/<hash of the config>/`` and reused by every later run with the same configuration.

The dataset is built in a temporary folder beside its final name, then renamed
(``rundir.atomic.atomic_directory``), under a file lock: a half-built dataset is never visible
under the final name, and a second process waits and then reuses the finished one. Frames
(``modality=frames``) are rendered into ``frames/`` of the same root on first request, the same
way. Temporary folders a crash left behind are removed under the lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from ...config import Modality, SyntheticConfig
from ...rundir.atomic import atomic_directory, is_temporary
from ..labels import SPLITS, DataError, labels_path, read_labels, write_labels
from .grammar import CATEGORY_OF
from .language import (
    STREAM_FEATURES,
    STREAM_FRAMES,
    SyntheticLanguage,
    as_synthetic_config,
    build_language,
    confusable_share,
    signer_styles,
    stream_rng,
)
from .plan import duplicate_share, plan_dataset
from .render import render_features, render_frames, write_frames

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when the output for a given config changes (invalidates caches)
META = "meta.json"
# Settings that change nothing the generator writes: the dialogue's questions are derived from
# the records on load (dialogue.py), so these stay out of the cache key and meta.json, and
# datasets cached before they existed stay valid.
NOT_GENERATED = ("question_overlap",)


def _generated_settings(cfg: SyntheticConfig) -> dict[str, Any]:
    """The config as far as the generated files depend on it (plus where it is cached)."""
    content = dataclasses.asdict(cfg)
    for key in NOT_GENERATED:
        content.pop(key)
    return content


# -------------------------------------------------------------------------------------- build
def _clips(plan: dict[str, dict[str, dict]]) -> Iterator[tuple[int, int, dict]]:
    for split_id, split in enumerate(SPLITS):
        for i, record in enumerate(plan[split].values()):
            yield split_id, i, record


def _generate_dataset(cfg: SyntheticConfig, folder: Path) -> dict[str, Any]:
    """Labels, feature arrays and meta.json into ``folder``; returns the meta dict."""
    language = build_language(cfg)
    plan = plan_dataset(cfg, language)
    styles = signer_styles(cfg)
    for split in SPLITS:
        write_labels(labels_path(folder, split), plan[split])
    for split_id, i, record in _clips(plan):
        rng = stream_rng(cfg.seed, STREAM_FEATURES, split_id, i)
        arr = render_features(record, language, styles[record["signer"]], cfg.noise, rng)
        path = folder / "features" / f"{record['name']}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, arr)
    meta = _dataset_meta(cfg, language, plan)
    (folder / META).write_text(json.dumps(meta, indent=1))
    return meta


def _dataset_meta(cfg: SyntheticConfig, language: SyntheticLanguage, plan: dict) -> dict[str, Any]:
    """What was generated, and the rates achieved (measured on the generated data)."""
    train_texts = [r["text"] for r in plan["train"].values()]
    seen = set(train_texts)
    groups: dict[str, list[str]] = {}
    for r in plan["train"].values():
        groups.setdefault(r["text"], []).append(r["name"])
    lengths = [r["length"] for split in SPLITS for r in plan[split].values()]
    stats = {"min": np.min, "mean": np.mean, "max": np.max}
    words = sorted({w for split in SPLITS for r in plan[split].values() for w in r["text"].split()})
    rates = {
        "confusable": {
            "requested": cfg.confusable_rate,
            "achieved": confusable_share(language.feature_motion),
            "achieved_frames": confusable_share(language.pose_motion),
            "tolerance": 1 / len(language.glosses),
        },
        "duplicate": {
            "requested": cfg.duplicate_rate,
            "achieved": duplicate_share(train_texts),
            "tolerance": 1 / cfg.num_train,
        },
    }
    for split in ("dev", "test"):
        texts = [r["text"] for r in plan[split].values()]
        rates[f"{split}_seen"] = {
            "requested": cfg.eval_seen_rate,
            "achieved": float(np.mean([t in seen for t in texts])),
        }
    return {
        "generator_version": GENERATOR_VERSION,
        "config": _generated_settings(cfg),
        "glosses": [{"name": g, "category": CATEGORY_OF[g]} for g in language.glosses],
        "words": words,
        "confusable_pairs": [[language.glosses[a], language.glosses[b]] for a, b in language.twins],
        "duplicate_groups": [names for names in groups.values() if len(names) > 1],
        "rates": rates,
        "splits": {split: len(plan[split]) for split in SPLITS},
        "frames_per_clip": {k: round(float(f(lengths)), 2) for k, f in stats.items()},
    }


def _generate_frames(cfg: SyntheticConfig, root: Path, folder: Path) -> None:
    """Frame folders for the labels already in ``root`` (same clips, lengths and alignments)."""
    language = build_language(cfg)
    styles = signer_styles(cfg)
    plan = {split: read_labels(labels_path(root, split)) for split in SPLITS}
    for split_id, i, record in _clips(plan):
        rng = stream_rng(cfg.seed, STREAM_FRAMES, split_id, i)
        style = styles[record["signer"]]
        frames = render_frames(record, language, style, cfg.image_size, cfg.noise, rng)
        write_frames(folder / record["name"], frames)


# -------------------------------------------------------------------------------------- cache
def config_hash(cfg: SyntheticConfig) -> str:
    """Short hash of everything that changes the generated data (not where it is cached)."""
    content = _generated_settings(cfg)
    content.pop("cache_dir")
    content["generator_version"] = GENERATOR_VERSION
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]


def cache_root(cfg: SyntheticConfig) -> Path:
    """``<cache_dir>/<config hash>``; ``${oc.env:...}`` in a plain dataclass is resolved here."""
    cache_dir = cfg.cache_dir
    if "${" in cache_dir:
        cache_dir = OmegaConf.create({"value": cache_dir}).value
    return Path(os.path.expanduser(cache_dir)) / config_hash(cfg)


@contextlib.contextmanager
def locked_file(path: Path) -> Iterator[bool]:
    """Exclusive file lock (POSIX); yields False where locking is unavailable."""
    try:
        import fcntl
    except ImportError:  # no flock: the atomic rename alone keeps the cache consistent
        yield False
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_atomically(final: Path, build, may_clean_stale: bool) -> None:
    """Run ``build(tmp)`` in a fresh temporary folder beside ``final``, then rename it in place.

    A concurrent builder whose folder was renamed first wins (possible only without the file
    lock): this one is discarded rather than replacing a dataset another process may be reading.
    """
    if may_clean_stale:  # under the lock nobody else is building: leftovers are from a crash
        for stale in final.parent.glob(f".{final.name}.*"):
            if is_temporary(stale.name):
                log.warning("removing stale temporary folder %s", stale)
                shutil.rmtree(stale, ignore_errors=True)
    try:
        with atomic_directory(final, replace=False) as tmp:
            build(tmp)
    except OSError:
        if not final.is_dir():  # a rename lost to a concurrent builder is fine; else re-raise
            raise


def ensure_synthetic(cfg: SyntheticConfig, modality: Modality) -> Path:
    """The root of the synthetic dataset for ``cfg``, generated on first use (see module doc)."""
    cfg = as_synthetic_config(cfg)
    modality = Modality(modality)
    root = cache_root(cfg)
    frames_needed = modality is Modality.frames

    def complete() -> bool:
        return (root / META).is_file() and (not frames_needed or (root / "frames").is_dir())

    if complete():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with locked_file(root.parent / f".{root.name}.lock") as locked:
        if not (root / META).is_file():
            if root.exists():
                raise DataError(
                    f"{root} exists but has no {META}: not a finished synthetic dataset "
                    "(delete the folder to regenerate it)"
                )
            start = time.perf_counter()
            build_atomically(root, lambda tmp: _generate_dataset(cfg, tmp), locked)
            log.info("synthetic dataset generated in %.1fs: %s", time.perf_counter() - start, root)
        if frames_needed and not (root / "frames").is_dir():
            start = time.perf_counter()
            build = lambda tmp: _generate_frames(cfg, root, tmp)  # noqa: E731
            build_atomically(root / "frames", build, locked)
            log.info("synthetic frames rendered in %.1fs: %s", time.perf_counter() - start, root)
    return root
