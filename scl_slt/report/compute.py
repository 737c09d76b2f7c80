"""The report's compute table: what each row's whole chain of runs cost.

``python -m scl_slt.pipeline`` records, per table row, the chain of steps the row needed and
their summed wall-clock and CPU seconds (``pipeline.json``'s ``_chains``, see
``stages/pipeline.py``): for SCL-SLT the reference run, its scoring, the selective stage 1,
stage 2 and the test evaluation; for CL-SLT and the self-referenced variant their own stage 1,
stage 2 and test. One pipeline is one seed. Per row the table gives the mean ± std over the
pipelines that ran it and the ratio to CL-SLT's chain *of the same pipeline* (same seed, same
machine state), mean ± std over those pairs, with its 95 % t interval when there are several.

Times are what the machine measured: they compare rows only when nothing else ran beside the
pipelines (the report cannot know; the commands in docs/results.md say how they were run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .runs import CL_SLT
from .significance import summarise

WALL, CPU = "wall_s", "cpu_s"
NOTE = (
    "Each row's chain: the pipeline steps it needed (SCL-SLT: reference run, scoring, selective "
    "stage 1, stage 2, test), wall-clock and CPU seconds (the process and its finished workers) "
    "summed, mean ± std over pipelines (seeds); the ratios pair each chain with CL-SLT's of the "
    "same pipeline (mean ± std [95 % t interval]). Times compare rows only if nothing else ran "
    "beside the pipelines."
)


def _cell(values: list[float], decimals: int = 0) -> str:
    s = summarise(values)
    if s.mean is None:
        return "–"
    if s.std is None:
        return f"{s.mean:.{decimals}f}"
    return f"{s.mean:.{decimals}f} ± {s.std:.{decimals}f}"


def _ratio_cell(values: list[float]) -> str:
    s = summarise(values)
    if s.mean is None:
        return "–"
    if s.ci is None:
        return f"{s.mean:.2f}"
    return f"{s.mean:.2f} ± {s.std:.2f} [{s.ci[0]:.2f}, {s.ci[1]:.2f}]"


def compute_markdown(chains: dict[Path, dict[str, dict[str, Any]]]) -> str:
    """The compute table of the pipelines' chains (``runs.pipeline_records(..., "_chains")``);
    an empty string when no pipeline recorded one."""
    labels: list[str] = []
    for found in chains.values():
        labels += [label for label in found if label not in labels]
    if not labels:
        return ""
    lines = [
        "| row | pipelines | steps | chain wall (s) | chain CPU (s) | wall / CL-SLT | "
        "CPU / CL-SLT |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        mine = [found[label] for found in chains.values() if label in found]
        paired = [
            (found[label], found[CL_SLT])
            for found in chains.values()
            if label in found and CL_SLT in found and found[CL_SLT][WALL] > 0
        ]
        steps = sorted({", ".join(c["steps"]) for c in mine})
        ratios = {key: [a[key] / b[key] for a, b in paired if b[key] > 0] for key in (WALL, CPU)}
        lines.append(
            f"| {label} | {len(mine)} | {' / '.join(steps)} | {_cell([c[WALL] for c in mine])} | "
            f"{_cell([c[CPU] for c in mine])} | {_ratio_cell(ratios[WALL])} | "
            f"{_ratio_cell(ratios[CPU])} |"
        )
    return "\n".join(lines) + "\n"
