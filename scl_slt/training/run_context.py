"""Opening a stage's run: validated config, device and process group, run directory, resume;
and how a run that fails ends.

``open_stage`` is the first thing both stages do: everything that can be checked is checked
here, before any data is read or any model built (``validate_train``, then ``preflight``), and a
resume whose config differs from its checkpoint's in a key that matters is refused. A run
directory never mixes two attempts: a fresh start sets an earlier attempt's files aside
(``rundir.layout.set_aside_attempt``), and ``resume=auto`` over checkpoints that are all corrupt
is an error, not a silent fresh start. An error that ends the run goes to its ``train.log`` with
the traceback; ``exit_code`` is the rule every command exits by.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from .. import __version__
from .. import distributed as dist_utils
from ..config import ConfigError, TrainConfig, to_container
from ..config_checks import validate_train
from ..data.labels import DataError
from ..distributed import on_main_process
from ..models.builder import build_tokenizer
from ..models.handoff import HandOffError
from ..models.tokenizer import SLTTokenizer
from ..rundir.checkpoint import (
    CHECKPOINTS,
    CheckpointError,
    CorruptCheckpointError,
    clean_partial_writes,
    load_train_state,
    step_checkpoints,
    verify_checkpoint,
)
from ..rundir.layout import (
    ATTEMPTS_DIR,
    TOKENIZER_DIR,
    MetricsWriter,
    RunLogging,
    set_aside_attempt,
    write_run_config,
)
from .preflight import preflight
from .resume import locate_resume, resume_config_differences
from .runtime import Runtime, StopRequest, TrainingInterrupted, setup_runtime

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


def _unusable_checkpoints(root: Path) -> list[str]:
    """What is wrong with each step checkpoint under ``root`` (newest first) when none of them
    verifies; [] when there is none, or one is usable."""
    reasons = []
    for path in reversed(step_checkpoints(root)):
        try:
            verify_checkpoint(path)
        except CorruptCheckpointError as e:
            reasons.append(str(e))
            continue
        return []
    return reasons


def _resume_point(resume: str, run_dir: Path) -> Path | None:
    """``locate_resume``, except that checkpoints which are all corrupt are never a silent fresh
    start: ``resume=auto`` refuses them, naming each and what is wrong; ``resume=none`` starts
    from scratch and they are set aside with the rest of the earlier attempt."""
    root = run_dir / CHECKPOINTS
    if resume == "none" and _unusable_checkpoints(root):
        return None
    found = locate_resume(resume, run_dir)
    if found is None and resume == "auto":
        corrupt = _unusable_checkpoints(root)
        if corrupt:
            raise CheckpointError(
                f"resume=auto: every checkpoint in {root} is corrupt, so there is nothing to "
                "resume from:\n  " + "\n  ".join(corrupt) + "\npass resume=none to start from "
                f"scratch (they are moved to {run_dir / ATTEMPTS_DIR}/ with the rest of the "
                "earlier attempt, not deleted), or choose another run_dir"
            )
    return found


def open_run(cfg: TrainConfig, runtime: Runtime) -> RunContext:
    """Create (or reopen) the run directory, find and check the resume point, set an earlier
    attempt aside on a fresh start, attach logging and save the resolved config. Refuses, before
    any training work, a resume whose config differs from the checkpoint's in a key that
    matters. A failure here is written to ``train.log`` when the directory exists."""
    config = to_container(cfg)
    # Every rank uses rank 0's directory (a ${now:...} run_dir may resolve differently per rank).
    run_dir = Path(dist_utils.broadcast_object(str(Path(cfg.run_dir).expanduser().resolve())))

    def prepare() -> tuple[Path | None, Path | None]:
        run_dir.mkdir(parents=True, exist_ok=True)
        clean_partial_writes(run_dir / CHECKPOINTS)
        resume_from = _resume_point(cfg.resume, run_dir)
        earlier = set_aside_attempt(run_dir) if resume_from is None else None
        return resume_from, earlier

    logs = None
    try:
        resume_from, earlier = on_main_process(prepare)
        logs = RunLogging(run_dir, runtime.rank)
        if earlier is not None and runtime.is_main:
            log.warning(
                "run directory %s held an earlier attempt (%s): moved to %s, so that this one "
                "starts from scratch without mixing with it",
                run_dir,
                ", ".join(sorted(p.name for p in earlier.iterdir())),
                earlier,
            )
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
            if earlier is not None:
                extra["earlier_attempt"] = str(earlier)
            write_run_config(run_dir, config, extra)
        metrics = MetricsWriter(run_dir, runtime.is_main, state["step"] if state else None)
    except BaseException as error:
        if logs is None and runtime.is_main and run_dir.is_dir():
            with contextlib.suppress(OSError):  # to say in its train.log why it stopped
                logs = RunLogging(run_dir, runtime.rank)
        if logs is not None:
            logs.record_failure(error)
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
    """Validate the config and look inside its files (before the run directory exists), set up
    device/precision/process group, open the run directory and catch SIGTERM/SIGINT for the
    duration of a stage. An error that ends the stage goes to ``train.log`` with its traceback;
    the run's logs are closed on the way out."""
    cfg = validate_train(cfg)
    preflight(cfg)
    runtime = setup_runtime(cfg.device, cfg.precision)
    run_ctx = open_run(cfg, runtime)
    try:
        with StopRequest() as stop:
            yield cfg, runtime, run_ctx, stop
    except BaseException as error:
        if not isinstance(error, (TrainingInterrupted, GeneratorExit)):
            run_ctx.logs.record_failure(error)
        raise
    finally:
        run_ctx.close()


