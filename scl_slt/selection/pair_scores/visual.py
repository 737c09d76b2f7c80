"""``visual_curriculum`` pair scores: the quantile curriculum (``curriculum.py``) fed with the
visual similarity of two *different* videos in a reference run's snapshot. Each sample's projected
visual tokens (the similarity head's output the contrastive loss sees) are mean-pooled and
L2-normalised; score = cosine. Video-video, so the matrix is symmetric. Higher = more similar =
harder negative.

Not SAN: this was ``visual_confusable`` before SAN was implemented as its own strategy
(``selection=san``, ``hard_negatives.py``). Here the space is the projection rather than the sign
embedding, pairs of videos with identical targets keep their (typically high) score, and the
curriculum's schedule decides how hard a batch is instead of mining each anchor's negatives.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..tracker import Snapshot, is_complete_snapshot, names_hash, read_snapshot, snapshots_dir
from .score_file import gram_blocks, write_score_file


def resolve_snapshot(path: str | os.PathLike) -> Path:
    """A snapshot folder itself, or the latest complete one in a snapshots/ or run folder."""
    path = Path(path).expanduser()
    if is_complete_snapshot(path):
        return path
    for folder in (path, snapshots_dir(path)):
        if folder.is_dir():
            found = [p for p in folder.iterdir() if is_complete_snapshot(p)]
            if found:
                return max(found, key=lambda p: int(p.name.split("-", 1)[1]))
    raise FileNotFoundError(
        f"selection.snapshot: no complete snapshot at {path} (give an epoch-NNNN snapshot "
        "folder, a run's snapshots/ folder or the run folder)"
    )


def pooled_video_embeddings(snapshot: Snapshot, chunk_samples: int = 4096) -> np.ndarray:
    """(N, d) float32: each sample's visual tokens mean-pooled, then L2-normalised.

    Read from the memory map ``chunk_samples`` samples at a time (float32 copies of one chunk).
    """
    lengths = np.asarray(snapshot.video_lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    pooled = np.empty((len(lengths), snapshot.video_features.shape[1]), dtype=np.float64)
    for s0 in range(0, len(lengths), chunk_samples):
        s1 = min(len(lengths), s0 + chunk_samples)
        lo = int(ends[s0 - 1]) if s0 else 0
        feats = np.asarray(snapshot.video_features[lo : ends[s1 - 1]], dtype=np.float32)
        starts = np.concatenate([[0], ends[s0 : s1 - 1] - lo])
        pooled[s0:s1] = np.add.reduceat(feats, starts, axis=0) / lengths[s0:s1, None]
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


def visual_curriculum_scores(snapshot_dir: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """N x N fp16 cosine of the snapshot's mean-pooled video embeddings (video i vs video j).

    Higher = more visually confusable = harder negative. ``snapshot_dir`` is resolved by
    ``resolve_snapshot`` (the latest snapshot when given a run or snapshots/ folder).
    """
    snapshot = read_snapshot(resolve_snapshot(snapshot_dir))
    vectors = pooled_video_embeddings(snapshot)
    row_block, rows = gram_blocks(vectors)
    record = {"strategy": "visual_curriculum", **visual_curriculum_key(snapshot)}
    return write_score_file(out_path, snapshot.num_samples, row_block, rows, record)


def visual_curriculum_key(snapshot: Snapshot) -> dict[str, Any]:
    """What a visual_curriculum score file depends on (its cache key)."""
    return {
        "method": "cosine of mean-pooled projected visual tokens",
        "snapshot": str(snapshot.path.resolve()),
        "snapshot_epoch": snapshot.epoch,
        "snapshot_created": snapshot.created,
        "names_sha256": names_hash(snapshot.names),
    }
