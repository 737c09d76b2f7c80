"""Sign embedding (method §1): per-frame ResNet-18 (or given features) -> temporal conv block.

`[Conv1d k5 -> BN -> ReLU -> MaxPool 2] x 2` downsamples time by 4, then a linear layer maps to
the encoder width. Variable-length batches are exact: padded steps are zeroed before every
convolution and every pooling, batch norm takes its statistics from valid steps only, and
pooling rounds up (`ceil`), so a sample's outputs do not depend on how much padding it was given
and a clip of 1..3 frames still yields one token. Frames come as uint8 pixels
(`data.frames_uint8`, ImageNet-normalised here on the model's device, with the clips' colour
change when the batch has one) or normalised float32.

ImageNet weights are never downloaded: `resnet18_weights` reads them from the local torch hub
cache or a given file and says where to put the file when it is missing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Modality, SignEmbeddingConfig
from ..data.frames import normalise_frames
from ..distributed import all_reduce_sum_with_grad
from .speed_options import resnet_features

log = logging.getLogger(__name__)

RESNET18_FEATURES = 512
IMAGENET_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"  # torchvision V1


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths -> (B, max_len) bool, True on valid steps."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def downsampled_lengths(lengths: Tensor, blocks: int = 2) -> Tensor:
    """Valid lengths after `blocks` ceil-mode max-pools of size 2: ceil(L / 2) each time."""
    for _ in range(blocks):
        lengths = (lengths + 1) // 2
    return lengths


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over (B, C, T) whose batch statistics come from valid steps only.

    Same parameters and buffers as `nn.BatchNorm1d` (so state dicts interchange); padded steps
    come out as zeros. Normalising the (N_valid, C) matrix of valid steps is exactly what a
    plain BatchNorm1d would do on the concatenation of the unpadded clips.

    `sync_across_ranks` (a plain attribute, not in the state dict; set by
    `runtime.wrap_for_training(sync_batchnorm=True)`) makes training-mode statistics those of the
    valid steps of every rank of the process group, so a multi-GPU run normalises as one process
    would on the global batch. Gradients cross ranks as with torch's SyncBatchNorm. Without a
    process group, and in eval mode, it changes nothing.
    """

    sync_across_ranks: bool = False

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x (B, C, T), mask (B, T)
        valid = x.transpose(1, 2)[mask]  # (N_valid, C)
        factor = 0.0  # running-average update factor, as nn.BatchNorm1d computes it
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
        if self._syncs_now():
            normed = self._synced_batch_norm(valid, factor)  # (N_valid, C)
        else:
            normed = F.batch_norm(
                valid,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                self.training or not self.track_running_stats,
                factor,
                self.eps,
            )  # (N_valid, C)
        out = x.new_zeros(x.shape[0], x.shape[2], x.shape[1])  # (B, T, C)
        out[mask] = normed.to(out.dtype)
        return out.transpose(1, 2)  # (B, C, T)

    def _syncs_now(self) -> bool:
        """Statistics cross ranks in training, with the flag set, inside a process group."""
        in_group = dist.is_available() and dist.is_initialized()
        return self.training and self.sync_across_ranks and in_group

    def _synced_batch_norm(self, valid: Tensor, factor: float) -> Tensor:
        """Normalise this rank's valid steps with the statistics of all ranks' valid steps.

        Two passes (global mean, then the global sum of squares about it) keep the variance
        accurate when the mean is large against the spread. A rank without valid steps still
        takes part in both collectives. Statistics in float32 whatever the autocast dtype.
        """
        local = valid.float()  # (N_local, C)
        count = local.new_tensor([local.shape[0]])  # (1,)
        sums = all_reduce_sum_with_grad(torch.cat([local.sum(0), count]))  # (C + 1,)
        total = int(sums[-1].item())  # host sync: for the size check and the unbiased factor
        if total < 2:
            raise ValueError(
                f"MaskedBatchNorm1d: expected more than 1 valid step over all ranks when "
                f"training, got {total}"
            )
        mean = sums[:-1] / total  # (C,)
        centred = local - mean  # (N_local, C)
        var = all_reduce_sum_with_grad((centred * centred).sum(0)) / total  # (C,) biased
        normed = centred * torch.rsqrt(var + self.eps)  # (N_local, C)
        if self.affine:
            normed = normed * self.weight + self.bias
        if self.track_running_stats:
            with torch.no_grad():  # running variance unbiased over the global count
                self.running_mean.mul_(1.0 - factor).add_(mean, alpha=factor)
                self.running_var.mul_(1.0 - factor).add_(var * total / (total - 1), alpha=factor)
        return normed


