"""Training entry point: ``python -m scl_slt.train stage=contrastive|translate [overrides]``.

Multi-GPU: ``torchrun --nproc_per_node=N -m scl_slt.train ...`` (DDP; gloo on CPU, NCCL on CUDA).
Configs come from ``configs/train.yaml`` and its groups, validated against the typed schema in
``scl_slt.config`` before any work. After SIGTERM/SIGINT the run saves a resumable checkpoint and
exits with 128 + the signal number; ``resume=auto run_dir=<same dir>`` continues it.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from .config import ConfigError, register_configs
from .distributed import is_main_process
from .stages import run_stage
from .training.runtime import TrainingInterrupted, shutdown_process_group

register_configs()


@hydra.main(config_path="configs", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        result = run_stage(cfg)
        main_process = is_main_process()
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingInterrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(128 + e.signum)
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


if __name__ == "__main__":
    main()
