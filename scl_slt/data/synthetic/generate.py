"""The built-in synthetic sign language: a small weather-report language generated from a seed.

Real sign language datasets cannot be shipped, so ``data=synthetic`` generates one on first use,
in the GFSLT-style format the real loaders read (``labels.{train,dev,test}`` + one array or frame
folder per clip). It keeps the properties selective contrastive learning is about:

* a gloss vocabulary, each gloss a short smooth motion (cosine-basis trajectory) with its own
  typical duration; clips concatenate gloss motions with a little coarticulation blur;
* a grammar: ``[TIME] [REGION] HEAD [MODIFIER] [NICHT]`` clauses, optionally joined by ``UND`` /
  ``ABER``, translated into German word order with function words
  (``MORGEN NORD REGEN`` -> "morgen regnet es im norden"), so translation is a learnable function
  of the gloss sequence but not a copy of it;
* several signers (a fixed per-signer linear transform and offset, a signing speed, colours for
  frames), per-frame noise, and the exact frame -> gloss alignment;
* visually confusable gloss pairs ("twins": same category, near-identical motion, different
  meaning) for ``confusable_rate`` of the vocabulary, and duplicated target sentences (one sentence
  signed by 2-3 clips, by different signers) for ``duplicate_rate`` of the train clips.

Achieved rates (measured on the generated data, written to ``meta.json``) match the requested ones
within ``1 / num_glosses`` (twins come in pairs) and ``1 / num_train`` (duplicates come in groups of
at least two). Dev/test sentences are new combinations except ``eval_seen_rate`` of them, which
reuse a train sentence (signed again).

The dataset lives in ``<cache_dir>/<hash of the config>/`` and is built in a temporary folder
beside it, then renamed, under a file lock: a half-built dataset is never visible under the final
name, and a second process waits and then reuses the finished one. Frames (``modality=frames``)
are rendered into ``frames/`` of the same root on first request, the same way.

    python -m scl_slt.data.synthetic [modality=frames] [seed=1 num_train=200 ...]
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ...config import ConfigError, Modality, SyntheticConfig
from ..labels import SPLITS, DataError, labels_path, read_labels, write_labels
from .grammar import (
    CATEGORIES,
    CATEGORY_OF,
    MAX_SENTENCE_GLOSSES,
    NEGATION,
    TOPIC,
    UNIT,
    WEATHERS,
    translate,
)
from .render import NUM_COEFFICIENTS, SignerStyle, render_features, render_frames, write_frames

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when the output for a given config changes (invalidates caches)
META = "meta.json"
POSE_DIM = 6  # frames modality: (x, y) of both hands + both hand sizes
MIN_SEPARATION = 0.6  # non-twin motions are at least this share of a typical pair distance apart
TWIN_THRESHOLD = 0.5  # "confusable": nearest motion closer than this share of the median distance


# ----------------------------------------------------------------------------------- language
@dataclass
class SyntheticLanguage:
    """Vocabulary, twins and motions of one configuration; gloss id = position in ``glosses``."""

    glosses: list[str]
    by_category: dict[str, list[str]]
    twins: list[tuple[int, int]]  # (original, twin) gloss ids
    feature_motion: np.ndarray  # (G, NUM_COEFFICIENTS, feature_dim) cosine-basis coefficients
    pose_motion: np.ndarray  # (G, NUM_COEFFICIENTS, POSE_DIM)
    base_frames: np.ndarray  # (G,) typical duration of each gloss in frames

    def sample_clause(self, rng: np.random.Generator, p_time: float) -> list[str]:
        def pick(category: str) -> str:
            options = self.by_category[category]
            return options[rng.integers(len(options))]

        clause = [pick("time")] if rng.random() < p_time else []
        if rng.random() < 0.6:
            clause.append(pick("region"))
        form = rng.choice(["weather", "temperature", "trend", "number"], p=[0.45, 0.2, 0.2, 0.15])
        if form == "weather":
            clause.append(pick("weather"))
            if WEATHERS[clause[-1]][3] is None and rng.random() < 0.3:
                clause.append(pick("modifier"))
        elif form == "temperature":
            clause.append(pick("temperature"))
            if rng.random() < 0.3:
                clause.append(pick("modifier"))
        elif form == "trend":
            clause += [TOPIC, pick("trend")]
        else:
            return [*clause, pick("number"), UNIT]
        if rng.random() < 0.15:
            clause.append(NEGATION)
        return clause

    def sample_sentence(self, rng: np.random.Generator) -> list[str]:
        glosses = self.sample_clause(rng, p_time=0.65)
        if rng.random() < 0.3:
            conjunctions = self.by_category["conjunction"]
            glosses.append(conjunctions[rng.integers(len(conjunctions))])
            glosses += self.sample_clause(rng, p_time=0.15)
        return glosses


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent, reproducible random stream per purpose (and per clip)."""
    return np.random.default_rng([seed, *stream])


