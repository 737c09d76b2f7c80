"""Stage 1 (``stage=contrastive``): video-text contrastive learning jointly with translation.

    loss = contrastive_weight * InfoNCE(video_proj, text_proj)    # in-batch negatives
         + translation_weight * CE(logits, text_ids)               # label smoothing
         + signcl_weight * SignCL(sign_features)                   # optional

The batches come from the selection sampler: shuffled (``selection=random``, the CL baseline and
the reference run) or the pair-selection curriculum fed by one of the pair scores: a reference
run's trajectories (``selection=trajectory``, SCL), target-sentence similarity
(``text_semantic``), a reference snapshot's visual similarity (``visual_curriculum``), or
trajectories of this run's own snapshots (``self_trajectory``: the tracker snapshots the train
split every ``tracker.interval`` epochs and rank 0 scores each snapshot against the first one
before the epoch's checkpoint, ``selection/self_reference.py``; the time of both is logged as a
``self_reference`` record), or trajectories recorded by this run itself after every step
(``online_trajectory``: after every optimizer step the
B x B similarity of each global batch of the step's accumulation window, computed without
gradient from the gathered projections of the loss's forward, goes into
``OnlineTrajectory.update`` on every rank; a step skipped as non-finite records nothing; the
state is part of the sampler's checkpoint, so resuming is exact). ``selection=san`` instead mines
each anchor's hard negatives into the batch from ``selection.checkpoint``'s sign embeddings
(``selection/hard_negatives.py``).

A reference run sets ``tracker.enabled=true`` and stores snapshots of the projected features of
the whole train split before the first update and every ``tracker.interval`` epochs. Snapshots
need every train sample, so the tracker reads the split with ``data.on_bad_sample=error`` whatever
the training loader does: a sample that cannot be read stops the run, naming it and its path.

Every ``stage.retrieval_every`` epochs (default: with each dev evaluation) the dev split's
video->text / text->video retrieval (R@1/5/10, median rank) and, when the records carry gloss
alignments, the Sign Density Ratio go into the ``dev`` record of ``metrics.jsonl``
(``alignment_metrics.py``). Batches that failed to load (``data.on_bad_sample=skip``) follow the
rule of ``windows.py``.

At the start of every epoch rank 0 logs what its global batches hold as one ``batch_diagnostics``
record (``selection/diagnostics.py``: identical / near-identical targets among the in-batch
negatives; with ``selection.diagnostics_reference``, δ, similarity and category mix).

The loop below reads top to bottom; the books it keeps like stage 2 (position, accumulation
windows, the guarded optimizer step, records, checkpoints) are ``training/loop.py``'s
``TrainRun``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
import torch

from .. import losses
from ..config import BadSample, SelectionName, TrainConfig
from ..data.batching import BatchLoader, Collator
from ..data.datasets import build_split
from ..eval.alignment import evaluate_alignment
from ..eval.translation import build_eval_loader
from ..models import builder
from ..selection.diagnostics import diagnostics_for
from ..selection.online import ForwardTap, OnlineTrajectory, observe_global_batch
from ..selection.self_reference import SelfReference
from ..selection.tracker import SnapshotTracker, fingerprint_of, snapshots_dir
from ..training.loop import TrainRun, build_train_sampler, forward_batch, signcl_term
from ..training.question import question_inputs, question_terms, unused_question_parts
from ..training.run_context import RunContext, run_tokenizer
from ..training.runtime import (
    Runtime,
    StopRequest,
    observer_generator,
    seed_everything,
    wrap_for_training,
)

log = logging.getLogger(__name__)


def compute_losses(
    model: torch.nn.Module, batch: dict[str, Any], cfg: TrainConfig, runtime: Runtime
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward one (share of a) batch; returns the loss to back-propagate and its terms to log."""
    w = cfg.loss
    with_decoder = w.translation_weight > 0
    args = (True, with_decoder, w.label_smoothing)  # text branch on: the contrastive term
    extra = question_inputs(batch, runtime.device, cfg)  # question-based SLT only
    out, text_mask, translation, token_share = forward_batch(model, batch, runtime, *args, extra)
    terms: dict[str, torch.Tensor] = {}
    if translation is not None:
        terms["translation"] = translation
    sim = cfg.model.similarity
    keys = batch["texts"] if w.mask_duplicate_texts else None
    terms["contrastive"] = losses.output_contrastive_loss(out, sim.method, sim.tau, keys)
    if w.signcl_weight > 0:
        terms["signcl"] = signcl_term(out, batch, cfg)
    loss = w.contrastive_weight * terms["contrastive"]
    if "translation" in terms:  # normalised by the global batch's tokens, not this rank's
        loss = loss + w.translation_weight * terms["translation"] * token_share
    if "signcl" in terms:
        loss = loss + w.signcl_weight * terms["signcl"]
    for name, (weight, value) in question_terms(out, batch, cfg).items():
        terms[name] = value
        loss = loss + weight * value
    return loss, {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}


