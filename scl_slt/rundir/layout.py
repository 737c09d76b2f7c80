"""The run directory: resolved config, versions, ``train.log``, ``metrics.jsonl``, TensorBoard.

Everything a run leaves behind goes under one directory (docs/architecture.md "Runs"), so a
result can always be traced back to the exact config and package version that produced it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from .. import __version__
from .. import distributed as dist_utils
from ..config import ConfigError, TrainConfig, to_container
from ..distributed import on_main_process
from ..training.runtime import Runtime
from .checkpoint import (
    CHECKPOINTS,
    clean_partial_writes,
    load_train_state,
    locate_resume,
    resume_config_differences,
)

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
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    meta = {
        "package": "scl-slt",
        "version": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        **extra,
    }
    (run_dir / META_FILE).write_text(json.dumps(meta, indent=2))


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"run config not found: {path}")
    return yaml.safe_load(path.read_text())


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


class LossMeter:
    """Running sums of detached loss terms on the device (no host sync per step); ``means()``
    averages them over steps and ranks (a collective: every rank calls it at the same step)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.count += 1

    def means(self) -> dict[str, float]:
        """Mean of every recorded term (the same terms on every rank); resets the meter."""
        keys = sorted(self.sums)
        zero = torch.zeros((), device=self.device)
        stacked = torch.stack([self.sums[k] for k in keys] + [zero + self.count])
        stacked = dist_utils.all_reduce_sum(stacked)
        count = max(float(stacked[-1]), 1.0)
        out = {k: float(v) / count for k, v in zip(keys, stacked[:-1].tolist())}
        self.sums.clear()
        self.count = 0
        return out


def read_metrics(run_dir: str | os.PathLike, split: str | None = None) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (optionally one split), in order."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if split is None or r["split"] == split]


# ------------------------------------------------------------------------------- run context
@dataclass
class RunContext:
    """What a stage needs from its run directory; ``close()`` when the stage ends."""

    path: Path
    config: dict[str, Any]  # the resolved config as saved in config.yaml
    resume_from: Path | None
    resume_state: dict[str, Any] | None
    logs: RunLogging
    metrics: MetricsWriter

    def close(self) -> None:
        self.metrics.close()
        self.logs.close()


def open_run(cfg: TrainConfig, runtime: Runtime) -> RunContext:
    """Create (or reopen) the run directory, attach logging, find and check the resume point,
    and save the resolved config. Refuses, before any training work, a resume whose config
    differs from the checkpoint's in a key that matters."""
    config = to_container(cfg)
    # Every rank uses rank 0's directory (a ${now:...} run_dir may resolve differently per rank).
    run_dir = Path(dist_utils.broadcast_object(str(Path(cfg.run_dir).expanduser().resolve())))

    def prepare() -> Path | None:
        run_dir.mkdir(parents=True, exist_ok=True)
        clean_partial_writes(run_dir / CHECKPOINTS)
        return locate_resume(cfg.resume, run_dir)

    logs = None
    try:
        resume_from = on_main_process(prepare)
        logs = RunLogging(run_dir, runtime.rank)
        state = None
        if resume_from is not None:
            state = load_train_state(resume_from, verify=runtime.is_main)
            diffs = resume_config_differences(state["config"], config)
            if diffs:
                raise ConfigError(
                    f"resume: the config differs from the one of checkpoint {resume_from} in "
                    "keys that change training:\n  " + "\n  ".join(diffs)
                )
            log.info(
                "resuming from %s (epoch %d, batch %d, step %d)",
                resume_from,
                state["epoch"],
                state["batch_in_epoch"],
                state["step"],
            )
        if runtime.is_main:
            extra = {"world_size": runtime.world_size, "resumed_from": str(resume_from or "")}
            write_run_config(run_dir, config, extra)
        metrics = MetricsWriter(run_dir, runtime.is_main, state["step"] if state else None)
    except BaseException:
        if logs is not None:
            logs.close()
        raise
    log.info(
        "run directory %s (scl-slt %s, %d process(es))", run_dir, __version__, runtime.world_size
    )
    return RunContext(run_dir, config, resume_from, state, logs, metrics)


def run_tokenizer(
    cfg: TrainConfig, run_dir: Path, train_texts: list[str], source_dir: Path | None = None
) -> Any:
    """The run's tokenizer, saved once in ``<run_dir>/tokenizer``.

    Reopened when it exists (a resumed run must use the same one); otherwise copied from
    ``source_dir`` (stage 2 reuses stage 1's) or built by the model builder (the tiny tokenizer
    is trained on ``train_texts``). Rank 0 builds; the other ranks load what it saved.
    """
    from ..models.builder import build_tokenizer
    from ..models.tokenizer import SLTTokenizer

    out = run_dir / TOKENIZER_DIR

    def build() -> None:
        if SLTTokenizer.is_saved_in(out):
            return
        if source_dir is not None:
            SLTTokenizer.load(source_dir).save(out)
            log.info("tokenizer copied from %s", source_dir)
        else:
            build_tokenizer(cfg.model, cfg.data, train_texts, out).save(out)
            log.info("tokenizer built and saved in %s", out)

    on_main_process(build)
    return SLTTokenizer.load(out)
