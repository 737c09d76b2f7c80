"""Paper-style results tables (component, ablation, trajectory categories) from loaded runs.

How each run is classified (component row, SCL setting) is ``runs.py``'s docstring. The
w/ SCL and SCL-SLT rows hold the runs of one setting (``main_setting``: the paper's log / 5 / cico
if present, else the most common); runs of another setting get rows of their own ("w/ SCL
(schedule hard_only)"). Ablation tables are built from the one-stage selective runs: a table holds
the runs that agree on the two other factors (named in its title) and is written when they
differ in its own factor. The negative-selection strategy table is ``strategies.py``'s.

Runs sharing a row (seeds) are shown as mean ± sample standard deviation (n - 1) and a 95 %
interval, with n and the seeds; ``Table.comparisons`` holds the paired tests against the table's
reference row (``significance.py`` computes both). The paper's test numbers (method.md §7) stand
beside ours for PHOENIX14T and CSL-Daily.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .runs import (
    BASELINE,
    CL_SLT,
    COMPONENT_ROWS,
    METRICS,
    SCL_SLT,
    W_CL,
    W_SCL,
    Run,
    _get,
)

log = logging.getLogger(__name__)

METRIC_NAMES = {"bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4"}
METRIC_NAMES["rouge_l"] = "ROUGE-L"
CATEGORIES = ("H->L", "H->H", "L->H", "L->L")
SIGNIFICANCE_LEVEL = 0.05  # a paired test's p below this: the difference is significant
DATASET_ORDER = ("phoenix14t", "csl_daily")

# ------------------------------------------------------------------- the paper (method.md §7)
# Component table, test scores: (PHOENIX14T ROUGE-L, BLEU-4, CSL-Daily ROUGE-L, BLEU-4).
_PAPER_COMPONENT_ROWS = {
    BASELINE: (41.81, 21.97, 41.04, 16.31),
    W_CL: (43.55, 22.03, 47.77, 20.59),
    W_SCL: (46.33, 25.30, 48.53, 21.41),
    CL_SLT: (46.13, 25.01, 48.34, 20.70),
    SCL_SLT: (47.02, 26.00, 51.08, 23.25),
}
PAPER_COMPONENT = {
    dataset: {row: {"rouge_l": v[i], "bleu4": v[i + 1]} for row, v in _PAPER_COMPONENT_ROWS.items()}
    for i, dataset in ((0, "phoenix14t"), (2, "csl_daily"))
}
# Category shares of the negative pairs on PHOENIX14T (L->L is the rest), in %.
PAPER_CATEGORIES = {"phoenix14t": {"H->L": 35.9, "H->H": 31.9, "L->H": 17.8, "L->L": 14.4}}


@dataclass(frozen=True)
class Ablation:
    """One ablation of the joint (one-stage w/ SCL) setting and the paper's PHOENIX14T BLEU-4
    per row (its keys are the paper's rows, in its order)."""

    factor: str  # key in Run.factors
    title: str
    paper_setting: str  # the value in the paper's main configuration
    paper_phoenix14t_bleu4: dict[str, float]


ABLATIONS = (
    Ablation(
        "schedule",
        "Curriculum schedule",
        "log",
        {"hard_only": 12.41, "easy_only": 24.00, "linear": 24.59, "sqrt": 24.54, "log": 25.30},
    ),
    Ablation(
        "interval",
        "Trajectory interval (epochs between snapshots)",
        "5",
        {"1": 24.68, "5": 25.30, "10": 6.26},
    ),
    Ablation("pooling", "Similarity pooling", "cico", {"cls": 14.85, "mean": 12.44, "cico": 25.30}),
)
FACTORS = tuple(a.factor for a in ABLATIONS)
PAPER_SETTING = tuple(a.paper_setting for a in ABLATIONS)


# --------------------------------------------------------------------------------- tables
def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class TableRow:
    label: str
    runs: list[Run]
    paper: dict[str, float]  # metric -> the paper's value

    def values(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.runs if r.metrics and metric in r.metrics]

    @property
    def seeds(self) -> str:
        return " ".join(str(r.seed) for r in sorted(self.runs, key=lambda r: r.seed or 0))


@dataclass(frozen=True)
class Comparison:
    """A row's paired significance test against its table's reference row on one metric
    (``significance.py``). ``p_value`` None: not tested, and ``note`` says why; with a p-value,
    ``note`` names what was left out of the test (a seed without a partner, missing files)."""

    reference: str  # the reference row's label
    p_value: float | None = None
    seeds: tuple[int | None, ...] = ()  # the seed pairs tested
    sentences: int = 0  # of the concatenated paired corpus
    note: str = ""

    @property
    def significant(self) -> bool | None:
        return None if self.p_value is None else self.p_value < SIGNIFICANCE_LEVEL


@dataclass
class Table:
    name: str  # component | schedule | interval | pooling | categories | strategies
    dataset: str
    title: str
    context: str  # the settings shared by every row ("" when none)
    metrics: tuple[str, ...]  # ours
    paper_metrics: tuple[str, ...]  # the paper's columns (empty when it has none)
    rows: list[TableRow]
    # (row label, metric) -> its test against the reference row; only tested tables have any.
    comparisons: dict[tuple[str, str], Comparison] = field(default_factory=dict)


def _dataset_key(name: str) -> tuple[int, str]:
    return (DATASET_ORDER.index(name) if name in DATASET_ORDER else len(DATASET_ORDER), name)


def _by_dataset(runs: Iterable[Run]) -> list[tuple[str, list[Run]]]:
    datasets = sorted({r.dataset for r in runs}, key=_dataset_key)
    return [(d, [r for r in runs if r.dataset == d]) for d in datasets]


def main_setting(runs: Sequence[Run]) -> tuple[str, ...] | None:
    """The SCL setting (schedule, interval, pooling) the component table's SCL rows stand for:
    the paper's (log, 5, cico) when a run has it, else the most common one (ties: the first in
    sorted order). None when no run is selective."""
    settings = [tuple(r.factors[f] for f in FACTORS) for r in runs if r.factors]
    if not settings:
        return None
    if PAPER_SETTING in settings:
        return PAPER_SETTING
    return min(settings, key=lambda s: (-settings.count(s), s))


def component_label(run: Run, main: tuple[str, ...] | None) -> str | None:
    """The run's row; a selective run (or one from a selective stage 1) whose setting differs
    from ``main`` gets its own row naming the difference, e.g. "w/ SCL (schedule hard_only)",
    so that ablation runs never enter the main rows; so does another run whose contrastive stage
    used another pooling ("w/ CL (pooling cls)"). A report.json row is kept as is."""
    if run.labelled or main is None:
        return run.row
    if not run.factors:
        main_pooling = main[FACTORS.index("pooling")]
        if run.pooling is None or run.pooling == main_pooling:
            return run.row
        return f"{run.row} (pooling {run.pooling})"
    differs = [f"{f} {run.factors[f]}" for f, m in zip(FACTORS, main) if run.factors[f] != m]
    return f"{run.row} ({', '.join(differs)})" if differs else run.row


def component_tables(runs: Sequence[Run]) -> list[Table]:
    """One component table per dataset: the paper's five rows, then any other row found."""
    tables = []
    for dataset, mine in _by_dataset(runs):
        main = main_setting(mine)
        labels = {id(r): component_label(r, main) for r in mine}
        extra = sorted(set(labels.values()) - set(COMPONENT_ROWS) - {None})
        paper = PAPER_COMPONENT.get(dataset, {})
        rows = [
            TableRow(label, [r for r in mine if labels[id(r)] == label], dict(paper.get(label, {})))
            for label in (*COMPONENT_ROWS, *extra)
        ]
        context = (
            f"SCL rows: {', '.join(f'{f} {v}' for f, v in zip(FACTORS, main))}" if main else ""
        )
        paper_metrics = ("bleu4", "rouge_l") if paper else ()
        table = Table(
            "component", dataset, "Component table", context, METRICS, paper_metrics, rows
        )
        tables.append(table)
    return tables


def _row_order(ablation: Ablation, values: Iterable[str]) -> list[str]:
    """The paper's rows in its order, then ours; intervals sorted by number."""
    paper_rows = list(ablation.paper_phoenix14t_bleu4)
    labels = set(paper_rows) | set(values)
    if ablation.factor == "interval":  # "5", "10 (span 4)": by the leading number

        def number(v: str) -> tuple[bool, int, str]:
            head = v.split(" ", 1)[0]
            return (not head.isdigit(), int(head) if head.isdigit() else 0, v)

        return sorted(labels, key=number)
    return [*paper_rows, *sorted(labels - set(paper_rows))]


def ablation_tables(runs: Sequence[Run]) -> list[Table]:
    """Per dataset and ablation: one table per setting of the two other factors, when the runs
    of that setting differ in this factor (a single value is not an ablation)."""
    tables = []
    one_stage = [r for r in runs if r.factors and _get(r.config, "stage.name") == "contrastive"]
    for dataset, mine in _by_dataset(one_stage):
        paper_dataset = dataset == "phoenix14t"
        for ablation in ABLATIONS:
            others = [a.factor for a in ABLATIONS if a is not ablation]
            settings: dict[tuple[str, ...], list[Run]] = {}
            for r in mine:
                settings.setdefault(tuple(r.factors[f] for f in others), []).append(r)
            for setting, members in sorted(settings.items()):
                values = {r.factors[ablation.factor] for r in members}
                if len(values) < 2:
                    continue
                paper = ablation.paper_phoenix14t_bleu4 if paper_dataset else {}
                rows = [
                    TableRow(
                        label,
                        [r for r in members if r.factors[ablation.factor] == label],
                        {"bleu4": paper[label]} if label in paper else {},
                    )
                    for label in _row_order(ablation, values)
                ]
                title = f"Ablation: {ablation.title} (one stage, w/ SCL)"
                context = ", ".join(f"{f} {v}" for f, v in zip(others, setting))
                paper_metrics = ("bleu4",) if paper else ()
                ours = ("bleu4", "rouge_l")
                table = Table(ablation.factor, dataset, title, context, ours, paper_metrics, rows)
                tables.append(table)
    return tables


def read_category_shares(run_dir: Path) -> dict[str, float] | None:
    """Shares (in %) of ``trajectory/summary.json``; None if the run has none or it is bad."""
    path = run_dir / "trajectory" / "summary.json"
    if not path.is_file():
        return None
    try:
        shares = json.loads(path.read_text())["shares"]
        return {c: 100.0 * float(shares[c]) for c in CATEGORIES}
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s: unreadable trajectory summary (%s)", path, e)
        return None


def category_tables(runs: Sequence[Run]) -> list[Table]:
    """Per dataset, the category shares (mean over its reference runs) beside the paper's."""
    with_shares = []
    for r in runs:
        shares = read_category_shares(r.path)
        if shares is not None:
            with_shares.append(Run(path=r.path, dataset=r.dataset, seed=r.seed, metrics=shares))
    tables = []
    for dataset, mine in _by_dataset(with_shares):
        paper = PAPER_CATEGORIES.get(dataset, {})
        title = "Trajectory categories (% of negative pairs)"
        rows = [TableRow("reference runs", mine, dict(paper))]
        tables.append(
            Table("categories", dataset, title, "", CATEGORIES, CATEGORIES if paper else (), rows)
        )
    return tables


def _component_key(label: str) -> tuple[int, str]:
    return (COMPONENT_ROWS.index(label) if label in COMPONENT_ROWS else len(COMPONENT_ROWS), label)
