"""The one pass of a model over a loader without training: translation, encoding, snapshots.

``eval_batches`` puts the (DDP-unwrapped) model in eval mode under ``torch.no_grad``, moves each
batch to the device exactly as training does (``batch_to_device``, the clip colour change
included), and puts the model back in its previous mode afterwards, also when the consumer
stops early or raises. A batch that collated to None (every sample failed to load,
``data.on_bad_sample=skip``) is skipped and counted, or, where every sample is required (the
tracker's snapshots), refused.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ..models.slt import ModelOutput
from ..training.runtime import batch_to_device

log = logging.getLogger(__name__)


@dataclass
class DeviceBatch:
    """A collated batch's tensors on the device; names, texts and indices stay in ``host``."""

    host: dict[str, Any]
    inputs: torch.Tensor  # (B, T, D) features or (B, T, 3, H, W) frames
    input_lengths: torch.Tensor  # (B,)
    text_ids: torch.Tensor  # (B, L)
    text_mask: torch.Tensor  # (B, L)
    colour: torch.Tensor | None  # (B, 2, 3) with augmented uint8 frames, else None


class EmptyBatch(RuntimeError):
    """A batch had no loadable sample where every sample is required."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class EvalBatches:
    """``for batch in EvalBatches(model, loader, device)``: see the module docstring.

    ``skipped_batches`` counts the None batches passed over; with ``require_all`` the first one
    raises ``EmptyBatch`` with ``empty_message`` instead.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loader: Iterable[dict[str, Any] | None],
        device: torch.device | str,
        require_all: bool = False,
        empty_message: str = "a batch had no loadable sample",
    ):
        self.net = unwrap(model)
        self.loader = loader
        self.device = torch.device(device)
        self.require_all = require_all
        self.empty_message = empty_message
        self.skipped_batches = 0

    def report_coverage(self, covered: int, what: str) -> None:
        """Warn when fewer than the split's samples were ``what`` (translated, encoded): some
        failed to load in skip mode and are left out of the scores."""
        expected = len(self.loader.dataset) if hasattr(self.loader, "dataset") else None
        if expected is not None and covered != expected:
            log.warning(
                "%s %d of the split's %d samples: %d failed to load and are left out of the "
                "scores (%d batch(es) on this rank had no loadable sample)",
                what, covered, expected, expected - covered, self.skipped_batches,
            )  # fmt: skip

    def __iter__(self) -> Iterator[DeviceBatch]:
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                for batch in self.loader:
                    if batch is None:
                        if self.require_all:
                            raise EmptyBatch(self.empty_message)
                        self.skipped_batches += 1
                        continue
                    yield DeviceBatch(batch, *batch_to_device(batch, self.device))
        finally:
            self.net.train(was_training)


def encode_batch(
    net: torch.nn.Module,
    batch: DeviceBatch,
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> ModelOutput:
    """Video and text projections of a batch (text branch on, decoder off), as the contrastive
    loss sees them."""
    with autocast():
        return net(
            batch.inputs,
            batch.input_lengths,
            text_ids=batch.text_ids,
            text_mask=batch.text_mask,
            with_text=True,
            with_decoder=False,
            colour=batch.colour,
        )
