"""Opening a stage's run: validated config, device and process group, run directory, resume.

``open_stage`` is the first thing both stages do: everything that can be checked is checked
here, before any data is read or any model built, and a resume whose config differs from its
checkpoint's in a key that matters is refused.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from .. import __version__
from .. import distributed as dist_utils
from ..config import ConfigError, TrainConfig, to_container
from ..config_checks import validate_train
from ..distributed import on_main_process
from ..models.builder import build_tokenizer
from ..models.tokenizer import SLTTokenizer
from ..rundir.checkpoint import CHECKPOINTS, clean_partial_writes, load_train_state
from ..rundir.layout import TOKENIZER_DIR, MetricsWriter, RunLogging, write_run_config
from .resume import locate_resume, resume_config_differences
from .runtime import Runtime, StopRequest, setup_runtime

log = logging.getLogger(__name__)


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


@contextlib.contextmanager
def open_stage(
    cfg: TrainConfig | DictConfig,
) -> Iterator[tuple[TrainConfig, Runtime, RunContext, StopRequest]]:
    """Validate the config, set up device/precision/process group, open the run directory and
    catch SIGTERM/SIGINT for the duration of a stage; the run's logs are closed on the way out."""
    cfg = validate_train(cfg)
    runtime = setup_runtime(cfg.device, cfg.precision)
    run_ctx = open_run(cfg, runtime)
    try:
        with StopRequest() as stop:
            yield cfg, runtime, run_ctx, stop
    finally:
        run_ctx.close()


def run_tokenizer(
    cfg: TrainConfig, run_dir: Path, train_texts: list[str], source_dir: Path | None = None
) -> Any:
    """The run's tokenizer, saved once in ``<run_dir>/tokenizer``.

    Reopened when it exists (a resumed run must use the same one); otherwise copied from
    ``source_dir`` (stage 2 reuses stage 1's) or built by the model builder (the tiny tokenizer
    is trained on ``train_texts``). Rank 0 builds; the other ranks load what it saved.
    """
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