class TemporalBlock(nn.Module):
    """Conv1d (k, same padding) -> masked BN -> ReLU -> MaxPool 2 (ceil), padding kept at zero."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"model.sign_embedding.kernel must be odd, got {kernel}")
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, padding=kernel // 2, bias=False)
        self.bn = MaskedBatchNorm1d(out_dim)
        self.pool = nn.MaxPool1d(2, ceil_mode=True)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        mask = lengths_to_mask(lengths, x.shape[2])  # (B, T)
        x = x * mask[:, None, :].to(x.dtype)  # (B, C, T) zero padding, as a lone clip would see
        x = F.relu(self.bn(self.conv(x), mask))  # (B, C', T), padding exactly zero
        # Post-ReLU values are >= 0, so a zero padded step never wins a max over a valid one.
        return self.pool(x), downsampled_lengths(lengths, 1)  # (B, C', ceil(T/2))


def resnet18_backbone() -> nn.Module:
    """torchvision ResNet-18 without its classifier: (N, 3, H, W) -> (N, 512)."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    net.fc = nn.Identity()
    return net


def imagenet_weights_path() -> Path:
    """Where torchvision keeps the ImageNet ResNet-18 file in the local torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(IMAGENET_URL).name


def resnet18_weights(spec: str) -> dict[str, Tensor] | None:
    """ResNet-18 weights named by `model.sign_embedding.pretrained` (none | imagenet | <path>).

    Returns None for `none` (random init). Never downloads: a missing file is an error that
    names the expected path and how to obtain it.
    """
    if spec == "none":
        return None
    if spec == "imagenet":
        path = imagenet_weights_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"model.sign_embedding.pretrained=imagenet: {path} not found and nothing is "
                f'downloaded at run time. On a machine with internet run `python -c "import '
                f"torchvision; torchvision.models.resnet18(weights='IMAGENET1K_V1')\"` (or fetch "
                f"{IMAGENET_URL}) and copy the file to {path} (the torch hub dir follows "
                f"$TORCH_HOME), or set model.sign_embedding.pretrained=<path to the .pth>."
            )
    else:
        path = Path(os.path.expanduser(spec))
        if not path.is_file():
            raise FileNotFoundError(
                f"model.sign_embedding.pretrained: ResNet-18 weights file not found: {path} "
                f"(expected none | imagenet | a path to a .pth state dict)"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors of a corrupt file
        raise ValueError(f"cannot read ResNet-18 weights {path}: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"ResNet-18 weights {path}: expected a state dict, got {type(state)}")
    log.info("ResNet-18 weights from %s", path)
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


class SignEmbedding(nn.Module):
    """Clips -> (B, T', D) sign features, T' = ceil(ceil(T / 2) / 2), with lengths and mask.

    ``checkpoint_backbone`` and ``channels_last`` (plain attributes, not in the state dict; set
    by ``speed_options.apply_speed_options`` from ``model.activation_checkpointing`` and
    ``model.channels_last``): recompute the ResNet's activations in backward, and feed it NHWC
    frames (its weights converted there)."""

    checkpoint_backbone: bool = False
    channels_last: bool = False

    def __init__(self, cfg: SignEmbeddingConfig, modality: Modality | str, out_dim: int):
        super().__init__()
        self.modality = Modality(modality)
        self.feature_dim = cfg.feature_dim
        if self.modality is Modality.frames:
            self.backbone = resnet18_backbone()
            in_dim = RESNET18_FEATURES
        else:
            self.backbone = None
            in_dim = cfg.feature_dim
        self.blocks = nn.ModuleList(
            [
                TemporalBlock(in_dim, cfg.hidden, cfg.kernel),
                TemporalBlock(cfg.hidden, cfg.hidden, cfg.kernel),
            ]
        )
        self.proj = nn.Linear(cfg.hidden, out_dim)

    def load_backbone(self, state: dict[str, Tensor]) -> None:
        """Load ResNet-18 weights (fc already removed); any missing or extra key is an error."""
        if self.backbone is None:
            raise ValueError("ResNet-18 weights given, but the features modality has no ResNet")
        result = self.backbone.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"ResNet-18 weights do not match: missing {result.missing_keys[:10]}, "
                f"unexpected {result.unexpected_keys[:10]}"
            )

    def _check(self, inputs: Tensor, lengths: Tensor, colour: Tensor | None) -> None:
        if colour is not None and (
            self.modality is not Modality.frames
            or inputs.dtype != torch.uint8
            or colour.shape != (inputs.shape[0], 2, 3)
        ):
            raise ValueError(
                f"colour: a (B, 2, 3) colour change goes with uint8 frames (B, T, 3, H, W), got "
                f"{tuple(colour.shape)} with {inputs.dtype} {tuple(inputs.shape)}"
            )
        if self.modality is Modality.frames:
            if inputs.dim() != 5 or inputs.shape[2] != 3:
                raise ValueError(
                    f"frames modality expects (B, T, 3, H, W), got {tuple(inputs.shape)}"
                )
            if inputs.dtype != torch.uint8 and not inputs.is_floating_point():
                raise ValueError(
                    f"frames modality expects uint8 pixels or normalised floats, got {inputs.dtype}"
                )
        elif inputs.dim() != 3 or inputs.shape[2] != self.feature_dim:
            raise ValueError(
                f"features modality expects (B, T, {self.feature_dim}) "
                f"(model.sign_embedding.feature_dim), got {tuple(inputs.shape)}"
            )
        if lengths.shape != (inputs.shape[0],):
            raise ValueError(
                f"input_lengths: expected shape ({inputs.shape[0]},), got {tuple(lengths.shape)}"
            )
        if inputs.shape[0] and (int(lengths.min()) < 1 or int(lengths.max()) > inputs.shape[1]):
            raise ValueError(
                f"input_lengths must lie in [1, {inputs.shape[1]}], got {lengths.tolist()}"
            )

    def per_frame(self, inputs: Tensor, mask: Tensor, colour: Tensor | None = None) -> Tensor:
        """Per-frame vectors (B, T, C); ResNet sees valid frames only (no compute, no BN stats
        on padding). uint8 frames (`data.frames_uint8`) are ImageNet-normalised here, on the
        inputs' device, after padding is dropped, with each clip's colour change (B, 2, 3)."""
        if self.backbone is None:
            return inputs
        frames = inputs[mask]  # (N_valid, 3, H, W)
        if frames.dtype == torch.uint8:
            if colour is not None:  # (B, 2, 3) -> (N_valid, 2, 3), one per valid frame
                colour = colour.to(inputs.device).repeat_interleave(
                    mask.sum(1),
                    dim=0,
                    output_size=frames.shape[0],  # no device sync
                )
            frames = normalise_frames(frames, colour)  # (N_valid, 3, H, W) float32
        if self.channels_last:
            frames = frames.contiguous(memory_format=torch.channels_last)  # NHWC in memory
        if self.checkpoint_backbone:
            feats = resnet_features(self.backbone, frames, checkpointed=True)  # (N_valid, 512)
        else:
            feats = self.backbone(frames)  # (N_valid, 512)
        out = feats.new_zeros(*mask.shape, feats.shape[-1])  # (B, T, 512)
        out[mask] = feats
        return out

    def forward(
        self, inputs: Tensor, lengths: Tensor, colour: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """inputs (B, T, D_in) or (B, T, 3, H, W), lengths (B,), colour (B, 2, 3) of augmented
        uint8 frames (the batch's ``colour``) -> features (B, T', D), lengths (B,), mask (B, T')."""
        self._check(inputs, lengths, colour)
        lengths = lengths.to(inputs.device)
        mask = lengths_to_mask(lengths, inputs.shape[1])  # (B, T)
        x = self.per_frame(inputs, mask, colour)  # (B, T, C)
        x = x.transpose(1, 2)  # (B, C, T)
        for block in self.blocks:
            x, lengths = block(x, lengths)  # (B, hidden, T/2), ...
        mask = lengths_to_mask(lengths, x.shape[2])  # (B, T')
        features = self.proj(x.transpose(1, 2))  # (B, T', D)
        features = features * mask[..., None].to(features.dtype)  # padding stays zero
        return features, lengths, mask
