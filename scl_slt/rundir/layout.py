"""The run directory: its layout, what is written into it, and the one reader of each file.

Everything a run leaves behind goes under one directory (docs/architecture.md "Runs"), so a
result can always be traced back to the exact config and package version that produced it::

    config.yaml      the resolved config (read back by ``read_run_config`` / ``load_run_config``)
    meta.json        package, torch and python versions, command, start time
    train.log        rank 0's log, and the error that ended the run (with its traceback)
    metrics.jsonl    one strict JSON record per line (``MetricsWriter``; ``read_metrics``)
    tb/              TensorBoard scalars
    tokenizer/       the run's tokenizer
    checkpoints/     ``rundir/checkpoint.py``
    attempts/        earlier attempts that did not leave a checkpoint to resume from

A run directory holds one attempt: a fresh start in a directory an earlier attempt wrote into
(killed before its first checkpoint, say) moves that attempt's files to
``attempts/<n>-<time>/`` first (``set_aside_attempt``; nothing is deleted), so no log, metric or
TensorBoard curve mixes two attempts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
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
ATTEMPTS_DIR = "attempts"
# What an attempt writes into its run directory (training, then scoring and evaluation of it);
# names owned elsewhere: rundir/checkpoint.py, selection/tracker.py, selection/pair_scores/
# (prepare.py, trajectory.py), selection/trajectory_report.py, eval/evaluator.py.
ATTEMPT_ENTRIES = (
    *(CONFIG_FILE, META_FILE, LOG_FILE, METRICS_FILE, TB_DIR, TOKENIZER_DIR, "checkpoints"),
    *("snapshots", "selection", "scores", "pair_scores.npy", "pair_scores.json", "trajectory"),
    "eval",
)
_ATTEMPT_DIR = re.compile(r"^(\d+)-")
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


def set_aside_attempt(run_dir: Path) -> Path | None:
    """Move what an earlier attempt left in ``run_dir`` (``ATTEMPT_ENTRIES``; nothing else, in
    case run_dir is a folder that holds other things too) into ``attempts/<n>-<time>/``, ``n``
    counting the attempts set aside and ``time`` when the attempt last wrote. Returns that
    folder, or None when there was nothing to move. Called by rank 0 before a fresh start."""
    present = [run_dir / name for name in ATTEMPT_ENTRIES if os.path.lexists(run_dir / name)]
    if not present:
        return None
    root = run_dir / ATTEMPTS_DIR
    earlier = [int(m.group(1)) for p in root.glob("*") if (m := _ATTEMPT_DIR.match(p.name))]
    last_write = max(p.lstat().st_mtime for p in present)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(last_write))
    target = root / f"{max(earlier, default=0) + 1}-{stamp}"
    target.mkdir(parents=True)
    for path in present:
        os.replace(path, target / path.name)
    return target


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
        self.file_handler: logging.Handler | None = None
        self.previous_level = self.logger.level
        if rank == 0:
            self.file_handler = logging.FileHandler(run_dir / LOG_FILE)
            self.file_handler.setFormatter(logging.Formatter(_LOG_FORMAT))
            self.handlers.append(self.file_handler)
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

    def record_failure(self, error: BaseException) -> None:
        """The error that ends the run, with its traceback, into ``train.log`` at ERROR (rank 0).
        Into the file only: the command prints the error for the user once, on stderr."""
        if self.file_handler is None:
            return
        record = self.logger.makeRecord(
            self.logger.name,
            logging.ERROR,
            __file__,
            0,
            "run failed: %s: %s",
            (type(error).__name__, error),
            (type(error), error, error.__traceback__),
        )
        self.file_handler.handle(record)

    def close(self) -> None:
        for h in self.handlers:
            self.logger.removeHandler(h)
            h.close()
        self.handlers.clear()
        self.file_handler = None
        self.logger.setLevel(self.previous_level)


def _strict(value: Any) -> Any:
    """``value`` with every non-finite float (in nested dicts and lists too) as None: strict JSON
    has no NaN or Infinity, and other readers (jq, JavaScript) reject the bare tokens."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` and mirrors numbers to TensorBoard.

    Only rank 0 writes (others get an inert writer). On resume, records logged after the
    checkpoint's step by the interrupted run are dropped, so the file reads as one clean run.
    The file is strict JSON: a non-finite value is written as null (and left out of
    TensorBoard); files written before that, with bare ``NaN``, still read.
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
            f.write(json.dumps(_strict(record), allow_nan=False) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if math.isfinite(value):
                    self.tb.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def read_metrics(run_dir: str | os.PathLike, split: str | None = None) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (optionally one split), in order. A non-finite value
    reads as None (a bare ``NaN`` of an older file as float nan)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if split is None or r["split"] == split]
