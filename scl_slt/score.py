"""Score a tracked reference run: all-pairs similarities per snapshot, pair scores, report.

    python -m scl_slt.score run_dir=runs/reference [delta=slope] [threshold=per_snapshot] [device=cpu]
        [precision=bf16]

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
from omegaconf.errors import OmegaConfBaseException

from .config import ConfigError
from .selection.pair_scores.trajectory import SCORES_DIRNAME, Precision, score_run
from .selection.trajectory import DeltaMethod, ThresholdMode
from .selection.trajectory_report import REPORT_DIRNAME


@dataclass
class ScoreConfig:
    run_dir: str = MISSING  # a tracked reference run (holds snapshots/)
    delta: DeltaMethod = DeltaMethod.endpoints
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
    return OmegaConf.to_object(cfg)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        cfg = parse_args(sys.argv[1:] if argv is None else argv)
    except (ConfigError, OmegaConfBaseException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = score_run(cfg.run_dir, cfg.delta, cfg.threshold, cfg.device, cfg.precision)
    run_dir = Path(cfg.run_dir)
    report = run_dir / REPORT_DIRNAME
    summary = json.loads((report / "summary.json").read_text())
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
