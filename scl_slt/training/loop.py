"""The parts both stage loops share, as plain functions and small classes.

Each stage (``contrastive.py``, ``translate.py``) keeps its own explicit loop, read top to bottom;
what is the very same logic in both lives here: opening the run, the training loader, the
optimizer/schedule/guard/checkpoint objects, the per-step ``train`` record, the per-epoch
``train_epoch`` summary, the dev translation evaluation that picks the best checkpoint, and the
result a stage returns. Gradient-accumulation windows and bad batches are in ``windows.py``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .. import distributed as dist_utils
from .. import losses
from ..config import LossConfig, TrainConfig, validate_train
from ..data.dataset import BatchLoader
from ..data.frames import worker_init_fn
from ..eval.translation import evaluate_split
from ..models.slt import ModelOutput
from ..rundir.checkpoint import CheckpointManager, LoopState
from ..rundir.layout import TOKENIZER_DIR, LossMeter, MetricsWriter, RunContext, open_run
from ..selection.samplers import SeededBatches
from .optim import GuardedStep, build_optimizer, build_scheduler, schedule_steps
from .runtime import Runtime, StopRequest, seed_everything, setup_runtime

log = logging.getLogger(__name__)


@contextlib.contextmanager
def open_stage(
    cfg: TrainConfig | DictConfig,
) -> Iterator[tuple[TrainConfig, Runtime, RunContext, StopRequest]]:
    """Validate the config, set up device/precision/process group, open the run directory and
    catch SIGTERM/SIGINT for the duration of a stage; the run's logs are closed on the way out."""
    cfg = validate_train(cfg)
    runtime = setup_runtime(cfg.device, cfg.precision)
    run_ctx = open_run(cfg, runtime)
    try:
        with StopRequest() as stop:
            yield cfg, runtime, run_ctx, stop
    finally:
        run_ctx.close()


def batch_to_device(
    batch: dict[str, Any], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(inputs, input_lengths, text_ids, text_mask, colour or None) of a collated batch, on
    ``device``; ``colour`` (B, 2, 3) comes with augmented uint8 frames and goes to the model."""
    inputs = batch["inputs"].to(device, non_blocking=True)  # (B, T, D) or (B, T, 3, H, W)
    input_lengths = batch["input_lengths"].to(device)  # (B,)
    text_ids = batch["text_ids"].to(device)  # (B, L)
    text_mask = batch["text_mask"].to(device)  # (B, L)
    colour = batch.get("colour")
    if colour is not None:
        colour = colour.to(device)  # (B, 2, 3)
    return inputs, input_lengths, text_ids, text_mask, colour


def signcl_term(out: ModelOutput, text_mask: torch.Tensor, w: LossConfig) -> torch.Tensor:
    """The SignCL term of both stages' losses, on the sign features in fp32."""
    return losses.signcl_loss(
        out.sign_features.float(),  # (B, T', D)
        out.sign_mask.sum(1),
        text_mask.sum(1),
        w.signcl_margin_min,
        w.signcl_margin_ratio,
        w.signcl_m,
    )


def train_loader(
    train_set: Dataset, sampler: Any, collate: Any, cfg: TrainConfig, runtime: Runtime, epoch: int
) -> DataLoader:
    """The training loader of one epoch over the sampler's batches: ``data.num_workers``
    workers; on CUDA page-locked batches, so ``batch_to_device``'s copies run asynchronously.

    Each sample's augmentation is seeded with (seed, epoch, global batch, position in it)
    (``SeededBatches``): the same whichever worker loads it, for any ``num_workers`` and number
    of ranks, and after a mid-epoch resume. Worker seeds (for anything else random in a worker)
    come from (seed, rank, epoch) only, never from where the global RNG happens to be.
    """
    seed, rank = cfg.seed, runtime.rank
    generator = torch.Generator().manual_seed((seed * 1_000_003 + rank) * 10_007 + epoch)
    return BatchLoader(
        train_set,
        batch_sampler=SeededBatches(sampler, seed),
        collate_fn=collate,
        num_workers=cfg.data.num_workers,
        worker_init_fn=worker_init_fn,
        generator=generator,
        pin_memory=runtime.pins_memory,
    )


def build_loop_state(
    net: torch.nn.Module, sampler: Any, cfg: TrainConfig, run_dir: Path, device: torch.device
) -> LoopState:
    """Optimizer, warmup/decay schedule, guarded step and checkpoint manager of a stage, built
    from ``cfg.stage`` for ``net`` (already on ``device``) and the sampler's batches per epoch."""
    s = cfg.stage
    optimizer = build_optimizer(net, s.lr, s.weight_decay)
    warmup_steps, total_steps = schedule_steps(
        len(sampler), s.grad_accum, s.epochs, s.warmup_epochs
    )
    scheduler = build_scheduler(optimizer, warmup_steps, total_steps, s.min_lr_ratio)
    guard = GuardedStep(
        net, optimizer, scheduler, s.grad_clip, s.nonfinite.value, s.max_nonfinite, device
    )
    manager = CheckpointManager(run_dir, s.keep_last, s.keep_best)
    return LoopState(optimizer, scheduler, sampler, guard, manager)


def restore_or_start(
    loop: LoopState, run_ctx: RunContext, net: torch.nn.Module, seed: int, rank: int, world: int
) -> dict[str, int]:
    """Seed this rank's dropout stream, then restore a resumed run's weights, loop state and RNG
    (last); returns the position ``{epoch, batch_in_epoch, step}`` to continue from."""
    seed_everything(seed + rank)  # dropout streams differ between ranks
    if run_ctx.resume_state is None:
        return {"epoch": 0, "batch_in_epoch": 0, "step": 0}
    return loop.restore(run_ctx.resume_state, run_ctx.resume_from, net, rank, world, seed)


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
    grad_norm: float,
    bar: tqdm,
) -> None:
    """Every ``log_every`` steps with something recorded, write the ``train`` record: the loss
    terms' means since the last one (a collective; the condition is the same on every rank),
    the epoch, learning rate and gradient norm."""
    if step % log_every != 0 or meter.count == 0:
        return
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


