"""RGB frames: decoding, the clip transform of the paper's lineage, and the frame sources.

One ``load(record, train)`` of a frame source does, for one clip:

1. **Temporal subsampling** to at most ``max_frames`` frames, before anything is decoded: in
   training evenly strided from a random offset (``stride = T / max_frames``), in evaluation
   evenly spaced and deterministic (``dataset.subsample_indices``).
2. **Reading** the chosen frames as uint8 ``(T, 3, H, W)`` resized to ``data.resize``: PNG/JPEG
   files decoded and resized (``FolderFrameSource``), or slices of the memory-mapped frame cache,
   which stores the frames already resized (``frame_cache.CachedFrameSource``). Resize modes:
   ``square`` (default, as GFSLT-VLP does: every frame to ``resize x resize``, aspect not kept;
   PHOENIX's 210x260 becomes 256x256) or ``short_side`` (shorter side to ``resize``, aspect kept).
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
``selection.sampler.SeededBatches`` (run seed, epoch, global batch, position in it), so a sample
is augmented the same whichever worker loads it, whatever ``num_workers`` and the number of
ranks, and after a mid-epoch resume. Without a key (a plain DataLoader over the dataset) it is
seeded by one draw of torch's RNG, which DataLoader seeds per worker from its ``generator``: pass
``worker_init_fn=worker_init_fn, generator=loader_generator(seed, rank)`` and such runs repeat
too.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ..config import ConfigError, DataConfig, ResizeMode, check_augmentation
from .dataset import Clip, subsample_indices
from .labels import DataError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
_DIGITS = re.compile(r"(\d+)")


# ------------------------------------------------------------------------------- frame files
def _natural_key(path: Path) -> list[Any]:
    """images10.png after images9.png, whatever the zero padding."""
    return [int(p) if p.isdigit() else p for p in _DIGITS.split(path.name)]


def list_frames(folder: Path) -> list[Path]:
    """Frame files (*.png, *.jpg, *.jpeg) of one clip folder in natural order."""
    try:
        entries = [Path(e.path) for e in os.scandir(folder) if e.is_file()]
    except FileNotFoundError as e:
        raise DataError(f"frame folder missing: {folder}") from e
    except NotADirectoryError as e:
        raise DataError(f"frame folder is not a directory: {folder}") from e
    return sorted((p for p in entries if p.suffix.lower() in FRAME_SUFFIXES), key=_natural_key)


def clip_folder(record: dict[str, Any], frame_root: Path) -> Path:
    """The frame folder of a record: ``frames_dir`` (official layouts) or ``<frame_root>/<name>``."""
    folder = record.get("frames_dir")
    return frame_root / (folder if folder is not None else record["name"])


def clip_frame_paths(record: dict[str, Any], frame_root: Path) -> list[Path]:
    """Frame files of a record: its ``imgs_path`` list (relative to ``frame_root``) when the label
    file has one, else the listing of its frame folder. Raises DataError if there are none."""
    if record.get("imgs_path"):
        return [frame_root / p for p in record["imgs_path"]]
    folder = clip_folder(record, frame_root)
    paths = list_frames(folder)
    if not paths:
        raise DataError(f"no frames ({', '.join(FRAME_SUFFIXES)}) in {folder}")
    return paths


def decode_frame(path: Path) -> np.ndarray:
    """One PNG/JPEG frame as uint8 (H, W, 3) RGB, read-only (decoded with Pillow). Raises
    DataError naming the file."""
    try:
        with Image.open(path) as image:
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except FileNotFoundError as e:
        raise DataError(f"frame missing: {path}") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot decode frame {path}: {e}") from e


def decode_frames(paths: list[Path]) -> torch.Tensor:
    """Frames of one clip as uint8 (T, 3, H, W); all frames must have the same size."""
    first = decode_frame(paths[0])
    clip = np.empty((len(paths), 3, *first.shape[:2]), dtype=np.uint8)
    clip[0] = first.transpose(2, 0, 1)
    for t, path in enumerate(paths[1:], start=1):
        frame = decode_frame(path)
        if frame.shape != first.shape:
            raise DataError(
                f"frame {path} is {frame.shape[:2]} (H, W) but the clip's first frame "
                f"{paths[0]} is {first.shape[:2]}"
            )
        clip[t] = frame.transpose(2, 0, 1)
    return torch.from_numpy(clip)


# ------------------------------------------------------------------------------------ resize
def resized_size(height: int, width: int, size: int, mode: ResizeMode) -> tuple[int, int]:
    """(H, W) after the resize step."""
    if ResizeMode(mode) is ResizeMode.square:
        return size, size
    if height <= width:
        return size, max(size, round(width * size / height))
    return max(size, round(height * size / width)), size


def resize_clip(clip: torch.Tensor, size: int, mode: ResizeMode) -> torch.Tensor:
    """uint8 (T, 3, H, W) -> uint8 (T, 3, h, w), antialiased bilinear; a no-op at the target size.

    The frame cache stores exactly this function's output, so the cache and the file path give
    identical frames."""
    h, w = resized_size(clip.shape[-2], clip.shape[-1], size, mode)
    if (h, w) == tuple(clip.shape[-2:]):
        return clip
    return TF.resize(clip, [h, w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


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
        check_augmentation(
            augment_p=augment_p,
            rotate_degrees=rotate_degrees,
            scale_jitter=scale_jitter,
            brightness=brightness,
            contrast=contrast,
        )
        self.crop = crop
        self.augment = augment
        self.augment_p = augment_p
        self.rotate_degrees = rotate_degrees
        self.scale_jitter = scale_jitter
        self.brightness = brightness
        self.contrast = contrast
        self.uint8_output = uint8_output

    @classmethod
    def from_config(cls, cfg: DataConfig) -> ClipTransform:
        return cls(
            crop=cfg.crop,
            augment=cfg.augment,
            augment_p=cfg.augment_p,
            rotate_degrees=cfg.rotate_degrees,
            scale_jitter=cfg.scale_jitter,
            brightness=cfg.brightness,
            contrast=cfg.contrast,
            uint8_output=cfg.frames_uint8,
        )

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


# ----------------------------------------------------------------------------- frame sources
def with_known_issue(record: dict[str, Any], message: str) -> str:
    """Append a record's documented problem (e.g. CSL-Daily's broken clip) to an error message."""
    issue = record.get("known_issue")
    return f"{message} [known issue: {issue}]" if issue else message


class FolderFrameSource:
    """Frames decoded from PNG/JPEG files (one folder per clip, or a label file's ``imgs_path``)."""

    def __init__(
        self,
        frame_root: str | os.PathLike,
        transform: ClipTransform,
        max_frames: int = 300,
        resize: int = 256,
        resize_mode: ResizeMode = ResizeMode.square,
        train: bool = False,
    ):
        self.frame_root = Path(frame_root)
        self.transform = transform
        self.max_frames = max_frames
        self.resize = resize
        self.resize_mode = ResizeMode(resize_mode)
        self.train = train

    def frame_paths(self, record: dict[str, Any]) -> list[Path]:
        try:
            return clip_frame_paths(record, self.frame_root)
        except DataError as e:
            raise DataError(with_known_issue(record, str(e))) from e

    def frame_count(self, record: dict[str, Any]) -> int:
        return len(self.frame_paths(record))

    def read(self, record: dict[str, Any], indices: np.ndarray | None = None) -> np.ndarray:
        """The resized uint8 (T, 3, H, W) frames (all, or those at ``indices``)."""
        paths = self.frame_paths(record)
        if indices is not None:
            paths = [paths[i] for i in indices]
        try:
            clip = decode_frames(paths)
        except DataError as e:
            raise DataError(with_known_issue(record, str(e))) from e
        return resize_clip(clip, self.resize, self.resize_mode).numpy()

    def load(self, record: dict[str, Any], train: bool, seed: Sequence[int] | None = None) -> Clip:
        """(T, 3, crop, crop) uint8 pixels and colour change, or normalised float32
        (``data.frames_uint8``); random only when both the source and the call are train."""
        rng = clip_rng(train and self.train, seed)
        paths = self.frame_paths(record)
        indices = temporal_indices(len(paths), self.max_frames, rng)
        try:
            clip = decode_frames([paths[i] for i in indices])
        except DataError as e:
            raise DataError(with_known_issue(record, str(e))) from e
        return self.transform(resize_clip(clip, self.resize, self.resize_mode).numpy(), rng)


def build_frame_source(cfg: DataConfig, frame_root: Path, train: bool):
    """The frame source of a split: the frame cache when ``data.frame_cache`` is set, else files.

    ``train`` allows random temporal sampling and augmentation (``data.augment``); a set cache
    folder without an index is an error (build it first; see ``scl_slt.data.frame_cache``)."""
    if cfg.resize <= 0:
        raise ConfigError(f"data.resize: must be positive, got {cfg.resize}")
    if cfg.max_frames <= 0:
        raise ConfigError(f"data.max_frames: must be positive, got {cfg.max_frames}")
    transform = ClipTransform.from_config(cfg)
    if cfg.frame_cache:
        from .frame_cache import CachedFrameSource, FrameCache

        cache = FrameCache(Path(cfg.frame_cache).expanduser())
        cache.check_matches(cfg)
        log.info("reading frames from the frame cache %s", cache.root)
        return CachedFrameSource(cache, transform, cfg.max_frames, train=train)
    return FolderFrameSource(
        frame_root, transform, cfg.max_frames, cfg.resize, cfg.resize_mode, train=train
    )


# ---------------------------------------------------------------------------------- seeding
def worker_init_fn(worker_id: int) -> None:
    """Seed numpy and ``random`` in a DataLoader worker from the seed torch gave that worker."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def loader_generator(seed: int, rank: int = 0) -> torch.Generator:
    """The DataLoader ``generator`` that makes worker seeds (and so augmentation) reproducible;
    different per rank so ranks do not augment in lock-step."""
    generator = torch.Generator()
    generator.manual_seed(seed * 1000003 + rank)
    return generator
