"""Video<->text retrieval metrics from an all-pairs similarity matrix, under a stated protocol.

Every video of a split queries the split's texts (video->text) and every text its videos
(text->video), scored with the same similarity function as training (``score_all_pairs``).
Sample i's video and text are the true pair. R@K are percentages.

Rank of a query = 1 + the number of *negative* candidates scoring at least as high as its best
positive. A tie with a negative counts against the query (pessimistic), so a model that gives
every pair the same score gets rank N, not 1.

The protocol (``RetrievalConfig``, written with the figures as ``retrieval_protocol``):

* **Duplicate targets** (``retrieval.duplicates``). CSL-Daily has 18,400 training clips but
  6,581 distinct sentences, and the synthetic data repeats sentences too; a candidate whose
  sentence is identical to the query's true sentence counts as

  - ``hit``: a correct answer (positives = every identical-sentence pair);
  - ``miss``: an ordinary negative (only the true pair is correct). For video->text the
    identical texts score exactly like the true one, so every such tie costs a rank;
  - ``exclude`` (default): removed from the query's candidates, other than the true one. Neither
    rewards a look-alike nor punishes a tie that no text-side model can break.

* **Coarse-grained** retrieval: all candidates of the split (under the duplicates rule). Keys
  ``v2t_r1/r5/r10/medr/meanr`` and the same with ``t2v_``.
* **Fine-grained** retrieval (SAN's hard split): query i's candidates are the true item i plus
  the ``fine_k`` samples j whose sentence *differs* from sentence i and has the highest TF-IDF
  cosine to it (``selection.pair_scores.text.tfidf_vectors``: words for German, character 1-2-grams
  for Chinese), ties broken by the lower index, cosines compared rounded to 1e-9. The same sample
  set serves both directions (video i ranks texts j, text i ranks videos j). Identical sentences
  are never candidates, so the figures do not depend on ``duplicates``. A sentence repeated in the
  split may fill several of the k places. When some query has fewer than ``fine_k`` different
  sentences in the split, every query gets that smaller number (``fine_k_used``). Keys
  ``fine_v2t_r1``, ``fine_v2t_r5`` (when ``fine_k_used >= 5``), ``fine_v2t_medr``, same ``t2v``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..config import DuplicateTargets, RetrievalConfig, SimilarityMethod
from ..models.all_pairs import TokenSet, score_all_pairs
from ..selection.pair_scores.text import NEAR_IDENTICAL_TFIDF, tfidf_vectors

log = logging.getLogger(__name__)

RECALL_AT = (1, 5, 10)
FINE_RECALL_AT = (1, 5)
_BLOCK_ELEMENTS = 1 << 22
FINE_RULE = (
    "candidates: the true item + the fine_k samples with a different sentence and the highest "
    "TF-IDF cosine to the query's sentence (ties: lower index)"
)


def sentence_codes(texts: Sequence[str]) -> np.ndarray:
    """(N,) int64: equal codes for identical sentences."""
    return np.unique(np.asarray(list(texts), dtype=object), return_inverse=True)[1].astype(np.int64)


def identical_text_positives(texts: Sequence[str]) -> np.ndarray:
    """(N, N) bool: ``[i, j]`` when the target sentences of sample i and j are identical."""
    codes = sentence_codes(texts)
    return codes[:, None] == codes[None, :]


def _block_ranks(block: np.ndarray, pos: np.ndarray, excluded: np.ndarray | None, r0: int):
    """Ranks of a block of query rows: 1 + negatives (not positive, not excluded) >= best."""
    if not np.isfinite(block).all():
        raise ValueError(f"retrieval: non-finite similarity in rows {r0}:{r0 + len(block)}")
    if not pos.any(axis=1).all():
        bad = r0 + int(np.flatnonzero(~pos.any(axis=1))[0])
        raise ValueError(f"retrieval: query {bad} has no positive")
    negative = ~pos if excluded is None else ~pos & ~excluded
    best = np.where(pos, block, -np.inf).max(axis=1)  # (b,)
    return 1 + np.count_nonzero(negative & (block >= best[:, None]), axis=1)


def _row_blocks(sim: np.ndarray):
    rows, cols = sim.shape
    step = max(1, _BLOCK_ELEMENTS // max(1, cols))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        yield r0, r1, np.asarray(sim[r0:r1], dtype=np.float64)  # (b, cols)


def _diagonal(r0: int, r1: int, cols: int) -> np.ndarray:
    pos = np.zeros((r1 - r0, cols), dtype=bool)
    pos[np.arange(r1 - r0), np.arange(r0, r1)] = True
    return pos


def query_ranks(
    sim: np.ndarray, positives: np.ndarray | None = None, excluded: np.ndarray | None = None
) -> np.ndarray:
    """(rows,) rank of each row query's best positive among the columns (1 = top).

    ``positives`` (rows, cols) bool, default the diagonal; ``excluded`` (rows, cols) bool marks
    candidates removed from a query's list (never a positive). Processed in row blocks, so
    ``sim`` may be a memory map.
    """
    rows, cols = sim.shape
    if positives is None and rows != cols:
        raise ValueError(f"retrieval: a {rows} x {cols} matrix needs explicit positives")
    for name, mask in (("positives", positives), ("excluded", excluded)):
        if mask is not None and mask.shape != sim.shape:
            raise ValueError(f"retrieval: {name} {mask.shape} do not match sim {sim.shape}")
    ranks = np.empty(rows, dtype=np.int64)
    for r0, r1, block in _row_blocks(sim):
        pos = _diagonal(r0, r1, cols) if positives is None else np.asarray(positives[r0:r1], bool)
        out = None if excluded is None else np.asarray(excluded[r0:r1], dtype=bool) & ~pos
        ranks[r0:r1] = _block_ranks(block, pos, out, r0)
    return ranks


def coarse_ranks(sim: np.ndarray, codes: np.ndarray, duplicates: DuplicateTargets | str):
    """(N,) ranks of the row queries of a square ``sim`` over all candidates, identical
    sentences (equal ``codes``) treated by ``duplicates`` (module docstring). The same-sentence
    masks are built per row block, never N x N."""
    mode = DuplicateTargets(duplicates)
    n = len(codes)
    if sim.shape != (n, n):
        raise ValueError(f"retrieval: sim {sim.shape} for {n} sentences")
    ranks = np.empty(n, dtype=np.int64)
    for r0, r1, block in _row_blocks(sim):
        diagonal = _diagonal(r0, r1, n)
        same = codes[r0:r1, None] == codes[None, :]
        if mode is DuplicateTargets.hit:
            ranks[r0:r1] = _block_ranks(block, same, None, r0)
        elif mode is DuplicateTargets.miss:
            ranks[r0:r1] = _block_ranks(block, diagonal, None, r0)
        else:
            ranks[r0:r1] = _block_ranks(block, diagonal, same & ~diagonal, r0)
    return ranks


def fine_candidates(texts: Sequence[str], language: str, k: int) -> tuple[np.ndarray, dict]:
    """(N, k_used) int64 fine-grained candidates of each query (module docstring) and figures
    describing them: ``fine_k_used``, the mean TF-IDF cosine of a candidate to its query and the
    share at least ``NEAR_IDENTICAL_TFIDF``. The N x N cosine is computed by a sparse product in
    row blocks; only each block's top k are kept."""
    if k < 1:
        raise ValueError(f"retrieval.fine_k: must be >= 1, got {k}")
    codes = sentence_codes(texts)
    n = len(codes)
    k_used = min(k, n - int(np.bincount(codes).max()))
    if k_used < 1:
        log.warning("fine-grained retrieval: the split holds one sentence only, no figures")
        return np.empty((n, 0), dtype=np.int64), {"fine_k_used": 0}
    if k_used < k:
        log.warning("fine-grained retrieval: only %d different sentences per query", k_used)
    tfidf = tfidf_vectors(texts, language)
    crow, col = torch.from_numpy(tfidf.crow), torch.from_numpy(tfidf.col)
    val = torch.from_numpy(tfidf.val.astype(np.float64))
    with warnings.catch_warnings():  # torch flags sparse CSR as beta; the product is exact
        warnings.simplefilter("ignore", UserWarning)
        csr = torch.sparse_csr_tensor(crow, col, val, size=tfidf.shape, check_invariants=True)
    step = max(1, _BLOCK_ELEMENTS // max(n, tfidf.shape[1]))
    chosen = np.empty((n, k_used), dtype=np.int64)
    cosines = np.empty((n, k_used), dtype=np.float64)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        queries = torch.from_numpy(tfidf.dense_rows(r0, r1).astype(np.float64))  # (b, V)
        cos = torch.matmul(csr, queries.T).T.numpy()  # (b, N)
        cos = np.where(codes[r0:r1, None] == codes[None, :], -np.inf, np.round(cos, 9))
        order = np.argsort(-cos, axis=1, kind="stable")[:, :k_used]  # ties: lower index first
        chosen[r0:r1] = order
        cosines[r0:r1] = np.take_along_axis(cos, order, axis=1)
    stats = {
        "fine_k_used": int(k_used),
        "fine_candidate_tfidf_mean": float(cosines.mean()),
        "fine_candidates_near_identical": float(np.mean(cosines >= NEAR_IDENTICAL_TFIDF)),
    }
    return chosen, stats


def fine_ranks(sim: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(N,) rank of each row query's true item (the diagonal) among itself and its
    ``candidates`` (N, k) columns; a tie counts against the query."""
    n = len(candidates)
    if sim.shape != (n, n):
        raise ValueError(f"retrieval: sim {sim.shape} for {n} queries' candidates")
    ranks = np.empty(n, dtype=np.int64)
    for r0, r1, block in _row_blocks(sim):
        if not np.isfinite(block).all():
            raise ValueError(f"retrieval: non-finite similarity in rows {r0}:{r1}")
        own = block[np.arange(r1 - r0), np.arange(r0, r1)]  # (b,)
        others = np.take_along_axis(block, candidates[r0:r1], axis=1)  # (b, k)
        ranks[r0:r1] = 1 + np.count_nonzero(others >= own[:, None], axis=1)
    return ranks


def _summary(ranks: np.ndarray, prefix: str, recall_at=RECALL_AT, meanr=True) -> dict[str, float]:
    out = {f"{prefix}_r{k}": float(100.0 * np.mean(ranks <= k)) for k in recall_at}
    out[f"{prefix}_medr"] = float(np.median(ranks))
    if meanr:
        out[f"{prefix}_meanr"] = float(np.mean(ranks))
    return out


def retrieval_metrics(
    sim: np.ndarray, positives: np.ndarray | None = None, excluded: np.ndarray | None = None
) -> dict[str, Any]:
    """R@1/5/10 (percent), median and mean rank, both directions, with explicit masks.

    ``sim`` (N videos x N texts); ``positives`` (N videos x N texts) bool marks every correct
    pair, default the diagonal; ``excluded`` (same orientation) marks pairs removed from both
    directions' candidates. Keys: ``v2t_r1``, ``v2t_r5``, ``v2t_r10``, ``v2t_medr``,
    ``v2t_meanr``, the same with ``t2v_``, and ``num_queries``.
    """
    sim = np.asarray(sim) if not isinstance(sim, np.ndarray) else sim
    if sim.ndim != 2:
        raise ValueError(f"retrieval: sim must be 2-D (videos x texts), got {sim.shape}")
    v2t = query_ranks(sim, positives, excluded)
    t2v = query_ranks(
        sim.T,
        None if positives is None else np.asarray(positives).T,
        None if excluded is None else np.asarray(excluded).T,
    )
    return {
        **_summary(v2t, "v2t"),
        **_summary(t2v, "t2v"),
        "num_queries": {"videos": int(sim.shape[0]), "texts": int(sim.shape[1])},
    }


def protocol_metrics(
    sim: np.ndarray, texts: Sequence[str], protocol: RetrievalConfig, language: str
) -> dict[str, Any]:
    """Coarse- and fine-grained retrieval of a square ``sim`` (video i, text i = sample i) under
    ``protocol``; ``retrieval_protocol`` holds the settings and the fine candidates' figures."""
    sim = np.asarray(sim)
    n = len(texts)
    if sim.shape != (n, n):
        raise ValueError(f"retrieval: sim {sim.shape} for {n} sentences")
    duplicates = DuplicateTargets(protocol.duplicates)
    codes = sentence_codes(texts)
    out: dict[str, Any] = {
        **_summary(coarse_ranks(sim, codes, duplicates), "v2t"),
        **_summary(coarse_ranks(sim.T, codes, duplicates), "t2v"),
    }
    candidates, stats = fine_candidates(texts, language, protocol.fine_k)
    recall_at = tuple(k for k in FINE_RECALL_AT if k <= stats["fine_k_used"])
    for prefix, matrix in (("fine_v2t", sim), ("fine_t2v", sim.T)):
        if candidates.shape[1]:  # else the split holds a single sentence (warned)
            out.update(_summary(fine_ranks(matrix, candidates), prefix, recall_at, meanr=False))
    out["retrieval_protocol"] = {
        "duplicates": duplicates.value,
        "fine_k": int(protocol.fine_k),
        "fine_rule": FINE_RULE,
        "language": language,
        # queries whose true sentence occurs elsewhere in the split (where duplicates matters)
        "duplicate_queries": int(np.count_nonzero(np.bincount(codes)[codes] > 1)),
        **stats,
    }
    return out


def retrieval_from_features(
    video: TokenSet,
    text: TokenSet,
    method: SimilarityMethod | str,
    tau: float,
    texts: Sequence[str],
    protocol: RetrievalConfig,
    language: str,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """``protocol_metrics`` of token features scored with ``score_all_pairs`` (N x N, fp32)."""
    if len(video) != len(text):
        raise ValueError(f"retrieval: {len(video)} videos but {len(text)} texts")
    if len(texts) != len(video):
        raise ValueError(f"retrieval: {len(texts)} sentences for {len(video)} samples")
    sim = score_all_pairs(video, text, method, tau, device=device)
    return protocol_metrics(sim, texts, protocol, language)
