"""Opt-in speed options of the model: activation checkpointing, channels-last ResNet, compiling.

Each changes how the model runs, never what it computes beyond float rounding, and none changes
a parameter's name, so checkpoints, the stage hand-off and resuming are unaffected (the keys are
resume-free: ``training/resume.py``). Measured at paper scale by ``scripts/bench_train_step.py``;
each is tested against the plain path in ``tests/models/test_speed_options.py``.

* ``model.activation_checkpointing``: every MBart encoder and decoder layer, and the ResNet-18's
  stem and four stages, keep only their inputs for backward and recompute the rest there
  (``torch.utils.checkpoint``, non-reentrant, so it also works where the layer's input needs
  no gradient, e.g. the decoder over frozen embeddings with LoRA inside). Dropout draws are
  replayed (the RNG state is kept), so fp32 results match the plain path. The recompute of a
  ResNet stage runs its BatchNorm in training mode a second time; its running statistics are
  put back afterwards, so the buffers too match a plain step. The frozen text encoder runs
  without gradient and needs none of it.
* ``model.channels_last``: ResNet-18 weights and its input frames in NHWC memory format, the
  layout oneDNN (CPU) and cuDNN (tensor cores) convolve fastest.
* ``stage.compile``: ``torch.compile`` of the same regions, in place (``nn.Module.compile``:
  parameter names unchanged): each MBart layer (the frozen text encoder's too) and the
  ResNet-18's four stages. The variable-length masking around them (boolean indexing, sizes
  taken from the data) stays eager instead of breaking the graph. Each region compiles on its
  first call and again for a new input shape (then with dynamic shapes): the paper-scale
  model's first step took 78 s on a 2-core CPU. Compiled dropout draws its masks from its own
  generator (same distribution, other masks), so a compiled run is not step-for-step the eager
  one; evaluation and beam search run the compiled layers too (compiled again for eval mode).
"""

from __future__ import annotations

import types
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


# ------------------------------------------------------------------- activation checkpointing
def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    """A layer's forward that keeps only its inputs for backward while training with gradient.

    Bound to the layer as its ``forward`` (``checkpoint_layers``); calls the class's forward, so
    a copied model (``copy.deepcopy`` rebinds the method) checkpoints its own layer."""
    forward = type(self).forward
    if self.training and torch.is_grad_enabled():
        return checkpoint(forward, self, *args, use_reentrant=False, **kwargs)
    return forward(self, *args, **kwargs)


def checkpoint_layers(layers: Iterable[nn.Module]) -> int:
    """Make each layer checkpoint itself (its parameters and their names unchanged); returns
    how many."""
    count = 0
    for layer in layers:
        layer.forward = types.MethodType(_checkpointed_forward, layer)
        count += 1
    return count


def _apply(modules: list[nn.Module], x: Tensor) -> Tensor:
    for module in modules:
        x = module(x)
    return x


def _apply_keeping_buffers(modules: list[nn.Module], x: Tensor, calls: list[int]) -> Tensor:
    """``_apply``; from the second call on (the backward's recompute) the modules' buffers
    (BatchNorm running statistics and counters) are put back afterwards, so recomputing does not
    update them twice. ``finally``: torch stops a recompute early once it has what it needs."""
    calls[0] += 1
    if calls[0] == 1:
        return _apply(modules, x)
    buffers = [b for m in modules for b in m.buffers()]
    saved = [b.detach().clone() for b in buffers]
    try:
        return _apply(modules, x)
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)


def resnet_features(backbone: nn.Module, frames: Tensor, checkpointed: bool = False) -> Tensor:
    """torchvision ResNet's forward without ``fc``: frames (N, 3, H, W) -> (N, C). With
    ``checkpointed`` (and training with gradient) the stem and each stage keep only their input
    for backward."""
    checkpointed = checkpointed and backbone.training and torch.is_grad_enabled()
    stem = [backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool]  # (N, 64, H/4, W/4)
    parts = [stem, *([getattr(backbone, name)] for name in RESNET_STAGES)]  # (N, C_k, ...)
    x = frames
    for modules in parts:
        if checkpointed:
            x = checkpoint(_apply_keeping_buffers, modules, x, [0], use_reentrant=False)
        else:
            x = _apply(modules, x)
    return torch.flatten(backbone.avgpool(x), 1)  # (N, 512)


def transformer_layers(model: nn.Module) -> list[nn.Module]:
    """The MBart layers that train: the visual encoder's and the decoder's (the text encoder
    is frozen and runs without gradient; a trainable one is included)."""
    layers = [*model.visual_encoder.encoder.layers, *model.decoder.decoder.layers]
    text = getattr(model, "text_encoder", None)
    if text is not None and not getattr(model, "freeze_text_encoder", True):
        layers += list(text.layers)
    return layers


# ---------------------------------------------------------------------------- applying them
def apply_speed_options(
    model: nn.Module, activation_checkpointing: bool = False, channels_last: bool = False
) -> None:
    """``model.activation_checkpointing`` and ``model.channels_last`` on a
    SignTranslationModel (after its weights and LoRA: nothing here renames or re-creates a
    parameter)."""
    sign = model.sign_embedding
    if activation_checkpointing:
        checkpoint_layers(transformer_layers(model))
        sign.checkpoint_backbone = True
    if channels_last and sign.backbone is not None:
        sign.backbone.to(memory_format=torch.channels_last)
        sign.channels_last = True


def compile_regions(model: nn.Module, **compile_kwargs) -> int:
    """``stage.compile``: ``torch.compile`` each MBart layer (all three stacks: the frozen text
    encoder's forward counts too) and the ResNet's stages, in place; returns how many regions."""
    regions = [*model.visual_encoder.encoder.layers, *model.decoder.decoder.layers]
    if getattr(model, "text_encoder", None) is not None:
        regions += list(model.text_encoder.layers)
    backbone = model.sign_embedding.backbone
    if backbone is not None:
        regions += [getattr(backbone, name) for name in RESNET_STAGES]
    for region in regions:
        region.compile(**compile_kwargs)
    return len(regions)
