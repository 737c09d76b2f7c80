"""Online trajectories (``selection=online_trajectory``): pair scores without a reference run.

Instead of snapshots of a separate reference run, the current stage-1 run records, after every
step, the similarity of every (video, text) pair of its global batch, and keeps per pair

- ``first[i, j]``: the similarity when the pair was first seen in a batch (NaN = never seen);
- ``ema[i, j]``: an exponential moving average over that pair's observations,
  ``ema <- decay * ema + (1 - decay) * s`` (the first observation sets ``ema = s``).

``δ[i, j] = ema[i, j] - first[i, j]`` for seen pairs and **0 for pairs never seen together**
(no evidence of change: neither easy nor hard). Like the reference-run δ, a negative δ means the
model has been pushing the pair apart (easy), a positive δ pulling it together (hard), and the
same curriculum (schedules, quantile picks) turns δ into batches.

The engine needs two calls (the sampler does the rest):

1. ``trajectory = OnlineTrajectory.from_config(cfg.selection, len(train_set))`` and
   ``build_batch_sampler(..., trajectory=trajectory)``;
2. after every optimizer step, ``trajectory.update(global_indices, global_sim)`` with the
   dataset indices of the *global* batch (the concatenation of the ranks' shares, in rank
   order: ``sampler.global_batches(epoch)[batch]``) and its (B, B) similarity
   ``s(video a, text b)`` (``pairwise_similarity`` before the logit scale), which every rank can
   compute from the loss's gathered features. Every rank thus applies the same updates and holds
   identical state, so all ranks build identical batches without communicating. Record a step
   before saving a checkpoint that counts it.

At each epoch start the sampler reads ``scores()`` (``OnlineCurriculumSampler``); epoch 0, or any
epoch before the first update, gets shuffled batches (nothing is recorded yet). The sampler's
``state_dict`` carries the trajectory state and the current epoch's batches (which the later
updates of that epoch would otherwise change), so the existing checkpoint code resumes exactly.

Memory: two N x N arrays, ``2 N^2 x itemsize``: float32 (default) 0.4 GB for PHOENIX14T
(N = 7,096), 2.7 GB for CSL-Daily (N = 18,400); float16 halves that (resolution ~1e-3 at
|s| ~ 1). ``scores()`` allocates one more N x N array per epoch, and a checkpoint copies the
state. Cost: O(B^2) per step (gather and scatter of the batch's entries), O(N^2) per epoch (δ,
plus the curriculum's own O(N^2)). Coverage: a random batch holds (B - 1) / (N - 1) of each
sample's partners, so only that share of the pairs is observed per epoch (2.5 % at N = 600,
B = 16; 0.2 % at N = 7,096): δ is sparse, and most candidates tie at 0. The sampler therefore
breaks ties by a per-epoch random order of the samples rather than by dataset index (see
``OnlineCurriculumSampler``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np
import torch

from .. import distributed as dist_utils
from ..config import SelectionConfig, SimilarityConfig
from ..models.similarity import pairwise_similarity
from ..models.slt import ModelOutput
from .curriculum import CurriculumBatchSampler

log = logging.getLogger(__name__)

_DTYPES = {"float32": np.float32, "float16": np.float16}
_BLOCK_ROWS = 256


class OnlineTrajectory:
    """Per-pair EMA and first-seen similarity of the pairs met in training batches."""

    def __init__(self, num_samples: int, decay: float = 0.5, dtype: str = "float32"):
        dtype = getattr(dtype, "value", dtype)  # OnlineDtype or its string
        if num_samples < 1:
            raise ValueError(f"OnlineTrajectory: num_samples must be positive, got {num_samples}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"selection.online_decay: must be in [0, 1), got {decay}")
        if dtype not in _DTYPES:
            raise ValueError(f"selection.online_dtype: float32 | float16, got {dtype!r}")
        self.num_samples = int(num_samples)
        self.decay = float(decay)
        self.dtype = dtype
        n, dt = self.num_samples, _DTYPES[dtype]
        self.ema = np.zeros((n, n), dtype=dt)  # (N, N); 0 where unseen
        self.first = np.full((n, n), np.nan, dtype=dt)  # (N, N); NaN = never seen
        self.num_updates = 0
        log.info(
            "online trajectory: %d x %d pairs, %s, %.1f MB of state",
            n, n, dtype, 2 * n * n * np.dtype(dt).itemsize / 1e6,
        )  # fmt: skip

    @classmethod
    def from_config(cls, cfg: SelectionConfig, num_samples: int) -> OnlineTrajectory:
        return cls(num_samples, cfg.online_decay, cfg.online_dtype)

    def describe(self) -> str:
        return f"in-batch EMA, decay {self.decay}"

    def update(self, indices: Any, sim: Any) -> None:
        """Record one global batch: ``sim[a, b]`` is the similarity of video ``indices[a]`` and
        text ``indices[b]``. Accepts numpy arrays or torch tensors (detached, moved to CPU here).
        """
        idx = np.asarray(_to_numpy(indices), dtype=np.int64).reshape(-1)
        values = np.asarray(_to_numpy(sim), dtype=np.float64)
        b = idx.size
        if values.shape != (b, b):
            raise ValueError(f"OnlineTrajectory.update: sim must be ({b}, {b}), got {values.shape}")
        if b and (idx.min() < 0 or idx.max() >= self.num_samples):
            raise ValueError(f"OnlineTrajectory.update: indices outside [0, {self.num_samples})")
        if np.unique(idx).size != b:
            raise ValueError("OnlineTrajectory.update: a sample appears twice in the batch")
        if not np.isfinite(values).all():
            raise ValueError("OnlineTrajectory.update: non-finite similarity")
        cell = np.ix_(idx, idx)
        first = self.first[cell].astype(np.float64)  # (B, B)
        seen = ~np.isnan(first)
        ema = self.ema[cell].astype(np.float64)
        self.ema[cell] = np.where(seen, self.decay * ema + (1.0 - self.decay) * values, values)
        self.first[cell] = np.where(seen, first, values)
        self.num_updates += 1

    def scores(self, order: np.ndarray | None = None) -> np.ndarray:
        """δ = EMA - first value (0 for unseen pairs), (N, N) in the state's dtype.

        ``order`` (a permutation) returns ``δ[order][:, order]`` instead, built block by block.
        """
        n = self.num_samples
        perm = np.arange(n) if order is None else np.asarray(order, dtype=np.int64)
        if perm.shape != (n,) or not np.array_equal(np.sort(perm), np.arange(n)):
            raise ValueError(f"OnlineTrajectory.scores: order must be a permutation of {n}")
        delta = np.empty((n, n), dtype=self.ema.dtype)
        for r0 in range(0, n, _BLOCK_ROWS):
            rows = perm[r0 : r0 + _BLOCK_ROWS]
            first = self.first[rows]  # (b, N)
            block = self.ema[rows] - first  # NaN where unseen
            block[np.isnan(first)] = 0.0
            np.take(block, perm, axis=1, out=delta[r0 : r0 + len(rows)])
        return delta

    def num_seen(self) -> int:
        """Pairs (including positives) observed at least once."""
        return int(sum(np.count_nonzero(~np.isnan(self.first[r0 : r0 + _BLOCK_ROWS]))
                       for r0 in range(0, self.num_samples, _BLOCK_ROWS)))  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """A copy of the whole state (2 N^2 values)."""
        return {
            "num_samples": self.num_samples,
            "decay": self.decay,
            "dtype": self.dtype,
            "num_updates": self.num_updates,
            "ema": self.ema.copy(),
            "first": self.first.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore in place (the engine and the sampler keep holding this object)."""
        for key in ("num_samples", "decay", "dtype"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"online trajectory state {key!r}: saved {state.get(key)!r}, this run has "
                    f"{getattr(self, key)!r}"
                )
        shape = (self.num_samples, self.num_samples)
        for key in ("ema", "first"):
            if np.shape(state.get(key)) != shape:
                raise ValueError(f"online trajectory state {key!r}: expected shape {shape}")
        self.ema[...] = state["ema"]
        self.first[...] = state["first"]
        self.num_updates = int(state["num_updates"])


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly on an accelerator or in bf16
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.cpu().numpy()
    return np.asarray(x)


