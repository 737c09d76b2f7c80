"""The run directory: its layout, what is written into it, and the one reader of each file.

Everything a run leaves behind goes under one directory (docs/architecture.md "Runs"), so a
result can always be traced back to the exact config and package version that produced it::

    config.yaml      the resolved config (read back by ``read_run_config`` / ``load_run_config``)
    meta.json        package, torch and python versions, command, start time
    train.log        rank 0's log
    metrics.jsonl    one JSON record per line (``MetricsWriter``; ``read_metrics``)
    tb/              TensorBoard scalars
    tokenizer/       the run's tokenizer
    checkpoints/     ``rundir/checkpoint.py``
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import OmegaConf

from .. import __version__
from ..config import ConfigError, TrainConfig
from ..eval.metrics import LANGUAGES
from .atomic import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
LOG_FILE = "train.log"
METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"
TOKENIZER_DIR = "tokenizer"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def write_run_config(run_dir: Path, config: dict[str, Any], extra: dict[str, Any]) -> None:
    """Save the resolved config and the versions that produced the run (rank 0 only)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
    meta = {
        "package": "scl-slt",
        "version": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        **extra,
    }
    write_json_atomic(run_dir / META_FILE, meta)


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run's saved ``config.yaml`` as plain data: the one reader every tool uses.

    Raises FileNotFoundError when the run directory has none, ConfigError naming the file when
    it cannot be parsed or is not a mapping.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"not a training run directory: {path} is missing")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the run config: {e}") from e
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not a run config (expected a mapping of settings)")
    return config


def load_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """A run's saved config typed by the current schema (``read_run_config`` + the schema).

    Only the schema is applied, not ``validate_train``: that also requires training-only paths
    (``stage.init_from``, ``selection.pair_scores``, ``resume``) that may be gone by the time a
    run is evaluated. Data paths are checked when a split is read.
    """
    path = Path(run_dir) / CONFIG_FILE
    saved = read_run_config(run_dir)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), saved)
        train_cfg = OmegaConf.to_object(merged)
    except Exception as e:  # omegaconf raises several unrelated types for bad keys/values
        raise ConfigError(f"{path}: not a valid training config: {e}") from e
    if train_cfg.data.language not in LANGUAGES:
        raise ConfigError(
            f"{path}: data.language: expected one of {LANGUAGES}, got {train_cfg.data.language!r}"
        )
    return train_cfg


class RunLogging:
    """Attach handlers for one run: rank 0 logs INFO to ``train.log`` (and to stderr when the
    process has no logging configured); other ranks log warnings only, prefixed with their rank.
    ``close()`` removes exactly these handlers, so stages run one after another in the same
    process do not stack handlers."""

    def __init__(self, run_dir: Path, rank: int):
        self.logger = logging.getLogger("scl_slt")
        self.handlers: list[logging.Handler] = []
        self.previous_level = self.logger.level
        if rank == 0:
            file_handler = logging.FileHandler(run_dir / LOG_FILE)
            file_handler.setFormatter(logging.Formatter(_LOG_FORMAT))
            self.handlers.append(file_handler)
            self.logger.setLevel(logging.INFO)
        else:
            self.logger.setLevel(logging.WARNING)
        if not logging.getLogger().handlers:  # nobody configured logging (CLI): print to stderr
            console = logging.StreamHandler()
            prefix = "" if rank == 0 else f"[rank {rank}] "
            console.setFormatter(logging.Formatter(f"{prefix}%(asctime)s %(message)s", "%H:%M:%S"))
            self.handlers.append(console)
        for h in self.handlers:
            self.logger.addHandler(h)

    def close(self) -> None:
        for h in self.handlers:
            self.logger.removeHandler(h)
            h.close()
        self.handlers.clear()
        self.logger.setLevel(self.previous_level)


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` and mirrors numbers to TensorBoard.

    Only rank 0 writes (others get an inert writer). On resume, records logged after the
    checkpoint's step by the interrupted run are dropped, so the file reads as one clean run.
    """

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None = None):
        self.enabled = enabled
        self.path = run_dir / METRICS_FILE
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        from torch.utils.tensorboard import SummaryWriter

        purge = resume_step + 1 if resume_step is not None else None
        self.tb = SummaryWriter(str(run_dir / TB_DIR), purge_step=purge)

    def _truncate_after(self, step: int) -> None:
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut off by the crash
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, split: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"split": split, "step": step, "time": round(time.time(), 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if math.isfinite(value):
                    self.tb.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def read_metrics(run_dir: str | os.PathLike, split: str | None = None) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (optionally one split), in order."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if split is None or r["split"] == split]
