"""Rendering of the synthetic sign language: a clip's trajectory from its gloss alignment, then
either feature vectors (a signer's linear transform plus noise) or frames (a signer whose two
hands follow the trajectory, drawn with anti-aliased discs).

Pure functions of their inputs and the given generator: the dataset's content, and so the
generator version in ``generate.py``, depends on every line here.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NUM_COEFFICIENTS = 4  # cosine-basis coefficients per gloss motion


@dataclass
class SignerStyle:
    speed: float  # duration multiplier
    matrix: np.ndarray  # (D, D) features: per-signer linear transform
    offset: np.ndarray  # (D,)
    pose_scale: float  # frames: signing space size
    pose_offset: np.ndarray  # (2,) frames: signing space position
    colours: np.ndarray  # (3, 3) frames: background, skin, clothing (RGB in [0, 1])


@functools.lru_cache(maxsize=64)
def _basis(length: int) -> np.ndarray:
    t = (np.arange(length) + 0.5) / length
    return np.cos(np.pi * t[:, None] * np.arange(NUM_COEFFICIENTS)[None, :])  # (L, K)


def trajectory(alignment: Sequence[Sequence[int]], motion: np.ndarray) -> np.ndarray:
    """(T, P) clip trajectory: gloss motions end to end, blurred across boundaries."""
    x = np.concatenate([_basis(end - start) @ motion[g] for g, start, end in alignment])
    padded = np.concatenate([x[:1], x, x[-1:]])
    return 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]


def render_features(record: dict, language, style: SignerStyle, noise: float, rng) -> np.ndarray:
    x = trajectory(record["alignment"], language.feature_motion) @ style.matrix + style.offset
    x = x + noise * rng.standard_normal(x.shape)
    return x.astype(np.float16)  # (T, D)


def _soft_disc(xx, yy, cx, cy, rx, ry, edge):
    """Alpha of an anti-aliased ellipse; centres/radii broadcast against the (H, W) grid."""
    d = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return 1 / (1 + np.exp((d - 1) * np.minimum(rx, ry) / edge))


def render_frames(record: dict, language, style: SignerStyle, size: int, noise: float, rng):
    """(T, H, W, 3) uint8: a signer (head, torso) whose two hands follow the gloss motions."""
    pose = np.tanh(trajectory(record["alignment"], language.pose_motion))  # (T, 6)
    rest_position = np.array([[0.32, 0.6], [0.68, 0.6]])  # (hand, xy): left, right
    reach = np.array([0.17, 0.25])  # (xy,) how far a hand moves from rest
    hands = rest_position + reach * pose[:, :4].reshape(-1, 2, 2)  # (T, hand, xy)
    hands = 0.5 + (hands - 0.5) * style.pose_scale + style.pose_offset
    radius = 0.1 + 0.03 * pose[:, 4:6]  # (T, hand)
    grid = (np.arange(size) + 0.5) / size
    xx, yy = np.meshgrid(grid, grid)  # (H, W)
    background, skin, clothing = style.colours
    edge = 1.0 / size
    img = np.broadcast_to(background, (size, size, 3)).copy()
    body = [((0.5, 0.95), (0.32, 0.3), clothing), ((0.5, 0.25), (0.12, 0.12), skin)]  # torso, head
    for centre, radii, colour in body:
        alpha = _soft_disc(xx, yy, *centre, *radii, edge)[..., None]
        img = img * (1 - alpha) + colour * alpha
    img = np.repeat(img[None], len(pose), axis=0)  # (T, H, W, 3)
    for h in range(2):
        cx, cy, r = (a[:, None, None] for a in (hands[:, h, 0], hands[:, h, 1], radius[:, h]))
        alpha = _soft_disc(xx, yy, cx, cy, r, r, edge)[..., None]  # (T, H, W, 1)
        img = img * (1 - alpha) + skin * alpha
    img = img + 0.25 * noise * rng.standard_normal(img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def write_frames(folder: Path, frames: np.ndarray) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame, "RGB").save(folder / f"images{t + 1:04d}.png", compress_level=1)
