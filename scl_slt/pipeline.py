"""The whole method in one command.

    python -m scl_slt.pipeline [pipeline options] [training overrides]

Steps (each a normal run directory under ``out_dir``; a finished step is not run again, and an
interrupted one resumes from its newest complete checkpoint):

1. ``1-reference``  contrastive stage with random batches and the snapshot tracker on
2. scoring          similarity of every train pair at every snapshot -> ``pair_scores.npy``
3. ``2-selective``  contrastive stage with the pair-selection curriculum (SCL)
4. ``3-translate``  translation stage initialised from step 3 (SCL-SLT)
5. test evaluation  of the best-on-dev checkpoint of step 4, and a results table

Pipeline options are the fields of ``PipelineConfig``; every other ``key=value`` is a Hydra override
passed to every training step (``data=phoenix14t``, ``model=mbart_large_50``, ``stage.lr=3e-4``).
With ``compare_random=true`` the CL-SLT baseline (random contrastive stage, then translation) runs
too, so the table shows both rows from the same budget; when ``reference_epochs`` equals
``contrastive_epochs`` the reference run itself is that random stage 1 (the snapshots do not
change training: docs/determinism.md) and ``2-random`` is not trained. ``strategies=[...]`` runs steps 3-4 once per
negative-selection strategy (``configs/selection/<name>.yaml``) on the same reference run and budget:
``trajectory`` (SCL, run dirs ``2-selective``/``3-translate``), ``random`` (``2-random``/
``3-translate-random``) and the others as ``2-<name>``/``3-translate-<name>``; ``visual_curriculum``
takes its scores from the reference run's latest snapshot, ``san`` its sign embeddings from the
reference run's best (else last) checkpoint; ``self_trajectory`` (run dirs ``2-self_trajectory``/
``3-translate-self_trajectory``) needs no reference run: it snapshots and scores itself every
``interval`` epochs. The reference run is trained only when a strategy reads it, or when CL-SLT
shares it (``share_reference=false``: CL-SLT trains its own stage 1, so each row's chain of steps
is its own). The results table gives each row's chain compute: the wall and CPU seconds of every
step the row needed (for SCL-SLT the reference run and scoring too), from ``pipeline.json``.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from omegaconf.errors import OmegaConfBaseException

from .config import ConfigError
from .stages.pipeline import Pipeline, results_table, split_arguments
from .training.run_context import exit_status


def main(argv: list[str] | None = None) -> dict[str, dict]:
    """Run the pipeline and print its results; returns the table's rows, raises on failure."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg, overrides = split_arguments(sys.argv[1:] if argv is None else argv)
    except (ValueError, OmegaConfBaseException) as e:  # the pipeline's own options
        raise ConfigError(str(e)) from e
    start = time.time()
    pipeline = Pipeline(cfg, overrides)
    rows = pipeline.run()
    wall = time.time() - start
    print("\nTest results (best-on-dev checkpoint):")
    print(results_table(rows, pipeline.chains))
    signature = next(iter(rows.values())).get("bleu_signature")
    if signature:
        print(f"BLEU signature: {signature}")
    print(f"\nArtifacts under {pipeline.out.resolve()}:")
    for name, result in pipeline.state.items():
        if isinstance(result, dict) and "run_dir" in result:
            print(f"  {name:<22} {result['run_dir']}")
        elif name == "score":
            print(f"  {'pair scores':<22} {result['pair_scores']}")
    print(f"  {'step record':<22} {pipeline.state_path}")
    print(f"Step times (s): {json.dumps(pipeline.timings)}; this invocation {wall:.0f} s")
    print(f"Step CPU times (s): {json.dumps(pipeline.cpu)}")
    return rows


def cli() -> int:
    """``main`` under the exit-code rule of ``scl_slt/train.py``: 2 for a user's error (a bad
    option or override, missing data), 1 for anything else, 128 + N after signal N."""
    return exit_status(main)


if __name__ == "__main__":
    sys.exit(cli())