STREAM_LANGUAGE, STREAM_PLAN, STREAM_SIGNERS, STREAM_FEATURES, STREAM_FRAMES = range(5)


def _trim_lexicon(num_glosses: int) -> dict[str, list[str]]:
    kept: dict[str, list[str]] = {cat: [] for cat in CATEGORIES}
    while sum(map(len, kept.values())) < num_glosses:
        for cat, glosses in CATEGORIES.items():
            if len(kept[cat]) < len(glosses) and sum(map(len, kept.values())) < num_glosses:
                kept[cat].append(glosses[len(kept[cat])])
    return kept


def _pick_twins(rng, by_category: dict[str, list[str]], n_pairs: int) -> list[tuple[str, str]]:
    pools = {cat: list(rng.permutation(g)) for cat, g in by_category.items() if len(g) >= 2}
    pairs = []
    for _ in range(n_pairs):
        open_cats = [cat for cat, pool in pools.items() if len(pool) >= 2]
        if not open_cats:
            raise ConfigError(
                f"data.synthetic.confusable_rate: the vocabulary has room for only {len(pairs)} "
                "twin pairs (twins share a category); lower the rate or raise num_glosses"
            )
        sizes = np.array([len(pools[c]) for c in open_cats], dtype=float)
        cat = open_cats[rng.choice(len(open_cats), p=sizes / sizes.sum())]
        pairs.append((str(pools[cat].pop()), str(pools[cat].pop())))
    return pairs


def _motions(rng, n: int, dim: int, twins: list[tuple[int, int]], distance: float) -> np.ndarray:
    """Cosine-basis coefficients (n, K, dim); a twin = its original moved ``distance`` of the way
    toward an unrelated motion, so twin distance = distance x a typical pair distance."""
    scale = 1.0 / np.maximum(1, np.arange(NUM_COEFFICIENTS))[:, None]  # (K, 1) smooth motions
    typical = np.sqrt(2 * dim * (scale**2).sum())  # expected distance of two random motions
    twin_ids = {b for _, b in twins}
    coef = np.zeros((n, NUM_COEFFICIENTS, dim))
    for g in range(n):  # rejection keeps distinct glosses distinguishable (a lexicon's job)
        for _ in range(1000):
            coef[g] = rng.standard_normal((NUM_COEFFICIENTS, dim)) * scale
            others = [h for h in range(g) if h not in twin_ids]
            if g in twin_ids or all(
                np.linalg.norm(coef[g] - coef[h]) > MIN_SEPARATION * typical for h in others
            ):
                break
    for a, b in twins:
        unrelated = rng.standard_normal((NUM_COEFFICIENTS, dim)) * scale
        coef[b] = coef[a] + distance * (unrelated - coef[a])
    return coef


