"""Batch samplers for training: one global batch list per epoch, sharded across ranks.

Every sampler builds the whole epoch's *global* batches (``batch_size`` is the global batch) from
``(seed, epoch)`` alone, so all ranks derive the same list without communicating, and each rank
yields its contiguous share of every global batch. The contrastive loss gathers the shares back
and therefore sees the whole selected batch; every rank has the same number of batches, so
collectives stay in step.

Shares: a global batch of ``b`` samples is cut at ``floor(r * b / W)`` for ``r = 0..W``, so share
sizes differ by at most one. A final partial batch with fewer samples than ranks (``b < W``)
would leave some rank with nothing: it is dropped and those samples skip that epoch.
``drop_last`` drops any final batch smaller than ``batch_size``.

Resuming: the training engine owns the position inside an epoch and calls
``set_epoch(epoch, start_batch=k)``; iteration then yields global batches ``k, k+1, ...`` of the
same list. ``__len__`` always counts the whole epoch from batch 0.

Distinct targets (``selection.distinct_targets``): with ``target_groups`` (one id per sample;
samples share an id iff their target texts are exactly equal strings, ``target_groups()``), every
sampler builds each epoch so that no global batch holds two samples of one group, still using
every sample exactly once. ``DistinctTargets`` is the book-keeping every builder shares: which
candidates may join the batch being built, so that construction never dead-ends. The epoch is
built whole, the final partial batch included (it must be distinct too), and the drop rules then
apply exactly as without the option. Random batches: ``distinct_shuffled_batches``.

Samplers are used as ``DataLoader(dataset, batch_sampler=sampler, ...)``; ``build.py`` picks the
one ``selection.name`` asks for.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..config import ConfigError


def epoch_generator(seed: int, epoch: int) -> np.random.Generator:
    """The one random stream of an epoch: a function of (seed, epoch) only, equal on every rank."""
    return np.random.default_rng([seed, epoch])


def consecutive_batches(order: np.ndarray, batch_size: int) -> list[list[int]]:
    """``order`` cut into batches of ``batch_size`` (the last may be smaller)."""
    return [order[i : i + batch_size].tolist() for i in range(0, order.size, batch_size)]


def shuffled_batches(
    order: np.ndarray, batch_size: int, groups: np.ndarray | None = None
) -> list[list[int]]:
    """Random batches from a permutation: cut consecutively, or, with target ``groups``, by
    ``distinct_shuffled_batches``."""
    if groups is None:
        return consecutive_batches(order, batch_size)
    return distinct_shuffled_batches(order, batch_size, groups)


# ------------------------------------------------------------------------- distinct targets
def target_groups(texts: Sequence[str]) -> np.ndarray:
    """(N,) int64 target group of every sample: equal ids iff the target texts are exactly equal
    strings (no normalisation of case, spaces or punctuation); numbered by first occurrence."""
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(text, len(ids)) for text in texts], dtype=np.int64)


def epoch_batch_sizes(num_samples: int, batch_size: int) -> tuple[int, int]:
    """(global batches built per epoch, size of the last one): ``ceil(N / B)`` batches, the last
    one partial when B does not divide N; before any drop rule."""
    count = -(-num_samples // batch_size)
    return count, num_samples - (count - 1) * batch_size


def check_distinct_targets(
    groups: np.ndarray, batch_size: int, describe: Callable[[int], str] | None = None
) -> None:
    """Raise ConfigError unless an epoch can be built with distinct targets in every batch.

    With ``n`` batches per epoch, the last one of ``r`` samples, it can iff no group has more than
    ``n`` samples and at most ``r`` groups have exactly ``n`` (each needs a sample in every batch,
    the last one included): for batch sizes ``(B, ..., B, r)`` the Gale-Ryser condition of a 0/1
    group x batch matrix reduces to these two. ``describe(group)`` names a group in the message
    (``build.py`` passes its sentence); the default names its first sample.
    """
    groups = np.asarray(groups)
    if groups.size == 0:
        return
    counts = np.bincount(groups)  # (G,)
    batches, last = epoch_batch_sizes(groups.size, batch_size)

    def name(group: int) -> str:
        if describe is not None:
            return describe(group)
        return f"target group {group} (sample {int(np.argmax(groups == group))})"

    worst = int(np.argmax(counts))
    where = f"{groups.size} samples in global batches of {batch_size}"
    if counts[worst] > batches:
        raise ConfigError(
            f"selection.distinct_targets: {name(worst)} has {counts[worst]} samples but an "
            f"epoch has only {batches} batches ({where}), so two of them must share a batch; "
            "use a smaller stage.batch_size or selection.distinct_targets=false"
        )
    full = np.flatnonzero(counts == batches)
    if batches > 1 and full.size > last:
        raise ConfigError(
            f"selection.distinct_targets: {full.size} target sentences have {batches} samples, "
            f"one for every batch of the epoch ({where}), e.g. {name(int(full[0]))}, but the "
            f"final batch holds only {last}; use another stage.batch_size or "
            "selection.distinct_targets=false"
        )


class DistinctTargets:
    """Book-keeping while one epoch's global batches are built in order with distinct targets.

    A builder calls ``open_batch()`` (it returns the batch's size), then for every pick asks
    ``allowed(candidates)`` (or ``may_join(sample)``), ``add``s one allowed sample, and calls
    ``close_batch()`` when the batch is full. Allowed: an unused sample whose group is not yet in
    the batch and, once the batch's free slots are just enough for the groups it must still take,
    one of those groups only.

    Must take, for a batch with ``L`` batches left (itself included) and a last batch of ``r``:
    every group with ``L`` unused samples (``forced``) and, when ``L >= 2``, at least
    ``n_L + n_(L-1) - r`` of the groups with ``L - 1`` (``n_c``: groups with ``c`` unused
    samples). The batches left then meet ``check_distinct_targets``'s conditions again, so no
    choice among the allowed dead-ends. The must-take picks are thus made last, only when the
    free slots leave no other choice, and by the builder's own rule among the must-take samples.
    """

    def __init__(self, groups: np.ndarray, batch_size: int):
        self.groups = np.asarray(groups, dtype=np.int64)  # (N,)
        check_distinct_targets(self.groups, batch_size)
        self.batch_size = int(batch_size)
        self.batches_left, self.last_size = epoch_batch_sizes(self.groups.size, batch_size)
        self.unused = np.bincount(self.groups)  # (G,) samples of a group not in a closed batch
        self.histogram = np.bincount(self.unused, minlength=self.batches_left + 1)  # groups/count
        self.in_batch = np.zeros(self.unused.size, dtype=bool)  # (G,) groups in the open batch
        self.members: list[int] | None = None
        self.capacity = self.need_full = self.need_next = 0

    def open_batch(self) -> int:
        """Start the next batch; returns its size."""
        if self.members is not None or self.batches_left == 0:
            raise RuntimeError("DistinctTargets: a batch is still open, or the epoch is complete")
        left = self.batches_left
        self.capacity = self.batch_size if left > 1 else self.last_size
        self.need_full = int(self.histogram[left])  # forced groups not yet in the batch
        self.need_next = 0
        if left > 1:  # so that at most last_size groups keep left - 1 samples afterwards
            self.need_next = max(0, self.need_full + int(self.histogram[left - 1]) - self.last_size)
        self.members = []
        return self.capacity

    def tight(self) -> bool:
        """Whether the free slots are just enough for the groups the batch must still take."""
        return self.capacity - len(self.members) == self.need_full + self.need_next

    def allowed(self, candidates: np.ndarray) -> np.ndarray:
        """Bool mask over ``candidates`` (unused sample indices): those that may join now."""
        group = self.groups[candidates]
        ok = ~self.in_batch[group]
        if self.tight():
            count = self.unused[group]
            must = count == self.batches_left
            if self.need_next:
                must |= count == self.batches_left - 1
            ok &= must
        return ok

    def forced(self, candidates: np.ndarray) -> np.ndarray:
        """Bool mask over ``candidates``: members of the groups this batch must still take
        (``L`` unused samples); ``allowed`` also enforces the ``L - 1`` requirement."""
        group = self.groups[candidates]
        return ~self.in_batch[group] & (self.unused[group] == self.batches_left)

    def may_join(self, sample: int) -> bool:
        """``allowed`` for one unused sample."""
        group = self.groups[sample]
        if self.in_batch[group]:
            return False
        if not self.tight():
            return True
        count = self.unused[group]
        return count == self.batches_left or (self.need_next > 0 and count == self.batches_left - 1)

    def add(self, sample: int) -> None:
        """Put an allowed sample into the open batch."""
        if self.members is None or len(self.members) == self.capacity:
            raise RuntimeError("DistinctTargets.add: no open batch with a free slot")
        group = int(self.groups[sample])
        if self.unused[group] == 0 or not self.may_join(sample):
            raise ValueError(f"DistinctTargets.add: sample {sample} may not join this batch")
        count = self.unused[group]
        if count == self.batches_left:
            self.need_full -= 1
        elif self.need_next and count == self.batches_left - 1:
            self.need_next -= 1
        self.in_batch[group] = True
        self.members.append(int(sample))

    def close_batch(self) -> list[int]:
        """Close the full batch; returns its samples."""
        if self.members is None or len(self.members) != self.capacity:
            raise RuntimeError("DistinctTargets.close_batch: the batch is not full")
        for sample in self.members:
            group = self.groups[sample]
            self.in_batch[group] = False
            self.histogram[self.unused[group]] -= 1
            self.unused[group] -= 1
            self.histogram[self.unused[group]] += 1
        members, self.members = self.members, None
        self.batches_left -= 1
        return members


def distinct_shuffled_batches(
    order: np.ndarray, batch_size: int, groups: np.ndarray
) -> list[list[int]]:
    """Random batches with distinct targets: the permutation ``order`` is read front to back,
    each batch taking the next samples ``DistinctTargets`` allows; a sample that may not join
    waits, keeping its place ahead of the unread ones, for the next batch. Without duplicate
    targets nothing waits: exactly ``consecutive_batches(order)``. With duplicates the order is
    the permutation's except for the samples that wait."""
    tracker = DistinctTargets(groups, batch_size)
    unread = order.tolist()
    waiting: list[int] = []
    position = 0
    batches = []
    while tracker.batches_left:
        size = tracker.open_batch()
        still_waiting = []
        for sample in waiting:
            if len(tracker.members) < size and tracker.may_join(sample):
                tracker.add(sample)
            else:
                still_waiting.append(sample)
        while len(tracker.members) < size:  # never runs out: DistinctTargets never dead-ends
            sample = unread[position]
            position += 1
            if tracker.may_join(sample):
                tracker.add(sample)
            else:
                still_waiting.append(sample)
        waiting = still_waiting
        batches.append(tracker.close_batch())
    return batches


class GlobalBatchSampler(abc.ABC):
    """Shared machinery: rank shares, epoch position, drop rules, the per-epoch cache, state."""

    kind = "global"

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        *,
        target_groups: np.ndarray | None = None,
    ):
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (numpy SeedSequence), got {seed}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world={world_size}")
        if batch_size < world_size:
            raise ValueError(
                f"global batch_size {batch_size} is smaller than world_size {world_size}: "
                "some rank would receive no samples"
            )
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = bool(drop_last)
        self.target_groups: np.ndarray | None = None  # (N,) int64: distinct targets when set
        if target_groups is not None:
            groups = np.asarray(target_groups)
            if groups.shape != (num_samples,) or not np.issubdtype(groups.dtype, np.integer):
                raise ValueError(
                    f"target_groups: expected {num_samples} integer group ids, got "
                    f"{groups.dtype} {groups.shape}"
                )
            if groups.size and groups.min() < 0:
                raise ValueError("target_groups: group ids must be >= 0")
            check_distinct_targets(groups, self.batch_size)
            self.target_groups = groups.astype(np.int64)
        self.epoch = 0
        self.start_batch = 0
        self._cached_epoch: int | None = None
        self._cached_batches: list[list[int]] = []

    # ------------------------------------------------------------------ what subclasses define
    @abc.abstractmethod
    def _build_epoch(self, epoch: int) -> list[list[int]]:
        """All samples of the epoch in global batches of ``batch_size`` (the last may be
        smaller); the drop rules are applied by the caller."""

    def _identity(self) -> dict[str, Any]:
        """Settings a resumed run must share for its batches to be the same ones."""
        return {
            "kind": self.kind,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "distinct_targets": self.target_groups is not None,
        }

    # ------------------------------------------------------------------------------ batches
    def num_batches(self) -> int:
        """Global batches per epoch after the drop rules (the same on every rank)."""
        full, rest = divmod(self.num_samples, self.batch_size)
        keep_rest = rest > 0 and not self.drop_last and rest >= self.world_size
        return full + int(keep_rest)

    def global_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's global batches (dataset indices). Built once per epoch and cached."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if self._cached_epoch != epoch:
            batches = self._build_epoch(epoch)
            self._cached_batches = batches[: self.num_batches()]
            self._cached_epoch = epoch
        return self._cached_batches

    def shard(self, batch: list[int]) -> list[int]:
        """This rank's contiguous share of one global batch."""
        size = len(batch)
        lo = self.rank * size // self.world_size
        hi = (self.rank + 1) * size // self.world_size
        return batch[lo:hi]

    # ---------------------------------------------------------------------- sampler protocol
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch and the first global batch to yield (resuming mid-epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= start_batch <= self.num_batches():
            raise ValueError(
                f"start_batch {start_batch} outside [0, {self.num_batches()}] for epoch {epoch}"
            )
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        for _, _, share in self.positioned_shares():
            yield share

    def positioned_shares(self) -> Iterator[tuple[int, int, list[int]]]:
        """What ``__iter__`` yields, with where it sits: (global batch number in the epoch,
        position of this rank's share inside that global batch, the share)."""
        batches = self.global_batches(self.epoch)
        for number in range(self.start_batch, len(batches)):
            batch = batches[number]
            yield number, self.rank * len(batch) // self.world_size, self.shard(batch)

    def __len__(self) -> int:
        return self.num_batches()

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "start_batch": self.start_batch, **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position; refuse a state whose batches would differ from this sampler's."""
        for key, value in self._identity().items():
            if key in state and state[key] != value:
                raise ValueError(
                    f"sampler state {key!r}: saved {state[key]!r}, this run has {value!r}; "
                    "resuming would not reproduce the saved run's batches"
                )
        for key in ("epoch", "start_batch"):
            if key not in state:
                raise ValueError(f"sampler state has no {key!r}: {sorted(state)}")
        self.set_epoch(int(state["epoch"]), int(state["start_batch"]))


class RandomBatchSampler(GlobalBatchSampler):
    """Shuffled batches: the contrastive-learning baseline (``selection=random``); with target
    groups, ``distinct_shuffled_batches`` of the same permutation."""

    kind = "random"

    def _build_epoch(self, epoch: int) -> list[list[int]]:
        order = epoch_generator(self.seed, epoch).permutation(self.num_samples)
        return shuffled_batches(order, self.batch_size, self.target_groups)


class SeededBatches:
    """A sampler's batches with an augmentation seed per sample: items ``(index, key)``, ``key =
    (seed, epoch, global batch number, position in the global batch)``.

    ``SignDataset`` seeds the sample's augmentation with ``key``, so a sample gets the same
    augmentation whichever worker loads it, however many workers and ranks there are, and when a
    run resumes mid-epoch. Used as ``DataLoader(dataset, batch_sampler=SeededBatches(...))``."""

    def __init__(self, sampler: GlobalBatchSampler, seed: int):
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (numpy SeedSequence), got {seed}")
        self.sampler = sampler
        self.seed = int(seed)

    def __iter__(self) -> Iterator[list[tuple[int, tuple[int, int, int, int]]]]:
        epoch = self.sampler.epoch
        for number, start, share in self.sampler.positioned_shares():
            yield [(index, (self.seed, epoch, number, start + k)) for k, index in enumerate(share)]

    def __len__(self) -> int:
        return len(self.sampler)
