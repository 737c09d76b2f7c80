"""The plan of a synthetic dataset: which sentence each clip signs, by which signer, and the exact
frame span of every gloss (the alignment), for every split.

Train sentences are distinct except ``duplicate_rate`` of the clips, which come in groups of 2-3
signing one sentence (by different signers where there are enough); dev/test sentences are new
combinations except ``eval_seen_rate`` of them, which reuse a train sentence.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from ...config import ConfigError, SyntheticConfig
from ..labels import SPLITS
from .grammar import translate
from .language import STREAM_PLAN, SyntheticLanguage, as_synthetic_config, signer_styles, stream_rng


def _duplicate_group_sizes(rng: np.random.Generator, rate: float, n: int) -> list[int]:
    """Groups of 2-3 clips sharing a sentence, ``round(rate * n)`` clips in all (never a lone 1)."""
    total = int(round(rate * n))
    if total == 1:
        total = 2 if rate * n >= 1 else 0
    total = min(total, n) if n >= 2 else 0
    sizes = []
    while total > 0:
        size = 3 if total == 3 or (total > 4 and rng.random() < 0.3) else 2
        sizes.append(size)
        total -= size
    return sizes


def _unique_sentences(
    rng: np.random.Generator,
    language: SyntheticLanguage,
    cfg: SyntheticConfig,
    n: int,
    taken: set[str],
) -> list[list[str]]:
    """``n`` sentences whose texts are new (not in ``taken``), within the length range."""
    sentences: list[list[str]] = []
    misses = 0  # consecutive draws that were too long/short or already taken
    while len(sentences) < n and misses < 5000:
        glosses = language.sample_sentence(rng)
        text = translate(glosses)
        if cfg.min_glosses <= len(glosses) <= cfg.max_glosses and text not in taken:
            taken.add(text)
            sentences.append(glosses)
            misses = 0
        else:
            misses += 1
    if len(sentences) == n:
        return sentences
    raise ConfigError(
        f"data.synthetic.max_glosses: the grammar gave only {len(taken)} distinct sentences of "
        f"{cfg.min_glosses}-{cfg.max_glosses} glosses over {cfg.num_glosses} glosses; "
        "lower num_train/num_dev/num_test or widen the length range"
    )


def plan_dataset(cfg: SyntheticConfig, language: SyntheticLanguage) -> dict[str, dict[str, dict]]:
    """The label records of every split (sentences, signers, durations, alignments)."""
    cfg = as_synthetic_config(cfg)
    rng = stream_rng(cfg.seed, STREAM_PLAN)
    styles = signer_styles(cfg)
    taken: set[str] = set()
    group_sizes = _duplicate_group_sizes(rng, cfg.duplicate_rate, cfg.num_train)
    n_distinct = cfg.num_train - sum(group_sizes) + len(group_sizes)
    train_sentences = _unique_sentences(rng, language, cfg, n_distinct, taken)
    clips: dict[str, list[tuple[list[str], int]]] = {"train": []}
    for size, sentence in zip(group_sizes, train_sentences):
        signers = rng.permutation(max(size, cfg.num_signers))[:size] % cfg.num_signers
        clips["train"] += [(sentence, int(s)) for s in signers]
    clips["train"] += [
        (s, int(rng.integers(cfg.num_signers))) for s in train_sentences[len(group_sizes) :]
    ]
    for split, n in (("dev", cfg.num_dev), ("test", cfg.num_test)):
        n_seen = min(int(round(cfg.eval_seen_rate * n)), len(train_sentences))
        seen = [train_sentences[i] for i in rng.choice(len(train_sentences), n_seen, replace=False)]
        sentences = seen + _unique_sentences(rng, language, cfg, n - n_seen, taken)
        clips[split] = [(s, int(rng.integers(cfg.num_signers))) for s in sentences]

    index = {g: i for i, g in enumerate(language.glosses)}
    lo, hi = cfg.min_gloss_frames, cfg.max_gloss_frames
    plan: dict[str, dict[str, dict]] = {}
    for split in SPLITS:
        records = {}
        for i, k in enumerate(rng.permutation(len(clips[split]))):
            glosses, signer = clips[split][k]
            alignment, start = [], 0
            for gloss in glosses:
                g = index[gloss]
                typical = language.base_frames[g] * styles[signer].speed
                frames = int(np.clip(round(typical + rng.normal(0, 0.7)), lo, hi))
                alignment.append([g, start, start + frames])
                start += frames
            name = f"{split}/synth-{i + 1:05d}"
            records[name] = {
                "name": name,
                "gloss": " ".join(glosses),
                "text": translate(glosses),
                "length": start,
                "signer": signer,
                "alignment": alignment,
            }
        plan[split] = records
    return plan


def duplicate_share(texts: Sequence[str]) -> float:
    """Share of clips whose target sentence is also the target of another clip."""
    counts = Counter(texts)
    return sum(counts[t] > 1 for t in texts) / max(1, len(texts))