def build_language(cfg: SyntheticConfig) -> SyntheticLanguage:
    """The vocabulary, confusable twins and gloss motions; deterministic in ``cfg.seed``."""
    cfg = as_synthetic_config(cfg)
    rng = _rng(cfg.seed, STREAM_LANGUAGE)
    by_category = _trim_lexicon(cfg.num_glosses)
    glosses = [g for cat in CATEGORIES for g in by_category[cat]]
    index = {g: i for i, g in enumerate(glosses)}
    n_pairs = int(round(cfg.confusable_rate * len(glosses) / 2))
    twins = [(index[a], index[b]) for a, b in _pick_twins(rng, by_category, n_pairs)]
    lo, hi = cfg.min_gloss_frames, cfg.max_gloss_frames
    base_frames = rng.integers(lo, hi + 1, size=len(glosses))
    for a, b in twins:
        base_frames[b] = base_frames[a]
    d = cfg.confusable_distance
    return SyntheticLanguage(
        glosses=glosses,
        by_category=by_category,
        twins=twins,
        feature_motion=_motions(rng, len(glosses), cfg.feature_dim, twins, d),
        pose_motion=_motions(rng, len(glosses), POSE_DIM, twins, d),
        base_frames=base_frames,
    )


def confusable_share(motion: np.ndarray) -> float:
    """Share of glosses whose nearest other motion is closer than TWIN_THRESHOLD x the median
    pair distance: the measured confusable rate."""
    flat = motion.reshape(len(motion), -1)
    dist = np.linalg.norm(flat[:, None] - flat[None], axis=-1)  # (G, G)
    median = np.median(dist[np.triu_indices(len(flat), 1)])
    np.fill_diagonal(dist, np.inf)
    return float((dist.min(axis=1) < TWIN_THRESHOLD * median).mean())


def duplicate_share(texts: Sequence[str]) -> float:
    """Share of clips whose target sentence is also the target of another clip."""
    counts = Counter(texts)
    return sum(counts[t] > 1 for t in texts) / max(1, len(texts))


# ------------------------------------------------------------------------------------ signers
def signer_styles(cfg: SyntheticConfig) -> list[SignerStyle]:
    rng = _rng(cfg.seed, STREAM_SIGNERS)
    s, dim = cfg.signer_shift, cfg.feature_dim
    return [
        SignerStyle(
            speed=float(1 + s * rng.uniform(-0.5, 0.5)),
            matrix=np.eye(dim) + s * rng.standard_normal((dim, dim)) / np.sqrt(dim),
            offset=s * rng.standard_normal(dim),
            pose_scale=float(1 + s * rng.uniform(-0.3, 0.3)),
            pose_offset=0.1 * s * rng.uniform(-1, 1, size=2),
            colours=np.stack(
                [rng.uniform(0.05, 0.3, 3), rng.uniform(0.75, 0.95, 3), rng.uniform(0.2, 0.6, 3)]
            ),
        )
        for _ in range(cfg.num_signers)
    ]


# --------------------------------------------------------------------------------------- plan
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
    rng = _rng(cfg.seed, STREAM_PLAN)
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


# -------------------------------------------------------------------------------------- build
def _clips(plan: dict[str, dict[str, dict]]) -> Iterator[tuple[int, int, dict]]:
    for split_id, split in enumerate(SPLITS):
        for i, record in enumerate(plan[split].values()):
            yield split_id, i, record


def _generate_dataset(cfg: SyntheticConfig, folder: Path) -> dict[str, Any]:
    """Labels, feature arrays and meta.json into ``folder``; returns the meta dict."""
    language = build_language(cfg)
    plan = plan_dataset(cfg, language)
    styles = signer_styles(cfg)
    for split in SPLITS:
        write_labels(labels_path(folder, split), plan[split])
    for split_id, i, record in _clips(plan):
        rng = _rng(cfg.seed, STREAM_FEATURES, split_id, i)
        arr = render_features(record, language, styles[record["signer"]], cfg.noise, rng)
        path = folder / "features" / f"{record['name']}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, arr)
    meta = _dataset_meta(cfg, language, plan)
    (folder / META).write_text(json.dumps(meta, indent=1))
    return meta


