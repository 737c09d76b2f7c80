"""Score a tracked reference run: all-pairs similarities per snapshot, pair scores, report.

    python -m scl_slt.score run_dir=runs/reference [delta=endpoints|slope|span] [span_snapshots=K]
        [start_epoch=E] [threshold=per_snapshot] [device=cpu] [precision=bf16]

``delta`` (``selection/trajectory_window.py``): ``endpoints`` S^last - S^first (the paper's
default), ``slope`` (least squares over the snapshots), ``span`` S^(t0 + K x interval) - S^t0
with K = ``span_snapshots`` (the interval ablation's protocol: the tracker's interval sets the
span δ covers). ``start_epoch``: trajectories start at the first snapshot at or after it (for a
reference run whose first snapshot, at random initialisation, carries no spread; the scoring
warns then).

Writes ``<run_dir>/scores/S-epoch-NNNN.npy`` (one N x N similarity per snapshot, reused when an
interrupted scoring is run again), ``pair_scores.npy`` (+ ``.json``), the delta the curriculum
reads, and the report ``trajectory/summary.json`` + ``categories.png``; the steps are described in
``scl_slt/selection/pair_scores/trajectory.py`` (``score_run``).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING, OmegaConf

from .config import ConfigError
from .selection.pair_scores.trajectory import SCORES_DIRNAME, Precision, score_run
from .selection.tracker import SNAPSHOTS_DIRNAME
from .selection.trajectory import ThresholdMode
from .selection.trajectory_report import REPORT_DIRNAME
from .selection.trajectory_window import DeltaMethod
from .training.run_context import exit_code, failure_message


@dataclass
class ScoreConfig:
    run_dir: str = MISSING  # a tracked reference run (holds snapshots/)
    delta: DeltaMethod = DeltaMethod.endpoints
    span_snapshots: int | None = None  # K of delta=span (required there, refused elsewhere)
    start_epoch: int = 0  # first snapshot used: the earliest at or after this epoch
    threshold: ThresholdMode = ThresholdMode.last_median
    device: str | None = None  # None: cuda when available, else cpu
    # products of the all-pairs scoring: auto = bf16 on CUDA, fp32 on CPU; bf16 also on a CPU
    # with native bf16 (AVX512-BF16 / AMX: about 2x faster there, scores within ~1e-3)
    precision: Precision = Precision.auto


def parse_args(argv: list[str]) -> ScoreConfig:
    """key=value arguments onto ScoreConfig; an unknown key or bad value raises naming it."""
    cfg = OmegaConf.merge(OmegaConf.structured(ScoreConfig), OmegaConf.from_cli(argv))
    if OmegaConf.is_missing(cfg, "run_dir"):
        raise ConfigError("run_dir: required (python -m scl_slt.score run_dir=<tracked run>)")
    cfg = OmegaConf.to_object(cfg)
    if cfg.start_epoch < 0:
        raise ConfigError(f"start_epoch: must be >= 0, got {cfg.start_epoch}")
    if cfg.delta is DeltaMethod.span and (cfg.span_snapshots is None or cfg.span_snapshots < 1):
        raise ConfigError(
            f"span_snapshots: delta=span needs span_snapshots >= 1, got {cfg.span_snapshots}"
        )
    if cfg.delta is not DeltaMethod.span and cfg.span_snapshots is not None:
        raise ConfigError(
            f"span_snapshots: applies to delta=span only (delta={cfg.delta.value} was given)"
        )
    run_dir = Path(cfg.run_dir).expanduser()
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dir: no such folder: {run_dir}")
    if not (run_dir / SNAPSHOTS_DIRNAME).is_dir():
        raise ConfigError(
            f"run_dir: {run_dir} has no {SNAPSHOTS_DIRNAME}/: not a tracked reference run "
            "(trained with tracker.enabled=true)"
        )
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Score, print where everything went; returns the exit code (``scl_slt/train.py``'s rule:
    2 for a user's error, such as a bad argument or a run directory that is not there, else 1)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        cfg = parse_args(sys.argv[1:] if argv is None else argv)
        path = score_run(
            cfg.run_dir,
            cfg.delta,
            cfg.threshold,
            cfg.device,
            cfg.precision,
            start_epoch=cfg.start_epoch,
            span_snapshots=cfg.span_snapshots,
        )
    except Exception as e:
        print(failure_message(e), file=sys.stderr)
        return exit_code(e)
    run_dir = Path(cfg.run_dir)
    report = run_dir / REPORT_DIRNAME
    summary = json.loads((report / "summary.json").read_text())
    window = summary["window"]
    print(
        f"delta={window['delta']}: snapshots of epochs {window['epochs_used']} "
        f"(first {window['first_epoch']:g}, last {window['last_epoch']:g})"
    )
    spread = summary["first_snapshot_spread"]
    if spread["low_spread"] or spread["one_sided"]:
        share = spread["first_high_share"]
        print(
            f"warning: the first snapshot's negatives have std {spread['first']['std']:.4g} "
            f"(the last's {spread['last']['std']:.4g})"
            + ("" if share is None else f", {100 * share:.1f} % of the pairs start H")
            + f"; {spread['advice']}"
        )
    print("category shares over negative pairs:")
    for name, share in summary["shares"].items():
        print(f"  {name}: {100 * share:5.1f} %")
    print(f"similarity matrices: {run_dir / SCORES_DIRNAME}")
    print(f"pair scores:         {path} (+ {path.with_suffix('.json').name})")
    print(f"report:              {report / 'summary.json'}")
    print(f"figure:              {report / 'categories.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
