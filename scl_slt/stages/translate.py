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
optimizer step, the run directory, the per-step and per-epoch records: ``loop_parts.py``,
``windows.py``) live in the library.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from .. import losses
from ..config import TrainConfig
from ..data.dataset import Collator
from ..data.datasets import build_split
from ..eval.translation import build_eval_loader
from ..models import builder
from ..rundir.checkpoint import load_weights, resolve_checkpoint, run_dir_of, save_resumable
from ..rundir.layout import TOKENIZER_DIR, LossMeter, RunContext, run_tokenizer
from ..selection.samplers import build_batch_sampler
from ..training import loop as loop_parts
from ..training import windows
from ..training.runtime import (
    Runtime,
    StopRequest,
    TrainingInterrupted,
    global_token_share,
    seed_everything,
    unwrap,
    wrap_for_training,
)

log = logging.getLogger(__name__)

DROPPED_FROM_STAGE1 = ("text_encoder", "similarity")


def run(cfg: TrainConfig | DictConfig) -> dict[str, Any]:
    """Train stage 2 as configured; returns run_dir, best/last checkpoints and final metrics.

    Raises TrainingInterrupted after SIGTERM/SIGINT once a resumable checkpoint is written.
    """
    with loop_parts.open_stage(cfg) as (cfg, runtime, run_ctx, stop):
        return _train(cfg, runtime, run_ctx, stop)


def compute_losses(
    model: torch.nn.Module, batch: dict[str, Any], cfg: TrainConfig, runtime: Runtime
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward one (share of a) batch; returns the loss to back-propagate and its terms to log."""
    w = cfg.loss
    inputs, input_lengths, text_ids, text_mask, colour = loop_parts.batch_to_device(
        batch, runtime.device
    )
    with runtime.autocast():
        out = model(
            inputs,
            input_lengths,
            text_ids=text_ids,
            text_mask=text_mask,
            with_text=False,
            with_decoder=True,
            colour=colour,
        )
        translation = losses.translation_loss(out.logits, text_ids, text_mask, w.label_smoothing)
    terms = {"translation": translation}
    # Normalise by the global batch's tokens, not this rank's (see global_token_share).
    loss = w.translation_weight * translation * global_token_share(text_mask, runtime)
    if w.signcl_weight > 0:
        terms["signcl"] = loop_parts.signcl_term(out, text_mask, w)
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
    loop = loop_parts.build_loop_state(net, sampler, cfg, run_dir, runtime.device)
    scheduler, guard, manager = loop.scheduler, loop.guard, loop.manager
    dev_loader = None
    if dev_set is not None:
        dev_loader = build_eval_loader(
            dev_set, collate, s.eval_batch_size, cfg.data.num_workers, runtime.pins_memory
        )

    # ---- resume (RNG restored last) or start
    position = loop_parts.restore_or_start(loop, run_ctx, net, cfg.seed, rank, world)
    model = wrap_for_training(net, runtime, sync_batchnorm=s.sync_batchnorm)
    net = unwrap(model)

    def checkpoint(epoch: int, batch_in_epoch: int, step: int) -> Path:
        pos = {"epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step}
        state = loop.state_dict(pos, run_ctx.config, world)
        return save_resumable(manager, step, net, state, {"stage": s.name.value, **pos})

    def evaluate(epoch: int, step: int) -> dict[str, Any]:
        args = (net, dev_loader, tokenizer, cfg, runtime, manager, epoch, step)
        metrics, covered = loop_parts.evaluate_translation(*args)
        metrics["skipped_samples"] = len(dev_set) - covered  # failed to load (skip mode)
        run_ctx.metrics.log("dev", step, {"epoch": epoch, **metrics})
        return metrics

    # ---- the loop
    epoch, step = position["epoch"], position["step"]
    start_batch = position["batch_in_epoch"]
    n_batches, accum = len(sampler), s.grad_accum
    meter = LossMeter(runtime.device)
    bad_batches = windows.BadBatchRule(cfg.data.on_bad_sample, runtime)
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
        tally = loop_parts.EpochTally()
        bar = loop_parts.epoch_bar(n_batches, start_batch, epoch, s.epochs, runtime.is_main)
        window_terms: list[dict[str, torch.Tensor]] = []
        last_synced = False
        loader = loop_parts.train_loader(train_set, sampler, collate, cfg, runtime, epoch)
        for batch_idx, batch in enumerate(loader, start=start_batch):
            window_size, last_in_window = windows.window_of(batch_idx, accum, n_batches)
            if bad_batches.skip(batch):  # on every rank together (windows.py)
                tally.skipped_batches += 1
            else:
                no_sync = runtime.distributed and not last_in_window
                with model.no_sync() if no_sync else contextlib.nullcontext():
                    loss, terms = compute_losses(model, batch, cfg, runtime)
                    guard.observe(loss, batch["names"], batch["inputs"])
                    (loss / window_size).backward()  # NaN too: keeps DDP's all-reduce in step
                window_terms.append(terms)
                last_synced = last_in_window
                tally.samples += len(batch["names"])
            bar.update(1)
            if not last_in_window:
                continue

            trained = len(window_terms)
            outcome = windows.finish_window(
                guard,
                trained_params,
                trained,
                window_size,
                last_synced,
                step,
                stop.requested,
                runtime,
            )
            step += 1
            if outcome.stepped:  # a skipped step's NaNs stay out of the logged means
                for terms in window_terms:
                    meter.add(terms)
            window_terms = []
            loop_parts.log_train_step(
                run_ctx.metrics, meter, step, s.log_every, epoch, scheduler, outcome.grad_norm, bar
            )
            if outcome.stop_requested or loop_parts.reached_max_steps(s.max_steps, step):
                bar.close()
                last_ckpt = checkpoint(epoch, batch_idx + 1, step)
                if outcome.stop_requested:
                    raise TrainingInterrupted(stop.signum or signal.SIGTERM, str(last_ckpt))
                finished_early = True
                break
        bar.close()
        if finished_early:
            break

        # ---- end of epoch: throughput, dev evaluation, checkpoint
        epoch += 1
        start_batch = 0
        bad_samples = train_set.reset_bad_sample_count()
        tally.summary(
            run_ctx.metrics, step, epoch, s.epochs, bad_samples, guard.skipped_total, runtime.device
        )
        if dev_loader is not None and (epoch % s.eval_every == 0 or epoch == s.epochs):
            dev_metrics = evaluate(epoch, step)
        last_ckpt = checkpoint(epoch, 0, step)

    if finished_early and dev_loader is not None:
        dev_metrics = evaluate(epoch, step)
    result = loop_parts.stage_result(run_dir, loop, s.average_best, last_ckpt, dev_metrics, step)
    return {**result, "init_from": str(init_checkpoint) if init_checkpoint else None}