def _dataset_meta(cfg: SyntheticConfig, language: SyntheticLanguage, plan: dict) -> dict[str, Any]:
    """What was generated, and the rates achieved (measured on the generated data)."""
    train_texts = [r["text"] for r in plan["train"].values()]
    seen = set(train_texts)
    groups: dict[str, list[str]] = {}
    for r in plan["train"].values():
        groups.setdefault(r["text"], []).append(r["name"])
    lengths = [r["length"] for split in SPLITS for r in plan[split].values()]
    stats = {"min": np.min, "mean": np.mean, "max": np.max}
    words = sorted({w for split in SPLITS for r in plan[split].values() for w in r["text"].split()})
    rates = {
        "confusable": {
            "requested": cfg.confusable_rate,
            "achieved": confusable_share(language.feature_motion),
            "achieved_frames": confusable_share(language.pose_motion),
            "tolerance": 1 / len(language.glosses),
        },
        "duplicate": {
            "requested": cfg.duplicate_rate,
            "achieved": duplicate_share(train_texts),
            "tolerance": 1 / cfg.num_train,
        },
    }
    for split in ("dev", "test"):
        texts = [r["text"] for r in plan[split].values()]
        rates[f"{split}_seen"] = {
            "requested": cfg.eval_seen_rate,
            "achieved": float(np.mean([t in seen for t in texts])),
        }
    return {
        "generator_version": GENERATOR_VERSION,
        "config": dataclasses.asdict(cfg),
        "glosses": [{"name": g, "category": CATEGORY_OF[g]} for g in language.glosses],
        "words": words,
        "confusable_pairs": [[language.glosses[a], language.glosses[b]] for a, b in language.twins],
        "duplicate_groups": [names for names in groups.values() if len(names) > 1],
        "rates": rates,
        "splits": {split: len(plan[split]) for split in SPLITS},
        "frames_per_clip": {k: round(float(f(lengths)), 2) for k, f in stats.items()},
    }


def _generate_frames(cfg: SyntheticConfig, root: Path, folder: Path) -> None:
    """Frame folders for the labels already in ``root`` (same clips, lengths and alignments)."""
    language = build_language(cfg)
    styles = signer_styles(cfg)
    plan = {split: read_labels(labels_path(root, split)) for split in SPLITS}
    for split_id, i, record in _clips(plan):
        rng = _rng(cfg.seed, STREAM_FRAMES, split_id, i)
        style = styles[record["signer"]]
        frames = render_frames(record, language, style, cfg.image_size, cfg.noise, rng)
        write_frames(folder / record["name"], frames)


# -------------------------------------------------------------------------------------- cache
def as_synthetic_config(cfg: SyntheticConfig | DictConfig | dict) -> SyntheticConfig:
    """A typed, checked SyntheticConfig from a dataclass, an Omega config or a plain dict."""
    if not isinstance(cfg, SyntheticConfig):
        if not isinstance(cfg, (DictConfig, dict)):
            raise TypeError(f"expected SyntheticConfig, DictConfig or dict, got {type(cfg)}")
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SyntheticConfig), cfg))
    check_config(cfg)
    return cfg


