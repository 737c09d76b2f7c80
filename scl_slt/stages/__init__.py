"""The two training recipes: ``contrastive`` (stage 1) and ``translate`` (stage 2, also the
end-to-end baseline); ``pipeline`` chains them into the whole method.

``run_stage`` is the in-process API behind ``python -m scl_slt.train``: validate the config, open
the run (``training/run_context.py``), and train the stage ``stage.name`` names.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from ..config import StageName, TrainConfig
from ..training.run_context import open_stage
from . import contrastive, translate


def run_stage(cfg: TrainConfig | DictConfig) -> dict[str, Any]:
    """Train one stage as configured; returns run_dir, best/last checkpoints and final metrics.

    Raises ConfigError before any work for a bad setting, and TrainingInterrupted after
    SIGTERM/SIGINT once a resumable checkpoint is written.
    """
    with open_stage(cfg) as (cfg, runtime, run_ctx, stop):
        stage = contrastive if cfg.stage.name is StageName.contrastive else translate
        return stage.train(cfg, runtime, run_ctx, stop)
