"""AdamW over the trainable parameters, a linear-warmup + cosine learning-rate schedule, and the
optimizer step with gradient clipping and non-finite handling shared by both stages."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from .. import distributed as dist_utils

log = logging.getLogger(__name__)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: matrices decay, biases/norm scales/scalars do not
    (decaying a LayerNorm gain or the logit scale toward zero only hurts)."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    groups = parameter_groups(model, weight_decay)
    if not any(g["params"] for g in groups):
        raise ValueError("build_optimizer: the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=lr)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the base lr before optimizer step ``step`` (0-based).

    Linear warmup ``(step + 1) / warmup_steps`` (so the first step already moves), then a
    half-cosine from 1 down to ``min_lr_ratio`` reached at ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> LambdaLR:
    """Per-optimizer-step schedule; its ``state_dict`` (the step count) goes into checkpoints."""
    if total_steps < 1:
        raise ValueError(f"build_scheduler: total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"build_scheduler: warmup_steps {warmup_steps} not in [0, {total_steps}]")
    return LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, total_steps, min_lr_ratio)
    )


def schedule_steps(
    batches_per_epoch: int, grad_accum: int, epochs: int, warmup_epochs: float
) -> tuple[int, int]:
    """(warmup_steps, total_steps) in optimizer steps; a short last accumulation window of an
    epoch still makes one step."""
    steps_per_epoch = math.ceil(batches_per_epoch / grad_accum)
    total = steps_per_epoch * epochs
    warmup = min(total, round(warmup_epochs * steps_per_epoch))
    return warmup, total


# ------------------------------------------------------------------------ one guarded step
class NonFiniteLossError(FloatingPointError):
    """A loss or gradient was NaN/inf; the message names the step, ranks and samples."""


@dataclass
class StepOutcome:
    stepped: bool  # False when the step was skipped (non-finite, skip mode)
    grad_norm: float
    stop_requested: bool  # some rank received SIGTERM/SIGINT


class GuardedStep:
    """The end of one accumulation window: agree across ranks, clip, step or skip.

    Every micro-batch's loss is recorded with ``observe`` (no host sync) and always
    back-propagated, so DDP's gradient all-reduce stays in lockstep even when a loss is NaN.
    ``finish`` then makes one small all-reduce carrying (non-finite micro-batches, stop
    requests), so every rank takes the same decision:

    - ``error`` mode: raise NonFiniteLossError on every rank, naming step, ranks and samples;
    - ``skip`` mode: zero the gradients, do not step (optimizer or schedule), put the buffers
      the window's forwards changed (BatchNorm statistics) back, count; raise after
      ``max_in_row`` consecutive skipped steps.

    Sample names: a contrastive loss couples the whole batch, so a NaN loss implicates every
    sample of its micro-batch; samples whose inputs are themselves non-finite are named apart.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: LambdaLR,
        grad_clip: float,
        mode: str,
        max_in_row: int,
        device: torch.device,
    ):
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.grad_clip = grad_clip
        self.mode = mode
        self.max_in_row = max_in_row
        self.device = device
        self.skipped_in_row = 0
        self.skipped_total = 0
        self._window: list[tuple[torch.Tensor, list[str], torch.Tensor | None]] = []
        self._saved_buffers: list[torch.Tensor] = []
        self._save_buffers()

    def _save_buffers(self) -> None:
        """Skip mode: remember the buffers as they are before the next window's forwards."""
        if self.mode == "skip":
            self._saved_buffers = [b.detach().clone() for b in self.model.buffers()]

    def observe(self, loss: torch.Tensor, names: list[str], inputs: torch.Tensor | None = None):
        """Record one micro-batch's loss (and, for the report, its inputs; nothing is copied)."""
        self._window.append((torch.isfinite(loss.detach()).all(), list(names), inputs))

    def finish(self, step: int, stop_requested: bool) -> StepOutcome:
        finite = torch.stack([ok for ok, _, _ in self._window]).cpu().tolist()
        local_bad = [(names, x) for ok, (_, names, x) in zip(finite, self._window) if not ok]
        flags = torch.tensor([float(len(local_bad)), float(stop_requested)], device=self.device)
        bad_micro_batches, stops = dist_utils.all_reduce_sum(flags).tolist()
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        bad = bad_micro_batches > 0 or not math.isfinite(grad_norm)
        window_names = [n for _, names, _ in self._window for n in names]
        self._window.clear()
        if not bad:
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_in_row = 0
            self._save_buffers()
            return StepOutcome(True, grad_norm, stops > 0)
        self.optimizer.zero_grad(set_to_none=True)
        report = self._report(local_bad, window_names, grad_norm)
        if self.mode != "skip":
            raise NonFiniteLossError(f"non-finite loss at step {step}: {report}")
        with torch.no_grad():
            for buffer, saved in zip(self.model.buffers(), self._saved_buffers):
                buffer.copy_(saved)
        self.skipped_in_row += 1
        self.skipped_total += 1
        log.warning(
            "skipped step %d (non-finite, %d in a row, %d in total): %s",
            step,
            self.skipped_in_row,
            self.skipped_total,
            report,
        )
        if self.skipped_in_row >= self.max_in_row:
            raise NonFiniteLossError(
                f"{self.skipped_in_row} non-finite steps in a row (stage.max_nonfinite="
                f"{self.max_in_row}), last at step {step}: {report}"
            )
        return StepOutcome(False, grad_norm, stops > 0)

    @staticmethod
    def _report(
        local_bad: list[tuple[list[str], torch.Tensor | None]], window: list[str], norm: float
    ) -> str:
        """Which ranks saw which samples go non-finite (collective: called on every rank)."""
        mine = []
        for names, inputs in local_bad:
            entry = f"samples {names}"
            if inputs is not None:
                bad_rows = (~torch.isfinite(inputs.flatten(1))).any(1).tolist()
                culprits = [n for n, b in zip(names, bad_rows) if b]
                if culprits:
                    entry += f" (non-finite inputs: {culprits})"
            mine.append(entry)
        per_rank = dist_utils.all_gather_object(mine)
        parts = [f"rank {r}: {'; '.join(e)}" for r, e in enumerate(per_rank) if e]
        if not parts:  # losses finite but gradients not: every sample of the window is suspect
            windows = dist_utils.all_gather_object(window)
            parts = [
                f"rank {r}: gradient norm {norm} over samples {w}" for r, w in enumerate(windows)
            ]
        return "; ".join(parts)

    def state_dict(self) -> dict[str, int]:
        return {"skipped_in_row": self.skipped_in_row, "skipped_total": self.skipped_total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the counters (after the model's weights were loaded: buffers re-saved)."""
        self.skipped_in_row = state["skipped_in_row"]
        self.skipped_total = state["skipped_total"]
        self._save_buffers()