def check_config(cfg: SyntheticConfig) -> None:
    """Value checks; raises ConfigError naming the key."""
    # fmt: off
    checks = [
        ("num_train", cfg.num_train >= 1 and cfg.num_dev >= 1 and cfg.num_test >= 1, "each >= 1"),
        ("num_glosses", len(CATEGORIES) <= cfg.num_glosses <= len(CATEGORY_OF),
         f"must be in [{len(CATEGORIES)}, {len(CATEGORY_OF)}] (the lexicon's size)"),
        ("num_signers", cfg.num_signers >= 1, "must be >= 1"),
        ("feature_dim", cfg.feature_dim >= 1, "must be >= 1"),
        ("min_glosses", 1 <= cfg.min_glosses <= cfg.max_glosses,
         "need 1 <= min_glosses <= max_glosses"),
        ("min_glosses", cfg.min_glosses <= MAX_SENTENCE_GLOSSES,
         f"sentences have at most {MAX_SENTENCE_GLOSSES} glosses"),
        ("min_gloss_frames", 1 <= cfg.min_gloss_frames <= cfg.max_gloss_frames,
         "need 1 <= min_gloss_frames <= max_gloss_frames"),
        ("noise", cfg.noise >= 0, "must be >= 0"),
        ("signer_shift", cfg.signer_shift >= 0, "must be >= 0"),
        ("confusable_rate", 0 <= cfg.confusable_rate <= 1, "must be in [0, 1]"),
        ("confusable_distance", 0 <= cfg.confusable_distance <= 0.4,
         "must be in [0, 0.4] (twins are near-identical)"),
        ("duplicate_rate", 0 <= cfg.duplicate_rate <= 1, "must be in [0, 1]"),
        ("eval_seen_rate", 0 <= cfg.eval_seen_rate <= 1, "must be in [0, 1]"),
        ("image_size", cfg.image_size >= 8, "must be >= 8"),
    ]
    # fmt: on
    for key, ok, message in checks:
        if not ok:
            raise ConfigError(f"data.synthetic.{key}: {message}, got {getattr(cfg, key)!r}")


def config_hash(cfg: SyntheticConfig) -> str:
    """Short hash of everything that changes the generated data (not where it is cached)."""
    content = dataclasses.asdict(cfg)
    content.pop("cache_dir")
    content["generator_version"] = GENERATOR_VERSION
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]


def cache_root(cfg: SyntheticConfig) -> Path:
    """``<cache_dir>/<config hash>``; ``${oc.env:...}`` in a plain dataclass is resolved here."""
    cache_dir = cfg.cache_dir
    if "${" in cache_dir:
        cache_dir = OmegaConf.create({"value": cache_dir}).value
    return Path(os.path.expanduser(cache_dir)) / config_hash(cfg)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """Exclusive file lock (POSIX); yields False where locking is unavailable."""
    try:
        import fcntl
    except ImportError:  # no flock: the atomic rename alone keeps the cache consistent
        yield False
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_atomically(final: Path, build, may_clean_stale: bool) -> None:
    """Run ``build(tmp)`` in a fresh temporary folder beside ``final``, then rename it in place."""
    prefix = f".{final.name}.tmp-"
    if may_clean_stale:  # under the lock nobody else is building: leftovers are from a crash
        for stale in final.parent.glob(prefix + "*"):
            log.warning("removing stale temporary folder %s", stale)
            shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():  # a rename lost to a concurrent builder is fine; else re-raise
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_synthetic(cfg: SyntheticConfig, modality: Modality) -> Path:
    """The root of the synthetic dataset for ``cfg``, generated on first use (see module doc)."""
    cfg = as_synthetic_config(cfg)
    modality = Modality(modality)
    root = cache_root(cfg)
    frames_needed = modality is Modality.frames

    def complete() -> bool:
        return (root / META).is_file() and (not frames_needed or (root / "frames").is_dir())

    if complete():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _locked(root.parent / f".{root.name}.lock") as locked:
        if not (root / META).is_file():
            if root.exists():
                raise DataError(
                    f"{root} exists but has no {META}: not a finished synthetic dataset "
                    "(delete the folder to regenerate it)"
                )
            start = time.perf_counter()
            _build_atomically(root, lambda tmp: _generate_dataset(cfg, tmp), locked)
            log.info("synthetic dataset generated in %.1fs: %s", time.perf_counter() - start, root)
        if frames_needed and not (root / "frames").is_dir():
            start = time.perf_counter()
            build = lambda tmp: _generate_frames(cfg, root, tmp)  # noqa: E731
            _build_atomically(root / "frames", build, locked)
            log.info("synthetic frames rendered in %.1fs: %s", time.perf_counter() - start, root)
    return root


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
    for record in list(read_labels(labels_path(root, "train")).values())[:5]:
        print(f"  {record['gloss']:<40} -> {record['text']}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(sys.argv[1:])
