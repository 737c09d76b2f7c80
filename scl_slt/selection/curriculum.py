"""Pair Selection (method §5): curriculum batches built from the trajectory deltas δ.

Per epoch ``e`` (0-based, as passed to ``set_epoch``) of ``E``, ``α = schedule((e + 1) / E)``:
the first epoch sits at progress ``1/E`` and the last at ``1``, so ``linear`` ends at ``α = 1``.
Batches are built greedily; every sample is used exactly once per epoch:

1. A random unused sample seeds the batch, ``C = {seed}``.
2. Every unused candidate ``u`` gets ``Δ(u; C) = Σ_{c∈C} (δ[u, c] + δ[c, u])``, the change of the
   batch score (the sum of δ over its off-diagonal pairs).
3. Candidates ordered by ``(Δ, index)`` ascending (ties broken by the smaller dataset index); the
   one at position ``floor(α · (n_candidates − 1))`` joins ``C``. Small α picks pairs the
   reference model pushed apart (easy), large α pairs it pulled together (hard).
4. Repeat until ``|C| = batch_size``; the last batch takes whatever is left.

Distinct targets (``selection.distinct_targets``; ``samplers.DistinctTargets``): every pick,
the seed included, is made among the *allowed* unused candidates only (group not yet in the
batch; once the free slots are just enough for the groups the batch must still take, members of
those only). The seed is drawn uniformly among the allowed; step 3 orders the allowed by
``(Δ, index)`` and takes position ``floor(α · (n_allowed − 1))``; a ``pool_size`` pool is drawn
among the allowed; Δ still sums over every batch member. The must-take ("forced") picks are therefore the batch's last picks, each the quantile
pick among the must-take candidates. When every candidate is allowed (no duplicate targets) the
random draws and the picks are exactly those without the option.

Random stream, per epoch ``rng = default_rng([seed, epoch])``: each batch seed is
``unused[rng.integers(len(unused))]`` with ``unused`` in ascending index order; with a
``pool_size`` K, each pick whose unused set is larger than K first draws
``rng.choice(len(unused), K, replace=False)`` and considers only those candidates.

Cost: Δ is kept as running sums over the unused candidates; adding sample ``c`` adds row ``c``
and column ``c`` of δ, gathered at the unused indices only, straight from the memory map (O(N)
per added sample; nothing N x N is copied or precomputed). A column read is strided (one page
per element), which dominates the epoch; gathering only the unused entries halves it on
average. ``scripts/bench_curriculum.py`` measures an epoch at CSL-Daily scale.
Sums are float64: float16 values are multiples of 2^-24 below 2^16, so sums of up to 2^13 of
them (batches up to 4096) are exact in float64. Δ then does not depend on summation order,
and ties are genuine ties, identical across implementations.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError, Schedule
from .samplers import DistinctTargets, GlobalBatchSampler, epoch_generator, shuffled_batches

log = logging.getLogger(__name__)

_FINITE_CHECK_ELEMENTS = 1 << 24  # elements per chunk when scanning the score file


def schedule_alpha(schedule: Schedule | str, progress: float) -> float:
    """Quantile α in [0, 1] of a schedule at training progress ``e / E`` in [0, 1]."""
    try:
        schedule = Schedule(schedule)
    except ValueError as e:
        names = ", ".join(s.value for s in Schedule)
        raise ConfigError(f"selection.schedule: unknown {schedule!r} (one of {names})") from e
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"schedule progress must be in [0, 1], got {progress}")
    if schedule is Schedule.linear:
        alpha = progress
    elif schedule is Schedule.sqrt:
        alpha = math.sqrt(progress)
    elif schedule is Schedule.log:
        alpha = math.log(1.0 + 9.0 * progress) / math.log(10.0)
    elif schedule is Schedule.easy_only:
        alpha = 0.0
    else:  # Schedule.hard_only
        alpha = 1.0
    return min(1.0, max(0.0, alpha))


def quantile_position(values: np.ndarray, alpha: float) -> int:
    """Position in ``values`` of the element at rank ``floor(α · (n − 1))`` of the ascending
    order by (value, position). O(n): a partition, never a full sort."""
    n = values.size
    k = int(alpha * (n - 1))
    if k == 0:
        return int(np.argmin(values))  # first occurrence: the smallest position among ties
    if k == n - 1:
        return n - 1 - int(np.argmax(values[::-1]))  # last occurrence: the largest position
    kth = np.partition(values, k)[k]
    below = int(np.count_nonzero(values < kth))
    return int(np.flatnonzero(values == kth)[k - below])


class _ScoreEntries:
    """Gathers δ entries through a 1-D view of the (memory-mapped) matrix: ``np.take`` at
    computed flat positions measured about a quarter faster than 2-D fancy indexing for the
    strided column reads, and works for C- and Fortran-ordered files alike. No copy is made."""

    def __init__(self, scores: np.ndarray):
        if not (scores.flags.c_contiguous or scores.flags.f_contiguous):
            raise ValueError("pair scores must be one contiguous C- or Fortran-ordered block")
        self.flat = scores.ravel(order="K")  # a view: contiguous arrays ravel without copying
        self.row_stride, self.col_stride = (s // scores.itemsize for s in scores.strides)

    def from_sample(self, c: int, others: np.ndarray) -> np.ndarray:
        """δ[c, others]."""
        return self.flat.take(others * self.col_stride + c * self.row_stride)

    def to_sample(self, c: int, others: np.ndarray) -> np.ndarray:
        """δ[others, c]."""
        return self.flat.take(others * self.row_stride + c * self.col_stride)


def _pool_scores(entries: _ScoreEntries, batch: list[int], candidates: np.ndarray) -> np.ndarray:
    """Δ of the given candidates recomputed from the batch members (the pool_size path):
    O(K · |C|) reads per pick instead of O(N)."""
    sums = np.zeros(candidates.size)  # (K,) float64
    for member in batch:
        np.add(sums, entries.from_sample(member, candidates), out=sums)
        np.add(sums, entries.to_sample(member, candidates), out=sums)
    return sums


def build_curriculum_batches(
    pair_scores: np.ndarray,
    batch_size: int,
    alpha: float,
    rng: np.random.Generator,
    pool_size: int | None = None,
    groups: np.ndarray | None = None,
) -> list[list[int]]:
    """One epoch of greedy curriculum batches (see the module docstring) over all N samples;
    with target ``groups`` (N,), no batch holds two samples of one group."""
    scores = np.asarray(pair_scores)  # a plain view of a memmap: no copy
    entries = _ScoreEntries(scores)
    unused = np.arange(scores.shape[0])  # ascending, so positions break ties by index
    distinct = None if groups is None else DistinctTargets(groups, batch_size)

    def allowed() -> np.ndarray | None:
        """Ascending positions in ``unused`` that may join (None: all of them)."""
        return None if distinct is None else np.flatnonzero(distinct.allowed(unused))

    batches: list[list[int]] = []
    while unused.size:
        if distinct is not None:
            distinct.open_batch()
        ok = allowed()
        seed_pos = int(rng.integers(unused.size)) if ok is None else int(ok[rng.integers(ok.size)])
        batch = [int(unused[seed_pos])]
        if distinct is not None:
            distinct.add(batch[-1])
        unused = np.delete(unused, seed_pos)
        sums = np.zeros(unused.size)  # (n_unused,) float64: Δ(u; C) for every unused u
        while len(batch) < batch_size and unused.size:
            ok = allowed()
            if pool_size is None:
                newest = batch[-1]
                np.add(sums, entries.from_sample(newest, unused), out=sums)
                np.add(sums, entries.to_sample(newest, unused), out=sums)
                if ok is None:
                    pos = quantile_position(sums, alpha)
                else:
                    pos = int(ok[quantile_position(sums[ok], alpha)])
                sums = np.delete(sums, pos)
            else:
                n_ok = unused.size if ok is None else ok.size
                if n_ok > pool_size:
                    picks = np.sort(rng.choice(n_ok, pool_size, replace=False))
                else:
                    picks = np.arange(n_ok)
                if ok is not None:
                    picks = ok[picks]
                pool_delta = _pool_scores(entries, batch, unused[picks])
                pos = int(picks[quantile_position(pool_delta, alpha)])
            batch.append(int(unused[pos]))
            if distinct is not None:
                distinct.add(batch[-1])
            unused = np.delete(unused, pos)
        if distinct is not None:
            distinct.close_batch()
        batches.append(batch)
    return batches


def batch_score(pair_scores: np.ndarray, batch: list[int] | np.ndarray) -> float:
    """Sum of δ over the batch's off-diagonal pairs (the quantity Δ increments), for reports."""
    idx = np.asarray(batch, dtype=np.int64)
    block = np.asarray(pair_scores)[np.ix_(idx, idx)].astype(np.float64)  # (B, B)
    return float(block.sum() - np.trace(block))


