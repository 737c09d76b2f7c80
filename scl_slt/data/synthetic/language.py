"""The synthetic language of one configuration: vocabulary, confusable twins, gloss motions and
signers, all drawn from ``data.synthetic.seed`` (see the package docstring for what it models).

Every random choice comes from its own stream (``stream_rng``), so changing how one part is drawn
leaves the others as they were; the generated data depend on every line here (bump
``generate.GENERATOR_VERSION`` when they change).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ...config import ConfigError, SyntheticConfig
from .grammar import CATEGORIES, CATEGORY_OF, MAX_SENTENCE_GLOSSES, NEGATION, TOPIC, UNIT, WEATHERS
from .render import NUM_COEFFICIENTS, SignerStyle

POSE_DIM = 6  # frames modality: (x, y) of both hands + both hand sizes
MIN_SEPARATION = 0.6  # non-twin motions are at least this share of a typical pair distance apart
TWIN_THRESHOLD = 0.5  # "confusable": nearest motion closer than this share of the median distance


# ------------------------------------------------------------------------------------- config
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
        ("question_overlap", 0 <= cfg.question_overlap <= 1, "must be in [0, 1]"),
    ]
    # fmt: on
    for key, ok, message in checks:
        if not ok:
            raise ConfigError(f"data.synthetic.{key}: {message}, got {getattr(cfg, key)!r}")


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


def stream_rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent, reproducible random stream per purpose (and per clip)."""
    return np.random.default_rng([seed, *stream])


STREAM_LANGUAGE, STREAM_PLAN, STREAM_SIGNERS, STREAM_FEATURES, STREAM_FRAMES = range(5)
STREAM_DIALOGUE = 5  # the questions (dialogue.py): drawn apart, so they never move the data


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
    rng = stream_rng(cfg.seed, STREAM_LANGUAGE)
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


# ------------------------------------------------------------------------------------ signers
def signer_styles(cfg: SyntheticConfig) -> list[SignerStyle]:
    rng = stream_rng(cfg.seed, STREAM_SIGNERS)
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
