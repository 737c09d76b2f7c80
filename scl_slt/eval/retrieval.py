"""Video<->text retrieval metrics: R@1/5/10 and median rank from an all-pairs similarity matrix.

Alignment quality shown directly (as SAN evaluates hard negatives): every video of a split
queries all its texts (video->text) and every text all videos (text->video), scored with the
same similarity function as training (``score_all_pairs``).

Rank of a query = 1 + the number of *non-positive* candidates scoring at least as high as its
best positive. A tie with a negative therefore counts against the query (pessimistic), so a
model that gives every pair the same score gets rank N, not 1.

Positives: by default the diagonal (video i and text i are the one correct pair; a square
matrix), the standard protocol. With duplicate target sentences (CSL-Daily: 18,400 clips but
6,581 distinct sentences) an identical sentence is then a "negative" that scores the same as the
true one, so ``positives=identical_text_positives(texts)`` counts any text identical to the
true one (and, for text->video, any video whose text is identical) as a hit instead. R@K are
percentages.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..config import SimilarityMethod
from ..models.all_pairs import TokenSet, score_all_pairs

log = logging.getLogger(__name__)

RECALL_AT = (1, 5, 10)
_BLOCK_ELEMENTS = 1 << 22


def identical_text_positives(texts: Sequence[str]) -> np.ndarray:
    """(N, N) bool: ``[i, j]`` when the target sentences of sample i and j are identical."""
    codes = np.unique(np.asarray(list(texts), dtype=object), return_inverse=True)[1]
    return codes[:, None] == codes[None, :]


def query_ranks(sim: np.ndarray, positives: np.ndarray | None = None) -> np.ndarray:
    """(rows,) rank of each row query's best positive among the columns (1 = top).

    ``positives`` (rows, cols) bool, default the diagonal. Processed in row blocks, so ``sim``
    may be a memory map.
    """
    rows, cols = sim.shape
    if positives is None and rows != cols:
        raise ValueError(f"retrieval: a {rows} x {cols} matrix needs explicit positives")
    if positives is not None and positives.shape != sim.shape:
        raise ValueError(f"retrieval: positives {positives.shape} do not match sim {sim.shape}")
    ranks = np.empty(rows, dtype=np.int64)
    step = max(1, _BLOCK_ELEMENTS // max(1, cols))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        block = np.asarray(sim[r0:r1], dtype=np.float64)  # (b, cols)
        if not np.isfinite(block).all():
            raise ValueError(f"retrieval: non-finite similarity in rows {r0}:{r1}")
        if positives is None:
            pos = np.zeros(block.shape, dtype=bool)
            pos[np.arange(r1 - r0), np.arange(r0, r1)] = True
        else:
            pos = np.asarray(positives[r0:r1], dtype=bool)
        if not pos.any(axis=1).all():
            bad = r0 + int(np.flatnonzero(~pos.any(axis=1))[0])
            raise ValueError(f"retrieval: query {bad} has no positive")
        best = np.where(pos, block, -np.inf).max(axis=1)  # (b,)
        ranks[r0:r1] = 1 + np.count_nonzero(~pos & (block >= best[:, None]), axis=1)
    return ranks


def _summary(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    out = {f"{prefix}_r{k}": float(100.0 * np.mean(ranks <= k)) for k in RECALL_AT}
    out[f"{prefix}_medr"] = float(np.median(ranks))
    out[f"{prefix}_meanr"] = float(np.mean(ranks))
    return out


def retrieval_metrics(sim: np.ndarray, positives: np.ndarray | None = None) -> dict[str, Any]:
    """R@1/5/10 (percent), median and mean rank, both directions.

    ``sim`` (N videos x N texts); ``positives`` (N videos x N texts) bool marks every correct
    pair, default the diagonal (see the module docstring). Keys: ``v2t_r1``, ``v2t_r5``,
    ``v2t_r10``, ``v2t_medr``, ``v2t_meanr``, the same with ``t2v_``, and ``num_queries``.
    """
    sim = np.asarray(sim) if not isinstance(sim, np.ndarray) else sim
    if sim.ndim != 2:
        raise ValueError(f"retrieval: sim must be 2-D (videos x texts), got {sim.shape}")
    v2t = query_ranks(sim, positives)
    t2v = query_ranks(sim.T, None if positives is None else np.asarray(positives).T)
    return {
        **_summary(v2t, "v2t"),
        **_summary(t2v, "t2v"),
        "num_queries": {"videos": int(sim.shape[0]), "texts": int(sim.shape[1])},
    }


def retrieval_from_features(
    video: TokenSet,
    text: TokenSet,
    method: SimilarityMethod | str,
    tau: float,
    texts: Sequence[str] | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Retrieval metrics of token features scored with ``score_all_pairs`` (N x N, fp32).

    ``texts``: when given, identical sentences count as hits (``identical_text_positives``);
    otherwise only the true pair does.
    """
    if len(video) != len(text):
        raise ValueError(f"retrieval: {len(video)} videos but {len(text)} texts")
    if texts is not None and len(texts) != len(video):
        raise ValueError(f"retrieval: {len(texts)} sentences for {len(video)} samples")
    sim = score_all_pairs(video, text, method, tau, device=device)
    positives = None if texts is None else identical_text_positives(texts)
    return retrieval_metrics(sim, positives)
