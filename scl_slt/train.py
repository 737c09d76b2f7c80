"""Training entry point: ``python -m scl_slt.train stage=contrastive|translate [overrides]``.

Multi-GPU: ``torchrun --nproc_per_node=N -m scl_slt.train ...`` (DDP; gloo on CPU, NCCL on CUDA).
Configs come from ``configs/train.yaml`` and its groups, validated against the typed schema in
``scl_slt.config`` before any work. After SIGTERM/SIGINT the run saves a resumable checkpoint and
exits with 128 + the signal number; ``resume=auto run_dir=<same dir>`` continues it.

Exit codes (the same for ``evaluate``, ``score`` and ``pipeline``; README "Errors and exit
codes"; the rule is ``training.run_context.exit_code``):

* 0: done.
* 2: a user's error, printed as one message naming its cause: the config (a bad key or value,
  composing included), the data (``DataError``), a missing file, a checkpoint the user named
  (``resume=``, ``stage.init_from=``, all checkpoints of ``resume=auto`` corrupt), the stage
  hand-off. Nothing to debug: fix the command line or the files.
* 1: anything else: a bug, a numerical failure (a non-finite loss) or the machine (a full disk
  while saving a checkpoint), printed with its traceback.
* 128 + N: stopped by signal N (SIGTERM 143, SIGINT 130) after a resumable checkpoint.

Once the run directory exists, the error that ended the run is also in its ``train.log``, with
the traceback.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from .config import register_configs
from .distributed import is_main_process
from .stages import run_stage
from .training.run_context import run_command
from .training.runtime import shutdown_process_group

register_configs()


@hydra.main(config_path="configs", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        result = run_stage(cfg)
        main_process = is_main_process()
    finally:
        shutdown_process_group()
    if not main_process:
        return
    print(f"run directory: {result['run_dir']}")
    print(f"best checkpoint: {result['best_checkpoint']}")
    print(f"last checkpoint: {result['last_checkpoint']}")
    if result.get("dev_metrics"):
        metrics = result["dev_metrics"]
        print(
            "dev: " + " ".join(f"{k}={v:.2f}" for k, v in metrics.items() if isinstance(v, float))
        )


def cli() -> None:
    """``main`` under the exit-code rule (``training.run_context.run_command``)."""
    run_command(main)


if __name__ == "__main__":
    cli()
