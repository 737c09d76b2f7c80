"""Batches that failed to load, inside gradient-accumulation windows (``data.on_bad_sample``).

With ``data.on_bad_sample=skip`` the dataset drops a sample it cannot read, and a sampler batch
whose samples *all* failed on some rank collates to None. Both stage loops then follow one rule:

* **The micro-batch is skipped on every rank together**, decided by one all-reduce per
  micro-batch (``BadBatchRule.skip``; only in skip mode, error mode needs no collective). The
  other ranks' samples of that global batch are not trained either: a contrastive loss over the
  global batch and DDP's gradient all-reduce both need every rank in the same forward.
* **Positions keep their meaning.** Every rank still walks through the same sampler batches, a
  window still spans ``grad_accum`` batch positions, and the step counter still counts windows,
  so ``(epoch, batch_in_epoch, step)`` and resuming mean what they mean without bad samples.
* **A window's gradient is the mean over the micro-batches that trained**: each backward is
  scaled by ``1 / window_size`` as usual, and ``complete_window`` multiplies by
  ``window_size / trained`` afterwards. When the window's last micro-batch (the one that would
  have run DDP's gradient all-reduce) was skipped, ``complete_window`` averages the gradients
  across ranks itself, so the ranks never diverge.
* **A window with no trained micro-batch makes no update**: no optimizer or schedule step (as a
  skipped non-finite step), but the step counter advances and stop requests are still agreed.

Samples skipped per epoch are counted by the dataset (``SignDataset.reset_bad_sample_count``),
summed over ranks and logged in the ``train_epoch`` record (``bad_samples``, with the number of
whole micro-batches skipped, ``skipped_batches``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .. import distributed as dist_utils
from ..config import BadSample
from .optim import GuardedStep, StepOutcome
from .runtime import Runtime


def window_of(batch_idx: int, accum: int, n_batches: int) -> tuple[int, bool]:
    """(size of the accumulation window holding ``batch_idx``, whether it is its last batch).

    Windows span ``accum`` batch positions from the epoch's start; the epoch's last window may be
    shorter.
    """
    window_start = batch_idx - batch_idx % accum
    window_size = min(accum, n_batches - window_start)
    return window_size, batch_idx == window_start + window_size - 1


class BadBatchRule:
    """Decides, identically on every rank, whether a micro-batch is skipped."""

    def __init__(self, on_bad_sample: BadSample | str, runtime: Runtime):
        self.skip_mode = BadSample(on_bad_sample) is BadSample.skip
        self.runtime = runtime

    def skip(self, batch: dict[str, Any] | None) -> bool:
        """True on every rank when this rank's or any other rank's batch is None."""
        if not self.skip_mode:
            if batch is None:  # the dataset raises in error mode: a None batch is a bug
                raise RuntimeError("a batch collated to None with data.on_bad_sample=error")
            return False
        if not self.runtime.distributed:
            return batch is None
        return dist_utils.any_rank(batch is None, self.runtime.device)


def complete_window(
    params: Sequence[torch.nn.Parameter],
    trained: int,
    window_size: int,
    last_synced: bool,
    runtime: Runtime,
) -> None:
    """Make the accumulated gradients those of the window's trained micro-batches (see above).

    ``trained`` micro-batches of ``window_size`` ran a backward (``1 <= trained``, the same on
    every rank); ``last_synced`` says whether the last of them ran DDP's gradient all-reduce.
    """
    if trained < 1 or trained > window_size:
        raise ValueError(f"complete_window: {trained} trained micro-batches of {window_size}")
    grads = [p.grad for p in params if p.grad is not None]
    if runtime.distributed and not last_synced:
        # DDP averages gradients over ranks at the synced backward, which did not run.
        world = float(runtime.world_size)
        for grad in grads:
            dist_utils.all_reduce_sum(grad)
            grad.div_(world)
    if trained < window_size:
        for grad in grads:
            grad.mul_(window_size / trained)


def finish_window(
    guard: GuardedStep,
    params: Sequence[torch.nn.Parameter],
    trained: int,
    window_size: int,
    last_synced: bool,
    step: int,
    stop_requested: bool,
    runtime: Runtime,
) -> StepOutcome:
    """End an accumulation window: the guarded optimizer step over its ``trained`` micro-batches,
    or, when every micro-batch was skipped, no update but the ranks still agree on stopping."""
    if trained == 0:
        stop_anywhere = dist_utils.any_rank(stop_requested, runtime.device)
        return StepOutcome(False, float("nan"), stop_anywhere)
    complete_window(params, trained, window_size, last_synced, runtime)
    return guard.finish(step, stop_requested)
