"""Stage 1 (``stage=contrastive``): video-text contrastive learning jointly with translation.

    loss = contrastive_weight * InfoNCE(video_proj, text_proj)    # in-batch negatives
         + translation_weight * CE(logits, text_ids)               # label smoothing
         + signcl_weight * SignCL(sign_features)                   # optional

The batches come from the selection sampler: shuffled (``selection=random``, the CL baseline and
the reference run) or the pair-selection curriculum fed by one of the pair scores: a reference
run's trajectories (``selection=trajectory``, SCL), target-sentence similarity
(``text_semantic``), a reference snapshot's visual confusability (``visual_confusable``), or
trajectories recorded by this run itself (``online_trajectory``: after every optimizer step the
B x B similarity of each global batch of the step's accumulation window, computed without
gradient from the gathered projections of the loss's forward, goes into
``OnlineTrajectory.update`` on every rank; a step skipped as non-finite records nothing; the
state is part of the sampler's checkpoint, so resuming is exact).

A reference run sets ``tracker.enabled=true`` and stores snapshots of the projected features of
the whole train split before the first update and every ``tracker.interval`` epochs. Snapshots
need every train sample, so the tracker reads the split with ``data.on_bad_sample=error`` whatever
the training loader does: a sample that cannot be read stops the run, naming it and its path.

Every ``stage.retrieval_every`` epochs (default: with each dev evaluation) the dev split's
video->text / text->video retrieval (R@1/5/10, median rank) and, when the records carry gloss
alignments, the Sign Density Ratio go into the ``dev`` record of ``metrics.jsonl``
(``alignment_metrics.py``). Batches that failed to load (``data.on_bad_sample=skip``) follow the
rule of ``windows.py``.

The loop below reads top to bottom; the pieces it shares with stage 2 (checkpoints, the guarded
optimizer step, the run directory, the per-step and per-epoch records: ``loop_parts.py``,
``windows.py``) live in the library.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from .. import distributed as dist_utils
from .. import losses
from ..config import BadSample, SelectionName, TrainConfig
from ..data.dataset import BatchLoader, Collator
from ..data.datasets import build_split
from ..eval.alignment import evaluate_alignment
from ..eval.translation import build_eval_loader
from ..models import builder
from ..models.similarity import pairwise_similarity
from ..models.slt import ModelOutput
from ..rundir.checkpoint import save_resumable
from ..rundir.layout import LossMeter, RunContext, run_tokenizer
from ..selection.online import OnlineTrajectory
from ..selection.samplers import build_batch_sampler
from ..selection.tracker import SnapshotTracker, fingerprint_of, snapshots_dir
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


def run(cfg: TrainConfig | DictConfig) -> dict[str, Any]:
    """Train stage 1 as configured; returns run_dir, best/last checkpoints and final metrics.

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
            with_text=True,
            with_decoder=w.translation_weight > 0,
            colour=colour,
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
        terms["signcl"] = loop_parts.signcl_term(out, text_mask, w)
    loss = w.contrastive_weight * terms["contrastive"]
    if "translation" in terms:
        # Normalise by the global batch's tokens, not this rank's (see global_token_share).
        share = global_token_share(text_mask, runtime)
        loss = loss + w.translation_weight * terms["translation"] * share
    if "signcl" in terms:
        loss = loss + w.signcl_weight * terms["signcl"]
    return loss, {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}


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


def global_batch_similarity(
    out: ModelOutput, indices: torch.Tensor, cfg: TrainConfig, runtime: Runtime
) -> tuple[np.ndarray, np.ndarray]:
    """The global batch's dataset indices (B,) in rank order and its (B, B) similarity
    ``s(video a, text b)`` (``pairwise_similarity``, before the logit scale, no gradient).

    Each rank scores its own videos against the gathered texts and the rows are gathered, so
    every rank holds the very same matrix (no rank recomputes another's rows).
    """
    sim_cfg = cfg.model.similarity
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
        gathered, _ = dist_utils.all_gather_padded(indices.to(runtime.device)[:, None])  # (B, 1)
    return gathered[:, 0].cpu().numpy(), sim.cpu().numpy()


