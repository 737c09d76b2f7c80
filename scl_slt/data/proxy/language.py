"""The proxy's sign language: a motion per gloss of a real dataset's vocabulary, confusable twins,
signer styles, and how one clip's frames are shared among its glosses and rendered.

Motions are the synthetic language's (``synthetic/render.py``): smooth cosine-basis trajectories,
concatenated gloss by gloss with a little coarticulation blur. Unlike the synthetic language the
vocabulary is the real one (thousands of glosses, no categories), so twins are drawn among all
glosses and the separation of distinct glosses is checked with one vectorised pass. Every random
choice comes from its own seeded stream; a clip's own draws (duration jitter, noise) come from a
stream keyed by its name, so a clip is the same whichever subset it is built in.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..synthetic.language import MIN_SEPARATION, TWIN_THRESHOLD, stream_rng
from ..synthetic.render import NUM_COEFFICIENTS, trajectory
from .options import ProxyOptions

STREAM_MOTIONS, STREAM_SIGNERS, STREAM_SUBSET, STREAM_CLIP = range(4)
SEPARATION_ROUNDS = 50  # redraws of glosses too close to another (rare above a few dimensions)
CSL_NAME = re.compile(r"^S\d+_P(\d+)_T\d+$")  # CSL-Daily: sentence, signer (P....), take
EPISODE_SUFFIX = re.compile(r"-\d+$")  # PHOENIX: <split>/<date>_<show>-<clip number>


@dataclass
class ProxyLanguage:
    """Gloss id = position in ``glosses``; ``twins`` are (original, twin) id pairs."""

    glosses: list[str]
    twins: list[tuple[int, int]]
    motion: np.ndarray  # (G, NUM_COEFFICIENTS, D) cosine-basis coefficients
    durations: np.ndarray  # (G,) typical duration (relative weight of a gloss in its clip)


@dataclass
class Signer:
    matrix: np.ndarray  # (D, D) linear style transform
    offset: np.ndarray  # (D,)


def name_key(name: str) -> int:
    """A stable 64-bit integer of a clip name (seeds the clip's own stream)."""
    return int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:16], 16)


# ----------------------------------------------------------------------------------- language
def pairwise_distances(flat: np.ndarray) -> np.ndarray:
    """(N, N) Euclidean distances of the rows of ``flat`` (N, F), through the Gram matrix."""
    sq = (flat**2).sum(axis=1)
    return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * flat @ flat.T, 0.0))


def _motions(rng, n: int, dim: int, twins: list[tuple[int, int]], distance: float) -> np.ndarray:
    """(n, K, dim) coefficients; distinct glosses at least MIN_SEPARATION x a typical pair distance
    apart where a few redraws allow; a twin = its original moved ``distance`` of the way toward an
    unrelated motion."""
    scale = 1.0 / np.maximum(1, np.arange(NUM_COEFFICIENTS))[:, None]  # (K, 1) smooth motions
    typical = np.sqrt(2 * dim * (scale**2).sum())  # expected distance of two random motions
    coef = rng.standard_normal((n, NUM_COEFFICIENTS, dim)) * scale
    twin_ids = np.array(sorted(b for _, b in twins), dtype=np.int64)
    for _ in range(SEPARATION_ROUNDS):
        dist = pairwise_distances(coef.reshape(n, -1))
        close = np.triu(dist < MIN_SEPARATION * typical, k=1)  # (i < j) pairs too close
        close[:, twin_ids] = False  # twins are overwritten below
        redraw = np.flatnonzero(close.any(axis=0))
        if len(redraw) == 0:
            break
        coef[redraw] = rng.standard_normal((len(redraw), NUM_COEFFICIENTS, dim)) * scale
    for a, b in twins:
        unrelated = rng.standard_normal((NUM_COEFFICIENTS, dim)) * scale
        coef[b] = coef[a] + distance * (unrelated - coef[a])
    return coef