def evaluate_translation(
    net: torch.nn.Module,
    dev_loader: DataLoader,
    tokenizer: Any,
    cfg: TrainConfig,
    runtime: Runtime,
    manager: CheckpointManager,
    epoch: int,
    step: int,
) -> tuple[dict[str, Any], int]:
    """Dev BLEU-4/ROUGE-L, logged, offered to ``manager`` as a best-checkpoint candidate.

    Returns the metrics and how many dev samples they cover (fewer than the split when samples
    failed to load in skip mode); the caller writes the ``dev`` record.
    """
    metrics, rows = evaluate_split(
        net,
        dev_loader,
        tokenizer,
        cfg.model.generation,
        runtime.device,
        cfg.data.language,
        runtime.autocast,
    )
    log.info(
        "epoch %d dev: BLEU-4 %.2f ROUGE-L %.2f",
        epoch,
        metrics["bleu4"],
        metrics.get("rouge_l", float("nan")),
    )
    entry = {
        "epoch": epoch,
        "step": step,
        "bleu4": metrics["bleu4"],
        "rouge_l": metrics.get("rouge_l", 0.0),
    }
    manager.consider_best(entry, net)
    return metrics, len(rows)


def reached_max_steps(max_steps: int | None, step: int) -> bool:
    """Whether ``stage.max_steps`` ends the run at this step (logged once, when it does)."""
    if max_steps is None or step < max_steps:
        return False
    log.info("reached stage.max_steps=%d", max_steps)
    return True


def stage_result(
    run_dir: Path,
    loop: LoopState,
    average_best: bool,
    last_checkpoint: Path | None,
    dev_metrics: dict[str, Any],
    step: int,
) -> dict[str, Any]:
    """Average the best checkpoints when asked, then the summary a stage's ``run`` returns."""
    manager = loop.manager
    if average_best:
        manager.average_best()
    best = manager.best_path()
    return {
        "run_dir": str(run_dir),
        "best_checkpoint": str(best) if best else None,
        "last_checkpoint": str(last_checkpoint) if last_checkpoint else None,
        "tokenizer_dir": str(run_dir / TOKENIZER_DIR),
        "dev_metrics": dev_metrics,
        "best_dev": manager.best[0] if manager.best else None,
        "steps": step,
        "nonfinite_skipped": loop.guard.skipped_total,
    }
