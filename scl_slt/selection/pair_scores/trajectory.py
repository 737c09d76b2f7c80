"""Trajectory pair scores of a tracked reference run (method §4.2-4.3): ``score_run``.

1. every complete snapshot under ``<run_dir>/snapshots/`` is loaded; snapshots of different
   samples or configs are refused;
2. each snapshot's N x N similarity ``S^k`` is computed with ``score_all_pairs`` (the function the
   loss uses, at the run's similarity method and tau read from ``<run_dir>/config.yaml``; without
   that file or key the defaults of ``SimilarityConfig`` apply: cico, tau 0.07) into
   ``scores/S-epoch-NNNN.npy`` (fp16), completed by ``S-epoch-NNNN.json``; a finished one is
   reused, so an interrupted scoring resumes where it stopped;
3. ``pair_scores.npy`` (N x N fp16, ``delta[i, j]`` for video i and text j, dataset order,
   memory-mappable) and ``pair_scores.json`` (names hash, N, snapshots, method, threshold, and
   ``window``: the snapshots δ uses, ``trajectory_window.trajectory_window`` of ``delta``,
   ``start_epoch`` and ``span_snapshots``, checked before any scoring);
4. the H/L categories (the window's first against its last snapshot), the first snapshot's spread
   (``trajectory_report.first_snapshot_spread``: a WARNING when it has next to none) and
   ``trajectory/summary.json`` + ``trajectory/categories.png``. Pair sets
   whose categories are compared with all negatives: duplicate targets (from the snapshot texts)
   and, on the synthetic data, pairs differing only by confusable glosses.

Disk: each S^k is N^2 x 2 bytes (PHOENIX14T train: 101 MB; CSL-Daily: 677 MB).
"""

from __future__ import annotations

import json
import logging
import os
import time
from enum import Enum
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ...config import ConfigError, DataConfig, SimilarityConfig, SimilarityMethod
from ...data.labels import labels_path, read_labels
from ...data.synthetic.generate import ensure_synthetic
from ...models import all_pairs
from ...rundir.atomic import write_json_atomic
from ...rundir.layout import CONFIG_FILE, read_run_config
from ..tracker import Snapshot, names_hash, snapshots_dir
from ..trajectory import (
    ThresholdMode,
    categorize,
    category_enrichment,
    confusable_pairs,
    duplicate_target_pairs,
    load_snapshots,
    trajectory_delta,
)
from ..trajectory_report import first_snapshot_spread, write_report
from ..trajectory_window import DeltaMethod, trajectory_window
from .score_file import new_score_matrix, record_path

log = logging.getLogger(__name__)

SCORES_DIRNAME = "scores"  # <run_dir>/scores/S-epoch-NNNN.npy
PAIR_SCORES = "pair_scores.npy"  # <run_dir>/pair_scores.npy


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"

    def dtype(self, device: str | torch.device) -> torch.dtype:
        """The products' dtype on ``device`` (auto: bf16 on CUDA, fp32 elsewhere)."""
        if self is Precision.auto:
            return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        return torch.bfloat16 if self is Precision.bf16 else torch.float32


# ------------------------------------------------------------------------- the run's config
def scored_run_config(run_dir: Path) -> DictConfig | None:
    """The run's saved config (``rundir.layout.read_run_config``, the one reader) as an Omega
    config, or None when the run has no ``config.yaml`` (scoring then uses the defaults)."""
    try:
        return OmegaConf.create(read_run_config(run_dir))
    except FileNotFoundError:
        return None


def similarity_settings(
    run_config: DictConfig | None, path: Path
) -> tuple[SimilarityMethod, float]:
    """The run's similarity method and tau (SimilarityConfig defaults if absent); errors name
    ``path``, the config file."""
    defaults = SimilarityConfig()
    if run_config is None:
        log.warning(
            "%s not found: scoring with the default similarity (%s, tau=%s)",
            path,
            defaults.method.value,
            defaults.tau,
        )
        return defaults.method, defaults.tau
    method = OmegaConf.select(run_config, "model.similarity.method", default=None)
    tau = OmegaConf.select(run_config, "model.similarity.tau", default=None)
    if method is None or tau is None:
        log.warning("%s has no model.similarity.method/tau: using the defaults", path)
    try:
        method = SimilarityMethod(defaults.method if method is None else method)
    except ValueError as e:
        raise ConfigError(f"{path}: model.similarity.method: unknown {method!r}") from e
    tau = float(defaults.tau if tau is None else tau)
    if tau <= 0:
        raise ConfigError(f"{path}: model.similarity.tau must be positive, got {tau}")
    return method, tau


