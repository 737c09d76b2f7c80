"""What both stage loops share: the loader, the loop state, and ``TrainRun``, the loop's books.

Each stage (``stages/contrastive.py``, ``stages/translate.py``) writes its own loop, read top to
bottom: which data, which model, which loss, when to evaluate. What is the very same logic in
both lives here as functions and one small object:

* ``build_loop_state``: optimizer, warmup/decay schedule, guarded step, checkpoint manager;
* ``TrainRun``: the position in the run (epoch, batch, step), the micro-batches of the current
  accumulation window, the loss meter, the bad-batch rule and the last checkpoint. Its methods
  are the steps of the loop in the order a stage calls them: ``epoch_batches`` (the epoch's
  loader), ``train_micro_batch`` (forward and backward of one micro-batch, or a skip on every
  rank together), ``finish_window`` (the guarded optimizer step at a window's last micro-batch),
  ``after_step`` (the ``train`` record; the checkpoint of a stop request or ``stage.max_steps``),
  ``end_epoch`` and ``checkpoint``;
* ``TrainRun.evaluate_translation``: dev BLEU, which picks the best checkpoint, after
  ``TrainRun.check_weights`` (non-finite weights named instead of evaluated).

Gradient-accumulation windows and bad batches are ``windows.py``; the records ``meters.py``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .. import losses
from ..config import TrainConfig
from ..data.batching import BatchLoader, worker_init_fn
from ..eval.translation import score_rows, translate_loader
from ..models.slt import ModelOutput
from ..rundir.checkpoint import CheckpointManager
from ..rundir.layout import TOKENIZER_DIR
from ..selection.build import build_batch_sampler
from ..selection.samplers import SeededBatches
from .meters import EpochTally, LossMeter, epoch_bar, log_train_step
from .optim import (
    GuardedStep,
    NonFiniteLossError,
    StepOutcome,
    build_optimizer,
    build_scheduler,
    check_weights,
    largest_weight,
    schedule_steps,
)
from .resume import LoopState, save_resumable
from .run_context import RunContext
from .runtime import (
    Runtime,
    StopRequest,
    TrainingInterrupted,
    batch_to_device,
    global_token_share,
    seed_everything,
)
from .windows import BadBatchRule, finish_window, window_of

log = logging.getLogger(__name__)

LossFn = Callable[[torch.nn.Module, dict[str, Any], TrainConfig, Runtime], tuple[Any, dict]]


def signcl_term(out: ModelOutput, batch: dict[str, Any], cfg: TrainConfig) -> torch.Tensor:
    """The SignCL term of both stages' losses, on the sign features in fp32; the margin from
    each clip's video frames and spoken words (``losses.signcl_loss``)."""
    w = cfg.loss
    words = [losses.spoken_units(t, cfg.data.language) for t in batch["texts"]]
    return losses.signcl_loss(
        out.sign_features.float(),  # (B, T', D)
        out.sign_mask.sum(1),
        batch["video_frames"],
        torch.tensor(words, dtype=torch.long),
        w.signcl_margin_min,
        w.signcl_margin_ratio,
        w.signcl_m,
    )


def forward_batch(
    model: torch.nn.Module,
    batch: dict[str, Any],
    runtime: Runtime,
    with_text: bool,
    with_decoder: bool,
    label_smoothing: float,
    extra: dict[str, Any] | None = None,
) -> tuple[ModelOutput, torch.Tensor, torch.Tensor | None, torch.Tensor | float]:
    """One (share of a) batch through the model under the run's precision: ``(output,
    text_mask, translation loss, token share)``; without the decoder the loss is None and the
    share 1. The cross-entropy runs inside the autocast context, in fp32 (autocast's rule for
    it). The token share turns this rank's token-mean loss into its part of the global batch's
    (``global_token_share``, a collective under DDP): the loss to back-propagate is
    ``translation * share``, the one to log ``translation``."""
    inputs, input_lengths, text_ids, text_mask, colour = batch_to_device(batch, runtime.device)
    translation = None
    with runtime.autocast():
        out = model(
            inputs,
            input_lengths,
            text_ids=text_ids,
            text_mask=text_mask,
            with_text=with_text,
            with_decoder=with_decoder,
            colour=colour,
            **(extra or {}),  # the question's inputs (training/question.py)
        )
        if with_decoder:
            translation = losses.translation_loss(out.logits, text_ids, text_mask, label_smoothing)
    share = global_token_share(text_mask, runtime) if with_decoder else 1.0
    return out, text_mask, translation, share


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


