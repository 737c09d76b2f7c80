"""Frame files: finding a clip's PNG/JPEG frames, decoding and resizing them, and the frame source
that reads them (``FolderFrameSource``).

Resize modes (``data.resize_mode``): ``square`` (default, as GFSLT-VLP does: every frame to
``resize x resize``, aspect not kept; PHOENIX's 210x260 becomes 256x256) or ``short_side``
(shorter side to ``resize``, aspect kept). The frame cache (``frame_cache.py``) stores exactly
``resize_clip``'s output, so both sources hand the clip transform (``frames.py``) the same pixels.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ..config import ResizeMode
from .dataset import Clip
from .frames import ClipTransform, clip_rng, temporal_indices
from .labels import DataError

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


def with_known_issue(record: dict[str, Any], message: str) -> str:
    """Append a record's documented problem (e.g. CSL-Daily's broken clip) to an error message."""
    issue = record.get("known_issue")
    return f"{message} [known issue: {issue}]" if issue else message


@contextlib.contextmanager
def noting_known_issue(record: dict[str, Any]) -> Iterator[None]:
    """Re-raise a DataError from the block with the record's documented problem appended, so a
    user who hits a known-broken clip learns it is known (and why) from the error itself."""
    try:
        yield
    except DataError as e:
        raise DataError(with_known_issue(record, str(e))) from e


# ---------------------------------------------------------------------------------- decoding
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
    first = decode_frame(paths[0])  # (H, W, 3)
    clip = np.empty((len(paths), 3, *first.shape[:2]), dtype=np.uint8)  # (T, 3, H, W)
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


# ------------------------------------------------------------------------------ frame source
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
        with noting_known_issue(record):
            return clip_frame_paths(record, self.frame_root)

    def frame_count(self, record: dict[str, Any]) -> int:
        return len(self.frame_paths(record))

    def read(self, record: dict[str, Any], indices: np.ndarray | None = None) -> np.ndarray:
        """The resized uint8 (T, 3, H, W) frames (all, or those at ``indices``)."""
        paths = self.frame_paths(record)
        if indices is not None:
            paths = [paths[i] for i in indices]
        return self._decode(record, paths)

    def load(self, record: dict[str, Any], train: bool, seed: Sequence[int] | None = None) -> Clip:
        """(T, 3, crop, crop) uint8 pixels and colour change, or normalised float32
        (``data.frames_uint8``); random only when both the source and the call are train."""
        rng = clip_rng(train and self.train, seed)
        paths = self.frame_paths(record)
        indices = temporal_indices(len(paths), self.max_frames, rng)  # before any decoding
        return self.transform(self._decode(record, [paths[i] for i in indices]), rng)

    def _decode(self, record: dict[str, Any], paths: list[Path]) -> np.ndarray:
        """uint8 (T, 3, H, W) at the configured size."""
        with noting_known_issue(record):
            clip = decode_frames(paths)
        return resize_clip(clip, self.resize, self.resize_mode).numpy()