def synthetic_confusable_pairs(
    run_config: DictConfig | None, snapshot: Snapshot
) -> list[tuple[int, int]] | None:
    """Confusable-gloss pairs when the run used the synthetic data (its meta lists the twins)."""
    data = None if run_config is None else OmegaConf.select(run_config, "data", default=None)
    if data is None or OmegaConf.select(data, "layout", default=None) != "synthetic":
        return None
    data_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), data))
    root = ensure_synthetic(data_cfg.synthetic, data_cfg.modality)
    meta_path = Path(root) / "meta.json"
    meta = json.loads(meta_path.read_text())
    if "confusable_pairs" not in meta:
        raise KeyError(f"{meta_path}: no 'confusable_pairs' entry")
    records = read_labels(labels_path(root, "train"))
    by_name = {rec.get("name", name): rec for name, rec in records.items()}
    missing = [n for n in snapshot.names if n not in by_name]
    if missing:
        log.warning(
            "synthetic labels lack %d snapshot samples (e.g. %s): no confusable set",
            len(missing),
            missing[0],
        )
        return None
    glosses = [by_name[n]["gloss"].split() for n in snapshot.names]
    twins = [tuple(p) for p in meta["confusable_pairs"]]
    return confusable_pairs(glosses, snapshot.texts, twins)


# --------------------------------------------------------------------------------- scoring
def _token_set(features: np.ndarray, lengths: np.ndarray) -> all_pairs.TokenSet:
    # A copy in memory: the snapshot's read-only memmap cannot back a torch tensor.
    return all_pairs.TokenSet(np.array(features), np.array(lengths))


def score_snapshot(
    snapshot: Snapshot,
    scores_dir: Path,
    method: SimilarityMethod,
    tau: float,
    device: str | torch.device | None = None,
    precision: Precision | str = Precision.auto,
) -> Path:
    """``S^k`` of one snapshot as an fp16 .npy, reused when a matching finished one exists."""
    npy = scores_dir / f"S-{snapshot.path.name}.npy"
    marker = record_path(npy)
    key = {
        "snapshot": snapshot.path.name,
        "epoch": snapshot.epoch,
        "snapshot_created": snapshot.created,
        "fingerprint": snapshot.fingerprint,
        "names_sha256": names_hash(snapshot.names),
        "method": method.value,
        "tau": tau,
        "device": torch.device(device).type if device is not None else "cpu",
    }
    dtype = Precision(precision).dtype(device or "cpu")
    if dtype != Precision.auto.dtype(device or "cpu"):  # keys of default runs stay as they were
        key["precision"] = str(dtype).removeprefix("torch.")
    if npy.is_file() and marker.is_file():
        try:
            done = json.loads(marker.read_text()).get("key")
        except (OSError, ValueError):
            done = None
        if done == key:
            log.info("epoch %d: reusing %s", snapshot.epoch, npy)
            return npy
        log.info(
            "epoch %d: %s was computed for another snapshot or setting: redoing",
            snapshot.epoch,
            npy,
        )
    n = snapshot.num_samples
    start = time.time()
    with new_score_matrix(npy, n) as out:
        all_pairs.score_all_pairs(
            _token_set(snapshot.video_features, snapshot.video_lengths),
            _token_set(snapshot.text_features, snapshot.text_lengths),
            method=method,
            tau=tau,
            device=device,
            dtype=dtype,
            out=out,
        )
        marker.unlink(missing_ok=True)  # no stale marker beside the new scores
    write_json_atomic(marker, {"key": key, "seconds": round(time.time() - start, 2)})
    log.info(
        "epoch %d: scored %d x %d pairs in %.1fs -> %s",
        snapshot.epoch,
        n,
        n,
        time.time() - start,
        npy,
    )
    return npy


