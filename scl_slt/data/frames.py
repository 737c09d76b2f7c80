"""The clip transform of the paper's lineage: time sampling, crop, augmentation, normalisation.

One ``load(record, train)`` of a frame source does, for one clip:

1. **Temporal subsampling** to at most ``max_frames`` frames, before anything is decoded: in
   training evenly strided from a random offset (``stride = T / max_frames``), in evaluation
   evenly spaced and deterministic (``dataset.subsample_indices``).
2. **Reading** the chosen frames as uint8 ``(T, 3, H, W)`` resized to ``data.resize``: PNG/JPEG
   files decoded and resized (``frame_files.FolderFrameSource``), or slices of the memory-mapped
   frame cache, which stores the frames already resized (``frame_store.CachedFrameSource``).
   ``datasets.build_frame_source`` picks one.
3. **ClipTransform** to ``(T, 3, crop, crop)``: centre crop in evaluation; in training a random
   crop with zoom (``scale_jitter``), rotation (``rotate_degrees``), brightness and contrast
   change, each applied with chance ``augment_p`` (default 0.5, the lineage's "sometimes 0.5":
   a quarter of the clips keep the plain crop geometry), ONE set of parameters per clip so every
   frame gets the same crop box, angle and colour change (motion between frames is the signal;
   per-frame jitter would add fake motion). Then ImageNet normalisation, in one of two places
   (``data.frames_uint8``):

   - ``true`` (default): the transform returns **uint8 pixels** after the geometric part, and
     the clip's colour change as a per-channel ``(gain, bias)`` pair folded into the
     normalisation (``Clip.colour``); the model applies both on its device in one multiply-add
     and clamp per channel (``normalise_frames``, called by the sign embedding). A frame crosses
     the worker -> main process hand-off (shared memory), the host -> device copy and a
     pinned-memory copy as 150 KB instead of 600 KB of float32, which is what limits a fast
     loader, and the workers do no per-pixel colour work. The network input equals the float
     path's exactly, in training and in evaluation: same float32 arithmetic.
   - ``false``: the transform returns normalised float32 (the same multiply-add, in the worker).

Speed (the loader feeds a ResNet-18 with up to 300 frames per clip): the whole geometric part is a
single nearest-neighbour gather through one index map shared by all frames and channels (a pure
crop when zoom is 1 and the angle 0, exactly the evaluation crop), pixels outside the frame repeat
the border. Colour, clamp and normalisation fold into one multiply-add per channel. Everything runs
in numpy on uint8 input, so the cache path does no decoding and no float resize.

Reproducibility: a clip's augmentation (temporal offset, crop, zoom, angle, colour) comes from one
numpy generator. In training it is seeded with the sample's key from
``selection.samplers.SeededBatches`` (run seed, epoch, global batch, position in it), so a sample
is augmented the same whichever worker loads it, whatever ``num_workers`` and the number of
ranks, and after a mid-epoch resume. Without a key (a plain DataLoader over the dataset) it is
seeded by one draw of torch's RNG, which DataLoader seeds per worker from its ``generator``: pass
``worker_init_fn=worker_init_fn, generator=loader_generator(seed, rank)`` (``batching.py``) and
such runs repeat too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..config import AUGMENT_RANGES, ConfigError, DataConfig, check_augmentation
from .dataset import Clip, subsample_indices
from .labels import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------- time sampling
def temporal_indices(length: int, max_frames: int, rng: np.random.Generator | None) -> np.ndarray:
    """At most ``max_frames`` increasing frame indices; random offset with ``rng``, even without."""
    if length <= max_frames:
        return np.arange(length)
    if rng is None:
        return subsample_indices(length, max_frames)
    stride = length / max_frames
    offset = rng.uniform(0.0, stride)
    idx = np.floor(offset + stride * np.arange(max_frames)).astype(np.int64)
    return np.minimum(idx, length - 1)


# --------------------------------------------------------------------------------- transform
@dataclass(frozen=True)
class ClipParams:
    """One clip's crop and colour parameters (shared by all its frames).

    The crop box is ``size x size`` source pixels with top-left corner ``(top, left)``, rotated by
    ``angle`` degrees (counter-clockwise) about its centre and resampled to ``crop x crop``."""

    top: float
    left: float
    size: float
    angle: float = 0.0
    brightness: float = 1.0
    contrast: float = 1.0

    @property
    def is_plain_crop(self) -> bool:
        return self.angle == 0.0 and float(self.top).is_integer() and float(self.left).is_integer()


def source_index_map(params: ClipParams, crop: int, height: int, width: int) -> np.ndarray:
    """Flat source pixel index (``y * width + x``) of every output pixel, row-major (crop*crop,).

    Output pixel (i, j) samples the nearest source pixel of
    ``centre + R(angle) @ ((i, j) - (crop - 1) / 2) * size / crop``; coordinates outside the frame
    are clamped to the border."""
    half = (crop - 1) / 2
    step = params.size / crop
    grid = (np.arange(crop, dtype=np.float64) - half) * step
    u, v = np.meshgrid(grid, grid, indexing="ij")  # (crop, crop) row / column offsets
    theta = math.radians(params.angle)
    cos, sin = math.cos(theta), math.sin(theta)
    cy = params.top + (params.size - 1) / 2
    cx = params.left + (params.size - 1) / 2
    y = np.rint(cy + cos * u + sin * v).astype(np.int64)
    x = np.rint(cx - sin * u + cos * v).astype(np.int64)
    np.clip(y, 0, height - 1, out=y)
    np.clip(x, 0, width - 1, out=x)
    return (y * width + x).reshape(-1)


# float32 per-channel gain and bias: normalised = pixel * gain + bias
_STD = np.asarray(IMAGENET_STD, dtype=np.float64)
_GAIN = 1.0 / (255.0 * _STD)
_BIAS = -np.asarray(IMAGENET_MEAN, dtype=np.float64) / _STD
# pixels 0 and 255 normalised: where a colour change is clamped
_LOW = _BIAS.astype(np.float32)
_HIGH = (_BIAS + 255.0 * _GAIN).astype(np.float32)


def normalise_frames(frames: torch.Tensor, colour: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 pixels (..., 3, H, W) -> float32 ImageNet-normalised, on the frames' device.

    ``colour`` (``Clip.colour``: float32 gain and bias per channel, (2, 3) for all frames or
    (..., 2, 3) per frame) applies a clip's colour change with the normalisation:
    ``pixel * gain + bias``, clamped to the normalised values of pixels 0 and 255. The
    ``data.frames_uint8`` batch's last step, done by the model (``SignEmbedding``), in the float32
    arithmetic of ``ClipTransform``'s float output, so both formats give the same network input
    bit for bit."""
    if frames.dtype != torch.uint8 or frames.dim() < 3 or frames.shape[-3] != 3:
        raise ValueError(
            f"expected uint8 (..., 3, H, W) frames, got {frames.dtype} {tuple(frames.shape)}"
        )
    out = frames.to(torch.float32)
    if colour is None:
        gain = torch.tensor(_GAIN, dtype=torch.float32).view(3, 1, 1).to(frames.device)
        bias = torch.tensor(_BIAS, dtype=torch.float32).view(3, 1, 1).to(frames.device)
        return out.mul_(gain).add_(bias)  # (..., 3, H, W)
    if colour.dtype != torch.float32 or colour.dim() < 2 or colour.shape[-2:] != (2, 3):
        raise ValueError(
            f"colour: expected float32 (..., 2, 3) gains and biases, got {colour.dtype} "
            f"{tuple(colour.shape)}"
        )
    colour = colour.to(frames.device)
    low = torch.from_numpy(_LOW).view(3, 1, 1).to(frames.device)
    high = torch.from_numpy(_HIGH).view(3, 1, 1).to(frames.device)
    gain, bias = colour[..., 0, :, None, None], colour[..., 1, :, None, None]  # (..., 3, 1, 1)
    return out.mul_(gain).add_(bias).clamp_(low, high)  # (..., 3, H, W)