def check_pair_scores(pair_scores: np.ndarray, where: str) -> None:
    """Square, 2-D and finite, scanned in bounded chunks; errors name ``where``."""
    if pair_scores.ndim != 2 or pair_scores.shape[0] != pair_scores.shape[1]:
        raise ValueError(f"pair scores {where}: expected an N x N array, got {pair_scores.shape}")
    if not np.issubdtype(pair_scores.dtype, np.floating):
        raise ValueError(f"pair scores {where}: expected floats, got {pair_scores.dtype}")
    n = pair_scores.shape[0]
    rows = max(1, _FINITE_CHECK_ELEMENTS // max(n, 1))
    for start in range(0, n, rows):
        chunk = np.asarray(pair_scores[start : start + rows])
        if not np.isfinite(chunk).all():
            bad = start + int(np.flatnonzero(~np.isfinite(chunk).all(axis=1))[0])
            raise ValueError(f"pair scores {where}: non-finite value in row {bad}")


def load_pair_scores(path: str | os.PathLike | None, num_samples: int | None = None) -> np.ndarray:
    """Memory-map an N x N pair-score ``.npy`` and check N against the training split."""
    if not path:
        raise ConfigError(
            "selection.pair_scores: selection=trajectory needs the pair_scores file "
            "written by `python -m scl_slt.score`"
        )
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"selection.pair_scores: file not found: {path}")
    try:
        scores = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"selection.pair_scores: cannot read {path}: {e}") from e
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"selection.pair_scores: {path} holds shape {scores.shape}, not N x N")
    if num_samples is not None and scores.shape[0] != num_samples:
        raise ValueError(
            f"selection.pair_scores: {path} scores N={scores.shape[0]} samples but the training "
            f"split has {num_samples}; it belongs to another split or dataset version"
        )
    return scores


