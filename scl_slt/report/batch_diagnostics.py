"""The batch diagnostics of stage-1 runs in the report: what each strategy's batches held, epoch
by epoch (``selection/diagnostics.py``; one ``batch_diagnostics`` record per epoch in a stage-1
run's ``metrics.jsonl``).

A run of the report contributes its own records when it is a stage-1 run, else those of the
stage-1 run it started from (``Run.stage1``); each stage-1 run counts once. Runs are grouped by
dataset and strategy (``selection.name``, with its ``selection.schedule`` when not the default
``log``); with several runs (seeds) of a group the figures are averaged per epoch.

``diagnostics_figure``: one PNG, a row per dataset, panels identical share, near-identical share,
mean δ and the H->L / H->H / L->H / L->L mix (one line style per category) against the epoch.
``diagnostics_markdown``: a table of each group's last epoch. Neither raises for one unreadable
run: it is left out with a warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..rundir.layout import read_metrics, read_run_config
from .runs import Run

log = logging.getLogger(__name__)

RECORD = "batch_diagnostics"  # the records' split (selection/diagnostics.py writes it)
FIGURE = "batch_diagnostics.png"
CATEGORY_KEYS = (("H→L", "share_HL", "-"), ("H→H", "share_HH", "--"))
CATEGORY_KEYS += (("L→H", "share_LH", ":"), ("L→L", "share_LL", "-."))
TABLE_COLUMNS = (  # (header, key, scale, decimals)
    ("identical %", "identical_share", 100, 2),
    ("near-identical %", "near_identical_share", 100, 2),
    ("twins %", "confusable_share", 100, 2),
    ("mean δ", "delta_mean", 1, 4),
    ("median δ", "delta_q50", 1, 4),
    ("mean S", "similarity_mean", 1, 4),
    *((f"{name} %", key, 100, 1) for name, key, _ in CATEGORY_KEYS),
)

Group = tuple[str, str]  # (dataset, strategy)


def _stage1_dirs(runs: Sequence[Run]) -> list[Path]:
    """Each stage-1 run directory the runs name, once, in order."""
    found: list[Path] = []
    for r in runs:
        stage = (r.config or {}).get("stage", {}).get("name", "contrastive")
        path = r.path if stage == "contrastive" else r.stage1
        if path is not None and path not in found:
            found.append(path)
    return found


def _strategy(config: dict[str, Any]) -> str:
    selection = config.get("selection", {}) or {}
    name = str(selection.get("name", "random"))
    schedule = selection.get("schedule", "log")
    return name if name == "random" or schedule in (None, "log") else f"{name} ({schedule})"


def collect(runs: Sequence[Run]) -> dict[Group, dict[int, list[dict[str, Any]]]]:
    """``{(dataset, strategy): {epoch: [record of each run]}}`` from the runs' stage-1 runs."""
    groups: dict[Group, dict[int, list[dict[str, Any]]]] = {}
    for path in _stage1_dirs(runs):
        try:
            config = read_run_config(path)
            records = read_metrics(path, RECORD)
        except (OSError, ValueError, KeyError) as e:
            log.warning("batch diagnostics: skipping %s: %s", path, e)
            continue
        if not records:
            continue
        key = (str(config.get("data", {}).get("name", "?")), _strategy(config))
        by_epoch = groups.setdefault(key, {})
        latest: dict[int, dict[str, Any]] = {}
        for record in records:  # a resumed epoch's record replaces the earlier one
            if isinstance(record.get("epoch"), int):
                latest[record["epoch"]] = record
        for epoch, record in latest.items():
            by_epoch.setdefault(epoch, []).append(record)
    return dict(sorted(groups.items()))


def _mean(records: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
    return sum(values) / len(values) if values else None


def _series(by_epoch: dict[int, list[dict[str, Any]]], key: str) -> tuple[list, list]:
    points = [(e, _mean(rs, key)) for e, rs in sorted(by_epoch.items())]
    points = [(e, v) for e, v in points if v is not None]
    return [e for e, _ in points], [v for _, v in points]


def diagnostics_figure(runs: Sequence[Run], out_dir: str | os.PathLike) -> Path | None:
    """``<out_dir>/batch_diagnostics.png`` (see the module doc); None without any record."""
    groups = collect(runs)
    if not groups:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    datasets = sorted({d for d, _ in groups})
    strategies = sorted({s for _, s in groups})
    colours = {s: plt.get_cmap("tab10")(k % 10) for k, s in enumerate(strategies)}
    fig, axes = plt.subplots(len(datasets), 4, figsize=(18, 3.8 * len(datasets)), squeeze=False)
    panels = (
        ("identical_share", "identical targets (% of in-batch negatives)", 100),
        ("near_identical_share", "near-identical targets (%)", 100),
        ("delta_mean", "mean δ of in-batch negatives", 1),
    )
    for row, dataset in zip(axes, datasets):
        for (dset, strategy), by_epoch in groups.items():
            if dset != dataset:
                continue
            n = max(len(rs) for rs in by_epoch.values())
            label = f"{strategy} (n={n})"
            for ax, (key, _, scale) in zip(row, panels):
                xs, ys = _series(by_epoch, key)
                if xs:
                    ax.plot(xs, [scale * y for y in ys], marker=".", color=colours[strategy],
                            label=label)  # fmt: skip
            for name, key, style in CATEGORY_KEYS:
                xs, ys = _series(by_epoch, key)
                if xs:
                    row[3].plot(xs, [100 * y for y in ys], linestyle=style,
                                color=colours[strategy], label=f"{strategy} {name}")  # fmt: skip
        for ax, (_, title, _) in zip(row, panels):
            ax.set(title=f"{dataset}: {title}", xlabel="epoch")
        row[3].set(title=f"{dataset}: trajectory-category mix (%)", xlabel="epoch")
        for ax in row:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "no reference run", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / FIGURE
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def diagnostics_markdown(runs: Sequence[Run]) -> str:
    """A Markdown table of each (dataset, strategy)'s last epoch (mean over its runs); ``""``
    without any record."""
    groups = collect(runs)
    if not groups:
        return ""
    head = ["dataset", "strategy", "runs", "epoch", *(h for h, *_ in TABLE_COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (dataset, strategy), by_epoch in groups.items():
        last = max(by_epoch)
        records = by_epoch[last]
        cells = [dataset, strategy, str(len(records)), str(last)]
        for _, key, scale, decimals in TABLE_COLUMNS:
            value = _mean(records, key)
            cells.append("–" if value is None else f"{scale * value:.{decimals}f}")
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "Batch diagnostics at the last epoch: shares of the in-batch negative pairs "
        "(identical targets, near-identical ones = TF-IDF cosine >= the record's "
        "`near_identical_threshold`, confusable gloss twins) and, against the reference run, "
        "δ, the last snapshot's similarity S and the trajectory-category mix."
    )
    return note + "\n\n" + "\n".join(lines) + "\n"
