"""Stage 2 (``stage=translate``): translation only, also the end-to-end baseline.

    loss = translation_weight * CE(logits, text_ids)       # label smoothing
         + signcl_weight * SignCL(sign_features)           # optional

With ``stage.init_from`` (a stage-1 run directory, whose best-on-dev checkpoint is used, else its
last one; or a checkpoint directory) the sign embedding, visual encoder and decoder start from
stage 1, loaded by submodule name; the text encoder and the similarity head are dropped on
purpose, and the stage-1 run's tokenizer is reused. Without it, this is the end-to-end baseline.
Batches are shuffled (``selection=random``). Batches that failed to load
(``data.on_bad_sample=skip``) follow the rule of ``windows.py``; the per-epoch count of skipped
samples is in the ``train_epoch`` record.

The loop below reads top to bottom; the pieces it shares with stage 1 (checkpoints, the guarded
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
    load_weights,
    resolve_checkpoint,
    run_dir_of,
    save_resumable,
)
from ..config import TrainConfig, validate_train
from ..data.dataset import Collator
from ..data.datasets import build_split
from ..data.frames import worker_init_fn
from ..evaluation import build_eval_loader, evaluate_split
from ..models import builder
from ..optim import GuardedStep, StepOutcome, build_optimizer, build_scheduler, schedule_steps
from ..run_dir import TOKENIZER_DIR, LossMeter, RunContext, open_run, run_tokenizer
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
from .windows import BadBatchRule, complete_window

log = logging.getLogger(__name__)

DROPPED_FROM_STAGE1 = ("text_encoder", "similarity")


def run(cfg: TrainConfig | DictConfig) -> dict[str, Any]:
    """Train stage 2 as configured; returns run_dir, best/last checkpoints and final metrics.

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
            with_text=False,
            with_decoder=True,
        )
        translation = losses.translation_loss(out.logits, text_ids, text_mask, w.label_smoothing)
    terms = {"translation": translation}
    # Normalise by the global batch's tokens, not this rank's (see global_token_share).
    loss = w.translation_weight * translation * global_token_share(text_mask, runtime)
    if w.signcl_weight > 0:
        terms["signcl"] = losses.signcl_loss(
            out.sign_features.float(),  # (B, T', D)
            out.sign_mask.sum(1),
            text_mask.sum(1),
            w.signcl_margin_min,
            w.signcl_margin_ratio,
            w.signcl_m,
        )
        loss = loss + w.signcl_weight * terms["signcl"]
    return loss, {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}


def _stage1_source(init_from: str | None) -> tuple[Path | None, Path | None]:
    """(checkpoint to initialise from, tokenizer directory of its run) for ``stage.init_from``."""
    if init_from is None:
        return None, None
    checkpoint = resolve_checkpoint(init_from, "best")
    return checkpoint, run_dir_of(checkpoint) / TOKENIZER_DIR


