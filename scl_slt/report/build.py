"""Write the report: every table as Markdown and CSV, the runs' list, and the figures.

Outputs in ``out_dir``: ``tables.md`` (every table, with a paragraph on how cells and tests are
computed), ``tables.csv`` (one long table: ``table, dataset, context, row, metric, n, seeds,
mean, std, ci_low, ci_high, p_value, significant, test, paper``, one line per row and metric;
the p columns are filled for the tested metrics, ``significance.py``),
``runs.csv`` (each run, its row, factors and status), ``curves.png`` (dev BLEU-4 per epoch and
training loss per step, one line per run) and ``categories.png`` (trajectory category shares of
the reference runs beside the paper's; only when some run has ``trajectory/summary.json``) and
``batch_diagnostics.png`` (what each strategy's batches held, per epoch; only when some stage-1
run logged ``batch_diagnostics`` records, ``report/batch_diagnostics.py``).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import batch_diagnostics, render, significance
from .compute import NOTE as COMPUTE_NOTE
from .compute import collect_chains, compute_markdown
from .runs import METRICS, Run, _get, find_run_dirs, load_run, pipeline_records
from .strategies import strategy_tables
from .tables import Table, _dataset_key, ablation_tables, category_tables, component_tables

log = logging.getLogger(__name__)


RUNS_CSV_FIELDS = ("run", "dataset", "stage", "selection", "seed", "row", "schedule", "interval",
                   "pooling", *METRICS, "status")  # fmt: skip


def _runs_csv_row(r: Run) -> dict[str, Any]:
    scores = {m: f"{r.metrics[m]:.4f}" for m in METRICS} if r.metrics else {}
    config = {k: _get(r.config, f"{k}.name", "") for k in ("stage", "selection")}
    return {"run": str(r.path), "dataset": r.dataset, **config, "seed": r.seed, "row": r.row,
            **r.factors, **scores, "status": r.problem or "ok"}  # fmt: skip


def _markdown(
    tables: Sequence[Table], runs: Sequence[Run], run_dirs: Sequence[Path], how: str
) -> str:
    timings = pipeline_records(run_dirs, "_timings")
    lines = [
        "# Results",
        "",
        f"{how}; {len(runs)} run directories, {sum(r.problem is None for r in runs)} in the "
        "tables. The paper's columns are its published test scores (method.md §7). Every run, "
        "its row and factors: `runs.csv`.",
        "",
        significance.METHOD_PARAGRAPH,
    ]
    for dataset in sorted({t.dataset for t in tables}, key=_dataset_key):
        lines += ["", f"## {dataset}"]
        for table in (t for t in tables if t.dataset == dataset):
            title = table.title + (f" — {table.context}" if table.context else "")
            lines += ["", f"### {title}", "", render.table_markdown(table)]
    diagnostics = batch_diagnostics.diagnostics_markdown(runs)
    if diagnostics:
        lines += ["", "## Batch diagnostics (stage 1, last epoch)", "", diagnostics.rstrip("\n")]
        lines += ["", "Per epoch: `batch_diagnostics.png`."]
    compute = compute_markdown(collect_chains(pipeline_records(run_dirs, "_chains"), runs))
    if compute:
        lines += ["", "## Chain compute (each row's runs, end to end)", "", compute.rstrip("\n")]
        lines += ["", COMPUTE_NOTE]
    if timings:
        lines += ["", "## Pipeline wall time", "", "| pipeline | steps (s) | total (s) |"]
        lines.append("|---|---|---|")
        for folder, steps in timings.items():
            detail = ", ".join(f"{k} {v:.0f}" for k, v in steps.items())
            lines.append(f"| `{folder}` | {detail} | {sum(steps.values()):.0f} |")
    skipped = [r for r in runs if r.problem]
    if skipped:
        lines += ["", "## Skipped runs", ""]
        lines += [f"- `{r.path}`: {r.problem}" for r in skipped]
    return "\n".join(lines) + "\n"


@dataclass
class Report:
    """What ``build_report`` produced: the tables, the runs (skipped ones have a ``problem``)
    and the files written."""

    tables: list[Table]
    runs: list[Run]
    files: dict[str, Path]


def build_report(
    arguments: Sequence[str],
    out_dir: str | os.PathLike = "reports",
    split: str = "test",
    checkpoint: str = "best",
) -> Report:
    """Read the runs the arguments name, write the tables and figures into ``out_dir``."""

    run_dirs = find_run_dirs(arguments)
    runs = [load_run(p, split, checkpoint) for p in run_dirs]
    for r in runs:
        if r.problem:
            log.warning("skipping %s: %s", r.path, r.problem)
    scored = [r for r in runs if r.problem is None]
    categories = category_tables(runs)
    strategies = strategy_tables(scored)
    tables = [*component_tables(scored), *ablation_tables(scored), *strategies, *categories]
    significance.compare_tables(tables, scored, split, checkpoint)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / name for name in ("tables.md", "tables.csv", "runs.csv")}
    how = f"Split `{split}`, checkpoint `{checkpoint}`"
    markdown = _markdown(tables, runs, run_dirs, how)
    files["tables.md"].write_text(markdown, encoding="utf-8")
    with open(files["tables.csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=render.CSV_FIELDS)
        writer.writeheader()
        for table in tables:
            writer.writerows(render.table_csv_rows(table))
    with open(files["runs.csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=RUNS_CSV_FIELDS)
        writer.writeheader()
        writer.writerows(_runs_csv_row(r) for r in runs)
    for name, path in (
        ("curves.png", render.plot_curves(runs, out)),
        ("categories.png", render.plot_categories(categories, out)),
        ("batch_diagnostics.png", batch_diagnostics.diagnostics_figure(runs, out)),
    ):
        if path is not None:
            files[name] = path
    return Report(tables, runs, files)