class OnlineCurriculumSampler(CurriculumBatchSampler):
    """Curriculum batches from an ``OnlineTrajectory`` re-read at every epoch start.

    Epoch e uses ``α = schedule((e + 1) / epochs)`` like ``CurriculumBatchSampler``. Epoch 0, and
    any epoch before the first recorded step, gets shuffled batches (``RandomBatchSampler``'s).
    Otherwise, with ``rng = default_rng([seed, e])``, a permutation ``π = rng.permutation(N)``
    relabels the samples, the curriculum runs on ``δ[π][:, π]`` with the same ``rng`` and the
    batches are mapped back through π: the curriculum's "smaller index wins a tie" then becomes
    a random tie-break, which matters because most online δ entries are exactly 0.
    With ``target_groups`` (``selection.distinct_targets``) the shuffled epochs are
    ``samplers.distinct_shuffled_batches`` and the curriculum runs on the relabelled groups
    ``groups[π]``, so no batch holds two samples with the same target.
    """

    kind = "online_trajectory"

    # Built like CurriculumBatchSampler, with the OnlineTrajectory in place of the pair scores.
    def _attach(self, trajectory: OnlineTrajectory) -> int:  # type: ignore[override]
        self.trajectory = trajectory
        return trajectory.num_samples

    def _shuffled(self, epoch: int) -> bool:
        if epoch == 0:
            return True
        if self.trajectory.num_updates == 0:
            log.warning(
                "online trajectory: nothing recorded before epoch %d (is the training loop "
                "calling trajectory.update?): shuffled batches",
                epoch,
            )
            return True
        return False

    def _epoch_scores(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        perm = rng.permutation(self.num_samples)
        return self.trajectory.scores(order=perm), perm

    def _epoch_note(self) -> str:
        return f", {self.trajectory.num_updates} updates recorded"

    def _identity(self) -> dict[str, Any]:
        return {**super()._identity(), "decay": self.trajectory.decay}

    def state_dict(self) -> dict[str, Any]:
        """Position, the trajectory state, and the current epoch's batches when built."""
        state = super().state_dict()
        state["trajectory"] = self.trajectory.state_dict()
        if self._cached_epoch is not None and self._cached_epoch == self.epoch:
            state["batches"] = {"epoch": self.epoch, "batches": self._cached_batches}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "trajectory" not in state:
            raise ValueError("online_trajectory sampler state has no 'trajectory'")
        super().load_state_dict(state)
        self.trajectory.load_state_dict(state["trajectory"])
        saved = state.get("batches")
        if saved is not None:
            self._cached_epoch = int(saved["epoch"])
            self._cached_batches = [list(map(int, b)) for b in saved["batches"]]


# ------------------------------------------------------------ recording during stage 1
class ForwardTap:
    """Holds the output of the model's forward inside ``capture()`` (a forward hook), so the
    loop can read the projections of the loss's forward without changing ``compute_losses``."""

    def __init__(self, net: torch.nn.Module):
        self.net = net
        self.out: ModelOutput | None = None

    @contextlib.contextmanager
    def capture(self):
        def keep(module, args, output) -> None:
            self.out = output

        handle = self.net.register_forward_hook(keep)
        try:
            yield self
        finally:
            handle.remove()

    def take(self) -> ModelOutput:
        out, self.out = self.out, None
        if out is None:
            raise RuntimeError("ForwardTap: no forward ran inside capture()")
        return out


def observe_global_batch(
    out: ModelOutput,
    indices: torch.Tensor,
    planned: list[int],
    sim_cfg: SimilarityConfig,
    step: int,
) -> tuple[np.ndarray, np.ndarray]:
    """What ``OnlineTrajectory.update`` records of one micro-batch of stage 1: the global batch's
    dataset indices (B,) in rank order and its (B, B) similarity ``s(video a, text b)``
    (``pairwise_similarity``, before the logit scale, no gradient), from the projections of the
    loss's own forward (``ForwardTap``). A collective: every rank calls it.

    Each rank scores its own videos against the gathered texts and the rows are gathered, so
    every rank holds the very same matrix (no rank recomputes another's rows). The gathered
    indices must be the sampler's ``planned`` global batch (less samples that failed to load).
    """
    device = out.video_proj.device
    with torch.no_grad():
        texts, _ = dist_utils.all_gather_padded(out.text_proj.detach().float())  # (B, Lt, d)
        text_mask, _ = dist_utils.all_gather_padded(out.text_proj_mask)  # (B, Lt)
        rows = pairwise_similarity(
            out.video_proj.detach().float(),  # (B_r, Tv, d)
            out.video_proj_mask,
            texts,
            text_mask,
            sim_cfg.method,
            sim_cfg.tau,
        )  # (B_r, B)
        sim, _ = dist_utils.all_gather_padded(rows)  # (B, B)
        gathered, _ = dist_utils.all_gather_padded(indices.to(device)[:, None])  # (B, 1)
    found = gathered[:, 0].cpu().numpy()
    _check_global_batch(found, planned, step)
    return found, sim.cpu().numpy()


def _check_global_batch(found: np.ndarray, planned: list[int], step: int) -> None:
    """The gathered indices are the sampler's global batch (less samples that failed to load)."""
    ok = found.tolist() == planned if len(found) == len(planned) else set(found) <= set(planned)
    if not ok:
        raise RuntimeError(
            f"step {step}: the gathered batch {found.tolist()[:8]}... is not the sampler's "
            f"global batch {planned[:8]}...: ranks are out of step"
        )
