"""``python -m scl_slt.data.synthetic [modality=frames] [seed=1 num_train=200 ...]``: generate (or
reuse) the synthetic dataset of a configuration and print what it holds, with the rates achieved.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence

from omegaconf import OmegaConf

from ...config import Modality
from ..labels import labels_path, read_labels
from .dialogue import dialogue_questions
from .generate import META, cache_root, ensure_synthetic
from .language import as_synthetic_config


def main(argv: Sequence[str]) -> None:
    """``python -m scl_slt.data.synthetic [modality=frames] [<SyntheticConfig field>=value ...]``"""
    overrides = OmegaConf.from_dotlist(list(argv))
    modality = Modality(overrides.pop("modality", "features"))
    cfg = as_synthetic_config(overrides)
    marker = "frames" if modality is Modality.frames else META
    reused = (cache_root(cfg) / marker).exists()
    start = time.perf_counter()
    root = ensure_synthetic(cfg, modality)
    seconds = time.perf_counter() - start
    meta = json.loads((root / META).read_text())
    print(f"synthetic dataset ({modality.value}): {root}")
    print(f"{'reused' if reused else 'generated'} in {seconds:.2f}s")
    print(f"splits: {meta['splits']}  frames/clip: {meta['frames_per_clip']}")
    print(f"vocabulary: {len(meta['glosses'])} glosses -> {len(meta['words'])} target words")
    print(f"confusable pairs: {meta['confusable_pairs']}")
    print(f"duplicate groups in train: {len(meta['duplicate_groups'])}")
    for name, rate in meta["rates"].items():
        print(f"rate {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in rate.items()))
    examples = list(read_labels(labels_path(root, "train")).values())[:5]
    questions = dialogue_questions(cfg, examples)  # data.assist=question's dialogue
    for record in examples:
        print(f"  {record['gloss']:<40} -> {record['text']}")
        print(f"  {'':<40}    asked: {questions[record['name']]}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(sys.argv[1:])