class ClipTransform:
    """uint8 (T, 3, H, W) -> ``Clip``: (T, 3, crop, crop) after crop and augmentation, as uint8
    pixels plus the colour change still to apply (``uint8_output``; ``normalise_frames`` finishes
    them on the device) or as normalised float32 (``colour`` None). Both give the same network
    input; the config default, ``data.frames_uint8``, is uint8."""

    def __init__(
        self,
        crop: int = 224,
        augment: bool = True,
        augment_p: float = 0.5,
        rotate_degrees: float = 5.0,
        scale_jitter: float = 0.1,
        brightness: float = 0.2,
        contrast: float = 0.2,
        uint8_output: bool = False,
    ):
        if crop <= 0:
            raise ConfigError(f"data.crop: must be positive, got {crop}")
        self.crop, self.augment, self.uint8_output = crop, augment, uint8_output
        # How often each augmentation applies, and its strength: checked as data.* is.
        self.augment_p, self.rotate_degrees = augment_p, rotate_degrees
        self.scale_jitter, self.brightness, self.contrast = scale_jitter, brightness, contrast
        check_augmentation(**{key: getattr(self, key) for key in AUGMENT_RANGES})

    @classmethod
    def from_config(cls, cfg: DataConfig) -> ClipTransform:
        """The transform ``data.*`` describes (crop, augmentation and its ranges, output)."""
        settings = {key: getattr(cfg, key) for key in ("crop", "augment", *AUGMENT_RANGES)}
        return cls(**settings, uint8_output=cfg.frames_uint8)

    @property
    def changes_colour(self) -> bool:
        """Whether training clips get a brightness / contrast change."""
        return self.augment and self.augment_p > 0 and (self.brightness > 0 or self.contrast > 0)

    def check_size(self, height: int, width: int) -> None:
        if min(height, width) < self.crop:
            raise ConfigError(
                f"data.crop={self.crop} is larger than the resized frames ({height}x{width}); "
                "lower data.crop or raise data.resize"
            )

    def eval_params(self, height: int, width: int) -> ClipParams:
        """The deterministic centre crop."""
        return ClipParams(
            top=(height - self.crop) // 2, left=(width - self.crop) // 2, size=self.crop
        )

    def sample_params(self, rng: np.random.Generator, height: int, width: int) -> ClipParams:
        """Random crop position; with ``augment``, each of zoom, angle, brightness and contrast
        drawn with chance ``augment_p`` (else left at identity). Without zoom and angle the crop
        box sits on whole pixels: a plain crop, which ``geometry`` returns as a slice."""
        if not self.augment:
            return self._plain_crop(rng, height, width)
        applied = rng.random(4) < self.augment_p  # zoom, angle, brightness, contrast
        zoom = rng.uniform(1.0 - self.scale_jitter, 1.0 + self.scale_jitter)
        angle = rng.uniform(-self.rotate_degrees, self.rotate_degrees)
        brightness = rng.uniform(1.0 - self.brightness, 1.0 + self.brightness)
        contrast = rng.uniform(1.0 - self.contrast, 1.0 + self.contrast)
        colour = dict(
            brightness=brightness if applied[2] else 1.0,
            contrast=contrast if applied[3] else 1.0,
        )
        if not (applied[0] or applied[1]):
            return dataclasses.replace(self._plain_crop(rng, height, width), **colour)
        size = min(self.crop / zoom, float(height), float(width)) if applied[0] else self.crop
        return ClipParams(
            top=rng.uniform(0.0, height - size),
            left=rng.uniform(0.0, width - size),
            size=size,
            angle=angle if applied[1] else 0.0,
            **colour,
        )

    def _plain_crop(self, rng: np.random.Generator, height: int, width: int) -> ClipParams:
        top = int(rng.integers(0, height - self.crop + 1))
        left = int(rng.integers(0, width - self.crop + 1))
        return ClipParams(top=top, left=left, size=self.crop)

    def __call__(self, clip: np.ndarray, rng: np.random.Generator | None = None) -> Clip:
        """Evaluation transform without ``rng``; training transform with it."""
        if clip.ndim != 4 or clip.shape[1] != 3 or clip.dtype != np.uint8:
            raise DataError(f"expected a uint8 (T, 3, H, W) clip, got {clip.dtype} {clip.shape}")
        height, width = clip.shape[-2:]
        self.check_size(height, width)
        params = (
            self.eval_params(height, width)
            if rng is None
            else self.sample_params(rng, height, width)
        )
        recolour = rng is not None and self.changes_colour
        return self.apply(clip, params, recolour)

    def apply(self, clip: np.ndarray, params: ClipParams, recolour: bool = False) -> Clip:
        """The transform with given parameters; ``recolour``: apply the colour change."""
        pixels = self.geometry(clip, params)  # (T, 3, crop, crop) uint8
        colour = self.colour_affine(params, pixels) if recolour else None  # (2, 3) float32
        if self.uint8_output:
            if self.is_view(params):  # of the (maybe memory-mapped, read-only) source clip
                pixels = np.array(pixels, order="C")
            return Clip(
                torch.from_numpy(pixels), None if colour is None else torch.from_numpy(colour)
            )
        return Clip(self.normalise(pixels, colour))

    def is_view(self, params: ClipParams) -> bool:
        """Whether ``geometry`` is a plain crop, returned as a view of the source clip."""
        return params.is_plain_crop and params.size == self.crop

    def geometry(self, clip: np.ndarray, params: ClipParams) -> np.ndarray:
        """uint8 (T, 3, crop, crop): the crop box resampled; a view of ``clip`` for a plain crop."""
        t, _, height, width = clip.shape
        c = self.crop
        if self.is_view(params):
            top, left = int(params.top), int(params.left)
            return clip[:, :, top : top + c, left : left + c]
        index = source_index_map(params, c, height, width)
        flat = np.ascontiguousarray(clip).reshape(t * 3, height * width)
        return np.take(flat, index, axis=1, mode="wrap").reshape(t, 3, c, c)  # in range: clamped

    def colour(self, params: ClipParams, pixels: np.ndarray) -> tuple[float, float]:
        """(a, d) of the colour change ``x -> clamp(a * x + d, 0, 255)`` on pixel values.

        Brightness b and contrast k: ``a = b * k``, ``d = (1 - k) * b * mean_grey``, i.e. contrast
        pivots around the clip's mean grey level after the brightness change."""
        a, d = params.brightness * params.contrast, 0.0
        if params.contrast != 1.0:
            d = (1.0 - params.contrast) * params.brightness * self._mean_grey(pixels)
        return a, d

    def colour_affine(self, params: ClipParams, pixels: np.ndarray) -> np.ndarray:
        """float32 (2, 3): the colour change folded into the normalisation, per channel
        ``normalised = pixel * gain + bias`` (row 0 gain, row 1 bias; clamped by the user)."""
        a, d = self.colour(params, pixels)
        return np.stack([a * _GAIN, d * _GAIN + _BIAS]).astype(np.float32)

    @staticmethod
    def normalise(pixels: np.ndarray, colour: np.ndarray | None) -> torch.Tensor:
        """float32 (T, 3, crop, crop): ``normalise_frames`` in numpy, in the worker."""
        gain, bias = (
            (_GAIN.astype(np.float32), _BIAS.astype(np.float32)) if colour is None else colour
        )
        out = np.empty(pixels.shape, dtype=np.float32)
        np.multiply(pixels, gain.reshape(1, 3, 1, 1), out=out)
        np.add(out, bias.reshape(1, 3, 1, 1), out=out)
        if colour is not None:
            np.clip(out, _LOW.reshape(1, 3, 1, 1), _HIGH.reshape(1, 3, 1, 1), out=out)
        return torch.from_numpy(out)

    @staticmethod
    def _mean_grey(pixels: np.ndarray) -> float:
        """Mean luma of a clip, estimated on every 4th pixel (contrast pivots around it)."""
        sample = pixels[:, :, ::4, ::4].transpose(1, 0, 2, 3).reshape(3, -1)  # (3, N) copy
        rgb = sample.sum(axis=1, dtype=np.int64) / sample.shape[1]
        return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def clip_rng(train: bool, seed: Sequence[int] | None = None) -> np.random.Generator | None:
    """The augmentation generator of one clip (None outside training): seeded with the sample's
    ``seed`` (``SeededBatches``), else from torch's (per-worker) RNG."""
    if not train:
        return None
    if seed is not None:
        return np.random.default_rng([int(x) for x in seed])
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