def build_train_sampler(
    cfg: TrainConfig, runtime: Runtime, num_samples: int, **strategy_inputs: Any
) -> Any:
    """The stage's batch sampler (``selection.build``) with the run's batch size, epochs, seed,
    rank and drop rule; ``strategy_inputs`` are what a selection strategy reads besides them
    (train texts and names, language, run directory, the online trajectory)."""
    s = cfg.stage
    return build_batch_sampler(
        cfg.selection,
        num_samples,
        s.batch_size,
        s.epochs,
        cfg.seed,
        runtime.rank,
        runtime.world_size,
        s.drop_last,
        **strategy_inputs,
    )


def build_loop_state(
    net: torch.nn.Module, sampler: Any, cfg: TrainConfig, run_dir: Path, device: torch.device
) -> LoopState:
    """Optimizer, warmup/decay schedule, guarded step and checkpoint manager of a stage, built
    from ``cfg.stage`` for ``net`` (already on ``device``) and the sampler's batches per epoch."""
    s = cfg.stage
    optimizer = build_optimizer(net, s.lr, s.weight_decay, s.optimizer_impl.value)
    warmup_steps, total_steps = schedule_steps(
        len(sampler), s.grad_accum, s.epochs, s.warmup_epochs
    )
    scheduler = build_scheduler(optimizer, warmup_steps, total_steps, s.min_lr_ratio)
    guard = GuardedStep(
        net, optimizer, scheduler, s.grad_clip, s.nonfinite.value, s.max_nonfinite, device
    )
    manager = CheckpointManager(run_dir, s.keep_last, s.keep_best)
    return LoopState(optimizer, scheduler, sampler, guard, manager, LossMeter(device))


def restore_or_start(
    loop: LoopState, run_ctx: RunContext, net: torch.nn.Module, seed: int, rank: int, world: int
) -> dict[str, int]:
    """Seed this rank's dropout stream, then restore a resumed run's weights, loop state and RNG
    (last); returns the position ``{epoch, batch_in_epoch, step}`` to continue from."""
    seed_everything(seed + rank)  # dropout streams differ between ranks
    if run_ctx.resume_state is None:
        return {"epoch": 0, "batch_in_epoch": 0, "step": 0}
    return loop.restore(run_ctx.resume_state, run_ctx.resume_from, net, rank, world, seed)


def reached_max_steps(max_steps: int | None, step: int) -> bool:
    """Whether ``stage.max_steps`` ends the run at this step (logged once, when it does)."""
    if max_steps is None or step < max_steps:
        return False
    log.info("reached stage.max_steps=%d", max_steps)
    return True


