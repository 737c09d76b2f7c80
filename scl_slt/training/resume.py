"""Resuming a run: where to resume from, whether the config allows it, and the loop state.

A resumable checkpoint (``rundir/checkpoint.py``) carries, besides the weights, the loop state
of ``LoopState`` (optimizer, schedule, sampler position and state, non-finite guard, best-on-dev
ranking), the resolved config and every rank's RNG state. Restoring puts all of it back, RNG
last, so an interrupted-and-resumed run trains on the same batches with the same random draws
as an uninterrupted one.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from .. import __version__
from .. import distributed as dist_utils
from ..config import ConfigError, TrainConfig
from ..distributed import on_main_process
from ..rundir.checkpoint import (
    CHECKPOINTS,
    MARKER,
    STATE_FILE,
    CheckpointError,
    CheckpointManager,
    find_latest_checkpoint,
    load_weights,
    step_checkpoints,
    verify_checkpoint,
)
from .runtime import rng_state, seed_everything, set_rng_state

log = logging.getLogger(__name__)

# Keys that may change between an interrupted run and its resumption: where things live, how
# the run is observed, how fast it runs, and when it stops. Everything else changes what is
# trained and refuses.
RESUME_FREE_KEYS = (
    *("run_dir", "resume", "device", "precision", "model.mbart_path", "model.tokenizer_path"),
    *("data.num_workers", "data.root", "data.labels_dir", "data.feature_root", "data.frame_root"),
    *("data.frame_cache", "data.synthetic.cache_dir", "model.generation", "stage.eval_every"),
    *("stage.eval_batch_size", "stage.keep_last", "stage.keep_best", "stage.average_best"),
    *("stage.nonfinite", "stage.max_nonfinite", "stage.log_every", "stage.max_steps"),
    # how fast, not what: the same training to float tolerance (models/speed_options.py)
    *("stage.optimizer_impl", "stage.compile", "model.activation_checkpointing"),
    "model.channels_last",
    "retrieval",  # how dev retrieval is scored, not training; each dev record names its protocol
    *("selection.diagnostics", "selection.diagnostics_reference"),  # measured, not trained
)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


@functools.cache
def _schema_defaults() -> dict[str, Any]:
    """Every key of the training schema with its default (enums as strings, unresolved)."""
    schema = OmegaConf.structured(TrainConfig)
    return _flatten(OmegaConf.to_container(schema, resolve=False, enum_to_str=True))


def resume_config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: saved -> current`` for every key that matters and differs. A key the saved config
    lacks (added to the schema after the checkpoint was written) is no difference while the
    current run keeps its default: a new key's default is the behaviour from before it."""
    a, b = _flatten(saved), _flatten(current)
    defaults = _schema_defaults()
    diffs = []
    for key in sorted(set(a) | set(b)):
        if any(key == f or key.startswith(f + ".") for f in RESUME_FREE_KEYS):
            continue
        if key not in a and key in defaults and b.get(key) == defaults[key]:
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            diffs.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return diffs


def locate_resume(resume: str, run_dir: Path) -> Path | None:
    """The checkpoint to resume from, or None to start fresh.

    ``none`` refuses a run directory that already holds checkpoints (no silent mixing of two
    runs); ``auto`` takes the newest complete one (or starts fresh); a path must be resumable.
    """
    root = run_dir / CHECKPOINTS
    if resume == "none":
        if any((p / MARKER).is_file() for p in step_checkpoints(root)):
            raise ConfigError(
                f"resume: run_dir {run_dir} already holds checkpoints; pass resume=auto to "
                "continue it or choose a new run_dir"
            )
        return None
    if resume == "auto":
        latest = find_latest_checkpoint(root)
        if latest is None:
            log.info("resume=auto: no complete checkpoint under %s, starting fresh", root)
        return latest
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file() and (path / CHECKPOINTS).is_dir():
        path = find_latest_checkpoint(path / CHECKPOINTS)  # a run directory was given
        if path is None:
            raise CheckpointError(f"resume: {resume} holds no complete checkpoint")
    verify_checkpoint(path)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"resume: {path} has no {STATE_FILE} (weights-only checkpoint)")
    return path


def save_resumable(
    manager: CheckpointManager,
    step: int,
    model: torch.nn.Module,
    train_state: dict[str, Any],
    meta: dict[str, Any],
) -> Path:
    """Collective: gather every rank's RNG state, write on rank 0, return the path everywhere."""
    train_state = train_state | {"rng": dist_utils.all_gather_object(rng_state())}
    return on_main_process(lambda: manager.save(step, model.state_dict(), train_state, meta))


def restore_rng(train_state: dict[str, Any], rank: int, world_size: int, seed: int) -> None:
    """Put this rank's RNG back where the checkpointed run had it."""
    states = train_state["rng"]
    if len(states) == world_size:
        set_rng_state(states[rank])
    else:
        log.warning(
            "checkpoint was written by %d ranks, resuming on %d: RNG streams re-seeded, so "
            "dropout draws differ from an uninterrupted run",
            len(states),
            world_size,
        )
        seed_everything(seed + 7919 * (train_state["step"] + 1) + rank)


@dataclass
class LoopState:
    """The training-loop objects a resumable checkpoint carries besides weights and RNG.

    A position ``{epoch, batch_in_epoch, step}`` says the next batch to train is
    ``batch_in_epoch`` of ``epoch``. bf16 autocast needs no gradient scaler: none is saved.
    The loss window (``meters.LossMeter``: the sums since the last ``train`` record, one per
    rank) is saved too, so a resumed run writes the same records as an uninterrupted one.
    """

    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: Any
    guard: Any
    manager: CheckpointManager
    meter: Any

    def state_dict(self, position: dict[str, int], config: dict, world_size: int) -> dict:
        """Collective (every rank's loss window is gathered); the same dict on every rank."""
        return {
            **position,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "guard": self.guard.state_dict(),
            "best": self.manager.state_dict(),
            "loss_window": dist_utils.all_gather_object(self.meter.state_dict()),
            "config": config,
            "world_size": world_size,
            "version": __version__,
        }

    def restore(
        self,
        state: dict[str, Any],
        weights_from: Path,
        model: torch.nn.Module,
        rank: int,
        world_size: int,
        seed: int,
    ) -> dict[str, int]:
        """Load weights (strictly), then every loop state, then this rank's RNG (last, so that
        nothing consumes random numbers in between). Returns the position."""
        model.load_state_dict(load_weights(weights_from, verify=False))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.guard.load_state_dict(state["guard"])
        self.manager.load_state_dict(state["best"])
        self._restore_loss_window(state.get("loss_window"), weights_from, rank, world_size)
        restore_rng(state, rank, world_size, seed)
        return {k: int(state[k]) for k in ("epoch", "batch_in_epoch", "step")}

    def _restore_loss_window(
        self, windows: list[dict] | None, path: Path, rank: int, world_size: int
    ) -> None:
        """This rank's loss window; with another number of ranks all of it on rank 0 (the
        record's mean needs only the totals); none in an older checkpoint (an empty meter)."""
        if windows is None:
            log.warning(
                "checkpoint %s has no loss window (written by an older version): the first "
                "train record after resuming averages only the steps trained from here",
                path,
            )
        elif len(windows) == world_size:
            self.meter.load_state_dict(windows[rank])
        elif rank == 0:
            self.meter.load_state_dict(self.meter.merged(windows))