def _check_global_batch(found: np.ndarray, planned: list[int], step: int) -> None:
    """The gathered indices are the sampler's global batch (less samples that failed to load)."""
    ok = found.tolist() == planned if len(found) == len(planned) else set(found) <= set(planned)
    if not ok:
        raise RuntimeError(
            f"step {step}: the gathered batch {found.tolist()[:8]}... is not the sampler's "
            f"global batch {planned[:8]}...: ranks are out of step"
        )


def _train(cfg: TrainConfig, runtime: Runtime, run_ctx: RunContext, stop: StopRequest) -> dict:
    s = cfg.stage
    run_dir = run_ctx.path
    rank, world = runtime.rank, runtime.world_size

    # ---- data and tokenizer (the synthetic data is generated on first use, under a file lock)
    align_every = s.eval_every if s.retrieval_every is None else s.retrieval_every
    train_set = build_split(cfg.data, "train")
    needs_dev = s.eval_every > 0 or align_every > 0
    dev_set = build_split(cfg.data, "dev") if needs_dev else None
    tokenizer = run_tokenizer(cfg, run_dir, train_set.texts)
    collate = Collator(tokenizer)
    trajectory = None
    if cfg.selection.name is SelectionName.online_trajectory:
        trajectory = OnlineTrajectory.from_config(cfg.selection, len(train_set))
    sampler = build_batch_sampler(
        cfg.selection,
        len(train_set),
        s.batch_size,
        s.epochs,
        cfg.seed,
        rank,
        world,
        s.drop_last,
        texts=train_set.texts,
        names=train_set.names,
        language=cfg.data.language,
        run_dir=run_dir,
        trajectory=trajectory,
    )

    # ---- model, optimizer, schedule
    seed_everything(cfg.seed)  # the same initial weights on every rank
    net = builder.build_model(cfg.model, cfg.data, tokenizer).to(runtime.device)  # logs counts
    loop = loop_parts.build_loop_state(net, sampler, cfg, run_dir, runtime.device)
    scheduler, guard, manager = loop.scheduler, loop.guard, loop.manager
    tracker = None
    if cfg.tracker.enabled:
        tracker = SnapshotTracker(
            snapshots_dir(run_dir),
            cfg.tracker.interval,
            s.epochs,
            fingerprint_of(run_ctx.config, train_set.names),
        )
        # Dataset order, no augmentation, and every sample: error mode whatever training does.
        tracker_data = dataclasses.replace(cfg.data, on_bad_sample=BadSample.error)
        tracker_set = build_split(tracker_data, "train", train=False)
        tracker_loader = BatchLoader(  # in dataset order, also through workers
            tracker_set,
            batch_size=s.eval_batch_size,
            shuffle=False,
            collate_fn=collate,
            num_workers=cfg.data.num_workers,
            pin_memory=runtime.pins_memory,
        )
    dev_loader = None
    if dev_set is not None:
        dev_loader = build_eval_loader(
            dev_set, collate, s.eval_batch_size, cfg.data.num_workers, runtime.pins_memory
        )

    # ---- resume (RNG restored last) or start
    position = loop_parts.restore_or_start(loop, run_ctx, net, cfg.seed, rank, world)
    if run_ctx.resume_state is None and tracker is not None and tracker.due(0):
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

    def due(every: int, epoch: int) -> bool:
        return every > 0 and (epoch % every == 0 or epoch == s.epochs)

    def evaluate(epoch: int, step: int, translate: bool, align: bool) -> dict[str, Any]:
        """Dev translation (BLEU, picks the best checkpoint) and/or alignment metrics, logged
        as one ``dev`` record."""
        metrics: dict[str, Any] = {}
        covered = 0
        if translate:
            args = (net, dev_loader, tokenizer, cfg, runtime, manager, epoch, step)
            metrics, covered = loop_parts.evaluate_translation(*args)
        if align:
            sim = cfg.model.similarity
            found = evaluate_alignment(
                net, dev_loader, sim.method, sim.tau, runtime.device, runtime.autocast
            )
            metrics = {**metrics, **found}
            covered = max(covered, found["retrieval_samples"])
            log.info(
                "epoch %d dev retrieval: v2t R@1 %.1f R@5 %.1f medR %.1f, t2v R@1 %.1f, SDR %s",
                epoch,
                found["v2t_r1"],
                found["v2t_r5"],
                found["v2t_medr"],
                found["t2v_r1"],
                f"{found['sdr']:.4f}" if "sdr" in found else "n/a",
            )
        metrics["skipped_samples"] = len(dev_set) - covered
        run_ctx.metrics.log("dev", step, {"epoch": epoch, **metrics})
        return metrics

    # ---- the loop
    epoch, step = position["epoch"], position["step"]
    start_batch = position["batch_in_epoch"]
    n_batches, accum = len(sampler), s.grad_accum
    meter = LossMeter(runtime.device)
    bad_batches = windows.BadBatchRule(cfg.data.on_bad_sample, runtime)
    tap = ForwardTap(net)
    trained_params = [p for p in net.parameters() if p.requires_grad]
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
        tally = loop_parts.EpochTally()
        bar = loop_parts.epoch_bar(n_batches, start_batch, epoch, s.epochs, runtime.is_main)
        window_terms: list[dict[str, torch.Tensor]] = []
        observed: list[tuple[np.ndarray, np.ndarray]] = []  # online_trajectory, this window
        last_synced = False
        loader = loop_parts.train_loader(train_set, sampler, collate, cfg, runtime, epoch)
        for batch_idx, batch in enumerate(loader, start=start_batch):
            window_size, last_in_window = windows.window_of(batch_idx, accum, n_batches)
            if bad_batches.skip(batch):  # on every rank together (windows.py)
                tally.skipped_batches += 1
            else:
                no_sync = runtime.distributed and not last_in_window
                sync = model.no_sync() if no_sync else contextlib.nullcontext()
                with sync, tap.capture():
                    loss, terms = compute_losses(model, batch, cfg, runtime)
                    guard.observe(loss, batch["names"], batch["inputs"])
                    (loss / window_size).backward()  # NaN too: keeps DDP's all-reduce in step
                out = tap.take()
                if trajectory is not None:
                    found = global_batch_similarity(out, batch["indices"], cfg, runtime)
                    planned = sampler.global_batches(epoch)[batch_idx]
                    _check_global_batch(found[0], planned, step)
                    observed.append(found)
                del out
                window_terms.append(terms)
                last_synced = last_in_window
                tally.samples += len(batch["names"])
            bar.update(1)
            if not last_in_window:
                continue

            outcome = windows.finish_window(
                guard,
                trained_params,
                len(window_terms),
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
                for indices, similarity in observed:  # recorded before any checkpoint
                    trajectory.update(indices, similarity)
            window_terms, observed = [], []
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

        # ---- end of epoch: throughput, dev evaluation, snapshot, checkpoint
        epoch += 1
        start_batch = 0
        bad_samples = train_set.reset_bad_sample_count()
        tally.summary(
            run_ctx.metrics, step, epoch, s.epochs, bad_samples, guard.skipped_total, runtime.device
        )
        translate_now, align_now = due(s.eval_every, epoch), due(align_every, epoch)
        if translate_now or align_now:
            dev_metrics = evaluate(epoch, step, translate_now, align_now)
        if tracker is not None and tracker.due(epoch):
            tracker.snapshot(net, tracker_loader, epoch, runtime.device, runtime.autocast)
        last_ckpt = checkpoint(epoch, 0, step)

    if finished_early and dev_loader is not None:
        dev_metrics = evaluate(epoch, step, s.eval_every > 0, align_every > 0)
    return loop_parts.stage_result(run_dir, loop, s.average_best, last_ckpt, dev_metrics, step)
