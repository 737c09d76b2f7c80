"""The trajectory report of a scored reference run: ``<run_dir>/trajectory/summary.json`` (category
shares and counts, thresholds, mean δ per category, pair-set enrichment, a sample of trajectories
per category) and ``categories.png`` (the shares beside the paper's, and those trajectories).

``first_snapshot_spread`` checks the first snapshot a trajectory uses: one taken at random
initialisation can hold all similarities in a narrow band, and then its H/L split (under
``threshold=last_median`` almost every pair starts L) says nothing about the pairs."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..rundir.atomic import write_json_atomic
from .trajectory import CATEGORIES, Categories, ThresholdMode, category_mean_delta

log = logging.getLogger(__name__)

REPORT_DIRNAME = "trajectory"  # <run_dir>/trajectory/summary.json, categories.png
# The paper's shares on PHOENIX14T (L->L is the rest), drawn beside ours in the figure.
PAPER_PHOENIX14T_SHARES = {"H->L": 0.359, "H->H": 0.319, "L->H": 0.178, "L->L": 0.144}
# Warn when the first snapshot's negative similarities have a standard deviation below this
# fraction of the last snapshot's (the two the H/L categories compare).
SPREAD_WARNING_FRACTION = 0.2
ONE_SIDED_SHARE = 0.1  # ... or when fewer than 10 % (or more than 90 %) of the pairs start H
QUANTILE_SAMPLE = 1 << 21  # at most about this many negatives enter the inter-quartile range


def negative_spread(S: np.ndarray, block_rows: int = 1024) -> dict[str, float]:
    """Standard deviation and inter-quartile range of a square matrix's off-diagonal entries.

    The standard deviation is exact (one pass in row blocks, float64 sums shifted by the first
    block's mean so a narrow band does not cancel); the quartiles come from the negatives of evenly
    spaced rows, all rows when N * (N - 1) <= ``QUANTILE_SAMPLE``.
    """
    n = S.shape[0]
    if S.ndim != 2 or S.shape[1] != n or n < 2:
        raise ValueError(f"need a square matrix with at least 2 rows, got {S.shape}")
    shift, total, total_sq, count = None, 0.0, 0.0, 0
    for r0 in range(0, n, block_rows):
        r1 = min(r0 + block_rows, n)
        block = np.asarray(S[r0:r1], dtype=np.float64)
        values = block[~np.eye(r1 - r0, n, r0, dtype=bool)]
        shift = float(values.mean()) if shift is None else shift
        values -= shift
        total, total_sq, count = (
            total + values.sum(),
            total_sq + (values**2).sum(),
            count + len(values),
        )
    std = float(np.sqrt(max(total_sq / count - (total / count) ** 2, 0.0)))
    rows = np.unique(np.linspace(0, n - 1, max(1, min(n, QUANTILE_SAMPLE // (n - 1)))).astype(int))
    sample = np.asarray(S[rows], dtype=np.float64)
    sample = sample[np.arange(n)[None, :] != rows[:, None]]
    q25, q75 = np.quantile(sample, [0.25, 0.75])
    return {"std": std, "iqr": float(q75 - q25)}


def first_snapshot_spread(
    S_first: np.ndarray,
    S_last: np.ndarray,
    first_epoch: float,
    last_epoch: float,
    fraction: float = SPREAD_WARNING_FRACTION,
    categories: Categories | None = None,
) -> dict[str, Any]:
    """Spread of the first and last snapshot's negatives; a WARNING (both figures and what to do)
    when the first one's standard deviation is below ``fraction`` of the last one's. With
    ``categories`` split at the last median, also when fewer than ``ONE_SIDED_SHARE`` (or more
    than 1 - it) of the pairs start H: the symptom of a first snapshot in a band of its own. The
    returned record goes into ``trajectory/summary.json`` as ``first_snapshot_spread``."""
    first, last = negative_spread(S_first), negative_spread(S_last)
    ratio = first["std"] / last["std"] if last["std"] > 0 else None
    low = ratio is not None and ratio < fraction
    high_share = None
    if categories is not None and categories.mode is ThresholdMode.last_median:
        high_share = categories.shares["H->L"] + categories.shares["H->H"]
    one_sided = high_share is not None and min(high_share, 1 - high_share) < ONE_SIDED_SHARE
    record: dict[str, Any] = {
        "first_epoch": first_epoch,
        "last_epoch": last_epoch,
        "first": first,
        "last": last,
        "std_ratio": ratio,
        "fraction": fraction,
        "rule": "low_spread if std(first negatives) < fraction * std(last negatives)",
        "low_spread": low,
        "first_high_share": high_share,
        "one_sided": one_sided,
        "one_sided_rule": f"share of pairs H at the first snapshot (last_median) < "
        f"{ONE_SIDED_SHARE} or > {1 - ONE_SIDED_SHARE}",
        "advice": None,
    }
    if low or one_sided:
        record["advice"] = (
            "start trajectories at a later snapshot (python -m scl_slt.score ... start_epoch=E, "
            "E the epoch of a trained snapshot) or split each end at its own median "
            "(threshold=per_snapshot)"
        )
    if low:
        log.warning(
            "the first snapshot (epoch %g) carries little spread: its negative similarities have "
            "std %.4g (IQR %.4g), below %g x the last snapshot's (epoch %g: std %.4g, IQR %.4g; "
            "ratio %.3f), so its H/L split is close to noise; %s",
            first_epoch, first["std"], first["iqr"], fraction, last_epoch, last["std"],
            last["iqr"], ratio, record["advice"],
        )  # fmt: skip
    if one_sided:
        log.warning(
            "%.1f %% of the negative pairs start H at the first snapshot (epoch %g), split at the "
            "last snapshot's median %.4g: the categories are nearly one-sided; %s",
            100 * high_share, first_epoch, categories.thresholds[1], record["advice"],
        )  # fmt: skip
    return record


def sample_trajectories(
    categories: Categories,
    S_list: Sequence[np.ndarray],
    per_category: int = 8,
    seed: int = 0,
) -> dict[str, dict[str, list]]:
    """A random sample of negative pairs per category with their similarity at every snapshot."""
    rng = np.random.default_rng(seed)
    n = categories.codes.shape[0]
    sample: dict[str, dict[str, list]] = {}
    for code, name in enumerate(CATEGORIES):
        # Rejection sampling keeps this O(draws), not a scan of N^2 codes, for common categories.
        picked: list[tuple[int, int]] = []
        for _ in range(200):
            i, j = rng.integers(0, n, size=(2, 64 * per_category))
            hits = categories.codes[i, j] == code
            picked.extend(zip(i[hits].tolist(), j[hits].tolist()))
            if len(set(picked)) >= per_category:
                break
        pairs = list(dict.fromkeys(picked))[:per_category]
        values = [[float(S[i, j]) for S in S_list] for i, j in pairs]
        sample[name] = {"pairs": [list(p) for p in pairs], "similarity": values}
    return sample


def _plot(
    path: Path,
    categories: Categories,
    epochs: Sequence[int],
    trajectories: dict[str, dict[str, list]],
    enrichment: dict[str, dict[str, Any]] | None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig = plt.figure(figsize=(14, 8))
    grid = fig.add_gridspec(2, 4, height_ratios=[1.1, 1.0], hspace=0.4, wspace=0.3)
    bars = fig.add_subplot(grid[0, :])
    groups = {"all negatives": categories.shares, "paper (PHOENIX14T)": PAPER_PHOENIX14T_SHARES}
    for name, entry in (enrichment or {}).items():
        if name != "all_negatives" and entry["shares"] is not None:
            groups[f"{name} (n={entry['pairs']})"] = entry["shares"]
    x = np.arange(len(CATEGORIES))
    width = 0.8 / len(groups)
    for g, (label, shares) in enumerate(groups.items()):
        heights = [100 * shares[c] for c in CATEGORIES]
        bars.bar(x + (g - (len(groups) - 1) / 2) * width, heights, width, label=label)
    bars.set_xticks(x, [c.replace("->", "→") for c in CATEGORIES])
    bars.set_ylabel("share of pairs (%)")
    t0, tK = categories.thresholds
    bars.set_title(
        f"negative-pair categories ({categories.num_negatives:,} pairs; threshold "
        f"{categories.mode.value}: first {t0:.3f}, last {tK:.3f})"
    )
    bars.legend(fontsize=8)
    for k, name in enumerate(CATEGORIES):
        ax = fig.add_subplot(grid[1, k])
        for values in trajectories[name]["similarity"]:
            ax.plot(epochs, values, marker=".", linewidth=1)
        ax.axhline(tK, color="grey", linestyle="--", linewidth=0.8)
        if t0 != tK:
            ax.axhline(t0, color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(f"{name.replace('->', '→')} ({100 * categories.shares[name]:.1f} %)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if k == 0:
            ax.set_ylabel("similarity s(V_i, T_j)")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def write_report(
    run_dir: str | os.PathLike,
    S_list: Sequence[np.ndarray],
    epochs: Sequence[int],
    categories: Categories,
    delta: np.ndarray | None = None,
    enrichment: dict[str, dict[str, Any]] | None = None,
    info: Mapping[str, Any] | None = None,
    per_category: int = 8,
    seed: int = 0,
) -> Path:
    """``<run_dir>/trajectory/summary.json`` and ``categories.png``; returns the folder.

    ``info`` (delta method, snapshot paths, ...) is copied into the summary as is.
    """
    out = Path(run_dir) / REPORT_DIRNAME
    out.mkdir(parents=True, exist_ok=True)
    trajectories = sample_trajectories(categories, S_list, per_category, seed)
    summary = {
        **dict(info or {}),
        "num_samples": int(categories.codes.shape[0]),
        "num_negative_pairs": categories.num_negatives,
        "epochs": [int(e) for e in epochs],
        "threshold": {
            "mode": categories.mode.value,
            "first": categories.thresholds[0],
            "last": categories.thresholds[1],
            "rule": "H if similarity > threshold, else L",
        },
        "shares": categories.shares,
        "counts": categories.counts,
        "paper_phoenix14t_shares": PAPER_PHOENIX14T_SHARES,
        "mean_delta": category_mean_delta(categories, delta) if delta is not None else None,
        "enrichment": enrichment,
        "sample_trajectories": trajectories,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(out / "summary.json", summary)
    _plot(out / "categories.png", categories, epochs, trajectories, enrichment)
    log.info("trajectory report: %s, %s", out / "summary.json", out / "categories.png")
    return out
