"""Where a run executes and how: device, precision, process group, seeding, RNG state, signals.

Decided once per run by ``setup_runtime`` and handed to everything else, so models and losses
never pick a device or a dtype themselves.
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import distributed as dist_utils
from ..config import ConfigError
from ..models.sign_embedding import MaskedBatchNorm1d
from ..models.speed_options import compile_regions

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None = full fp32
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def pins_memory(self) -> bool:
        """Whether loaders should page-lock their batches (``pin_memory``): on CUDA, so that the
        ``non_blocking`` host -> device copies overlap with compute."""
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward-pass precision context: bf16 autocast on CUDA when chosen, else a no-op."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def _resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError as e:
        raise ConfigError(f"device: unknown device {spec!r} ({e})") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {spec!r} requested but CUDA is not available")
        if device.index is None:  # one process per GPU under torchrun
            device = torch.device("cuda", dist_utils.local_rank())
    return device


def _resolve_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    raise ConfigError(f"precision: unknown {precision!r} (auto | fp32 | bf16)")


def setup_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Pick the device and autocast dtype and join the process group when launched by torchrun.

    ``auto`` precision means bf16 autocast on CUDA (no grad scaler needed) and fp32 on CPU.
    """
    dev = _resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist_utils.init_from_env(dev.type)  # no-op when already joined or not under torchrun
    runtime = Runtime(
        device=dev,
        dtype=_resolve_dtype(precision, dev),
        rank=dist_utils.get_rank(),
        world_size=dist_utils.get_world_size(),
    )
    log.debug("runtime: %s", runtime)
    return runtime


def _sync_plain_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Plain BatchNorm layers -> torch's SyncBatchNorm (CUDA only). Subclasses with their own
    forward (the masked temporal BatchNorm takes a mask) are left to `_sync_masked_batchnorm`."""
    plain = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    for name, child in module.named_children():
        if type(child) in plain:
            setattr(module, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            _sync_plain_batchnorm(child)
    return module


def _sync_masked_batchnorm(module: torch.nn.Module) -> int:
    """Turn on cross-rank statistics in every masked temporal BatchNorm; returns how many."""
    layers = [m for m in module.modules() if isinstance(m, MaskedBatchNorm1d)]
    for layer in layers:
        layer.sync_across_ranks = True
    return len(layers)


def wrap_for_training(
    model: torch.nn.Module,
    runtime: Runtime,
    find_unused_parameters: bool = False,
    sync_batchnorm: bool = False,
    compile_model: bool = False,
) -> torch.nn.Module:
    """DDP around ``model`` when running distributed (the model itself otherwise).

    ``compile_model`` (``stage.compile``) compiles the model's layers in place first
    (``speed_options.compile_regions``): parameter names, hence checkpoints, are unchanged.

    BatchNorm statistics are per rank by default (each GPU normalises over its share of the
    batch). ``sync_batchnorm`` takes them over the global batch instead: the masked temporal
    BatchNorm layers synchronise on any backend (our own collectives; they do so only while a
    process group is initialised, so the flag is harmless in one process), and the ResNet-18's
    plain BatchNorm becomes torch's SyncBatchNorm on CUDA only (it has no gloo/CPU kernel).
    """
    if compile_model:
        log.info("stage.compile: %d regions compiled in place", compile_regions(model))
    if sync_batchnorm:
        synced = _sync_masked_batchnorm(model)
        log.debug("sync_batchnorm: %d masked temporal BatchNorm layers synchronised", synced)
    if not runtime.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if sync_batchnorm and runtime.device.type == "cuda":
        model = _sync_plain_batchnorm(model)
    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP (state dicts, generation and snapshots use it directly)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def shutdown_process_group() -> None:
    """Leave the process group (entry points call this once, at exit; stages run in one process
    one after another share the group instead of re-creating it)."""
    if dist_utils.is_initialized():
        torch.distributed.destroy_process_group()


# -------------------------------------------------------------------------------------- seeding
def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) the same way on every call."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch CPU and CUDA) as a picklable dict."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned, so a resumed run draws the same random numbers."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            log.warning(
                "checkpoint holds CUDA RNG states for %d devices, this machine has %d: "
                "CUDA RNG not restored (dropout draws will differ from the original run)",
                len(cuda_states),
                torch.cuda.device_count(),
            )


# -------------------------------------------------------------------------------------- signals
class TrainingInterrupted(Exception):
    """Raised by a stage after SIGTERM/SIGINT once a resumable checkpoint is safely written, so
    an in-process caller (the pipeline) does not mistake the run for a finished one."""

    def __init__(self, signum: int, checkpoint: str):
        self.signum = signum
        self.checkpoint = checkpoint
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name}; resumable checkpoint {checkpoint} (resume=auto)")


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop polls at step boundaries.

    The loop then saves a resumable checkpoint and returns, instead of dying mid-write. A second
    signal of the same kind while the first is pending falls through to the previous handler
    (so a stuck run can still be interrupted). Use as a context manager; handlers are restored
    on exit. Outside the main thread (where Python cannot install handlers) it stays inert.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum == signum:
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, frame)
                return
            raise KeyboardInterrupt
        self.signum = signum
        log.warning(
            "received %s: saving a checkpoint at the next step boundary, then stopping",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def observer_generator() -> torch.Generator:
    """The random generator of a loader that only observes a run (evaluation, snapshots).

    A DataLoader draws one number per epoch from its ``generator`` (its workers' base seed),
    and without one from torch's global RNG, which belongs to training (dropout). Observers get
    a generator of their own, so how often a run is evaluated or snapshotted never changes its
    training (docs/determinism.md). Evaluation itself uses no randomness: the value is fixed.
    """
    return torch.Generator().manual_seed(0)


# ------------------------------------------------------------------------------------ batches
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


# ------------------------------------------------------------------------------ loss weighting
def global_token_share(text_mask: torch.Tensor, runtime: Runtime) -> torch.Tensor | float:
    """Factor turning this rank's token-mean loss into its part of the global-batch token mean.

    DDP averages gradients over ranks, so a rank holding ``n_r`` of the batch's ``N`` target
    tokens contributes ``mean_r * n_r * world / N``; the result then equals one process with the
    whole global batch (instead of a mean of per-rank means). 1.0 in one process.
    """
    if not runtime.distributed:
        return 1.0
    local = text_mask.sum().to(runtime.device, torch.float32)
    total = dist_utils.all_reduce_sum(local.clone())
    return local * runtime.world_size / total.clamp_min(1.0)