def train(cfg: TrainConfig, runtime: Runtime, run_ctx: RunContext, stop: StopRequest) -> dict:
    """Train stage 1 in an opened run (``stages.run_stage``); returns the stage's result."""
    s = cfg.stage
    run_dir = run_ctx.path

    # ---- data and tokenizer (the synthetic data is generated on first use, under a file lock)
    align_every = s.eval_every if s.retrieval_every is None else s.retrieval_every
    width = cfg.model.sign_embedding.feature_dim  # what feature files must hold (checked per file)
    train_set = build_split(cfg.data, "train", feature_dim=width)
    needs_dev = s.eval_every > 0 or align_every > 0
    dev_set = build_split(cfg.data, "dev", feature_dim=width) if needs_dev else None
    tokenizer = run_tokenizer(cfg, run_dir, train_set.texts, extra_texts=train_set.questions)
    collate = Collator(tokenizer)
    trajectory = None
    if cfg.selection.name is SelectionName.online_trajectory:
        trajectory = OnlineTrajectory.from_config(cfg.selection, len(train_set))
    self_ref = None
    if cfg.selection.name is SelectionName.self_trajectory:
        sim = cfg.model.similarity
        self_ref = SelfReference(
            run_dir, len(train_set), cfg.tracker.interval, s.epochs, sim.method, sim.tau,
            runtime.device,
        )  # fmt: skip
    sampler = build_train_sampler(
        cfg,
        runtime,
        len(train_set),
        texts=train_set.texts,
        names=train_set.names,
        language=cfg.data.language,
        run_dir=run_dir,
        trajectory=trajectory if self_ref is None else self_ref,  # in-run selections
        data=cfg.data,  # san: encodes the train split with selection.checkpoint
        device=runtime.device,
    )
    diagnostics = diagnostics_for(cfg, train_set.records)  # what each epoch's batches hold

    # ---- model, snapshots, dev loader
    seed_everything(cfg.seed)  # the same initial weights on every rank
    net = builder.build_model(cfg.model, cfg.data, tokenizer).to(runtime.device)  # logs counts
    tracker = None
    if cfg.tracker.enabled or self_ref is not None:
        tracker = SnapshotTracker(
            snapshots_dir(run_dir),
            cfg.tracker.interval,
            s.epochs,
            fingerprint_of(run_ctx.config, train_set.names),
            final=cfg.tracker.enabled,  # self_trajectory alone: no use for the last one
        )
        # Dataset order, no augmentation, and every sample: error mode whatever training does.
        tracker_data = dataclasses.replace(cfg.data, on_bad_sample=BadSample.error)
        tracker_set = build_split(tracker_data, "train", train=False, feature_dim=width)
        tracker_loader = BatchLoader(  # in dataset order, also through workers
            tracker_set,
            batch_size=s.eval_batch_size,
            shuffle=False,
            collate_fn=collate,
            num_workers=cfg.data.num_workers,
            pin_memory=runtime.pins_memory,
            generator=observer_generator(),  # snapshots never draw from training's RNG
        )
    dev_loader = None
    if dev_set is not None:
        dev_loader = build_eval_loader(
            dev_set, collate, s.eval_batch_size, cfg.data.num_workers, runtime.pins_memory
        )

    # ---- resume (RNG restored last) or start
    run = TrainRun.start(cfg, runtime, run_ctx, stop, net, sampler)

    def snapshot() -> None:
        """The tracker's snapshot after ``run.epoch`` epochs; self_trajectory scores it."""
        started = time.perf_counter()
        tracker.snapshot(net, tracker_loader, run.epoch, runtime.device, runtime.autocast)
        if self_ref is not None and self_ref.due(run.epoch):
            record = {"epoch": run.epoch, "snapshot_s": round(time.perf_counter() - started, 3)}
            if run.epoch > 0:  # snapshot 0 is scored with the first δ
                record.update(self_ref.update(run.epoch))
            run_ctx.metrics.log("self_reference", run.step, record)

    if not run.resumed and tracker is not None and tracker.due(0):
        snapshot()
    if run.resumed and self_ref is not None:
        self_ref.ensure(run.epoch)  # the δ the next epoch needs (rescored if missing)
    # Pure contrastive pre-training leaves the decoder unused: DDP must be told.
    model = wrap_for_training(
        net,
        runtime,
        find_unused_parameters=cfg.loss.translation_weight == 0 or unused_question_parts(cfg),
        sync_batchnorm=s.sync_batchnorm,
        compile_model=s.compile,
    )  # DDP around net (changed in place); net stays the model itself

    def due(every: int, epoch: int) -> bool:
        return every > 0 and (epoch % every == 0 or epoch == s.epochs)

    def evaluate(translate: bool, align: bool) -> dict[str, Any]:
        """Dev translation (BLEU, picks the best checkpoint) and/or alignment metrics, logged
        as one ``dev`` record."""
        metrics: dict[str, Any] = {}
        covered = 0
        if translate:
            metrics, covered = run.evaluate_translation(dev_loader, tokenizer)
        if align:
            run.check_weights("dev retrieval")
            sim = cfg.model.similarity
            found = evaluate_alignment(
                net, dev_loader, sim.method, sim.tau, runtime.device,
                cfg.retrieval, cfg.data.language, runtime.autocast,
            )  # fmt: skip
            metrics = {**metrics, **found}
            covered = max(covered, found["retrieval_samples"])
            log.info(
                "epoch %d dev retrieval: v2t R@1 %.1f R@5 %.1f medR %.1f, t2v R@1 %.1f, SDR %s",
                run.epoch,
                found["v2t_r1"],
                found["v2t_r5"],
                found["v2t_medr"],
                found["t2v_r1"],
                f"{found['sdr']:.4f}" if "sdr" in found else "n/a",
            )
        metrics["skipped_samples"] = len(dev_set) - covered
        run_ctx.metrics.log("dev", run.step, {"epoch": run.epoch, **metrics})
        return metrics

    # ---- the loop
    tap = ForwardTap(net)
    dev_metrics: dict[str, Any] = {}
    run.log_start("stage 1")
    while run.running:
        if diagnostics is not None and run.start_batch == 0:  # (a resumed epoch has its record)
            diagnostics.log_epoch(sampler, run.epoch, run.step, run_ctx.metrics)
        model.train()
        observed: list[tuple[np.ndarray, np.ndarray]] = []  # online_trajectory, this window
        for batch_idx, batch in run.epoch_batches(train_set, collate):
            with tap.capture():
                trained = run.train_micro_batch(model, batch, batch_idx, compute_losses)
            out = tap.take() if trained else None
            if out is not None and trajectory is not None:
                planned = sampler.global_batches(run.epoch)[batch_idx]
                sim_cfg, step = cfg.model.similarity, run.step
                found = observe_global_batch(out, batch["indices"], planned, sim_cfg, step)
                observed.append(found)
            del out
            outcome = run.finish_window(batch_idx)
            if outcome is None:
                continue
            if outcome.stepped:  # recorded before any checkpoint
                for indices, similarity in observed:
                    trajectory.update(indices, similarity)
            observed = []
            if run.after_step(outcome, batch_idx):
                break
        if run.finished_early:
            break

        # ---- end of epoch: throughput, dev evaluation, snapshot, checkpoint
        run.end_epoch(train_set)
        translate_now, align_now = due(s.eval_every, run.epoch), due(align_every, run.epoch)
        if translate_now or align_now:
            dev_metrics = evaluate(translate_now, align_now)
        if tracker is not None and tracker.due(run.epoch):
            run.check_weights("snapshot")
            snapshot()
        run.checkpoint()

    if run.finished_early and dev_loader is not None:
        dev_metrics = evaluate(s.eval_every > 0, align_every > 0)
    return run.result(dev_metrics)
