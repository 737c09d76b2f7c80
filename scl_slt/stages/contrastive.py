"""Stage 1 (``stage=contrastive``): video-text contrastive learning jointly with translation.

    loss = contrastive_weight * InfoNCE(video_proj, text_proj)    # in-batch negatives
         + translation_weight * CE(logits, text_ids)               # label smoothing
         + signcl_weight * SignCL(sign_features)                   # optional

The batches come from the selection sampler: shuffled (``selection=random``, the CL baseline and
the reference run) or the pair-selection curriculum (``selection=trajectory``, SCL). A reference
run sets ``tracker.enabled=true`` and stores snapshots of the projected features of the whole
train split before the first update and every ``tracker.interval`` epochs.

The loop below reads top to bottom; the pieces it shares with stage 2 (checkpoints, the guarded
optimizer step, the run directory) live in the library.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import distributed as dist_utils
from .. import losses
from ..checkpoint import (
    CheckpointManager,
    LoopState,
    save_resumable,
)
from ..config import TrainConfig, validate_train
from ..data.dataset import Collator
from ..data.datasets import build_split
from ..data.frames import worker_init_fn
from ..evaluation import build_eval_loader, evaluate_split
from ..models import builder
from ..optim import GuardedStep, build_optimizer, build_scheduler, schedule_steps
from ..run_dir import LossMeter, RunContext, open_run, run_tokenizer
from ..runtime import (
    Runtime,
    StopRequest,
    TrainingInterrupted,
    global_token_share,
    seed_everything,
    setup_runtime,
    unwrap,
    wrap_for_training,
)
from ..selection.sampler import build_batch_sampler
from ..selection.tracker import SnapshotTracker, fingerprint_of, snapshots_dir

log = logging.getLogger(__name__)


def run(cfg: TrainConfig | DictConfig) -> dict[str, Any]:
    """Train stage 1 as configured; returns run_dir, best/last checkpoints and final metrics.

    Raises TrainingInterrupted after SIGTERM/SIGINT once a resumable checkpoint is written.
    """
    cfg = validate_train(cfg)
    runtime = setup_runtime(cfg.device, cfg.precision)
    run_ctx = open_run(cfg, runtime)
    try:
        with StopRequest() as stop:
            return _train(cfg, runtime, run_ctx, stop)
    finally:
        run_ctx.close()


def compute_losses(
    model: torch.nn.Module, batch: dict[str, Any], cfg: TrainConfig, runtime: Runtime
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward one (share of a) batch; returns the loss to back-propagate and its terms to log."""
    w = cfg.loss
    device = runtime.device
    inputs = batch["inputs"].to(device, non_blocking=True)  # (B, T, D) or (B, T, 3, H, W)
    input_lengths = batch["input_lengths"].to(device)  # (B,)
    text_ids = batch["text_ids"].to(device)  # (B, L)
    text_mask = batch["text_mask"].to(device)  # (B, L)
    with runtime.autocast():
        out = model(
            inputs,
            input_lengths,
            text_ids=text_ids,
            text_mask=text_mask,
            with_text=True,
            with_decoder=w.translation_weight > 0,
        )
        terms: dict[str, torch.Tensor] = {}
        if w.translation_weight > 0:  # cross-entropy runs in fp32 under autocast
            terms["translation"] = losses.translation_loss(
                out.logits, text_ids, text_mask, w.label_smoothing
            )
    sim = cfg.model.similarity
    terms["contrastive"] = losses.contrastive_loss(
        out.video_proj.float(),  # (B, Tv, d)
        out.video_proj_mask,
        out.text_proj.float(),  # (B, Lt, d)
        out.text_proj_mask,
        out.logit_scale.float(),
        sim.method,
        sim.tau,
        text_keys=batch["texts"] if w.mask_duplicate_texts else None,
    )
    if w.signcl_weight > 0:
        terms["signcl"] = losses.signcl_loss(
            out.sign_features.float(),  # (B, T', D)
            out.sign_mask.sum(1),
            text_mask.sum(1),
            w.signcl_margin_min,
            w.signcl_margin_ratio,
            w.signcl_m,
        )
    loss = w.contrastive_weight * terms["contrastive"]
    if "translation" in terms:
        # Normalise by the global batch's tokens, not this rank's (see global_token_share).
        share = global_token_share(text_mask, runtime)
        loss = loss + w.translation_weight * terms["translation"] * share
    if "signcl" in terms:
        loss = loss + w.signcl_weight * terms["signcl"]
    return loss, {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}


