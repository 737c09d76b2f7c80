"""Rendering of the results report: tables as Markdown and CSV rows, and the figures (dev BLEU-4 /
training-loss curves per run, the trajectory category chart; matplotlib, Agg backend).
``build.py`` collects the runs and builds the tables; this module turns them into text and files.

A cell is ``mean ± std [95 % interval]`` over the row's seeds (``significance.summarise``); a
tested cell whose row does not differ significantly from the reference row carries a dagger, and
each tested metric gets a p column and a legend line under the table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .runs import Run
from .significance import summarise
from .strategies import STRATEGY_METRIC_NAMES
from .tables import (
    CATEGORIES,
    METRIC_NAMES,
    PAPER_CATEGORIES,
    SIGNIFICANCE_LEVEL,
    Comparison,
    Table,
    _component_key,
    _dataset_key,
    mean_std,
)

COLUMN_NAMES = {**METRIC_NAMES, **STRATEGY_METRIC_NAMES}
DECIMALS = {"sdr": 3}  # other columns: 2
DAGGER = "†"


def _cell(values: list[float], decimals: int = 2) -> str:
    """``mean ± std [ci_low, ci_high]`` (the interval one decimal shorter); "1 seed" alone."""
    s = summarise(values)
    if s.mean is None:
        return "—"
    if s.std is None or s.ci is None:
        return f"{s.mean:.{decimals}f} (1 seed)"
    short = max(decimals - 1, 1)
    low, high = s.ci
    return f"{s.mean:.{decimals}f} ± {s.std:.{decimals}f} [{low:.{short}f}, {high:.{short}f}]"


def tested_metrics(table: Table) -> list[str]:
    """The table's metrics that carry a paired test, in column order."""
    return [m for m in table.metrics if any(key[1] == m for key in table.comparisons)]


def _p_cell(comparison: Comparison | None, label: str) -> str:
    if comparison is None:
        return "—"
    if comparison.p_value is None:
        return "reference" if label == comparison.reference else "not tested"
    p = comparison.p_value
    return "< 0.001" if p < 0.001 else f"{p:.3f}"  # 1/1001, the least 1000 resamples can give


def table_notes(table: Table) -> list[str]:
    """The legend of the dagger and why a row was tested on fewer runs, or not at all."""
    name = COLUMN_NAMES.get
    tested = tested_metrics(table)
    if not tested:
        return []
    references = sorted({c.reference for c in table.comparisons.values()})
    metrics = ", ".join(name(m, m) for m in tested)
    lines = [
        f"{DAGGER} not significantly different from {' / '.join(references)} (paired bootstrap "
        f"on {metrics}, p >= {SIGNIFICANCE_LEVEL})"
    ]
    for (label, metric), c in table.comparisons.items():
        if c.note and label != c.reference:
            seeds = " ".join(str(s) for s in c.seeds)
            tested_on = f"tested on seeds {seeds}; " if c.p_value is not None else ""
            lines.append(f"{label} ({name(metric, metric)}): {tested_on}{c.note}")
    return lines


def table_markdown(table: Table) -> str:
    """The table, then its legend and notes (when it carries paired tests)."""
    name = COLUMN_NAMES.get
    tested = tested_metrics(table)
    reference = {m: c.reference for (_, m), c in table.comparisons.items()}
    head = ["row", "n", "seeds", *(name(m, m) for m in table.metrics)]
    head += [f"p ({name(m, m)} vs {reference[m]})" for m in tested]
    head += [f"paper {name(m, m)}" for m in table.paper_metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        cells = [row.label, str(len(row.runs)), row.seeds or "—"]
        for m in table.metrics:
            cell = _cell(row.values(m), DECIMALS.get(m, 2))
            if table.comparisons.get((row.label, m), _NONE).significant is False:
                cell += f" {DAGGER}"
            cells.append(cell)
        cells += [_p_cell(table.comparisons.get((row.label, m)), row.label) for m in tested]
        cells += [f"{row.paper[m]:.2f}" if m in row.paper else "—" for m in table.paper_metrics]
        lines.append("| " + " | ".join(cells) + " |")
    notes = table_notes(table)
    if notes:  # the legend as a line, the notes as a list
        lines += ["", notes[0], *([""] if notes[1:] else []), *(f"- {n}" for n in notes[1:])]
    return "\n".join(lines)


_NONE = Comparison("")  # no test: ``significant`` is None

CSV_FIELDS = ("table", "dataset", "context", "row", "metric", "n", "seeds", "mean", "std",
              "ci_low", "ci_high", "p_value", "significant", "test", "paper")  # fmt: skip


def _test_text(comparison: Comparison | None, label: str, metric: str) -> str:
    if comparison is None:
        return ""
    if label == comparison.reference:
        return "reference row"
    if comparison.p_value is None:
        return comparison.note
    seeds = " ".join(str(s) for s in comparison.seeds)
    text = (
        f"paired bootstrap {COLUMN_NAMES.get(metric, metric)} vs {comparison.reference}, "
        f"seeds {seeds}, {comparison.sentences} sentences"
    )
    return f"{text}; {comparison.note}" if comparison.note else text


def table_csv_rows(table: Table) -> list[dict[str, Any]]:
    out = []
    for row in table.rows:
        for metric in dict.fromkeys((*table.metrics, *table.paper_metrics)):
            s = summarise(row.values(metric) if metric in table.metrics else [])
            comparison = table.comparisons.get((row.label, metric))
            p = comparison.p_value if comparison else None
            out.append(
                {
                    "table": table.name,
                    "dataset": table.dataset,
                    "context": table.context,
                    "row": row.label,
                    "metric": metric,
                    "n": s.n,
                    "seeds": row.seeds,
                    "mean": "" if s.mean is None else f"{s.mean:.4f}",
                    "std": "" if s.std is None else f"{s.std:.4f}",
                    "ci_low": "" if s.ci is None else f"{s.ci[0]:.4f}",
                    "ci_high": "" if s.ci is None else f"{s.ci[1]:.4f}",
                    "p_value": "" if p is None else f"{p:.6f}",
                    "significant": "" if p is None else ("yes" if comparison.significant else "no"),
                    "test": _test_text(comparison, row.label, metric),
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
