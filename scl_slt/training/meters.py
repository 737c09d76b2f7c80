"""What the training loop records: loss means per ``train`` record, the per-epoch summary.

``LossMeter`` keeps running sums on the device (no host sync per step) and averages them over
steps and ranks when a record is written; ``EpochTally`` counts what one epoch trained and
writes the ``train_epoch`` record.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from tqdm import tqdm

from .. import distributed as dist_utils
from ..rundir.layout import MetricsWriter

log = logging.getLogger(__name__)


class LossMeter:
    """Running sums of detached loss terms on the device (no host sync per step); ``means()``
    averages them over steps and ranks (a collective: every rank calls it at the same step).

    Only updates are recorded (``add`` the terms of each trained micro-batch of a window that
    stepped, then ``stepped`` with its gradient norm), so every value of a ``train`` record is
    finite: a skipped step's losses and gradient norm are NaN/inf by definition and stay out.

    The window (sums, count, last gradient norm) is part of the resumable checkpoint
    (``state_dict``, one per rank), so the first record after a resume averages the same steps
    as an uninterrupted run's.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.grad_norm: float | None = None  # of the last update since the last record

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.count += 1

    def stepped(self, grad_norm: float) -> None:
        """The window just added made an update with this (finite) gradient norm."""
        self.grad_norm = grad_norm

    def means(self) -> dict[str, float]:
        """Mean of every recorded term (the same terms on every rank); resets the meter."""
        keys = sorted(self.sums)
        zero = torch.zeros((), device=self.device)
        stacked = torch.stack([self.sums[k] for k in keys] + [zero + self.count])
        stacked = dist_utils.all_reduce_sum(stacked)
        count = max(float(stacked[-1]), 1.0)
        out = {k: float(v) / count for k, v in zip(keys, stacked[:-1].tolist())}
        self.sums.clear()
        self.count = 0
        self.grad_norm = None
        return out

    def state_dict(self) -> dict[str, Any]:
        """This rank's window, on the CPU (the checkpoint gathers every rank's)."""
        sums = {k: v.detach().cpu() for k, v in self.sums.items()}
        return {"sums": sums, "count": self.count, "grad_norm": self.grad_norm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = {k: v.to(self.device) for k, v in state["sums"].items()}
        self.count = int(state["count"])
        self.grad_norm = state["grad_norm"]

    @staticmethod
    def merged(states: list[dict[str, Any]]) -> dict[str, Any]:
        """One window holding all of ``states``' steps: what rank 0 restores when the number of
        ranks changed (the mean over ranks and steps only needs the totals; the other ranks
        start empty)."""
        sums: dict[str, torch.Tensor] = {}
        for state in states:
            for k, v in state["sums"].items():
                sums[k] = sums[k] + v if k in sums else v.clone()
        count = sum(int(state["count"]) for state in states)
        return {"sums": sums, "count": count, "grad_norm": states[0]["grad_norm"]}


def epoch_bar(n_batches: int, start_batch: int, epoch: int, epochs: int, is_main: bool) -> tqdm:
    """The progress bar of one epoch (rank 0 only), starting at a resumed batch."""
    return tqdm(
        total=n_batches,
        initial=start_batch,
        desc=f"epoch {epoch + 1}/{epochs}",
        disable=not is_main,
        leave=False,
    )


def log_train_step(
    metrics: MetricsWriter,
    meter: LossMeter,
    step: int,
    log_every: int,
    epoch: int,
    scheduler: Any,
    bar: tqdm,
) -> None:
    """Every ``log_every`` steps with an update since the last record, write the ``train``
    record: the loss terms' means over the updates since the last one (a collective; the
    condition is the same on every rank), the epoch, the learning rate of the next step and the
    gradient norm of the last update (``LossMeter``: all finite; skipped steps are counted in
    the ``train_epoch`` record)."""
    if step % log_every != 0 or meter.count == 0:
        return
    grad_norm = meter.grad_norm  # the last update's (means() resets it)
    values = meter.means()
    values |= {"epoch": epoch, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm}
    metrics.log("train", step, values)
    bar.set_postfix(loss=f"{values['loss']:.3f}")


class EpochTally:
    """What one epoch trained on this rank (samples, wholly skipped micro-batches) and when it
    began; ``summary`` sums it over ranks into the ``train_epoch`` record."""

    def __init__(self) -> None:
        self.start = time.time()
        self.samples = 0
        self.skipped_batches = 0

    def summary(
        self,
        metrics: MetricsWriter,
        step: int,
        epoch: int,
        epochs: int,
        bad_samples: int,
        nonfinite_skipped: int,
        device: torch.device,
    ) -> dict[str, Any]:
        """Log and return the ``train_epoch`` record of the (1-based) ``epoch`` just finished;
        ``bad_samples`` are this rank's samples that failed to load (a collective)."""
        seconds = time.time() - self.start
        counts = torch.tensor([float(self.samples), float(bad_samples)], device=device)
        samples, bad_total = dist_utils.all_reduce_sum(counts).tolist()
        summary = {
            "epoch": epoch,
            "wall_s": round(seconds, 2),
            "samples_per_s": round(samples / max(seconds, 1e-9), 2),
            "nonfinite_skipped": nonfinite_skipped,
            "bad_samples": int(bad_total),
            "skipped_batches": self.skipped_batches,
        }
        metrics.log("train_epoch", step, summary)
        log.info(
            "epoch %d/%d: %.1fs, %.1f samples/s, %d bad sample(s) skipped (%d whole batches)",
            epoch,
            epochs,
            seconds,
            summary["samples_per_s"],
            summary["bad_samples"],
            self.skipped_batches,
        )
        return summary