class TrainRun:
    """Where a stage's loop stands and what it carries between micro-batches (see module doc).

    ``net`` is the bare model (checkpoints, parameters); ``position`` comes from
    ``restore_or_start``. Collectives inside the methods run at the same points on every rank.
    """

    @classmethod
    def start(
        cls,
        cfg: TrainConfig,
        runtime: Runtime,
        run_ctx: RunContext,
        stop: StopRequest,
        net: torch.nn.Module,
        sampler: Any,
    ) -> TrainRun:
        """Optimizer, schedule, guard and checkpoints for ``net`` (on its device, not yet
        wrapped for DDP, which changes it in place); a resumed run's weights, loop state and
        RNG restored, RNG last."""
        loop = build_loop_state(net, sampler, cfg, run_ctx.path, runtime.device)
        rank, world = runtime.rank, runtime.world_size
        position = restore_or_start(loop, run_ctx, net, cfg.seed, rank, world)
        return cls(cfg, runtime, run_ctx, stop, net, loop, position)

    def __init__(
        self,
        cfg: TrainConfig,
        runtime: Runtime,
        run_ctx: RunContext,
        stop: StopRequest,
        net: torch.nn.Module,
        loop: LoopState,
        position: dict[str, int],
    ):
        self.cfg, self.runtime, self.run_ctx, self.stop = cfg, runtime, run_ctx, stop
        self.net, self.loop = net, loop
        self.guard: GuardedStep = loop.guard
        self.epoch, self.step = position["epoch"], position["step"]
        self.start_batch = position["batch_in_epoch"]
        self.n_batches, self.accum = len(loop.sampler), cfg.stage.grad_accum
        self.meter: LossMeter = loop.meter  # checkpointed with the loop state
        self.bad_batches = BadBatchRule(cfg.data.on_bad_sample, runtime)
        self.trained_params = [p for p in net.parameters() if p.requires_grad]
        self.last_checkpoint: Path | None = run_ctx.resume_from
        self.finished_early = False
        self.tally = EpochTally()
        self._window_terms: list[dict[str, torch.Tensor]] = []
        self._last_synced = False
        self._bar = None

    @property
    def resumed(self) -> bool:
        return self.run_ctx.resume_state is not None

    @property
    def running(self) -> bool:
        """Epochs are left and no ``stage.max_steps`` stop happened."""
        return self.epoch < self.cfg.stage.epochs and not self.finished_early

    def log_start(self, stage: str) -> None:
        s = self.cfg.stage
        log.info(
            "%s: %d epochs x %d batches of %d (x%d accumulation), %d process(es)",
            stage, s.epochs, self.n_batches, s.batch_size, self.accum, self.runtime.world_size,
        )  # fmt: skip

    def epoch_batches(self, train_set: Dataset, collate: Any) -> Iterator[tuple[int, Any]]:
        """``(batch number in the epoch, batch)`` of this epoch, from the resumed position."""
        sampler = self.loop.sampler
        sampler.set_epoch(self.epoch, self.start_batch)
        self.tally = EpochTally()
        self._window_terms, self._last_synced = [], False
        is_main, epochs = self.runtime.is_main, self.cfg.stage.epochs
        self._bar = epoch_bar(self.n_batches, self.start_batch, self.epoch, epochs, is_main)
        loader = train_loader(train_set, sampler, collate, self.cfg, self.runtime, self.epoch)
        try:
            yield from enumerate(loader, start=self.start_batch)
        finally:
            self._bar.close()

    def train_micro_batch(
        self, model: torch.nn.Module, batch: dict[str, Any] | None, batch_idx: int, loss_fn: LossFn
    ) -> bool:
        """Forward and backward one micro-batch with ``loss_fn``, or skip it on every rank
        together (``windows.py``); returns whether it trained.

        The backward runs even for a non-finite loss, keeping DDP's all-reduce in step; inside
        an accumulation window only the last micro-batch synchronises gradients.
        """
        self._bar.update(1)
        window_size, last_in_window = window_of(batch_idx, self.accum, self.n_batches)
        if self.bad_batches.skip(batch):
            self.tally.skipped_batches += 1
            return False
        no_sync = self.runtime.distributed and not last_in_window
        with model.no_sync() if no_sync else contextlib.nullcontext():
            loss, terms = loss_fn(model, batch, self.cfg, self.runtime)
            self.guard.observe(loss, batch["names"], batch["inputs"])
            (loss / window_size).backward()
        self._window_terms.append(terms)
        self._last_synced = last_in_window
        self.tally.samples += len(batch["names"])
        return True

    def finish_window(self, batch_idx: int) -> StepOutcome | None:
        """At an accumulation window's last micro-batch, the guarded optimizer step over the
        window (None before it). A skipped step's losses stay out of the logged means."""
        window_size, last_in_window = window_of(batch_idx, self.accum, self.n_batches)
        if not last_in_window:
            return None
        outcome = finish_window(
            self.guard,
            self.trained_params,
            len(self._window_terms),
            window_size,
            self._last_synced,
            self.step,
            self.stop.requested,
            self.runtime,
        )
        self.step += 1
        if outcome.stepped:
            for terms in self._window_terms:
                self.meter.add(terms)
            self.meter.stepped(outcome.grad_norm)
        self._window_terms = []
        return outcome

    def after_step(self, outcome: StepOutcome, batch_idx: int) -> bool:
        """Write the ``train`` record when due; after a stop request, checkpoint and raise
        ``TrainingInterrupted``; at ``stage.max_steps``, checkpoint and return True (the loop
        leaves the epoch and the run)."""
        s = self.cfg.stage
        lr_scheduler = self.loop.scheduler
        log_train_step(
            self.run_ctx.metrics, self.meter, self.step, s.log_every, self.epoch, lr_scheduler,
            self._bar,
        )  # fmt: skip
        if not (outcome.stop_requested or reached_max_steps(s.max_steps, self.step)):
            return False
        self._bar.close()
        self.checkpoint(batch_in_epoch=batch_idx + 1)
        if outcome.stop_requested:
            signum = self.stop.signum or signal.SIGTERM
            raise TrainingInterrupted(signum, str(self.last_checkpoint))
        self.finished_early = True
        return True

    def end_epoch(self, train_set: Any) -> None:
        """Count the finished epoch and write its ``train_epoch`` record (a collective)."""
        self.epoch += 1
        self.start_batch = 0
        bad_samples = train_set.reset_bad_sample_count()
        self.tally.summary(
            self.run_ctx.metrics, self.step, self.epoch, self.cfg.stage.epochs, bad_samples,
            self.guard.skipped_total, self.runtime.device,
        )  # fmt: skip

    def checkpoint(self, batch_in_epoch: int = 0) -> Path:
        """A resumable checkpoint at the current position (a collective)."""
        position = {"epoch": self.epoch, "batch_in_epoch": batch_in_epoch, "step": self.step}
        state = self.loop.state_dict(position, self.run_ctx.config, self.runtime.world_size)
        meta = {"stage": self.cfg.stage.name.value, **position}
        self.last_checkpoint = save_resumable(self.loop.manager, self.step, self.net, state, meta)
        return self.last_checkpoint

    def check_weights(self, what: str = "dev evaluation") -> None:
        """Raise NonFiniteWeightsError naming the parameters and buffers that hold NaN/inf,
        before ``what`` uses them (one pass over the weights, nothing beside an evaluation)."""
        check_weights(self.net, f"{what} at step {self.step} (epoch {self.epoch})")

    def evaluate_translation(self, dev_loader: DataLoader, tokenizer: Any) -> tuple[dict, int]:
        """Dev BLEU-4/ROUGE-L, logged, offered to the checkpoint manager as a best-checkpoint
        candidate. Returns the metrics and how many dev samples they cover (fewer than the
        split when samples failed to load in skip mode); the stage writes the ``dev`` record.

        Non-finite weights stop it before decoding, named (``check_weights``). Finite weights
        can still give non-finite outputs (a run diverged by a huge learning rate: every step
        since skipped as non-finite); when the dev pass then fails inside decoding, the error
        says so, with the guard's account of the skipped steps, chained to the original."""
        cfg, runtime = self.cfg, self.runtime
        generation, device, autocast = cfg.model.generation, runtime.device, runtime.autocast
        self.check_weights()
        try:
            rows = translate_loader(self.net, dev_loader, tokenizer, generation, device, autocast)
        except FloatingPointError as err:  # beam search's non-finite logits
            if self.guard.skipped_in_row == 0:
                raise
            name, top = largest_weight(self.net)
            raise NonFiniteLossError(
                f"dev evaluation at step {self.step} (epoch {self.epoch}) failed "
                f"({type(err).__name__}: {err}) after {self.guard.describe_streak()}: the "
                f"weights are finite (largest |weight| {top:.3g}, in {name}), but training's "
                "forwards with them were not, and most likely neither were the dev outputs: "
                "the run has diverged (lower stage.lr), or see the skipped steps' warnings"
            ) from err
        metrics = score_rows(rows, cfg.data.language)
        log.info(
            "epoch %d dev: BLEU-4 %.2f ROUGE-L %.2f",
            self.epoch,
            metrics["bleu4"],
            metrics.get("rouge_l", float("nan")),
        )
        entry = {
            "epoch": self.epoch,
            "step": self.step,
            "bleu4": metrics["bleu4"],
            "rouge_l": metrics.get("rouge_l", 0.0),
        }
        self.loop.manager.consider_best(entry, self.net)
        return metrics, len(rows)

    def result(self, dev_metrics: dict[str, Any]) -> dict[str, Any]:
        """Average the best checkpoints when asked, then the summary a stage's ``run`` returns."""
        manager = self.loop.manager
        if self.cfg.stage.average_best:
            manager.average_best()
        best = manager.best_path()
        run_dir = self.run_ctx.path
        return {
            "run_dir": str(run_dir),
            "best_checkpoint": str(best) if best else None,
            "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "tokenizer_dir": str(run_dir / TOKENIZER_DIR),
            "dev_metrics": dev_metrics,
            "best_dev": manager.best[0] if manager.best else None,
            "steps": self.step,
            "nonfinite_skipped": self.guard.skipped_total,
        }
