"""Similarity trajectories of negative pairs (method §4.2-4.3): delta, H/L categories, pair sets.

Given the all-pairs similarity matrices S^0..S^K of a reference run's snapshots (N x N, video i
against text j, dataset order), this module computes the pair score the curriculum sampler reads,
``delta = S^K - S^0`` (or the slope, or a span of the tracker's intervals: the protocols and the
snapshots each one uses are in ``trajectory_window.py``), sorts every negative pair
(i != j) into H->L, H->H, L->H, L->L by its first and last similarity, measures how often given pair
sets (confusable glosses, duplicate targets) fall in each category compared with all negatives
(``trajectory_report.py`` writes ``trajectory/summary.json`` and ``trajectory/categories.png``).

Every pass over the matrices goes in row blocks, so memory stays at the result plus one block
per input, whatever K is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from .tracker import Snapshot, SnapshotError, is_complete_snapshot, read_snapshot
from .trajectory_window import DeltaMethod, TrajectoryWindow, delta_weights

log = logging.getLogger(__name__)

CATEGORIES = ("H->L", "H->H", "L->H", "L->L")  # codes 0..3; -1 marks the positives (diagonal)
DEFAULT_BLOCK_ROWS = 1024


class ThresholdMode(str, Enum):
    last_median = "last_median"  # median of the last snapshot's negatives, for both ends
    per_snapshot = "per_snapshot"  # each end split at its own negative median


class SnapshotMismatchError(ValueError):
    """Two snapshots of one trajectory disagree (sample set, order or config fingerprint)."""


# ------------------------------------------------------------------------------- snapshots
def list_snapshots(folder: str | os.PathLike) -> list[Path]:
    """The complete snapshot folders under ``folder``, by epoch; temporary writes are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SnapshotError(f"snapshot folder not found: {folder}")
    found, ignored = [], []
    for path in sorted(folder.iterdir()):
        (found if is_complete_snapshot(path) else ignored).append(path)
    if ignored:
        log.warning("ignoring %d non-snapshot entries in %s: %s", len(ignored), folder, ignored[:5])
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def _first_difference(a: Sequence[str], b: Sequence[str]) -> str:
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} samples"
    i = next(k for k in range(len(a)) if a[k] != b[k])
    return f"sample {i} is {a[i]!r} vs {b[i]!r}"


def check_compatible(first: Snapshot, other: Snapshot) -> None:
    """Refuse comparing snapshots of different samples, orders or configs, saying what differs."""
    problems = []
    if first.names != other.names:
        problems.append(f"sample names differ ({_first_difference(first.names, other.names)})")
    elif first.texts != other.texts:
        problems.append(f"target texts differ ({_first_difference(first.texts, other.texts)})")
    keys = sorted(first.fingerprint.keys() | other.fingerprint.keys())
    differing = [k for k in keys if first.fingerprint.get(k) != other.fingerprint.get(k)]
    if differing:
        detail = ", ".join(
            f"{k}: {first.fingerprint.get(k)!s:.12} vs {other.fingerprint.get(k)!s:.12}"
            for k in differing
        )
        problems.append(f"config fingerprint differs in {differing} ({detail})")
    if first.video_features.shape[1] != other.video_features.shape[1]:
        problems.append(
            f"feature width {first.video_features.shape[1]} vs {other.video_features.shape[1]}"
        )
    if problems:
        raise SnapshotMismatchError(
            f"snapshots {first.path} and {other.path} cannot be compared: " + "; ".join(problems)
        )


def load_snapshots(source: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Snapshot]:
    """Snapshots from a folder (all complete ones) or a list of snapshot folders, by epoch.

    All must share sample names, texts and config fingerprint; a mismatch raises
    SnapshotMismatchError naming both snapshot folders and what differs.
    """
    if isinstance(source, (str, os.PathLike)):
        paths = list_snapshots(source)
        if not paths:
            raise SnapshotError(f"no complete snapshot in {source}")
    else:
        paths = [Path(p) for p in source]
    snapshots = sorted((read_snapshot(p) for p in paths), key=lambda s: s.epoch)
    for a, b in zip(snapshots, snapshots[1:]):
        if a.epoch == b.epoch:
            raise SnapshotMismatchError(f"snapshots {a.path} and {b.path} share epoch {a.epoch}")
    for other in snapshots[1:]:
        check_compatible(snapshots[0], other)
    return snapshots


# ------------------------------------------------------------------------------------ delta
def _row_blocks(n: int, block_rows: int) -> Iterable[tuple[int, int]]:
    for start in range(0, n, block_rows):
        yield start, min(start + block_rows, n)


