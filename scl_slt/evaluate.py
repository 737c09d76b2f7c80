"""Evaluate a checkpoint of a training run on one split.

    python -m scl_slt.evaluate run_dir=runs/<run> checkpoint=best|last|<checkpoint dir> split=test

Decoding settings default to the run's ``model.generation`` and can be overridden
(``num_beams=``, ``max_length=``, ``length_penalty=``); ``out_dir=`` (default
``<run_dir>/eval/<checkpoint tag>/<split>``). Prints the translation metrics and, for a stage-1
checkpoint, the retrieval protocol, coarse- and fine-grained retrieval R@K and the Sign Density
Ratio; ``retrieval.duplicates=hit|miss|exclude`` and ``retrieval.fine_k=`` override the run's
protocol (``scl_slt/eval/retrieval.py``). The work is ``scl_slt.eval.evaluator``.
Exit codes as for training (``scl_slt/train.py``): 2 for a user's error (a bad setting, a run
directory or checkpoint that is not there or not readable), 1 for anything else.
"""

from __future__ import annotations

import json
import os

import hydra
from omegaconf import DictConfig

from .config import register_configs
from .eval.alignment import FINE_RETRIEVAL_KEYS, RETRIEVAL_KEYS
from .eval.evaluator import evaluate_checkpoint
from .training.run_context import run_command
from .training.runtime import shutdown_process_group

register_configs()  # the schemas must be in the ConfigStore before hydra.main composes


@hydra.main(version_base=None, config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:  # the process group (torchrun) is left once, at exit, as by the training entry point
        metrics, alignment = evaluate_checkpoint(cfg)
    finally:
        shutdown_process_group()
    if int(os.environ.get("RANK", "0")) != 0:
        return
    print(json.dumps(metrics, indent=2, ensure_ascii=False))
    print(f"BLEU signature: {metrics['bleu_signature']}")
    if alignment is not None:
        sdr = f"SDR {alignment['sdr']:.4f}" if "sdr" in alignment else "SDR n/a (no alignments)"
        protocol = alignment["retrieval_protocol"]
        print(
            f"retrieval protocol: duplicates={protocol['duplicates']}, fine-grained candidates: "
            f"the true item + {protocol['fine_k_used']} closest different sentences (TF-IDF, "
            f"fine_k={protocol['fine_k']}, {protocol['language']})"
        )
        values = " ".join(f"{key}={alignment[key]:.2f}" for key in RETRIEVAL_KEYS)
        print(f"retrieval: {values}; {sdr}")
        fine = [key for key in FINE_RETRIEVAL_KEYS if key in alignment]
        values = " ".join(f"{key}={alignment[key]:.2f}" for key in fine) or "n/a (one sentence)"
        print(f"fine-grained retrieval: {values}")


def cli() -> None:
    """``main`` under the exit-code rule (``training.run_context.run_command``)."""
    run_command(main)


if __name__ == "__main__":
    cli()
