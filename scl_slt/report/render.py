"""Rendering of the results report: tables as Markdown and CSV rows, and the figures (dev BLEU-4 /
training-loss curves per run, the trajectory category chart; matplotlib, Agg backend).
``report.py`` collects the runs and builds the tables; this module turns them into files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .runs import Run
from .strategies import STRATEGY_METRIC_NAMES
from .tables import (
    CATEGORIES,
    METRIC_NAMES,
    PAPER_CATEGORIES,
    Table,
    _component_key,
    _dataset_key,
    mean_std,
)

COLUMN_NAMES = {**METRIC_NAMES, **STRATEGY_METRIC_NAMES}
DECIMALS = {"sdr": 3}  # other columns: 2


def _cell(values: list[float], decimals: int = 2) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "—"
    return f"{mean:.{decimals}f}" if std is None else f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def table_markdown(table: Table) -> str:
    name = COLUMN_NAMES.get
    head = ["row", "n", "seeds", *(name(m, m) for m in table.metrics)]
    head += [f"paper {name(m, m)}" for m in table.paper_metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        cells = [row.label, str(len(row.runs)), row.seeds or "—"]
        cells += [_cell(row.values(m), DECIMALS.get(m, 2)) for m in table.metrics]
        cells += [f"{row.paper[m]:.2f}" if m in row.paper else "—" for m in table.paper_metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CSV_FIELDS = ("table", "dataset", "context", "row", "metric", "n", "seeds", "mean", "std", "paper")


def table_csv_rows(table: Table) -> list[dict[str, Any]]:
    out = []
    for row in table.rows:
        for metric in dict.fromkeys((*table.metrics, *table.paper_metrics)):
            mean, std = mean_std(row.values(metric)) if metric in table.metrics else (None, None)
            out.append(
                {
                    "table": table.name,
                    "dataset": table.dataset,
                    "context": table.context,
                    "row": row.label,
                    "metric": metric,
                    "n": len(row.values(metric)),
                    "seeds": row.seeds,
                    "mean": "" if mean is None else f"{mean:.4f}",
                    "std": "" if std is None else f"{std:.4f}",
                    "paper": f"{row.paper[metric]:.2f}" if metric in row.paper else "",
                }
            )
    return out


def read_curves(run_dir: Path) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """``(dev BLEU-4 per epoch, training loss per step)`` from ``metrics.jsonl``.

    A line that is not JSON (cut off by a crash) is skipped, as the training writer does.
    """
    path = run_dir / "metrics.jsonl"
    dev, train = [], []
    if not path.is_file():
        return dev, train
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        # A non-finite value is written as null (strict JSON): no point on the curve.
        if record.get("split") == "dev" and record.get("bleu4") is not None and "epoch" in record:
            dev.append((float(record["epoch"]), float(record["bleu4"])))
        elif record.get("split") == "train" and record.get("loss") is not None and "step" in record:
            train.append((float(record["step"]), float(record["loss"])))
    return dev, train


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(runs: Sequence[Run], out: Path) -> Path | None:
    """Dev BLEU-4 per epoch and training loss per step; one figure row per dataset, one colour
    per component row, one line per run. None if no run has a ``metrics.jsonl`` curve."""
    curves = {r.path: read_curves(r.path) for r in runs}
    plotted = [r for r in runs if any(curves[r.path])]
    if not plotted:
        return None
    plt = _pyplot()
    datasets = sorted({r.dataset for r in plotted}, key=_dataset_key)
    labels = sorted({r.row or "unclassified" for r in plotted}, key=_component_key)
    colours = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    fig, axes = plt.subplots(len(datasets), 2, figsize=(12, 4 * len(datasets)), squeeze=False)
    for (ax_dev, ax_loss), dataset in zip(axes, datasets):
        seen: set[str] = set()
        ordered = sorted(plotted, key=lambda r: _component_key(r.row or "unclassified"))
        for r in (r for r in ordered if r.dataset == dataset):
            label = r.row or "unclassified"
            dev, train = curves[r.path]
            legend = label if label not in seen else None
            seen.add(label)
            if dev:
                ax_dev.plot(*zip(*dev), marker=".", color=colours[label], alpha=0.8, label=legend)
            if train:
                ax_loss.plot(*zip(*train), color=colours[label], alpha=0.6, label=legend)
        ax_dev.set(title=f"{dataset}: dev BLEU-4", xlabel="epoch", ylabel="BLEU-4")
        ax_loss.set(title=f"{dataset}: training loss (stage 1: contrastive + translation)",
                    xlabel="step (of each run)", ylabel="loss")  # fmt: skip
        for ax in (ax_dev, ax_loss):
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_categories(tables: Sequence[Table], out: Path) -> Path | None:
    """Grouped bars of the category shares: each dataset's mean (± std over its reference runs)
    and the paper's PHOENIX14T shares. None without category tables."""
    if not tables:
        return None
    plt = _pyplot()
    groups: list[tuple[str, list[float], list[float] | None]] = []
    for table in tables:
        row = table.rows[0]
        stats = [mean_std(row.values(c)) for c in CATEGORIES]
        label = f"{table.dataset} (n={len(row.runs)})"
        groups.append((label, [m for m, _ in stats], [s or 0 for _, s in stats]))
    for dataset, shares in PAPER_CATEGORIES.items():
        groups.append((f"paper ({dataset})", [shares[c] for c in CATEGORIES], None))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(groups)
    for g, (label, means, stds) in enumerate(groups):
        xs = [i + (g - (len(groups) - 1) / 2) * width for i in range(len(CATEGORIES))]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=label)
    ax.set_xticks(range(len(CATEGORIES)), [c.replace("->", "→") for c in CATEGORIES])
    ax.set(ylabel="% of negative pairs", title="Trajectory categories (first → last snapshot)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = out / "categories.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