def run_tokenizer(
    cfg: TrainConfig,
    run_dir: Path,
    train_texts: list[str],
    source_dir: Path | None = None,
    extra_texts: Sequence[str] = (),
) -> Any:
    """The run's tokenizer, saved once in ``<run_dir>/tokenizer``.

    Reopened when it exists (a resumed run must use the same one); otherwise copied from
    ``source_dir`` (stage 2 reuses stage 1's) or built by the model builder (the tiny tokenizer
    is trained on ``train_texts`` and ``extra_texts``, the train questions of question-based
    SLT). Rank 0 builds; the other ranks load what it saved.
    """
    out = run_dir / TOKENIZER_DIR

    def build() -> None:
        if SLTTokenizer.is_saved_in(out):
            return
        if source_dir is not None:
            SLTTokenizer.load(source_dir).save(out)
            log.info("tokenizer copied from %s", source_dir)
        else:
            build_tokenizer(cfg.model, cfg.data, train_texts, out, extra_texts).save(out)
            log.info("tokenizer built and saved in %s", out)

    on_main_process(build)
    return SLTTokenizer.load(out)


# -------------------------------------------------------------------- how a failed run ends
# The exit-code rule of every command (train, evaluate, score, pipeline; README "Errors and
# exit codes"): 2 for a user's error (the config, the data, a path, a checkpoint the user named,
# the stage hand-off), 1 for anything else (a bug or a numerical failure), 128 + the signal
# number after SIGTERM/SIGINT.
USER_ERRORS = {
    ConfigError: "config error",
    HydraException: "config error",  # composing: an unknown key, a wrong type, a missing file
    OmegaConfBaseException: "config error",
    DataError: "data error",
    FileNotFoundError: "file not found",
    HandOffError: "hand-off error",
    CheckpointError: "checkpoint error",
}
# rundir/checkpoint.py functions whose CheckpointError is about a checkpoint the run writes
_CHECKPOINT_WRITERS = {"save_checkpoint", "write_index", "average_weights"}


def _user_error_kind(error: BaseException) -> str | None:
    """``config error``, ``data error``... for a user's error; None for anything else."""
    kind = next((name for cls, name in USER_ERRORS.items() if isinstance(error, cls)), None)
    if kind and isinstance(error, CheckpointError):  # a full disk while saving: not the user's
        frames = traceback.extract_tb(error.__traceback__)
        if any(f.name in _CHECKPOINT_WRITERS for f in frames):
            return None
    return kind


def run_command(main: Callable[[], object]) -> None:
    """Run a Hydra command's ``main`` under the exit-code rule: Hydra would print its own errors
    (composing the config) and exit 1; told to raise them (``HYDRA_FULL_ERROR``), they reach
    here with every other error, which is reported by ``failure_message`` and exits by
    ``exit_code``."""
    os.environ["HYDRA_FULL_ERROR"] = "1"
    status = exit_status(main)
    if status:
        sys.exit(status)


def exit_status(main: Callable[[], object]) -> int:
    """Run ``main``; 0 when it returns, else report the error (``failure_message``) and give its
    exit code (``exit_code``). The commands that compose their config themselves return this."""
    try:
        main()
    except Exception as e:
        sys.stderr.write(failure_message(e) + "\n")
        return exit_code(e)
    return 0


def exit_code(error: BaseException) -> int:
    """The process exit code for ``error`` (the rule above)."""
    if isinstance(error, TrainingInterrupted):
        return 128 + error.signum
    return 2 if _user_error_kind(error) else 1


def failure_message(error: BaseException) -> str:
    """What a command prints on stderr: the cause of a user's error in one message, the
    traceback of anything else (what a bug report needs)."""
    kind = _user_error_kind(error)
    if isinstance(error, TrainingInterrupted):
        return str(error)
    if kind is None:
        return "".join(traceback.format_exception(error)).rstrip()
    return f"{kind}: {error}"
