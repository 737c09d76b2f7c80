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

The loop below reads top to bottom; the books it keeps like stage 1 (position, accumulation
windows, the guarded optimizer step, records, checkpoints) are ``training/loop.py``'s
``TrainRun``; the hand-off from stage 1 is ``models/handoff.py``'s, shared with evaluation.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..config import TrainConfig
from ..data.batching import Collator
from ..data.datasets import build_split
from ..eval.translation import build_eval_loader
from ..models import builder
from ..models.handoff import load_checkpoint, locate_checkpoint
from ..training.loop import TrainRun, build_train_sampler, forward_batch, signcl_term
from ..training.question import question_inputs, question_terms, unused_question_parts
from ..training.run_context import RunContext, run_tokenizer
from ..training.runtime import Runtime, StopRequest, seed_everything, wrap_for_training

log = logging.getLogger(__name__)


def compute_losses(
    model: torch.nn.Module, batch: dict[str, Any], cfg: TrainConfig, runtime: Runtime
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward one (share of a) batch; returns the loss to back-propagate and its terms to log."""
    w = cfg.loss
    args = (False, True, w.label_smoothing)  # text branch off, decoder on
    extra = question_inputs(batch, runtime.device, cfg)  # question-based SLT only
    out, text_mask, translation, token_share = forward_batch(model, batch, runtime, *args, extra)
    terms = {"translation": translation}
    # Normalised by the global batch's tokens, not this rank's (see forward_batch).
    loss = w.translation_weight * translation * token_share
    if w.signcl_weight > 0:
        terms["signcl"] = signcl_term(out, batch, cfg)
        loss = loss + w.signcl_weight * terms["signcl"]
    for name, (weight, value) in question_terms(out, batch, cfg).items():  # MLM (no similarity)
        terms[name] = value
        loss = loss + weight * value
    return loss, {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}


def train(cfg: TrainConfig, runtime: Runtime, run_ctx: RunContext, stop: StopRequest) -> dict:
    """Train stage 2 in an opened run (``stages.run_stage``); returns the stage's result."""
    s = cfg.stage
    run_dir = run_ctx.path

    # ---- data and tokenizer (stage 2 after stage 1 must use stage 1's tokenizer)
    init_checkpoint = stage1_tokenizer = None
    if s.init_from is not None:
        init_checkpoint, stage1_tokenizer = locate_checkpoint(s.init_from, "best")
    width = cfg.model.sign_embedding.feature_dim  # what feature files must hold (checked per file)
    train_set = build_split(cfg.data, "train", feature_dim=width)
    dev_set = build_split(cfg.data, "dev", feature_dim=width) if s.eval_every > 0 else None
    tokenizer = run_tokenizer(
        cfg, run_dir, train_set.texts, source_dir=stage1_tokenizer, extra_texts=train_set.questions
    )
    collate = Collator(tokenizer)
    # random batches (texts: for selection.distinct_targets)
    sampler = build_train_sampler(cfg, runtime, len(train_set), texts=train_set.texts)

    # ---- model (text branch dropped), optionally initialised from stage 1
    seed_everything(cfg.seed)  # the same initial weights on every rank
    net = builder.build_model(cfg.model, cfg.data, tokenizer)
    net.drop_text_branch()
    if init_checkpoint is not None and run_ctx.resume_state is None:
        load_checkpoint(net, init_checkpoint)  # by submodule name; the text branch is dropped
    elif init_checkpoint is None:
        log.info("no stage.init_from: end-to-end translation baseline from scratch")
    net = net.to(runtime.device)
    builder.log_parameter_counts(net)  # trainable / frozen, without the text branch
    dev_loader = None
    if dev_set is not None:
        dev_loader = build_eval_loader(
            dev_set, collate, s.eval_batch_size, cfg.data.num_workers, runtime.pins_memory
        )

    # ---- resume (RNG restored last) or start
    run = TrainRun.start(cfg, runtime, run_ctx, stop, net, sampler)
    model = wrap_for_training(  # DDP around net (changed in place)
        net,
        runtime,
        find_unused_parameters=unused_question_parts(cfg),
        sync_batchnorm=s.sync_batchnorm,
        compile_model=s.compile,
    )

    def evaluate() -> dict[str, Any]:
        metrics, covered = run.evaluate_translation(dev_loader, tokenizer)
        metrics["skipped_samples"] = len(dev_set) - covered  # failed to load (skip mode)
        run_ctx.metrics.log("dev", run.step, {"epoch": run.epoch, **metrics})
        return metrics

    # ---- the loop
    dev_metrics: dict[str, Any] = {}
    run.log_start("stage 2")
    while run.running:
        model.train()
        for batch_idx, batch in run.epoch_batches(train_set, collate):
            run.train_micro_batch(model, batch, batch_idx, compute_losses)
            outcome = run.finish_window(batch_idx)
            if outcome is not None and run.after_step(outcome, batch_idx):
                break
        if run.finished_early:
            break

        # ---- end of epoch: throughput, dev evaluation, checkpoint
        run.end_epoch(train_set)
        if dev_loader is not None and (run.epoch % s.eval_every == 0 or run.epoch == s.epochs):
            dev_metrics = evaluate()
        run.checkpoint()

    if run.finished_early and dev_loader is not None:
        dev_metrics = evaluate()
    result = run.result(dev_metrics)
    return {**result, "init_from": str(init_checkpoint) if init_checkpoint else None}
