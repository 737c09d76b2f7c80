"""The report's compute table: what each row's whole chain of runs cost.

``python -m scl_slt.pipeline`` records, per table row, the chain of steps the row needed, its
final (stage-2) run and their summed wall-clock and CPU seconds (``pipeline.json``'s
``_chains``, see ``stages/pipeline.py``): for SCL-SLT the reference run, its scoring, the
selective stage 1, stage 2 and the test evaluation; for CL-SLT and the self-referenced variant
their own stage 1, stage 2 and test. A chain joins the report row of its final run (so the
question-based rows of ``scripts/qbslt_synthetic.sh``, each a "CL-SLT" chain of its own
pipeline, stay apart), else the pipeline's label. Per row the table gives the mean ± std over
chains (seeds) and the ratio to the CL-SLT chain of the same pipeline (or, when the pipeline has
none, of the one pipeline with the same seed), mean ± std over those pairs with its 95 % t
interval.

Times are what the machine measured: they compare rows only when nothing else ran beside the
pipelines (the report cannot know; the commands in docs/results.md say how they were run).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .runs import CL_SLT, Run
from .significance import summarise

NOTE = (
    "Each row's chain: the pipeline steps it needed (SCL-SLT: reference run, scoring, selective "
    "stage 1, stage 2, test), wall-clock and CPU seconds (the process and its finished workers) "
    "summed, mean ± std over chains (seeds); the ratios pair each chain with the CL-SLT chain "
    "of its pipeline, else of the same seed (mean ± std [95 % t interval]). Times compare rows "
    "only if nothing else ran beside the pipelines."
)


@dataclass(frozen=True)
class Chain:
    """One row's chain in one pipeline."""

    row: str
    seed: int | None
    pipeline: Path
    steps: tuple[str, ...]
    wall_s: float
    cpu_s: float


def collect_chains(recorded: dict[Path, dict[str, dict[str, Any]]], runs: Iterable[Run]) -> list[Chain]:  # fmt: skip
    """The pipelines' chains (``runs.pipeline_records(..., "_chains")``), each named by the
    report row and seed of its final run when the report read that run."""
    by_path = {r.path.resolve(): r for r in runs if r.row is not None}
    chains = []
    for folder, found in recorded.items():
        for label, c in found.items():
            run = by_path.get(Path(c["run_dir"]).resolve()) if c.get("run_dir") else None
            row, seed = (run.row, run.seed) if run is not None else (label, None)
            chains.append(Chain(row, seed, folder, tuple(c["steps"]), c["wall_s"], c["cpu_s"]))
    return chains


def _partner(chain: Chain, chains: list[Chain]) -> Chain | None:
    """The CL-SLT chain ``chain`` is compared with: its pipeline's (a CL-SLT chain's is itself),
    else the only CL-SLT chain of its seed; None when there is neither."""
    same = [c for c in chains if c.row == CL_SLT and c.pipeline == chain.pipeline]
    if same:
        return same[0]
    seeded = [c for c in chains if c.row == CL_SLT and chain.seed is not None and c.seed == chain.seed]  # fmt: skip
    return seeded[0] if len(seeded) == 1 else None


def _cell(values: list[float], decimals: int = 0) -> str:
    s = summarise(values)
    if s.mean is None:
        return "–"
    if s.std is None:
        return f"{s.mean:.{decimals}f}"
    return f"{s.mean:.{decimals}f} ± {s.std:.{decimals}f}"


def _ratio_cell(values: list[float]) -> str:
    s = summarise(values)
    if s.ci is None:
        return _cell(values, 2)
    return f"{s.mean:.2f} ± {s.std:.2f} [{s.ci[0]:.2f}, {s.ci[1]:.2f}]"


def compute_markdown(chains: list[Chain]) -> str:
    """The compute table of ``collect_chains``; an empty string when there is no chain."""
    rows: list[str] = []
    for chain in chains:
        rows += [chain.row] if chain.row not in rows else []
    if not rows:
        return ""
    lines = [
        "| row | chains | steps | chain wall (s) | chain CPU (s) | wall / CL-SLT | CPU / CL-SLT |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        mine = [c for c in chains if c.row == row]
        pairs = [(c, p) for c in mine if (p := _partner(c, chains)) is not None and p.wall_s > 0]
        wall = [c.wall_s / p.wall_s for c, p in pairs]
        cpu = [c.cpu_s / p.cpu_s for c, p in pairs if p.cpu_s > 0]
        steps = " / ".join(sorted({", ".join(c.steps) for c in mine}))
        lines.append(
            f"| {row} | {len(mine)} | {steps} | {_cell([c.wall_s for c in mine])} | "
            f"{_cell([c.cpu_s for c in mine])} | {_ratio_cell(wall)} | {_ratio_cell(cpu)} |"
        )
    return "\n".join(lines) + "\n"
