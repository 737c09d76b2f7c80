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

Samplers are used as ``DataLoader(dataset, batch_sampler=sampler, ...)``; ``build.py`` picks the
one ``selection.name`` asks for.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import Any

import numpy as np


def epoch_generator(seed: int, epoch: int) -> np.random.Generator:
    """The one random stream of an epoch: a function of (seed, epoch) only, equal on every rank."""
    return np.random.default_rng([seed, epoch])


def consecutive_batches(order: np.ndarray, batch_size: int) -> list[list[int]]:
    """``order`` cut into batches of ``batch_size`` (the last may be smaller)."""
    return [order[i : i + batch_size].tolist() for i in range(0, order.size, batch_size)]


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
    """Shuffled batches: the contrastive-learning baseline (``selection=random``)."""

    kind = "random"

    def _build_epoch(self, epoch: int) -> list[list[int]]:
        order = epoch_generator(self.seed, epoch).permutation(self.num_samples)
        return consecutive_batches(order, self.batch_size)


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
