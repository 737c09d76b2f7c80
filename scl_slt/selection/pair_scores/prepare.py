"""Alternative pair scores for the curriculum: only the scores differ, never the batch builder.

Every strategy writes an N x N float16 score file (``score_file``) in the convention of the
trajectory deltas that ``CurriculumBatchSampler`` reads: entry ``[i, j]`` is for video i and text
j of the train split in dataset order, and **a higher score means a harder negative** (more
similar, more likely to be confused); a lower score means an easier one. The schedule's small α
then batches dissimilar samples and its large α similar ones, exactly as it does for δ. The
diagonal (a sample with itself) is never read by the curriculum.

- ``text_semantic`` (``text.py``): similarity of the target sentences (TF-IDF or a local
  sentence-embedding model);
- ``visual_curriculum`` (``visual.py``): cosine of the reference model's pooled projected video
  tokens from a tracker snapshot.

``san`` brings no score file: it mines each anchor's hard negatives from sign embeddings
(``hard_negatives.py``, its embeddings cached by ``sign_embedding.py``).

``prepare_strategy_scores`` computes a strategy's file once per run and reuses it while the
record beside it matches the inputs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ... import distributed
from ...config import ConfigError, SelectionConfig, SelectionName
from ..tracker import read_snapshot
from .score_file import record_matches
from .text import text_semantic_key, text_semantic_scores
from .visual import resolve_snapshot, visual_curriculum_key, visual_curriculum_scores

log = logging.getLogger(__name__)

STRATEGY_DIRNAME = "selection"  # <run_dir>/selection/<strategy>.npy


def prepare_strategy_scores(
    cfg: SelectionConfig,
    num_samples: int,
    texts: Sequence[str] | None,
    names: Sequence[str] | None,
    language: str | None,
    run_dir: str | os.PathLike | None,
) -> Path:
    """The score file of ``text_semantic`` / ``visual_curriculum``, computed once per run.

    Written to ``<run_dir>/selection/<name>.npy`` and reused while its record matches (same
    texts, language and method; same snapshot). Under torch.distributed rank 0 computes and the
    other ranks wait at a barrier; writes are atomic either way.
    """
    name = SelectionName(cfg.name)
    if name is SelectionName.text_semantic:
        if texts is None or language is None:
            raise ConfigError(
                "selection.name: text_semantic needs the train split's texts and language "
                "(build_batch_sampler(..., texts=..., language=..., run_dir=...))"
            )
        if len(texts) != num_samples:
            raise ValueError(f"text_semantic: {len(texts)} texts for {num_samples} samples")
        key = text_semantic_key(texts, language, cfg.text_method, cfg.text_model_path)

        def compute(path: Path) -> Path:
            return text_semantic_scores(texts, language, path, cfg.text_method, cfg.text_model_path)
    elif name is SelectionName.visual_curriculum:
        if not cfg.snapshot:
            raise ConfigError(
                "selection.snapshot: selection.name=visual_curriculum needs a reference run's "
                "snapshot folder (epoch-NNNN, its snapshots/ folder or the run folder)"
            )
        snapshot = read_snapshot(resolve_snapshot(cfg.snapshot))
        if snapshot.num_samples != num_samples or (
            names is not None and snapshot.names != list(names)
        ):
            raise ValueError(
                f"selection.snapshot: {snapshot.path} holds {snapshot.num_samples} samples that "
                f"are not the training split's {num_samples} in dataset order"
            )
        key = visual_curriculum_key(snapshot)

        def compute(path: Path) -> Path:
            return visual_curriculum_scores(snapshot.path, path)
    else:
        raise ValueError(f"prepare_strategy_scores: {name.value} has no score file")
    if run_dir is None:
        raise ValueError(
            f"selection={name.value}: build_batch_sampler needs run_dir= for its scores"
        )
    out_path = Path(run_dir) / STRATEGY_DIRNAME / f"{name.value}.npy"

    def prepare() -> None:  # rank 0; the others wait and get its failure, if any
        if record_matches(out_path, key):
            log.info("%s: reusing %s", name.value, out_path)
        else:
            compute(out_path)

    distributed.on_main_process(prepare)
    return out_path
