"""The whole method as one chain of runs: the recipe behind ``python -m scl_slt.pipeline``.

``Pipeline.run`` trains the reference run (``1-reference``), scores it, then for each stage-1
strategy its contrastive stage (``2-*``) and the translation stage from it (``3-translate*``),
and evaluates each on test. Every step is an ordinary run directory under ``out_dir``; finished
steps are recorded in ``<out_dir>/pipeline.json`` with their wall and CPU time and are not run
again, and an interrupted training step resumes from its newest checkpoint (``resume=auto``).
Each table row's *chain* (the steps it needed: reference run and scoring for SCL-SLT, its own
stage 1, stage 2 and test) is summed into ``_chains`` there: the total compute of the row. The
command's docstring (``scl_slt/pipeline.py``) lists the options.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..config import SelectionName, compose_config
from ..config_checks import validate_train
from ..eval.evaluator import evaluate_run
from ..rundir.atomic import write_text_atomic
from ..selection.pair_scores.trajectory import score_run
from . import run_stage

log = logging.getLogger("scl_slt.pipeline")

METRIC_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l")
# Stage-1 selections that read the reference run (its scores, snapshot or checkpoint).
NEEDS_REFERENCE = ("trajectory", "visual_curriculum", "san")


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished child processes."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@dataclass
class PipelineConfig:
    out_dir: str = "runs/pipeline"
    experiment: str = "tiny"  # configs/experiment/<name>.yaml for every training step ("none": off)
    reference_epochs: int = 12
    contrastive_epochs: int = 12
    translate_epochs: int = 30
    interval: int = 3  # reference-run snapshot interval (epochs)
    self_interval: int | None = None  # self_trajectory's own snapshot interval (null: interval)
    delta: str = "endpoints"  # endpoints | slope | span (selection/trajectory_window.py)
    span_snapshots: int | None = None  # K of delta=span: δ = S^(K x interval) - S^0
    start_epoch: int = 0  # trajectories start at the first snapshot at or after this epoch
    threshold: str = "last_median"  # last_median | per_snapshot
    compare_random: bool = False  # also run CL-SLT (random stage 1) on the same budget
    # CL-SLT's stage 1 is the reference run when the budgets match (false: a run of its own,
    # without snapshots, so its chain's compute is its own)
    share_reference: bool = True
    # stage-1 selections to run steps 3-4 with (configs/selection/<name>.yaml), in this order
    strategies: list[str] = field(default_factory=lambda: ["trajectory"])
    device: str = "auto"


def split_arguments(argv: list[str]) -> tuple[PipelineConfig, list[str]]:
    """Pipeline options (PipelineConfig fields) vs Hydra overrides for the training steps."""
    own = {f.name for f in fields(PipelineConfig)}
    mine, overrides = [], []
    for arg in argv:
        key = arg.split("=", 1)[0]
        (mine if key in own else overrides).append(arg)
    cfg = OmegaConf.merge(OmegaConf.structured(PipelineConfig), OmegaConf.from_dotlist(mine))
    cfg = OmegaConf.to_object(cfg)
    if cfg.delta not in ("endpoints", "slope", "span"):
        raise ValueError(f"delta: endpoints | slope | span, got {cfg.delta!r}")
    k = cfg.span_snapshots
    if (cfg.delta == "span") != (k is not None) or (k is not None and k < 1):
        raise ValueError(f"span_snapshots: >= 1 with delta=span only, got {cfg.span_snapshots}")
    if cfg.start_epoch < 0:
        raise ValueError(f"start_epoch: must be >= 0, got {cfg.start_epoch}")
    if cfg.threshold not in ("last_median", "per_snapshot"):
        raise ValueError(f"threshold: last_median | per_snapshot, got {cfg.threshold!r}")
    known = [m.value for m in SelectionName if m is not SelectionName.visual_confusable]
    for name in cfg.strategies:
        if name not in known:
            raise ValueError(f"strategies: unknown selection {name!r}; one of {known}")
    if len(set(cfg.strategies)) != len(cfg.strategies):
        raise ValueError(f"strategies: listed twice in {cfg.strategies}")
    if cfg.self_interval is not None and cfg.self_interval < 1:
        raise ValueError(f"self_interval: must be >= 1 or null, got {cfg.self_interval}")
    for name in ("reference_epochs", "contrastive_epochs", "translate_epochs", "interval"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}: must be >= 1, got {getattr(cfg, name)}")
    return cfg, overrides


class Pipeline:
    """Runs the steps in order and records finished ones in ``<out_dir>/pipeline.json``."""

    def __init__(self, cfg: PipelineConfig, overrides: list[str]):
        self.cfg = cfg
        self.overrides = overrides
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.state_path = self.out / "pipeline.json"
        self.state: dict[str, Any] = (
            json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        )
        self.timings: dict[str, float] = self.state.get("_timings", {})
        self.cpu: dict[str, float] = self.state.get("_cpu", {})
        self.chains: dict[str, dict] = self.state.get("_chains", {})

    def _save(self) -> None:
        self.state["_timings"] = self.timings
        self.state["_cpu"] = self.cpu
        self.state["_chains"] = self.chains
        write_text_atomic(self.state_path, json.dumps(self.state, indent=2, default=str))

    def step(self, name: str, fn, *args) -> Any:
        if name in self.state:
            log.info("step %s already done: %s", name, self.state[name])
            return self.state[name]
        log.info("==> step %s", name)
        start, start_cpu = time.time(), cpu_seconds()
        result = fn(*args)
        self.timings[name] = round(time.time() - start, 1)
        self.cpu[name] = round(cpu_seconds() - start_cpu, 1)
        self.state[name] = result
        self._save()
        return result

    def chain(self, label: str, steps: list[str], run_dir: str) -> None:
        """Record a row's chain of steps, its final run (``run_dir``: the report names the row
        from it) and its total wall and CPU time (a resumed step counts its last attempt)."""
        self.chains[label] = {
            "steps": steps,
            "run_dir": run_dir,
            "wall_s": round(sum(self.timings.get(s, 0.0) for s in steps), 1),
            "cpu_s": round(sum(self.cpu.get(s, 0.0) for s in steps), 1),
        }
        self._save()

    def train(self, run_name: str, stage_overrides: list[str]) -> dict:
        experiment = [] if self.cfg.experiment == "none" else [f"experiment={self.cfg.experiment}"]
        overrides = [
            *experiment,
            *self.overrides,
            *stage_overrides,
            f"run_dir={self.out / run_name}",
            "resume=auto",
            f"device={self.cfg.device}",
        ]
        result = run_stage(validate_train(compose_config("train", overrides)))
        return {k: str(v) if isinstance(v, Path) else v for k, v in result.items()}

    def score(self, run_dir: Path) -> dict:
        device = None if self.cfg.device == "auto" else self.cfg.device
        c = self.cfg
        path = score_run(run_dir, c.delta, c.threshold, device, start_epoch=c.start_epoch,
                         span_snapshots=c.span_snapshots)  # fmt: skip
        summary = run_dir / "trajectory" / "summary.json"
        shares = json.loads(summary.read_text()).get("shares") if summary.exists() else None
        return {"pair_scores": str(path), "category_shares": shares}

    def test(self, run_dir: Path) -> dict:
        metrics = evaluate_run(run_dir, checkpoint="best", split="test")
        return {k: metrics[k] for k in (*METRIC_KEYS, "bleu_signature") if k in metrics}

    def run(self) -> dict[str, dict]:
        c = self.cfg
        strategies = list(c.strategies)
        if c.compare_random and "random" not in strategies:
            strategies.append("random")
        same_budget = c.reference_epochs == c.contrastive_epochs
        reuse = "random" in strategies and c.share_reference and same_budget
        ref = scores = None
        if reuse or any(name in NEEDS_REFERENCE for name in strategies):
            ref = self.step(
                "reference",
                self.train,
                "1-reference",
                [
                    "stage=contrastive",
                    "selection=random",
                    "tracker.enabled=true",
                    f"tracker.interval={c.interval}",
                    f"stage.epochs={c.reference_epochs}",
                ],
            )
            scores = self.step("score", self.score, Path(ref["run_dir"]))
        rows: dict[str, dict] = {}
        for selection in strategies:
            label, stage1_dir, stage2_dir = strategy_runs(selection)
            extra = []
            if ref is not None:
                extra = {
                    "trajectory": [f"selection.pair_scores={scores['pair_scores']}"],
                    "visual_curriculum": [f"selection.snapshot={ref['run_dir']}"],
                    "san": [f"selection.checkpoint={ref['run_dir']}"],  # its best, else last
                }.get(selection, [])
                # batch diagnostics against the scored reference (δ, S, categories)
                extra.append(f"selection.diagnostics_reference={ref['run_dir']}")
            if selection == "self_trajectory":  # its own snapshots
                extra.append(f"tracker.interval={c.self_interval or c.interval}")
            chain = ["reference", "score"] if selection == "trajectory" else []
            if selection in ("visual_curriculum", "san"):
                chain = ["reference"]
            if selection == "random" and reuse:
                # The reference run is this stage 1: the same config but for the tracker, which
                # does not change training (docs/determinism.md); one stage-1 run saved.
                s1, chain = ref, ["reference"]
                log.info("CL-SLT stage 1: the reference run %s (same budget)", ref["run_dir"])
            else:
                s1 = self.step(
                    f"{stage1_dir}",
                    self.train,
                    stage1_dir,
                    [
                        "stage=contrastive",
                        f"selection={selection}",
                        *extra,
                        f"stage.epochs={c.contrastive_epochs}",
                    ],
                )
                chain.append(stage1_dir)
            s2 = self.step(
                f"{stage2_dir}",
                self.train,
                stage2_dir,
                [
                    "stage=translate",
                    f"stage.init_from={s1['run_dir']}",
                    f"stage.epochs={c.translate_epochs}",
                ],
            )
            rows[label] = self.step(f"test-{label}", self.test, Path(s2["run_dir"]))
            self.chain(label, [*chain, stage2_dir, f"test-{label}"], s2["run_dir"])
        return rows


def strategy_runs(selection: str) -> tuple[str, str, str]:
    """(table label, stage-1 run dir name, stage-2 run dir name) of a stage-1 selection."""
    if selection == "trajectory":
        return "SCL-SLT", "2-selective", "3-translate"
    if selection == "random":
        return "CL-SLT", "2-random", "3-translate-random"
    if selection == "self_trajectory":
        return "SCL-SLT (self-referenced)", "2-self_trajectory", "3-translate-self_trajectory"
    return f"{selection} + SLT", f"2-{selection}", f"3-translate-{selection}"


def results_table(rows: dict[str, dict], chains: dict[str, dict] | None = None) -> str:
    """The test scores of each row and, given the pipeline's chains, each row's total compute."""
    chains = chains or {}
    head = "| model | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | ROUGE-L |"
    rule = "|---|---|---|---|---|---|"
    if chains:
        head, rule = head + " chain wall (s) | chain CPU (s) |", rule + "---|---|"
    body = []
    for name, m in rows.items():
        line = f"| {name} | " + " | ".join(f"{m.get(k, float('nan')):.2f}" for k in METRIC_KEYS)
        if chains:
            chain = chains.get(name, {})
            line += f" | {chain.get('wall_s', float('nan')):.0f} | {chain.get('cpu_s', float('nan')):.0f}"
        body.append(line + " |")
    return "\n".join([head, rule, *body])
