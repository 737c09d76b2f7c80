"""What the report knows about a run directory, read from what training and evaluation left
there: its config, its evaluated metrics (and the alignment metrics of a stage-1 checkpoint), the
stage-1 run it started from, its component-table row and its SCL setting.

Rows of the component table (``classify_component``), from the run's config:

- ``stage=translate`` without ``stage.init_from``: **baseline end-to-end**;
- ``stage=translate`` from a stage-1 run: **CL-SLT** if that run's selection is ``random``,
  **SCL-SLT** if it is ``trajectory`` (another strategy S gives the extra row "S, then translate");
  the stage-1 run's ``config.yaml`` is found through ``stage.init_from`` (a run or checkpoint
  directory; a moved tree is searched next to the run, see ``locate_recorded``);
- ``stage=contrastive`` (one stage, evaluated directly): **w/ CL** for random batches (a tracked
  reference run too), **w/ SCL** for ``selection=trajectory``, "w/ S" for another strategy S.
- a question-based run (``data.assist``) gets its assistance appended: "CL-SLT + question (ssaw,
  SSL)", "CL-SLT + gloss (ssaw, SSL)" (``assistance_label``).

The SCL setting of a selective run (or of the stage-1 run of a two-stage one) is its
``selection.schedule``; its trajectory interval, i.e. the ``tracker.interval`` of the reference run
that wrote ``selection.pair_scores`` (else the spacing of the snapshot epochs in
``pair_scores.json``); and ``model.similarity.method``. ``Run.pooling`` is the similarity of any
run's contrastive stage (its own or its stage-1 run's), so that random runs of another pooling
get rows of their own too. ``<run_dir>/report.json`` holding ``{"report_row": "<row>"}``
overrides the row (e.g. for a run whose stage-1 directory is gone).

Nothing here raises for one bad run: ``load_run`` records the problem in ``Run.problem`` and the
report lists it under "Skipped runs". ``find_run_dirs`` raises ``ReportError`` for bad arguments.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..rundir.layout import CONFIG_FILE, read_run_config

log = logging.getLogger(__name__)

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l")
REPORT_FILE = "report.json"
BASELINE, W_CL, W_SCL = "baseline end-to-end", "w/ CL", "w/ SCL"
CL_SLT, SCL_SLT = "CL-SLT", "SCL-SLT"
COMPONENT_ROWS = (BASELINE, W_CL, W_SCL, CL_SLT, SCL_SLT)
SELF_SCL_SLT = "SCL-SLT (self-referenced)"  # stage 1 selection=self_trajectory, no reference run
ONE_STAGE_ROWS = {  # by the run's selection.name
    "random": W_CL,
    "trajectory": W_SCL,
    "self_trajectory": "w/ SCL (self-referenced)",
}
TWO_STAGE_ROWS = {"random": CL_SLT, "trajectory": SCL_SLT, "self_trajectory": SELF_SCL_SLT}


class ReportError(ValueError):
    """Bad command-line input (a path that does not exist, no run found)."""


@dataclass
class Run:
    """What the report knows about one run directory."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    dataset: str = "?"
    seed: int | None = None
    row: str | None = None  # component-table row; None: unclassified
    labelled: bool = False  # the row came from report.json
    # SCL setting (schedule, interval, pooling) of a selective run or of its stage-1 run.
    factors: dict[str, str] = field(default_factory=dict)
    pooling: str | None = None  # similarity of the run's (or its stage-1 run's) contrastive stage
    metrics: dict[str, float] | None = None  # the evaluated split's scores
    alignment: dict[str, float] | None = None  # retrieval / SDR of a stage-1 checkpoint
    retrieval_protocol: dict[str, Any] | None = None  # how its retrieval was scored, if recorded
    stage1: Path | None = None  # the run stage.init_from names (two-stage runs)
    problem: str | None = None  # why the run is not in the tables