def build_language(glosses: Sequence[str], options: ProxyOptions) -> ProxyLanguage:
    """Motions, twins and typical durations of the vocabulary ``glosses`` (ids in this order)."""
    rng = stream_rng(options.seed, STREAM_MOTIONS)
    n = len(glosses)
    n_pairs = min(int(round(options.confusable_rate * n / 2)), n // 2)
    chosen = rng.permutation(n)[: 2 * n_pairs]
    twins = [(int(chosen[2 * i]), int(chosen[2 * i + 1])) for i in range(n_pairs)]
    lo, hi = options.min_gloss_frames, options.max_gloss_frames
    durations = rng.integers(lo, hi + 1, size=n).astype(np.float64)
    for a, b in twins:
        durations[b] = durations[a]
    motion = _motions(rng, n, options.feature_dim, twins, options.confusable_distance)
    return ProxyLanguage(list(glosses), twins, motion, durations)


def confusable_share(motion: np.ndarray) -> float:
    """Share of glosses whose nearest other motion is closer than TWIN_THRESHOLD x the median
    pair distance (the measured confusable rate; the synthetic meta's definition)."""
    if len(motion) < 2:
        return 0.0
    dist = pairwise_distances(motion.reshape(len(motion), -1))
    median = np.median(dist[np.triu_indices(len(motion), 1)])
    np.fill_diagonal(dist, np.inf)
    return float((dist.min(axis=1) < TWIN_THRESHOLD * median).mean())


# ------------------------------------------------------------------------------------ signers
def signer_ids(names: Sequence[str], num_signers: int) -> tuple[dict[str, int], str]:
    """Each clip's signer index, and how it was found.

    CSL-Daily names (``S000020_P0004_T00``) carry the signer: indices follow the sorted P numbers.
    PHOENIX-2014-T names carry none: clips of one broadcast (the name without ``<split>/`` and the
    clip number) get one signer, ``sha256(broadcast) mod num_signers``, independent of the seed.
    """
    found = [CSL_NAME.match(name) for name in names]
    if names and all(found):
        people = sorted({int(m.group(1)) for m in found})
        index = {p: i for i, p in enumerate(people)}
        return {n: index[int(m.group(1))] for n, m in zip(names, found)}, "name (P number)"
    result = {}
    for name in names:
        episode = EPISODE_SUFFIX.sub("", name.split("/", 1)[-1])
        result[name] = name_key(episode) % num_signers
    return result, f"sha256 of the broadcast name mod {num_signers}"


def signer_styles(count: int, options: ProxyOptions) -> list[Signer]:
    rng = stream_rng(options.seed, STREAM_SIGNERS)
    s, dim = options.signer_shift, options.feature_dim
    return [
        Signer(
            matrix=np.eye(dim) + s * rng.standard_normal((dim, dim)) / np.sqrt(dim),
            offset=s * rng.standard_normal(dim),
        )
        for _ in range(count)
    ]


# --------------------------------------------------------------------------------------- clips
def share_frames(total: int, weights: np.ndarray) -> np.ndarray:
    """Frames per gloss: one each, the rest in proportion to ``weights`` (largest remainders);
    the counts sum to ``total`` (>= the number of glosses)."""
    n = len(weights)
    if total < n:
        raise ValueError(f"{total} frames cannot hold {n} glosses")
    exact = (total - n) * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    left = total - n - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:left]] += 1
    return counts + 1


def clip_length(source_length: int, n_glosses: int, options: ProxyOptions) -> int:
    """Frames of the rendered clip (at least one per gloss; see ``ProxyOptions``)."""
    if options.frames_per_gloss is not None:
        wanted = options.frames_per_gloss * max(n_glosses, 1)
    else:
        wanted = -(-source_length // options.frame_stride)
    return max(wanted, n_glosses, 1)


def render_clip(
    gloss_ids: Sequence[int],
    length: int,
    language: ProxyLanguage,
    signer: Signer,
    options: ProxyOptions,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[list[int]]]:
    """(length, D) float32 features and the ``[gloss_id, start, end)`` spans they were drawn from.

    A clip without glosses (a few PHOENIX dev/test records) is the signer at rest plus noise."""
    if gloss_ids:
        jitter = np.exp(options.duration_jitter * rng.standard_normal(len(gloss_ids)))
        counts = share_frames(length, language.durations[list(gloss_ids)] * jitter)
        ends = np.cumsum(counts)
        alignment = [[int(g), int(e - c), int(e)] for g, c, e in zip(gloss_ids, counts, ends)]
        path = trajectory(alignment, language.motion)  # (T, D)
    else:
        alignment, path = [], np.zeros((length, options.feature_dim))
    x = path @ signer.matrix + signer.offset
    x = x + options.noise * rng.standard_normal(x.shape)
    return x.astype(np.float32), alignment