def trajectory_delta(
    S_list: Iterable[np.ndarray],
    epochs: Sequence[float] | TrajectoryWindow,
    method: DeltaMethod | str = DeltaMethod.endpoints,
    out: np.ndarray | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> np.ndarray:
    """delta[i, j] from the snapshots' similarity matrices (N x N each, in epoch order).

    ``epochs`` may be a ``TrajectoryWindow`` (a later start, a span); then ``method`` is ignored.
    ``S_list`` may be a lazy iterable (e.g. memory maps opened one at a time): one float32 N x N
    accumulator is held, never K matrices. ``out`` (e.g. an fp16 memmap) receives the result.
    """
    weights = delta_weights(epochs, method)
    acc: np.ndarray | None = None
    count = 0
    for k, S in enumerate(S_list):
        if k >= len(weights):
            raise ValueError(f"more similarity matrices than epochs ({len(weights)})")
        if S.ndim != 2 or S.shape[0] != S.shape[1]:
            raise ValueError(f"similarity matrix {k} must be square, got {S.shape}")
        if acc is None:
            acc = np.zeros(S.shape, dtype=np.float32)
        elif S.shape != acc.shape:
            raise ValueError(f"similarity matrix {k} has shape {S.shape}, the first {acc.shape}")
        count += 1
        if weights[k] == 0:
            continue
        for r0, r1 in _row_blocks(S.shape[0], block_rows):
            block = np.asarray(S[r0:r1], dtype=np.float32)
            block *= np.float32(weights[k])
            acc[r0:r1] += block
    if count != len(weights):
        raise ValueError(f"{count} similarity matrices for {len(weights)} epochs")
    if out is None:
        return acc
    if out.shape != acc.shape:
        raise ValueError(f"out has shape {out.shape}, expected {acc.shape}")
    for r0, r1 in _row_blocks(acc.shape[0], block_rows):
        out[r0:r1] = acc[r0:r1]
    return out


# ------------------------------------------------------------------------------- categories
@dataclass
class Categories:
    """Category of every pair: codes[i, j] in 0..3 (CATEGORIES order), -1 on the diagonal."""

    codes: np.ndarray  # (N, N) int8
    thresholds: tuple[float, float]  # H/L split at the first and at the last snapshot
    mode: ThresholdMode
    counts: dict[str, int]

    @property
    def num_negatives(self) -> int:
        return sum(self.counts.values())

    @property
    def shares(self) -> dict[str, float]:
        total = self.num_negatives
        return {c: self.counts[c] / total for c in CATEGORIES}


def negative_values(S: np.ndarray, block_rows: int = DEFAULT_BLOCK_ROWS) -> np.ndarray:
    """The off-diagonal entries of a square matrix as float32 (N^2 - N values)."""
    n = S.shape[0]
    values = np.empty(n * n - n, dtype=np.float32)
    at = 0
    for r0, r1 in _row_blocks(n, block_rows):
        block = np.asarray(S[r0:r1], dtype=np.float32)
        keep = np.ones(block.shape, dtype=bool)
        keep[np.arange(r1 - r0), np.arange(r0, r1)] = False
        part = block[keep]
        values[at : at + part.size] = part
        at += part.size
    return values


def negative_median(S: np.ndarray, block_rows: int = DEFAULT_BLOCK_ROWS) -> float:
    """Median of the negative (off-diagonal) similarities."""
    if S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] < 2:
        raise ValueError(f"need a square matrix with at least 2 rows, got {S.shape}")
    values = negative_values(S, block_rows)
    return float(np.median(values, overwrite_input=True))