def _get(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def locate_recorded(recorded: str, run_dir: Path) -> Path | None:
    """A path recorded in a run's config as it can be found now.

    Tried in order: as recorded (absolute, or relative to the current directory), then its last
    one, two or three components next to the run directory (``<run_dir>/../``), which finds the
    sibling runs of a pipeline or sweep folder that was moved or copied. None if nowhere.
    """
    path = Path(recorded).expanduser()
    if path.exists():
        return path
    parts = path.parts
    for k in range(1, min(3, len(parts)) + 1):
        candidate = run_dir.parent.joinpath(*parts[-k:])
        if candidate.exists():
            return candidate
    return None


def stage1_run_dir(init_from: str, run_dir: Path) -> Path | None:
    """The stage-1 run directory ``stage.init_from`` (a run or checkpoint dir) names."""
    found = locate_recorded(init_from, run_dir)
    if found is None:
        return None
    for folder in (found, found.parent.parent):  # a run dir, or <run>/checkpoints/<tag>
        if (folder / CONFIG_FILE).is_file():
            return folder
    return None


def classify_component(config: dict[str, Any], init_config: dict[str, Any] | None) -> str | None:
    """The component-table row of a run from its config (see the module docstring).

    ``init_config`` is the config of the run ``stage.init_from`` points to (None if there is no
    ``init_from`` or it cannot be found). Returns None for a two-stage run whose stage-1 config
    is unknown.
    """
    if _get(config, "stage.name", "contrastive") == "translate":
        if not _get(config, "stage.init_from"):
            return BASELINE
        if init_config is None:
            return None
        selection = _get(init_config, "selection.name", "random")
        return TWO_STAGE_ROWS.get(selection, f"{selection}, then translate")
    selection = _get(config, "selection.name", "random")
    return ONE_STAGE_ROWS.get(selection, f"w/ {selection}")


def self_reference_label(row: str, stage1: dict[str, Any]) -> str:
    """A self-referenced row names its snapshot interval (rows of two intervals never mix):
    "SCL-SLT (self-referenced)" -> "SCL-SLT (self-referenced, interval 2)"."""
    if _get(stage1, "selection.name") != "self_trajectory" or not row.endswith("(self-referenced)"):
        return row
    return f"{row[:-1]}, interval {_get(stage1, 'tracker.interval', '?')})"


def assistance_label(config: dict[str, Any]) -> str:
    """The suffix of a question-based run's row (``data.assist``), so question, gloss and
    video-only runs never share a row: e.g. " + question (ssaw, SSL)", " + gloss (concat)";
    SSL when the run has a question term (video-question InfoNCE or MLM)."""
    assist = str(_get(config, "data.assist", "none"))
    if assist == "none":
        return ""
    ssl = any(float(_get(config, f"loss.{k}", 0.0) or 0.0) > 0
              for k in ("question_contrastive_weight", "mlm_weight"))  # fmt: skip
    fusion = str(_get(config, "model.fusion", "none"))
    return f" + {assist} ({fusion}{', SSL' if ssl else ''})"


def trajectory_interval(config: dict[str, Any], run_dir: Path) -> str:
    """Epochs between the snapshots behind ``selection.pair_scores``; "?" when unknown. Scores
    made under the span protocol (``pair_scores.json``'s ``window``: δ over K intervals, not
    the whole run) say so, e.g. "10 (span 4)", so they never share a row with whole-run δ."""
    recorded = _get(config, "selection.pair_scores")
    pair_scores = locate_recorded(recorded, run_dir) if recorded else None
    if pair_scores is None:
        return "?"
    info = pair_scores.with_suffix(".json")
    record = json.loads(info.read_text()) if info.is_file() else {}
    window = record.get("window") or {}
    span = f" (span {window['span_snapshots']})" if window.get("delta") == "span" else ""
    if (pair_scores.parent / CONFIG_FILE).is_file():
        interval = _get(read_run_config(pair_scores.parent), "tracker.interval")
        if interval is not None:
            return f"{int(interval)}{span}"
    epochs = sorted(s["epoch"] for s in record.get("snapshots", []))
    steps = [b - a for a, b in zip(epochs, epochs[1:]) if b > a]
    return f"{min(steps)}{span}" if steps else "?"


def scl_factors(config: dict[str, Any], run_dir: Path) -> dict[str, str]:
    """Schedule, trajectory interval and pooling of a ``selection=trajectory`` run."""
    return {
        "schedule": str(_get(config, "selection.schedule", "log")),
        "interval": trajectory_interval(config, run_dir),
        "pooling": str(_get(config, "model.similarity.method", "cico")),
    }


def read_alignment(path: Path) -> dict[str, float] | None:
    """The numeric ``alignment`` entries (retrieval R@K / ranks, SDR) of an evaluation
    ``metrics.json``; None when it has none (a stage-2 checkpoint has no text branch)."""
    record = json.loads(path.read_text())
    found = record.get("alignment") if isinstance(record, dict) else None
    if not isinstance(found, dict):
        return None
    return {
        k: float(v)
        for k, v in found.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
    }


def read_retrieval_protocol(path: Path) -> dict[str, Any] | None:
    """The ``alignment.retrieval_protocol`` of an evaluation ``metrics.json`` (None: not recorded,
    e.g. a stage-2 checkpoint or a file written before the protocol was)."""
    record = json.loads(path.read_text())
    found = record.get("alignment") if isinstance(record, dict) else None
    protocol = found.get("retrieval_protocol") if isinstance(found, dict) else None
    return protocol if isinstance(protocol, dict) else None


def read_eval_metrics(path: Path) -> dict[str, float]:
    """BLEU-1..4 and ROUGE-L of an evaluation ``metrics.json``; ValueError names file and key."""
    record = json.loads(path.read_text())
    scores = record.get("metrics") if isinstance(record, dict) else None
    if not isinstance(scores, dict):
        raise ValueError(f"{path}: no 'metrics' mapping")
    out = {}
    for key in METRICS:
        value = scores.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            raise ValueError(f"{path}: metrics.{key} missing or not a number ({value!r})")
        out[key] = float(value)
    return out


def load_run(path: Path, split: str = "test", checkpoint: str = "best") -> Run:
    """Read one run directory; problems are recorded in ``Run.problem``, never raised."""
    run = Run(path=path)
    try:
        run.config = read_run_config(path)
        run.dataset = str(_get(run.config, "data.name", "?"))
        seed = _get(run.config, "seed")
        run.seed = int(seed) if seed is not None else None
        init_from = _get(run.config, "stage.init_from")
        init_dir = stage1_run_dir(init_from, path) if init_from else None
        init_config = read_run_config(init_dir) if init_dir else None
        run.stage1 = init_dir
        run.row = classify_component(run.config, init_config)
        if run.row is not None:
            run.row = self_reference_label(run.row, init_config or run.config)
            run.row += assistance_label(run.config)
        override = path / REPORT_FILE
        if override.is_file():
            labels = json.loads(override.read_text())
            if not isinstance(labels, dict):
                raise ValueError(f"{override}: expected a JSON object with report_row")
            row = labels.get("report_row")
            if row is not None:
                if not isinstance(row, str) or not row:
                    raise ValueError(f"{override}: report_row must be a non-empty string")
                run.row, run.labelled = row, True
        if run.row is None:
            run.problem = (
                f"stage.init_from={init_from} has no stage-1 config.yaml to classify the run "
                f"(give its row in {path / REPORT_FILE} as report_row)"
            )
        contrastive = run.config if _get(run.config, "stage.name") == "contrastive" else init_config
        if contrastive:
            run.pooling = str(_get(contrastive, "model.similarity.method", "cico"))
        if _get(run.config, "selection.name") == "trajectory":
            run.factors = scl_factors(run.config, path)
        elif init_config and _get(init_config, "selection.name") == "trajectory":
            run.factors = scl_factors(init_config, init_dir)
        metrics_path = path / "eval" / checkpoint / split / "metrics.json"
        if not metrics_path.is_file():
            run.problem = run.problem or f"no {split} metrics: {metrics_path} is missing"
        else:
            run.metrics = read_eval_metrics(metrics_path)
            run.alignment = read_alignment(metrics_path)
            run.retrieval_protocol = read_retrieval_protocol(metrics_path)
    except (OSError, ValueError, TypeError) as e:  # corrupt files of one run (ConfigError too)
        run.problem = f"unreadable: {e}"
        run.metrics = None
    return run


def find_run_dirs(arguments: Sequence[str]) -> list[Path]:
    """Run directories (holding ``config.yaml``) named by, or found under, the arguments.

    A path that does not exist, or a glob matching nothing, raises ReportError; so does finding
    no run at all. Folders are searched recursively; the search stops at a run directory.
    """
    found: dict[Path, None] = {}
    for argument in arguments:
        pattern = os.path.expanduser(argument)
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise ReportError(f"{argument}: matches no file or directory")
        for match in matches:
            root = Path(match)
            if not root.exists():
                raise ReportError(f"{argument}: no such directory")
            if not root.is_dir():
                continue
            for folder, subdirs, files in os.walk(root):
                if CONFIG_FILE in files:
                    found[Path(folder)] = None
                    subdirs.clear()
                else:
                    subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    if not found:
        raise ReportError(f"no run directory (with config.yaml) in {list(arguments)}")
    return list(found)


def pipeline_records(run_dirs: Iterable[Path], key: str) -> dict[Path, dict[str, Any]]:
    """``key`` of the pipelines' ``pipeline.json`` (beside the runs) the runs belong to:
    ``_timings`` (step wall times), ``_chains`` (each row's steps and their wall / CPU sums)."""
    out = {}
    for folder in sorted({p.parent for p in run_dirs}):
        state_path = folder / "pipeline.json"
        if state_path.is_file():
            try:
                found = dict(json.loads(state_path.read_text()).get(key, {}))
            except (OSError, ValueError) as e:
                log.warning("%s: unreadable (%s)", state_path, e)
                continue
            if found:
                out[folder] = found
    return out
