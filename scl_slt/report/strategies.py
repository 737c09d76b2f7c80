"""The report's negative-selection strategy table: one row per stage-1 selection strategy
(``selection.name``: random, trajectory, text_semantic, visual_curriculum, san, online_trajectory, ...)
with what it did to alignment and what it left for translation.

Columns, all on the report's split and checkpoint:

- ``V→T R@1`` / ``T→V R@1`` and ``SDR``: retrieval and Sign Density Ratio of the stage-1 checkpoint
  (the ``alignment`` entry ``python -m scl_slt.evaluate`` writes for a checkpoint with a text
  branch; lower SDR = visual features less collapsed);
- ``fine V→T R@1`` / ``fine T→V R@1``: fine-grained retrieval, each query against its
  ``retrieval.fine_k`` TF-IDF-closest different sentences only (``eval/retrieval.py``). The
  table's context names the retrieval protocol (duplicate targets, fine_k) its runs were scored
  under, or each one with its number of runs when they differ;
- ``stage-1 BLEU-4``: translation by the stage-1 checkpoint itself (its joint translation loss);
- ``BLEU-4 after stage 2``: the translation run whose ``stage.init_from`` is that stage-1 run.

A stage-1 run and its stage-2 run(s) make one sample of their row; several seeds give mean ± std.
Rows are split further when their runs differ in a way that is not the strategy: a trajectory run
whose SCL setting (schedule, interval, pooling) is not the main one, or stage-1 runs of another
length (``stage.epochs``) than the most common, get the difference in the row label. A tracked
reference run is a random stage-1 run like any other and joins the ``random`` row when it has
been evaluated (with the same length).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from .runs import Run, _get
from .tables import FACTORS, Table, TableRow, _by_dataset, main_setting

STRATEGY_METRICS = (
    *("v2t_r1", "t2v_r1", "fine_v2t_r1", "fine_t2v_r1"),
    *("sdr", "stage1_bleu4", "stage2_bleu4"),
)
STRATEGY_METRIC_NAMES = {
    "v2t_r1": "V→T R@1",
    "t2v_r1": "T→V R@1",
    "fine_v2t_r1": "fine V→T R@1",
    "fine_t2v_r1": "fine T→V R@1",
    "sdr": "SDR",
    "stage1_bleu4": "stage-1 BLEU-4",
    "stage2_bleu4": "BLEU-4 after stage 2",
}
STRATEGY_ORDER = (
    "random",
    "trajectory",
    "text_semantic",
    "visual_curriculum",
    "san",
    "online_trajectory",
    "self_trajectory",
    "visual_confusable",  # runs from before its rename to visual_curriculum
)


def _stage(run: Run) -> str:
    return str(_get(run.config, "stage.name", "contrastive"))


def _label(run: Run, main: tuple[str, ...] | None, usual_epochs: int | None) -> str:
    """The strategy, with whatever else sets this run apart from its table's other rows."""
    label = str(_get(run.config, "selection.name", "random"))
    differs = []
    if run.factors and main is not None:
        differs += [f"{f} {run.factors[f]}" for f, m in zip(FACTORS, main) if run.factors[f] != m]
    epochs = _get(run.config, "stage.epochs")
    if usual_epochs is not None and epochs != usual_epochs:
        differs.append(f"{epochs} epochs")
    return f"{label} ({', '.join(differs)})" if differs else label


def protocol_context(runs: Iterable[Run]) -> str:
    """``retrieval: duplicates exclude, fine_k 10`` for the runs with retrieval figures; each
    protocol with its number of runs when they differ ("not recorded": an older metrics file)."""
    counts: Counter[str] = Counter()
    for r in runs:
        if r.alignment and any(k.endswith("_r1") for k in r.alignment):
            p = r.retrieval_protocol
            counts[
                f"duplicates {p.get('duplicates')}, fine_k {p.get('fine_k')}"
                if p
                else "not recorded"
            ] += 1
    if len(counts) <= 1:
        return "".join(f"retrieval: {text}" for text in counts)
    return "retrieval protocols differ: " + "; ".join(
        f"{t} ({n} run{'s' if n > 1 else ''})" for t, n in counts.items()
    )


def _order(label: str) -> tuple[int, str]:
    name = label.split(" ", 1)[0]
    return (STRATEGY_ORDER.index(name) if name in STRATEGY_ORDER else len(STRATEGY_ORDER), label)


def strategy_tables(runs: Sequence[Run]) -> list[Table]:
    """Per dataset, the strategy table; written when its stage-1 runs use two or more strategies.

    ``runs`` are runs with metrics (the report's scored runs)."""
    tables = []
    for dataset, mine in _by_dataset(runs):
        stage1 = [r for r in mine if _stage(r) == "contrastive"]
        if len({_get(r.config, "selection.name", "random") for r in stage1}) < 2:
            continue
        main = main_setting(stage1)
        counts = Counter(_get(r.config, "stage.epochs") for r in stage1)
        usual_epochs = max(counts, key=lambda e: (counts[e], str(e))) if counts else None
        followers: dict[Path, list[Run]] = {}
        for r in mine:
            if _stage(r) == "translate" and r.stage1 is not None:
                followers.setdefault(r.stage1.resolve(), []).append(r)
        samples: dict[str, list[Run]] = {}
        for r in stage1:
            values = {"stage1_bleu4": r.metrics["bleu4"]} if r.metrics else {}
            values.update({k: v for k, v in (r.alignment or {}).items() if k in STRATEGY_METRICS})
            after = followers.get(r.path.resolve(), [])
            if after:  # several translation runs from one stage-1 run: their mean
                values["stage2_bleu4"] = sum(f.metrics["bleu4"] for f in after) / len(after)
            sample = Run(path=r.path, dataset=dataset, seed=r.seed, metrics=values)
            samples.setdefault(_label(r, main, usual_epochs), []).append(sample)
        rows = [TableRow(label, samples[label], {}) for label in sorted(samples, key=_order)]
        context = f"{usual_epochs} stage-1 epochs" if usual_epochs is not None else ""
        if main is not None:
            context += "; trajectory: " + ", ".join(f"{f} {v}" for f, v in zip(FACTORS, main))
        protocol = protocol_context(stage1)
        context += f"; {protocol}" if context and protocol else protocol
        title = "Negative-selection strategies (stage 1, then stage 2)"
        tables.append(Table("strategies", dataset, title, context, STRATEGY_METRICS, (), rows))
    return tables