def categorize(
    S0: np.ndarray,
    SK: np.ndarray,
    threshold: ThresholdMode | str = ThresholdMode.last_median,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> Categories:
    """H/L at the first and the last snapshot for every negative pair (i != j).

    A pair is H when its similarity is strictly above the threshold, L otherwise. The threshold is
    the median of the last snapshot's negatives for both ends (default), or each end's own median.
    """
    mode = ThresholdMode(threshold)
    if S0.shape != SK.shape:
        raise ValueError(
            f"first and last similarity matrices differ in shape: {S0.shape}, {SK.shape}"
        )
    t_last = negative_median(SK, block_rows)
    t_first = negative_median(S0, block_rows) if mode is ThresholdMode.per_snapshot else t_last
    n = S0.shape[0]
    codes = np.empty((n, n), dtype=np.int8)
    for r0, r1 in _row_blocks(n, block_rows):
        high0 = np.asarray(S0[r0:r1], dtype=np.float32) > t_first
        highK = np.asarray(SK[r0:r1], dtype=np.float32) > t_last
        # H->L 0, H->H 1, L->H 2, L->L 3
        block = np.where(high0, np.where(highK, 1, 0), np.where(highK, 2, 3)).astype(np.int8)
        block[np.arange(r1 - r0), np.arange(r0, r1)] = -1
        codes[r0:r1] = block
    tally = np.bincount(codes[codes >= 0].ravel(), minlength=4)
    counts = {c: int(tally[k]) for k, c in enumerate(CATEGORIES)}
    return Categories(codes=codes, thresholds=(t_first, t_last), mode=mode, counts=counts)


def _shares(codes: np.ndarray) -> dict[str, float] | None:
    if codes.size == 0:
        return None
    tally = np.bincount(codes, minlength=4)
    return {c: float(tally[k] / codes.size) for k, c in enumerate(CATEGORIES)}


def category_enrichment(
    categories: Categories, pair_sets: Mapping[str, Sequence[tuple[int, int]]]
) -> dict[str, dict[str, Any]]:
    """Category shares within each pair set, and their ratio to the shares over all negatives.

    A ratio above 1 means the set lands in that category more often than a random negative pair.
    Pairs are (video i, text j) with i != j; a positive or out-of-range pair is an error.
    """
    n = categories.codes.shape[0]
    base = categories.shares
    result: dict[str, dict[str, Any]] = {
        "all_negatives": {"pairs": categories.num_negatives, "shares": base}
    }
    for name, pairs in pair_sets.items():
        idx = np.asarray(list(pairs), dtype=np.int64).reshape(-1, 2)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"pair set {name!r}: indices must be in [0, {n})")
        if np.any(idx[:, 0] == idx[:, 1]):
            raise ValueError(f"pair set {name!r} contains positive pairs (i == j)")
        shares = _shares(categories.codes[idx[:, 0], idx[:, 1]])
        enrichment = None
        if shares is not None:
            enrichment = {c: (shares[c] / base[c] if base[c] > 0 else None) for c in CATEGORIES}
        result[name] = {"pairs": len(idx), "shares": shares, "enrichment": enrichment}
    return result


def category_mean_delta(
    categories: Categories, delta: np.ndarray, block_rows: int = DEFAULT_BLOCK_ROWS
) -> dict[str, float | None]:
    """Mean delta of the pairs in each category (a check that the categories and delta agree)."""
    sums, counts = np.zeros(4), np.zeros(4)
    n = delta.shape[0]
    for r0, r1 in _row_blocks(n, block_rows):
        codes = categories.codes[r0:r1].ravel()
        keep = codes >= 0
        values = np.asarray(delta[r0:r1], dtype=np.float64).ravel()[keep]
        sums += np.bincount(codes[keep], weights=values, minlength=4)
        counts += np.bincount(codes[keep], minlength=4)
    return {
        c: (float(sums[k] / counts[k]) if counts[k] else None) for k, c in enumerate(CATEGORIES)
    }


# ---------------------------------------------------------------------------------- pair sets
def duplicate_target_pairs(texts: Sequence[str]) -> list[tuple[int, int]]:
    """Every ordered pair (i, j), i != j, whose target sentences are identical (false negatives)."""
    groups: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        groups.setdefault(text, []).append(i)
    return [(i, j) for members in groups.values() for i in members for j in members if i != j]


def confusable_pairs(
    glosses: Sequence[Sequence[str]],
    texts: Sequence[str],
    twins: Iterable[tuple[str, str]],
) -> list[tuple[int, int]]:
    """Ordered pairs (i, j) whose gloss sequences differ only by swapping confusable twins.

    Same length, every differing position holds a twin pair, at least one differs, and the
    targets differ: near-identical videos with different meanings (hard, not false, negatives).
    """
    twin_of: dict[str, set[str]] = {}
    for a, b in twins:
        twin_of.setdefault(a, set()).add(b)
        twin_of.setdefault(b, set()).add(a)

    def canonical(seq: Sequence[str]) -> tuple[str, ...]:
        # Map each gloss to one representative of its twin class; twin swaps then compare equal.
        return tuple(min({g} | twin_of.get(g, set())) for g in seq)

    groups: dict[tuple[str, ...], list[int]] = {}
    for i, seq in enumerate(glosses):
        groups.setdefault(canonical(seq), []).append(i)
    pairs = []
    for members in groups.values():
        for i in members:
            for j in members:
                if i != j and tuple(glosses[i]) != tuple(glosses[j]) and texts[i] != texts[j]:
                    pairs.append((i, j))
    return pairs
