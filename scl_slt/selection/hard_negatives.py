"""SAN (``selection=san``): per-anchor hard-negative mining into the batch, in the sign-embedding
space, among semantically distinct pairs.

SAN (Sign-Aware Hard Negative Mining, ``../shared/papers/san-...``) makes the in-batch negatives of
a clip the clips that *look* most like it but *mean* something else. Inputs: each training clip's
sign embedding (``pair_scores/sign_embedding.py``: the chosen checkpoint's ``sign_features``,
mean-pooled over valid time steps and L2-normalised, so a dot product is the cosine) and its
target sentence.

Allowed pairs (static, fixed for the run): two clips are never anchor and mined negative of each
other when their targets are the same string (a false negative: the loss would push a sentence
away from itself), nor, with ``exclude_near_identical``, when the TF-IDF cosine of their targets
(``pair_scores/text.py``) is at least ``NEAR_IDENTICAL_TFIDF``.

An epoch (a function of ``(seed, epoch)`` only, the same on every rank):

1. the anchors are taken in the epoch's seeded permutation of the samples, skipping used ones;
2. each anchor brings its ``k`` hardest negatives: the most similar samples that are allowed with
   it, still unused this epoch, and whose target is not already in the batch (so mined negatives
   never share a sentence with each other or with an earlier member); ties go to the lower index;
3. a batch is anchors with their negatives until it holds ``batch_size`` samples (the last anchor
   of a batch brings only as many negatives as fit); every sample is used exactly once.

Finding the k hardest: each sample's top-``candidates`` (M) allowed neighbours are precomputed once
(chunked, never an N x N matrix in memory: rows of ``block_rows(N)``), and an anchor walks its list.
When the list runs out before k negatives are found and the anchor may have allowed candidates
beyond its M, the anchor's similarity to every still-unused sample is computed and the
next-hardest allowed ones are taken: exact, not random, so the mined negatives are always the k
most similar allowed unused ones (late in an epoch most lists are used up: at N = 18,400 and
M = 16, about 750 of the 4,600 anchors of an epoch). Every rank computes the lists itself, with
the same code from the same cached embeddings file. Measured on a shared 2-core CPU at N = 18,400
(CSL-Daily's train texts, random D = 256 embeddings, k = 3, batch 16): the lists in about 6 s
(15 s with ``exclude_near_identical``), an epoch's batches in about 0.4 s (about 2 s).
When no allowed unused sample is left at all (the rest share its target, or targets already in the
batch), the anchor brings fewer negatives and the next anchors fill the batch. The anchors
themselves are drawn as in random batches, so two anchors may share a target, exactly as often as
in shuffled batches (``loss.mask_duplicate_texts`` masks such pairs in the loss).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..config import ConfigError, DataConfig, SelectionConfig
from .pair_scores.score_file import block_rows
from .pair_scores.sign_embedding import prepare_sign_embeddings
from .pair_scores.text import NEAR_IDENTICAL_TFIDF, TfidfMatrix, tfidf_vectors
from .samplers import GlobalBatchSampler, epoch_generator, target_groups

log = logging.getLogger(__name__)


def _text_rows(tfidf: TfidfMatrix, r0: int, r1: int) -> np.ndarray:
    """(r1 - r0, N) float32 TF-IDF cosine of sentences r0:r1 with every sentence."""
    return (tfidf.torch_csr() @ torch.from_numpy(tfidf.dense_rows(r0, r1)).T).T.numpy()


def neighbour_lists(
    vectors: np.ndarray,
    groups: np.ndarray,
    m: int,
    tfidf: TfidfMatrix | None = None,
    threshold: float = NEAR_IDENTICAL_TFIDF,
) -> np.ndarray:
    """(N, m) int64: each sample's ``m`` most similar allowed samples, most similar first (ties:
    lower index first), ``-1`` where fewer than ``m`` are allowed.

    Allowed: a different target group and, when ``tfidf`` is given, a TF-IDF cosine of the targets
    below ``threshold``. Computed in row chunks of at most ``BLOCK_ELEMENTS`` similarities."""
    n = vectors.shape[0]
    out = np.full((n, m), -1, dtype=np.int64)
    width = min(m, n)
    if width == 0:
        return out
    rows = block_rows(n)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        block = vectors[r0:r1] @ vectors.T  # (c, N) float32 cosine
        block[groups[r0:r1, None] == groups[None, :]] = -np.inf  # itself and same targets
        if tfidf is not None:
            block[_text_rows(tfidf, r0, r1) >= threshold] = -np.inf
        vals, cols = (x.numpy() for x in torch.topk(torch.from_numpy(block), width, dim=1))
        # A row whose m-th value is tied with a value outside its top m (or with fewer than m
        # allowed samples) is redone exactly below; the others only need the tie order inside.
        exact = (block >= vals[:, -1:]).sum(axis=1) == width
        exact &= np.isfinite(vals[:, -1])
        rank = np.lexsort((cols, -vals), axis=1) if width > 1 else np.zeros_like(cols)
        out[r0:r1][exact, :width] = np.take_along_axis(cols, rank, axis=1)[exact]
        for r in np.flatnonzero(~exact):
            allowed = np.flatnonzero(np.isfinite(block[r]))
            best = allowed[np.lexsort((allowed, -block[r, allowed]))[:m]]
            out[r0 + r, : best.size] = best
    return out


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def build_san_sampler(
    cfg: SelectionConfig,
    num_samples: int,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    drop_last: bool,
    texts: Sequence[str] | None,
    names: Sequence[str] | None,
    language: str | None,
    run_dir: str | os.PathLike | None,
    data: DataConfig | None,
    device: torch.device | str | None,
) -> HardNegativeBatchSampler:
    """``selection=san``: the checkpoint's sign embeddings of the train split (computed once
    under ``run_dir``, ``pair_scores/sign_embedding.py``) and the train ``texts`` (and their
    TF-IDF rows in ``language`` with ``exclude_near_identical``) into the sampler."""
    if cfg.distinct_targets:
        raise ConfigError(
            "selection.distinct_targets: not available with selection=san (its mined negatives "
            "already have targets distinct from the batch; anchors come in random order, "
            "loss.mask_duplicate_texts masks their duplicates in the loss)"
        )
    if texts is None or len(texts) != num_samples:
        raise ConfigError("selection.name: san needs the train texts (build_batch_sampler(texts=))")
    if cfg.exclude_near_identical and language is None:
        raise ConfigError("selection.exclude_near_identical: needs the data language")
    embeddings = prepare_sign_embeddings(cfg.checkpoint, data, names, device, run_dir)
    tfidf = tfidf_vectors(texts, language) if cfg.exclude_near_identical else None
    started = time.time()
    sampler = HardNegativeBatchSampler(
        embeddings.vectors, texts, batch_size, seed, cfg.hard_negatives_k,
        cfg.hard_negatives_candidates, rank, world_size, drop_last, tfidf,
    )  # fmt: skip
    if rank == 0:
        log.info(
            "pair selection (san): %d anchors' top-%d neighbours in %.1fs (%s, D=%d), k=%d, "
            "near-identical targets %s",
            num_samples, sampler.candidates, time.time() - started,
            embeddings.record.get("checkpoint"), embeddings.vectors.shape[1], sampler.k,
            "excluded" if tfidf is not None else "allowed",
        )  # fmt: skip
    return sampler


class HardNegativeBatchSampler(GlobalBatchSampler):
    """Batches of anchors and their mined hard negatives (``selection=san``; module docstring).

    ``embeddings`` (N, D): L2-normalised sign embeddings in dataset order; ``targets``: the N target
    sentences; ``tfidf``: their TF-IDF rows (``tfidf_vectors``) to also exclude near-identical
    targets, or None. The embeddings' digest is part of the identity a resumed run must share."""

    kind = "san"

    def __init__(
        self,
        embeddings: np.ndarray,
        targets: Sequence[str],
        batch_size: int,
        seed: int,
        k: int = 3,
        candidates: int = 16,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        tfidf: TfidfMatrix | None = None,
    ):
        vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
        super().__init__(vectors.shape[0], batch_size, seed, rank, world_size, drop_last)
        if vectors.ndim != 2 or len(targets) != vectors.shape[0]:
            raise ValueError(
                f"san: embeddings of shape {vectors.shape} for {len(targets)} targets "
                "(need (N, D) with one target per row)"
            )
        if not np.isfinite(vectors).all():
            raise ValueError("san: the sign embeddings hold a non-finite value")
        if k < 1 or candidates < k:
            raise ValueError(f"san: need 1 <= k <= candidates, got k={k}, candidates={candidates}")
        if tfidf is not None and tfidf.shape[0] != vectors.shape[0]:
            raise ValueError(f"san: TF-IDF rows for {tfidf.shape[0]} targets, not {len(targets)}")
        self.vectors = vectors
        self.groups = target_groups(targets)
        self.k = int(k)
        self.candidates = int(candidates)
        self.tfidf = tfidf
        self._csr = tfidf.torch_csr() if tfidf is not None else None
        self.neighbours = neighbour_lists(vectors, self.groups, self.candidates, tfidf)
        self._lists = [[j for j in row if j >= 0] for row in self.neighbours.tolist()]
        self._group_list = self.groups.tolist()
        self._num_groups = int(self.groups.max()) + 1
        self._embedding_digest = _digest(vectors, self.groups)

    def _identity(self) -> dict[str, Any]:
        return {
            **super()._identity(),
            "hard_negatives_k": self.k,
            "hard_negatives_candidates": self.candidates,
            "exclude_near_identical": self.tfidf is not None,
            "embeddings_sha256": self._embedding_digest,
        }

    # ------------------------------------------------------------------------------ mining
    def _beyond_list(
        self, anchor: int, need: int, epoch: _EpochState, taken: set[int]
    ) -> list[int]:
        """The ``need`` most similar allowed samples, unused and of a target not in ``taken``,
        from the anchor's similarity row over the unused samples (its neighbour list is used up)."""
        pool = epoch.unused()
        blocked = np.zeros(self._num_groups, dtype=bool)
        blocked[[self._group_list[anchor], *taken]] = True
        cand = pool[~blocked[self.groups[pool]]]
        if self._csr is not None and cand.size:
            row = torch.from_numpy(self.tfidf.dense_rows(anchor, anchor + 1)).T  # (V, 1)
            cand = cand[(self._csr @ row).numpy()[cand, 0] < NEAR_IDENTICAL_TFIDF]
        if cand.size == 0:
            return []
        sims = self.vectors[cand] @ self.vectors[anchor]
        top = min(cand.size, 4 * need)  # rank the most similar few first; all when they fall short
        while True:
            if top < cand.size:  # those at least as similar as the top-th (ties kept)
                head = sims >= np.partition(sims, cand.size - top)[cand.size - top]
                ranked = cand[head][np.lexsort((cand[head], -sims[head]))]
            else:
                ranked = cand[np.lexsort((cand, -sims))]  # most similar, then lower index
            picks, seen = [], set(taken)
            for j in ranked.tolist():
                if self._group_list[j] not in seen:  # one per target, as from the list
                    picks.append(j)
                    seen.add(self._group_list[j])
                    if len(picks) == need:
                        return picks
            if top >= cand.size:
                return picks
            top = min(cand.size, 4 * top)

    def mine(self, anchor: int, need: int, epoch: _EpochState, taken: set[int]) -> list[int]:
        """The anchor's ``need`` hardest negatives now (module docstring), marked used; ``taken``
        (the target groups in the batch) gets theirs."""
        picks: list[int] = []
        groups, used = self._group_list, epoch.used
        for j in self._lists[anchor]:
            if not used[j] and groups[j] not in taken:
                picks.append(j)
                taken.add(groups[j])
                if len(picks) == need:
                    break
        if len(picks) < need and len(self._lists[anchor]) == self.candidates:
            used[picks] = True  # more allowed ones may lie beyond the list's M
            for j in self._beyond_list(anchor, need - len(picks), epoch, taken):
                picks.append(j)
                taken.add(groups[j])
        used[picks] = True
        return picks

    def _build_epoch(self, epoch: int) -> list[list[int]]:
        order = epoch_generator(self.seed, epoch).permutation(self.num_samples).tolist()
        state = _EpochState(self.num_samples)
        batches: list[list[int]] = []
        batch: list[int] = []
        taken: set[int] = set()
        for anchor in order:
            if state.used[anchor]:
                continue
            state.used[anchor] = True
            batch.append(anchor)
            taken.add(self._group_list[anchor])
            need = min(self.k, self.batch_size - len(batch))
            if need:
                batch.extend(self.mine(anchor, need, state, taken))
            if len(batch) == self.batch_size:
                batches.append(batch)
                batch, taken = [], set()
        if batch:
            batches.append(batch)
        return batches


class _EpochState:
    """Which samples an epoch has used, and the unused ones as an index array that shrinks as
    the epoch goes (the exhaustive fall-back scans only those)."""

    def __init__(self, n: int):
        self.used = np.zeros(n, dtype=bool)
        self._pool = np.arange(n)

    def unused(self) -> np.ndarray:
        self._pool = self._pool[~self.used[self._pool]]
        return self._pool