def _train(cfg: TrainConfig, runtime: Runtime, run_ctx: RunContext, stop: StopRequest) -> dict:
    s = cfg.stage
    run_dir = run_ctx.path
    rank, world = runtime.rank, runtime.world_size

    # ---- data and tokenizer (stage 2 after stage 1 must use stage 1's tokenizer)
    init_checkpoint, stage1_tokenizer = _stage1_source(s.init_from)
    train_set = build_split(cfg.data, "train")
    dev_set = build_split(cfg.data, "dev") if s.eval_every > 0 else None
    tokenizer = run_tokenizer(cfg, run_dir, train_set.texts, source_dir=stage1_tokenizer)
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

    # ---- model (text branch dropped), optionally initialised from stage 1
    seed_everything(cfg.seed)  # the same initial weights on every rank
    net = builder.build_model(cfg.model, cfg.data, tokenizer)
    net.drop_text_branch()
    if init_checkpoint is not None and run_ctx.resume_state is None:
        builder.load_submodules(net, load_weights(init_checkpoint), drop=DROPPED_FROM_STAGE1)
        log.info("initialised from %s (dropped %s)", init_checkpoint, DROPPED_FROM_STAGE1)
    elif init_checkpoint is None:
        log.info("no stage.init_from: end-to-end translation baseline from scratch")
    net = net.to(runtime.device)
    builder.log_parameter_counts(net)  # trainable / frozen, without the text branch
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
    model = wrap_for_training(net, runtime, sync_batchnorm=s.sync_batchnorm)
    net = unwrap(model)

    def checkpoint(epoch: int, batch_in_epoch: int, step: int) -> Path:
        pos = {"epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step}
        state = loop.state_dict(pos, run_ctx.config, world)
        return save_resumable(manager, step, net, state, {"stage": s.name.value, **pos})

    def evaluate(epoch: int, step: int) -> dict[str, Any]:
        metrics, rows = evaluate_split(
            net,
            dev_loader,
            tokenizer,
            cfg.model.generation,
            runtime.device,
            cfg.data.language,
            runtime.autocast,
        )
        metrics["skipped_samples"] = len(dev_set) - len(rows)  # failed to load (skip mode)
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
    bad_batches = BadBatchRule(cfg.data.on_bad_sample, runtime)
    trained_params = [p for p in net.parameters() if p.requires_grad]
    dev_metrics: dict[str, Any] = {}
    last_ckpt: Path | None = run_ctx.resume_from
    finished_early = False
    log.info(
        "stage 2: %d epochs x %d batches of %d (x%d accumulation), %d process(es)",
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
        skipped_batches, last_synced = 0, False
        for batch_idx, batch in enumerate(train_loader(epoch), start=start_batch):
            window_start = batch_idx - batch_idx % accum
            window_size = min(accum, n_batches - window_start)
            last_in_window = batch_idx == window_start + window_size - 1
            if bad_batches.skip(batch):  # on every rank together (windows.py)
                skipped_batches += 1
            else:
                no_sync = runtime.distributed and not last_in_window
                with model.no_sync() if no_sync else contextlib.nullcontext():
                    loss, terms = compute_losses(model, batch, cfg, runtime)
                    guard.observe(loss, batch["names"], batch["inputs"])
                    (loss / window_size).backward()  # NaN too: keeps DDP's all-reduce in step
                window_terms.append(terms)
                last_synced = last_in_window
                epoch_samples += len(batch["names"])
            bar.update(1)
            if not last_in_window:
                continue

            if window_terms:
                complete_window(
                    trained_params, len(window_terms), window_size, last_synced, runtime
                )
                outcome = guard.finish(step, stop.requested)
            else:  # every micro-batch of the window was skipped: no update
                stop_requested = dist_utils.any_rank(stop.requested, runtime.device)
                outcome = StepOutcome(False, float("nan"), stop_requested)
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

        # ---- end of epoch: throughput, dev evaluation, checkpoint
        epoch += 1
        start_batch = 0
        seconds = time.time() - epoch_start
        counts = torch.tensor(
            [float(epoch_samples), float(train_set.reset_bad_sample_count())],
            device=runtime.device,
        )
        samples, bad_samples = dist_utils.all_reduce_sum(counts).tolist()
        summary = {
            "epoch": epoch,
            "wall_s": round(seconds, 2),
            "samples_per_s": round(samples / max(seconds, 1e-9), 2),
            "nonfinite_skipped": guard.skipped_total,
            "bad_samples": int(bad_samples),
            "skipped_batches": skipped_batches,
        }
        run_ctx.metrics.log("train_epoch", step, summary)
        log.info(
            "epoch %d/%d: %.1fs, %.1f samples/s, %d bad sample(s) skipped (%d whole batches)",
            epoch,
            s.epochs,
            seconds,
            summary["samples_per_s"],
            summary["bad_samples"],
            skipped_batches,
        )
        if dev_loader is not None and (epoch % s.eval_every == 0 or epoch == s.epochs):
            dev_metrics = evaluate(epoch, step)
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
        "tokenizer_dir": str(run_dir / TOKENIZER_DIR),
        "init_from": str(init_checkpoint) if init_checkpoint else None,
        "dev_metrics": dev_metrics,
        "best_dev": manager.best[0] if manager.best else None,
        "steps": step,
        "nonfinite_skipped": guard.skipped_total,
    }
