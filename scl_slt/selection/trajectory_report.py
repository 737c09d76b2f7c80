"""The trajectory report of a scored reference run: ``<run_dir>/trajectory/summary.json`` (category
shares and counts, thresholds, mean δ per category, pair-set enrichment, a sample of trajectories
per category) and ``categories.png`` (the shares beside the paper's, and those trajectories)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..rundir.atomic import write_json_atomic
from .trajectory import CATEGORIES, Categories, category_mean_delta

log = logging.getLogger(__name__)

REPORT_DIRNAME = "trajectory"  # <run_dir>/trajectory/summary.json, categories.png
# The paper's shares on PHOENIX14T (L->L is the rest), drawn beside ours in the figure.
PAPER_PHOENIX14T_SHARES = {"H->L": 0.359, "H->H": 0.319, "L->H": 0.178, "L->L": 0.144}


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
