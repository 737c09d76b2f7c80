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
3. **ClipTransform** to float32 ``(T, 3, crop, crop)``: centre crop in evaluation; in training a
   random crop with zoom (``scale_jitter``) and rotation (``rotate_degrees``) and a brightness /
   contrast change, ONE set of parameters per clip so every frame gets the same crop box, angle
   and colour change (motion between frames is the signal; per-frame jitter would add fake
   motion). Then ImageNet normalisation.

Speed (the loader feeds a ResNet-18 with up to 300 frames per clip): the whole geometric part is a
single nearest-neighbour gather through one index map shared by all frames and channels (a pure
crop when zoom is 1 and the angle 0, exactly the evaluation crop), pixels outside the frame repeat
the border; colour change, clamp and normalisation fold into one multiply-add per channel and one
clip. Both run in numpy on uint8 input, so the cache path does no decoding and no float resize.

Reproducibility: augmentation draws its parameters from a numpy generator seeded by one draw of
torch's RNG, which DataLoader seeds per worker from its ``generator``; pass
``worker_init_fn=worker_init_fn, generator=loader_generator(seed, rank)`` to the DataLoader and
runs repeat exactly with ``num_workers > 0``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ..config import ConfigError, DataConfig, ResizeMode
from .dataset import subsample_indices
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
            return np.asarray(image.convert("RGB"))
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


class ClipTransform:
    """uint8 (T, 3, H, W) -> float32 (T, 3, crop, crop): crop, augmentation, normalisation."""

    def __init__(
        self,
        crop: int = 224,
        augment: bool = True,
        rotate_degrees: float = 5.0,
        scale_jitter: float = 0.1,
        brightness: float = 0.2,
        contrast: float = 0.2,
    ):
        if crop <= 0:
            raise ConfigError(f"data.crop: must be positive, got {crop}")
        for key, value, upper in (
            ("rotate_degrees", rotate_degrees, 180.0),
            ("scale_jitter", scale_jitter, 0.9),
            ("brightness", brightness, 1.0),
            ("contrast", contrast, 1.0),
        ):
            if not 0.0 <= value <= upper:
                raise ConfigError(f"data.{key}: must be in [0, {upper}], got {value}")
        self.crop = crop
        self.augment = augment
        self.rotate_degrees = rotate_degrees
        self.scale_jitter = scale_jitter
        self.brightness = brightness
        self.contrast = contrast
        std = np.asarray(IMAGENET_STD, dtype=np.float64)
        self._gain = 1.0 / (255.0 * std)  # pixel value -> normalised units
        self._bias = -np.asarray(IMAGENET_MEAN, dtype=np.float64) / std
        self._low, self._high = self._bias, self._bias + 255.0 * self._gain  # pixel 0 and 255

    @classmethod
    def from_config(cls, cfg: DataConfig) -> ClipTransform:
        return cls(
            crop=cfg.crop,
            augment=cfg.augment,
            rotate_degrees=cfg.rotate_degrees,
            scale_jitter=cfg.scale_jitter,
            brightness=cfg.brightness,
            contrast=cfg.contrast,
        )

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
        """Random crop position (and, with ``augment``, zoom, angle, brightness, contrast)."""
        if not self.augment:
            top = int(rng.integers(0, height - self.crop + 1))
            left = int(rng.integers(0, width - self.crop + 1))
            return ClipParams(top=top, left=left, size=self.crop)
        zoom = rng.uniform(1.0 - self.scale_jitter, 1.0 + self.scale_jitter)
        size = min(self.crop / zoom, float(height), float(width))
        return ClipParams(
            top=rng.uniform(0.0, height - size),
            left=rng.uniform(0.0, width - size),
            size=size,
            angle=rng.uniform(-self.rotate_degrees, self.rotate_degrees),
            brightness=rng.uniform(1.0 - self.brightness, 1.0 + self.brightness),
            contrast=rng.uniform(1.0 - self.contrast, 1.0 + self.contrast),
        )

    def __call__(self, clip: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
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
        return self.apply(clip, params)

    def apply(self, clip: np.ndarray, params: ClipParams) -> torch.Tensor:
        t, _, height, width = clip.shape
        c = self.crop
        if params.is_plain_crop and params.size == c:
            top, left = int(params.top), int(params.left)
            pixels = clip[:, :, top : top + c, left : left + c]  # (T, 3, c, c) view
        else:
            index = source_index_map(params, c, height, width)
            flat = np.ascontiguousarray(clip).reshape(t * 3, height * width)
            pixels = np.take(flat, index, axis=1).reshape(t, 3, c, c)
        # colour: x -> clamp(a * x + d, 0, 255) with a = b * k, d = (1 - k) * b * mean_grey, then
        # (x / 255 - mean) / std; folded into one multiply-add per channel (+ one clamp).
        a, d = params.brightness * params.contrast, 0.0
        if params.contrast != 1.0:
            d = (1.0 - params.contrast) * params.brightness * self._mean_grey(pixels)
        gain = (a * self._gain).astype(np.float32).reshape(1, 3, 1, 1)
        bias = (d * self._gain + self._bias).astype(np.float32).reshape(1, 3, 1, 1)
        out = np.empty((t, 3, c, c), dtype=np.float32)
        np.multiply(pixels, gain, out=out)
        np.add(out, bias, out=out)
        if a != 1.0 or d != 0.0:
            low = self._low.astype(np.float32).reshape(1, 3, 1, 1)
            high = self._high.astype(np.float32).reshape(1, 3, 1, 1)
            np.clip(out, low, high, out=out)
        return torch.from_numpy(out)

    @staticmethod
    def _mean_grey(pixels: np.ndarray) -> float:
        """Mean luma of a clip, estimated on every 4th pixel (contrast pivots around it)."""
        rgb = pixels[:, :, ::4, ::4].mean(axis=(0, 2, 3), dtype=np.float64)
        return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def clip_rng(train: bool) -> np.random.Generator | None:
    """The augmentation generator of one clip, seeded from torch's (per-worker) RNG."""
    if not train:
        return None
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

    def load(self, record: dict[str, Any], train: bool) -> torch.Tensor:
        """float32 (T, 3, crop, crop); random only when both the source and the call are train."""
        rng = clip_rng(train and self.train)
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