def _open(paths: list[Path]):
    for path in paths:
        yield np.load(path, mmap_mode="r")


def score_run(
    run_dir: str | os.PathLike,
    delta: DeltaMethod | str = DeltaMethod.endpoints,
    threshold: ThresholdMode | str = ThresholdMode.last_median,
    device: str | torch.device | None = None,
    precision: Precision | str = Precision.auto,
    start_epoch: float = 0,
    span_snapshots: int | None = None,
) -> Path:
    """Score every snapshot of a tracked run and write pair scores and the report.

    ``start_epoch``: the first snapshot used is the earliest at or after it (every delta method
    and the categories). ``span_snapshots``: K of ``delta=span`` (its interval is the run's
    ``tracker.interval``, else the spacing of the first two snapshots). Returns the path of
    ``pair_scores.npy``. Resumable: finished snapshot scores are reused.
    """
    run_dir = Path(run_dir)
    delta, threshold = DeltaMethod(delta), ThresholdMode(threshold)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    snapshots = load_snapshots(snapshots_dir(run_dir))
    if len(snapshots) < 2:
        raise ValueError(
            f"{snapshots_dir(run_dir)} holds {len(snapshots)} complete snapshot(s); a trajectory "
            "needs at least two (the run must be tracked past its first interval)"
        )
    run_config = scored_run_config(run_dir)
    method, tau = similarity_settings(run_config, run_dir / CONFIG_FILE)
    epochs = [s.epoch for s in snapshots]
    interval = None
    if run_config is not None:
        interval = OmegaConf.select(run_config, "tracker.interval", default=None)
    window = trajectory_window(epochs, delta, start_epoch, span_snapshots, interval)
    n = snapshots[0].num_samples
    log.info(
        "scoring %d snapshots (epochs %s) of %d samples: %s, tau=%s",
        len(snapshots),
        epochs,
        n,
        method.value,
        tau,
    )
    scores_dir = run_dir / SCORES_DIRNAME
    scores_dir.mkdir(parents=True, exist_ok=True)
    s_paths = [score_snapshot(s, scores_dir, method, tau, device, precision) for s in snapshots]

    pair_path = run_dir / PAIR_SCORES
    with new_score_matrix(pair_path, n) as out:
        trajectory_delta(_open(s_paths), window, out=out)
    snapshot_info = [
        {"epoch": s.epoch, "snapshot": str(s.path), "scores": str(p)}
        for s, p in zip(snapshots, s_paths)
    ]
    write_json_atomic(
        record_path(pair_path),
        {
            "file": PAIR_SCORES,
            "layout": "delta[i, j] for video i and text j of the train split, dataset order",
            "dtype": "float16",
            "num_samples": n,
            "names_sha256": names_hash(snapshots[0].names),
            "names_hash_rule": "sha256 of the sample names joined by newlines",
            "fingerprint": snapshots[0].fingerprint,
            "snapshots": snapshot_info,
            "delta": delta.value,
            "window": window.record(),
            "threshold": threshold.value,
            "similarity": {"method": method.value, "tau": tau},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    log.info("pair scores -> %s", pair_path)

    S = [np.load(p, mmap_mode="r") for p in s_paths]
    first, last = S[window.first], S[window.last]
    categories = categorize(first, last, threshold)
    spread = first_snapshot_spread(
        first, last, window.first_epoch, window.last_epoch, categories=categories
    )
    pair_sets = {"duplicate_target": duplicate_target_pairs(snapshots[0].texts)}
    confusable = synthetic_confusable_pairs(run_config, snapshots[0])
    if confusable is not None:
        pair_sets["confusable_gloss"] = confusable
    enrichment = category_enrichment(categories, pair_sets)
    write_report(
        run_dir,
        S,
        epochs,
        categories,
        delta=np.load(pair_path, mmap_mode="r"),
        enrichment=enrichment,
        info={
            "delta": delta.value,
            "window": window.record(),
            "first_snapshot_spread": spread,
            "similarity": {"method": method.value, "tau": tau},
            "snapshots": snapshot_info,
            "pair_scores": str(pair_path),
        },
    )
    return pair_path