class CurriculumBatchSampler(GlobalBatchSampler):
    """Curriculum batches from a reference run's pair scores (``selection=trajectory``; also
    ``text_semantic`` and ``visual_curriculum``, which only bring other score files).

    ``pair_scores`` is N x N, ``δ[i, j]`` for video i and text j in dataset order, typically the
    float16 memory map of ``load_pair_scores``; it is read, never copied. The file is scanned once
    here for non-finite values, which would make the quantile pick meaningless.

    A subclass with other scores (``online.OnlineCurriculumSampler``) supplies ``_attach`` (what it
    scores from, and N), ``_shuffled`` (epochs without scores) and ``_epoch_scores`` (an epoch's δ,
    optionally over relabelled samples); α, the settings a resume must match, the batch builder and
    its timing are this class's.
    """

    kind = "trajectory"

    def __init__(
        self,
        pair_scores: np.ndarray,
        batch_size: int,
        epochs: int,
        schedule: Schedule | str,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        pool_size: int | None = None,
        *,
        target_groups: np.ndarray | None = None,
    ):
        num_samples = self._attach(pair_scores)
        super().__init__(
            num_samples, batch_size, seed, rank, world_size, drop_last, target_groups=target_groups
        )
        if epochs < 1:
            raise ValueError(f"epochs must be positive, got {epochs}")
        if pool_size is not None and pool_size < 1:
            raise ValueError(f"pool_size must be >= 1 or None, got {pool_size}")
        self.epochs = int(epochs)
        self.schedule = Schedule(schedule)
        self.pool_size = None if pool_size is None else int(pool_size)

    # ---------------------------------------------------------- where an epoch's scores come from
    def _attach(self, pair_scores: np.ndarray) -> int:
        """Keep the scores, checked; return N."""
        check_pair_scores(pair_scores, str(getattr(pair_scores, "filename", None) or "(in memory)"))
        self.pair_scores = pair_scores
        return pair_scores.shape[0]

    def _shuffled(self, epoch: int) -> bool:
        """Whether the epoch gets shuffled batches instead (nothing to score it with)."""
        return False

    def _epoch_scores(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """The epoch's δ and, when it is over relabelled samples, the order mapping them back."""
        return self.pair_scores, None

    def _epoch_note(self) -> str:
        """Extra words for the epoch's log line."""
        return ""

    # --------------------------------------------------------------------------------- epochs
    def alpha(self, epoch: int) -> float:
        """α of a 0-based epoch: ``schedule((epoch + 1) / epochs)``."""
        if not 0 <= epoch < self.epochs:
            raise ValueError(
                f"epoch {epoch} outside the curriculum's 0..{self.epochs - 1} "
                f"(epochs={self.epochs})"
            )
        return schedule_alpha(self.schedule, (epoch + 1) / self.epochs)

    def _identity(self) -> dict[str, Any]:
        return {
            **super()._identity(),
            "epochs": self.epochs,
            "schedule": self.schedule.value,
            "pool_size": self.pool_size,
        }

    def _build_epoch(self, epoch: int) -> list[list[int]]:
        alpha = self.alpha(epoch)
        rng = epoch_generator(self.seed, epoch)
        groups = self.target_groups
        if self._shuffled(epoch):
            return shuffled_batches(rng.permutation(self.num_samples), self.batch_size, groups)
        started = time.perf_counter()
        scores, order = self._epoch_scores(rng)
        if groups is not None and order is not None:
            groups = groups[order]  # the relabelled samples' groups
        batches = build_curriculum_batches(
            scores, self.batch_size, alpha, rng, self.pool_size, groups
        )
        del scores  # an online δ is a fresh N x N array: free it before mapping back
        if order is not None:
            batches = [[int(order[i]) for i in batch] for batch in batches]
        log.log(
            logging.INFO if self.rank == 0 else logging.DEBUG,
            "%s curriculum epoch %d: alpha %.3f, %d batches built in %.2f s%s",
            self.kind,
            epoch,
            alpha,
            len(batches),
            time.perf_counter() - started,
            self._epoch_note(),
        )
        return batches