def _train(cfg: TrainConfig, runtime: Runtime, run_ctx: RunContext, stop: StopRequest) -> dict:
    s = cfg.stage
    run_dir = run_ctx.path
    rank, world = runtime.rank, runtime.world_size

    # ---- data and tokenizer (the synthetic data is generated on first use, under a file lock)
    train_set = build_split(cfg.data, "train")
    dev_set = build_split(cfg.data, "dev") if s.eval_every > 0 else None
    tokenizer = run_tokenizer(cfg, run_dir, train_set.texts)
    collate = Collator(tokenizer)
    sampler = build_batch_sampler(
        cfg.selection, len(train_set), s.batch_size, s.epochs, cfg.seed, rank, world, s.drop_last
    )

    def train_loader(epoch: int) -> DataLoader:
        # Worker seeds from (seed, rank, epoch) only, never from where the global RNG happens to
        # be. With num_workers=0 augmentation draws from the checkpointed RNG (exact resume);
        # with workers, a mid-epoch resume hands batches to other workers than before.
        generator = torch.Generator().manual_seed((cfg.seed * 1_000_003 + rank) * 10_007 + epoch)
        return DataLoader(
            train_set,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=cfg.data.num_workers,
            worker_init_fn=worker_init_fn,
            generator=generator,
        )

    # ---- model, optimizer, schedule
    seed_everything(cfg.seed)  # the same initial weights on every rank
    net = builder.build_model(cfg.model, cfg.data, tokenizer).to(runtime.device)  # logs counts
    optimizer = build_optimizer(net, s.lr, s.weight_decay)
    warmup_steps, total_steps = schedule_steps(
        len(sampler), s.grad_accum, s.epochs, s.warmup_epochs
    )
    scheduler = build_scheduler(optimizer, warmup_steps, total_steps, s.min_lr_ratio)
    guard = GuardedStep(
        net, optimizer, scheduler, s.grad_clip, s.nonfinite.value, s.max_nonfinite, runtime.device
    )
    manager = CheckpointManager(run_dir, s.keep_last, s.keep_best)
    loop = LoopState(optimizer, scheduler, sampler, guard, manager)
    tracker = None
    if cfg.tracker.enabled:
        tracker = SnapshotTracker(
            snapshots_dir(run_dir),
            cfg.tracker.interval,
            s.epochs,
            fingerprint_of(run_ctx.config, train_set.names),
        )
        tracker_set = build_split(cfg.data, "train", train=False)  # dataset order, no augmentation
        tracker_loader = DataLoader(
            tracker_set, batch_size=s.eval_batch_size, shuffle=False, collate_fn=collate
        )
    dev_loader = None
    if dev_set is not None:
        dev_loader = build_eval_loader(dev_set, collate, s.eval_batch_size, cfg.data.num_workers)

    # ---- resume (RNG restored last) or start
    seed_everything(cfg.seed + rank)  # dropout streams differ between ranks
    position = {"epoch": 0, "batch_in_epoch": 0, "step": 0}
    if run_ctx.resume_state is not None:
        position = loop.restore(
            run_ctx.resume_state, run_ctx.resume_from, net, rank, world, cfg.seed
        )
    elif tracker is not None and tracker.due(0):
        tracker.snapshot(net, tracker_loader, 0, runtime.device, runtime.autocast)
    # Pure contrastive pre-training leaves the decoder unused: DDP must be told.
    model = wrap_for_training(
        net,
        runtime,
        find_unused_parameters=cfg.loss.translation_weight == 0,
        sync_batchnorm=s.sync_batchnorm,
    )
    net = unwrap(model)

    def checkpoint(epoch: int, batch_in_epoch: int, step: int) -> Path:
        pos = {"epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step}
        state = loop.state_dict(pos, run_ctx.config, world)
        return save_resumable(manager, step, net, state, {"stage": s.name.value, **pos})

    def evaluate(epoch: int, step: int) -> dict[str, Any]:
        metrics, _ = evaluate_split(
            net,
            dev_loader,
            tokenizer,
            cfg.model.generation,
            runtime.device,
            cfg.data.language,
            runtime.autocast,
        )
        run_ctx.metrics.log("dev", step, {"epoch": epoch, **metrics})
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
        return metrics

    # ---- the loop
    epoch, step = position["epoch"], position["step"]
    start_batch = position["batch_in_epoch"]
    n_batches, accum = len(sampler), s.grad_accum
    meter = LossMeter(runtime.device)
    dev_metrics: dict[str, Any] = {}
    last_ckpt: Path | None = run_ctx.resume_from
    finished_early = False
    log.info(
        "stage 1: %d epochs x %d batches of %d (x%d accumulation), %d process(es)",
        s.epochs,
        n_batches,
        s.batch_size,
        accum,
        world,
    )
    while epoch < s.epochs and not finished_early:
        model.train()
        sampler.set_epoch(epoch, start_batch)
        epoch_start, epoch_samples = time.time(), 0
        bar = tqdm(
            total=n_batches,
            initial=start_batch,
            desc=f"epoch {epoch + 1}/{s.epochs}",
            disable=not runtime.is_main,
            leave=False,
        )
        window_terms: list[dict[str, torch.Tensor]] = []
        for batch_idx, batch in enumerate(train_loader(epoch), start=start_batch):
            window_start = batch_idx - batch_idx % accum
            window_size = min(accum, n_batches - window_start)
            last_in_window = batch_idx == window_start + window_size - 1
            sync = model.no_sync() if runtime.distributed and not last_in_window else None
            with sync if sync is not None else contextlib.nullcontext():
                loss, terms = compute_losses(model, batch, cfg, runtime)
                guard.observe(loss, batch["names"], batch["inputs"])
                (loss / window_size).backward()  # NaN too: keeps DDP's all-reduce in step
            window_terms.append(terms)
            epoch_samples += len(batch["names"])
            bar.update(1)
            if not last_in_window:
                continue

            outcome = guard.finish(step, stop.requested)
            step += 1
            if outcome.stepped:  # a skipped step's NaNs stay out of the logged means
                for terms in window_terms:
                    meter.add(terms)
            window_terms = []
            if step % s.log_every == 0 and meter.count > 0:  # same on every rank
                values = meter.means()
                values |= {
                    "epoch": epoch,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": outcome.grad_norm,
                }
                run_ctx.metrics.log("train", step, values)
                bar.set_postfix(loss=f"{values['loss']:.3f}")
            if outcome.stop_requested:
                bar.close()
                path = checkpoint(epoch, batch_idx + 1, step)
                raise TrainingInterrupted(stop.signum or signal.SIGTERM, str(path))
            if s.max_steps is not None and step >= s.max_steps:
                log.info("reached stage.max_steps=%d", s.max_steps)
                last_ckpt = checkpoint(epoch, batch_idx + 1, step)
                finished_early = True
                break
        bar.close()
        if finished_early:
            break

        # ---- end of epoch: throughput, dev evaluation, snapshot, checkpoint
        epoch += 1
        start_batch = 0
        seconds = time.time() - epoch_start
        samples = float(epoch_samples)
        samples = dist_utils.all_reduce_sum(torch.tensor([samples], device=runtime.device)).item()
        summary = {
            "epoch": epoch,
            "wall_s": round(seconds, 2),
            "samples_per_s": round(samples / max(seconds, 1e-9), 2),
            "nonfinite_skipped": guard.skipped_total,
        }
        run_ctx.metrics.log("train_epoch", step, summary)
        log.info(
            "epoch %d/%d: %.1fs, %.1f samples/s", epoch, s.epochs, seconds, summary["samples_per_s"]
        )
        if dev_loader is not None and (epoch % s.eval_every == 0 or epoch == s.epochs):
            dev_metrics = evaluate(epoch, step)
        if tracker is not None and tracker.due(epoch):
            tracker.snapshot(net, tracker_loader, epoch, runtime.device, runtime.autocast)
        last_ckpt = checkpoint(epoch, 0, step)

    if finished_early and dev_loader is not None:
        dev_metrics = evaluate(epoch, step)
    if s.average_best:
        manager.average_best()
    best = manager.best_path()
    return {
        "run_dir": str(run_dir),
        "best_checkpoint": str(best) if best else None,
        "last_checkpoint": str(last_ckpt) if last_ckpt else None,
        "tokenizer_dir": str(run_dir / "tokenizer"),
        "dev_metrics": dev_metrics,
        "best_dev": manager.best[0] if manager.best else None,
        "steps": step,
        "nonfinite_skipped": guard.skipped_total,
    }
