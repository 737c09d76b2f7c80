"""Retrieval metrics against rankings worked out by hand, and against plain loops over queries
and candidates written from the protocol's definitions (duplicate targets, fine-grained)."""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter

import numpy as np
import pytest
import torch

from scl_slt.config import RetrievalConfig
from scl_slt.eval import retrieval
from scl_slt.eval.retrieval import (
    identical_text_positives,
    protocol_metrics,
    query_ranks,
    retrieval_metrics,
)
from scl_slt.models.all_pairs import TokenSet
from scl_slt.models.similarity import pairwise_similarity

# Rows: videos, columns: texts; video i belongs with text i.
SIM_4x4 = np.array(
    [
        [0.9, 0.1, 0.3, 0.2],  # video 0: 0.9 is the top score                    -> rank 1
        [0.8, 0.5, 0.6, 0.1],  # video 1: 0.8 and 0.6 beat 0.5                    -> rank 3
        [0.2, 0.7, 0.4, 0.9],  # video 2: 0.7 and 0.9 beat 0.4                    -> rank 3
        [0.1, 0.2, 0.3, 0.6],  # video 3: top                                     -> rank 1
    ]
)
# Text queries (columns): text 0: 0.9 top -> 1; text 1: 0.7 beats 0.5 -> 2;
# text 2: 0.6 beats 0.4 -> 2; text 3: 0.9 beats 0.6 -> 2.


def test_hand_computed_4x4():
    m = retrieval_metrics(SIM_4x4)
    assert query_ranks(SIM_4x4).tolist() == [1, 3, 3, 1]
    assert query_ranks(SIM_4x4.T).tolist() == [1, 2, 2, 2]
    assert m["v2t_r1"] == 50.0 and m["v2t_r5"] == 100.0 and m["v2t_r10"] == 100.0
    assert m["v2t_medr"] == 2.0 and m["v2t_meanr"] == 2.0
    assert m["t2v_r1"] == 25.0 and m["t2v_r5"] == 100.0
    assert m["t2v_medr"] == 2.0 and m["t2v_meanr"] == 1.75
    assert m["num_queries"] == {"videos": 4, "texts": 4}


def test_ties_count_against_the_query():
    m = retrieval_metrics(np.ones((5, 5)))
    assert m["v2t_medr"] == 5.0 and m["v2t_r1"] == 0.0 and m["t2v_r5"] == 100.0


def test_identical_texts_as_hits_hand_computed():
    texts = ["es regnet", "sonne", "es regnet"]
    sim = np.array(
        [
            [0.5, 0.1, 0.7],  # video 0's top text is text 2, the same sentence as its own
            [0.2, 0.6, 0.3],
            [0.4, 0.0, 0.3],  # video 2: its own text 0.3 < text 0 (same sentence) 0.4
        ]
    )
    strict = retrieval_metrics(sim)
    assert query_ranks(sim).tolist() == [2, 1, 2]
    assert strict["v2t_r1"] == pytest.approx(100 / 3)
    positives = identical_text_positives(texts)
    assert positives.tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    lenient = retrieval_metrics(sim, positives)
    assert query_ranks(sim, positives).tolist() == [1, 1, 1]
    # text queries: text 0's videos 0 (0.5) and 2 (0.4) both count; text 2: 0.7 is video 0 -> 1
    assert query_ranks(sim.T, positives.T).tolist() == [1, 1, 1]
    assert lenient["v2t_r1"] == lenient["t2v_r1"] == 100.0


def naive_ranks(sim, positives):
    ranks = []
    for i in range(sim.shape[0]):
        best = max(sim[i, j] for j in range(sim.shape[1]) if positives[i][j])
        beaten_by = sum(1 for j in range(sim.shape[1]) if not positives[i][j] and sim[i, j] >= best)
        ranks.append(1 + beaten_by)
    return ranks


@pytest.mark.parametrize("duplicates", [False, True])
def test_matches_plain_loop_in_row_blocks(monkeypatch, duplicates):
    rng = np.random.default_rng(0)
    n = 23
    sim = np.round(rng.standard_normal((n, n)), 1)  # rounded: plenty of ties
    texts = [f"satz {i % 7 if duplicates else i}" for i in range(n)]
    positives = identical_text_positives(texts)
    monkeypatch.setattr(retrieval, "_BLOCK_ELEMENTS", 3 * n)  # 3 rows per block
    m = retrieval_metrics(sim, positives)
    v2t, t2v = naive_ranks(sim, positives), naive_ranks(sim.T, positives.T)
    for prefix, ranks in (("v2t", v2t), ("t2v", t2v)):
        ranks = np.array(ranks)
        for k in (1, 5, 10):
            assert m[f"{prefix}_r{k}"] == pytest.approx(100 * np.mean(ranks <= k))
        assert m[f"{prefix}_medr"] == np.median(ranks)
        assert m[f"{prefix}_meanr"] == pytest.approx(ranks.mean())


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="explicit positives"):
        retrieval_metrics(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="no positive"):
        retrieval_metrics(np.zeros((2, 2)), np.array([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="non-finite"):
        retrieval_metrics(np.array([[1.0, np.nan], [0.0, 1.0]]))


# ---------------------------------------------------------------- the protocol, from its definition
def plain_rank(score, query, texts, mode, candidates=None):
    """Rank of ``query``'s true item: ``score(query, j)`` for candidate j, written out.

    hit: every j with the query's sentence is correct; miss: only j == query; exclude: only
    j == query, and the other j with the query's sentence are not candidates. ``candidates``
    (fine-grained): only these j besides the query itself."""
    n = len(texts)
    pool = list(range(n)) if candidates is None else [query, *candidates]
    if mode == "exclude":
        pool = [j for j in pool if j == query or texts[j] != texts[query]]
    correct = [j for j in pool if j == query or (mode == "hit" and texts[j] == texts[query])]
    best = max(score(query, j) for j in correct)
    return 1 + sum(1 for j in pool if j not in correct and score(query, j) >= best)


def plain_tfidf_cosine(texts, language):
    """TF-IDF cosine from its definition: tf = count, idf = ln((1 + N) / (1 + df)) + 1, rows
    L2-normalised; terms are lower-cased words (de) or characters and character pairs without
    spaces and punctuation (zh)."""

    def terms(text):
        if language == "de":
            return re.findall(r"\w+", text.lower())
        chars = [c for c in text if not c.isspace() and not unicodedata.category(c).startswith("P")]
        return chars + [chars[k] + chars[k + 1] for k in range(len(chars) - 1)]

    counts = [Counter(terms(t)) for t in texts]
    n = len(texts)
    df = Counter(term for c in counts for term in c)
    vectors = []
    for c in counts:
        w = {t: c[t] * (math.log((1 + n) / (1 + df[t])) + 1) for t in c}
        norm = math.sqrt(sum(x * x for x in w.values()))
        vectors.append({t: x / norm for t, x in w.items()} if norm else w)
    return [[sum(a[t] * b.get(t, 0.0) for t in a) for b in vectors] for a in vectors]


def plain_fine_candidates(texts, language, k):
    """The k samples with a different sentence and the highest TF-IDF cosine (lower index on
    a tie), k shrunk to what every query has."""
    cos = plain_tfidf_cosine(texts, language)
    k = min([k] + [sum(1 for u in texts if u != t) for t in texts])
    out = []
    for i, t in enumerate(texts):
        others = [j for j in range(len(texts)) if texts[j] != t]
        out.append(sorted(others, key=lambda j: (-round(cos[i][j], 9), j))[:k])
    return out, k


def plain_protocol(sim, texts, mode, k, language="de"):
    n = len(texts)
    v2t = lambda i, j: sim[i][j]  # noqa: E731  video i -> text j
    t2v = lambda i, j: sim[j][i]  # noqa: E731  text i -> video j
    out = {}
    candidates, k_used = plain_fine_candidates(texts, language, k)
    for side, score in (("v2t", v2t), ("t2v", t2v)):
        coarse = np.array([plain_rank(score, i, texts, mode) for i in range(n)])
        for r in (1, 5, 10):
            out[f"{side}_r{r}"] = 100 * np.mean(coarse <= r)
        out[f"{side}_medr"], out[f"{side}_meanr"] = np.median(coarse), coarse.mean()
        fine = np.array([plain_rank(score, i, texts, mode, candidates[i]) for i in range(n)])
        for r in (1, 5):
            if r <= k_used:
                out[f"fine_{side}_r{r}"] = 100 * np.mean(fine <= r)
        out[f"fine_{side}_medr"] = np.median(fine)
    return out, candidates, k_used


WEATHER = [
    "morgen regnet es im norden",
    "morgen regnet es im süden",
    "heute scheint die sonne im norden",
    "morgen regnet es im norden",  # duplicate of 0
    "am abend frost im osten",
    "heute scheint die sonne im süden",
    "morgen schneit es im norden",
    "am abend frost im osten",  # duplicate of 4
    "der wind weht kräftig",
    "morgen regnet es im norden",  # duplicate of 0 and 3
    "heute nacht frost",
    "der wind weht schwach im süden",
]


@pytest.mark.parametrize("mode", ["hit", "miss", "exclude"])
@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_protocol_matches_plain_loops(monkeypatch, mode, k):
    rng = np.random.default_rng(7)
    texts = WEATHER
    n = len(texts)
    sim = np.round(rng.standard_normal((n, n)), 1)  # rounded: plenty of ties
    monkeypatch.setattr(retrieval, "_BLOCK_ELEMENTS", 3 * n)  # 3 rows per block
    got = protocol_metrics(sim, texts, RetrievalConfig(duplicates=mode, fine_k=k), "de")
    want, candidates, k_used = plain_protocol(sim.tolist(), texts, mode, k)
    assert set(got) - {"retrieval_protocol"} == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    chosen, stats = retrieval.fine_candidates(texts, "de", k)
    assert chosen.tolist() == candidates and stats["fine_k_used"] == k_used == min(k, 9)
    protocol = got["retrieval_protocol"]
    assert protocol["duplicates"] == mode and protocol["fine_k"] == k
    assert protocol["fine_k_used"] == k_used and protocol["language"] == "de"
    assert protocol["duplicate_queries"] == 5  # samples 0, 3, 9 and 4, 7


def test_fine_candidates_match_plain_tfidf_in_chinese():
    texts = [
        "今天天气很好。",
        "今天天气不好",
        "明天下雨",
        "明天下大雨！",
        "我们去学校",
        "今天天气很好。",
    ]
    chosen, stats = retrieval.fine_candidates(texts, "zh", 2)
    want, k_used = plain_fine_candidates(texts, "zh", 2)
    assert chosen.tolist() == want and k_used == 2
    assert chosen[0].tolist()[0] == 1  # "today's weather is (not) good" is the closest
    cos = plain_tfidf_cosine(texts, "zh")
    mean = np.mean([cos[i][j] for i, row in enumerate(want) for j in row])
    assert stats["fine_candidate_tfidf_mean"] == pytest.approx(mean)


def test_duplicate_modes_hand_computed():
    """Samples 0 and 2 share a sentence; the modes differ on exactly these queries."""
    texts = ["es regnet", "sonne", "es regnet", "wind"]
    sim = np.array(
        [
            [0.5, 0.1, 0.5, 0.0],  # video 0: own text 0.5 ties with text 2 (same sentence)
            [0.2, 0.6, 0.2, 0.1],
            [0.4, 0.0, 0.3, 0.1],  # video 2: own text 0.3 < text 0 (same sentence) 0.4
            [0.1, 0.2, 0.0, 0.3],
        ]
    )
    ranks = {}
    for mode in ("hit", "miss", "exclude"):
        codes = retrieval.sentence_codes(texts)
        ranks[mode] = (
            retrieval.coarse_ranks(sim, codes, mode).tolist(),
            retrieval.coarse_ranks(sim.T, codes, mode).tolist(),
        )
    # hit: video 2's best correct text is text 0 (0.4): top. Text 2's videos 0 (0.5) and 2: top.
    assert ranks["hit"] == ([1, 1, 1, 1], [1, 1, 1, 1])
    # miss: video 0 ties with text 2 (counts against) -> 2; video 2 loses to text 0 -> 2;
    # text 0: video 0 (0.5) top -> 1; text 2: video 0 (0.5) beats video 2 (0.3) -> 2.
    assert ranks["miss"] == ([2, 1, 2, 1], [1, 1, 2, 1])
    # exclude: the same-sentence candidates are gone, nothing else beats the true pair.
    assert ranks["exclude"] == ([1, 1, 1, 1], [1, 1, 1, 1])
    # exclude as explicit masks gives the same
    same = identical_text_positives(texts)
    excluded = same & ~np.eye(4, dtype=bool)
    assert query_ranks(sim, None, excluded).tolist() == ranks["exclude"][0]
    assert query_ranks(sim.T, None, excluded.T).tolist() == ranks["exclude"][1]
    assert retrieval_metrics(sim, None, excluded)["v2t_r1"] == 100.0


def test_fine_grained_hand_computed():
    """Video 0's two closest different sentences are 1 and 2; only text 1 beats its own."""
    texts = ["morgen regnet es", "morgen regnet es nicht", "morgen schneit es", "der wind weht"]
    sim = np.array(
        [
            [0.5, 0.6, 0.1, 0.9],  # text 3 (not a fine candidate) scores highest: coarse rank 3
            [0.0, 0.5, 0.0, 0.0],
            [0.0, 0.0, 0.5, 0.0],
            [0.0, 0.0, 0.0, 0.5],
        ]
    )
    chosen, _ = retrieval.fine_candidates(texts, "de", 2)
    assert sorted(chosen[0].tolist()) == [1, 2]
    got = protocol_metrics(sim, texts, RetrievalConfig(fine_k=2), "de")
    assert retrieval.fine_ranks(sim, chosen)[0] == 2
    assert got["fine_v2t_r1"] == 75.0 and got["v2t_r1"] == 75.0
    assert "fine_v2t_r5" not in got  # fine_k_used 2 < 5


def test_fine_k_shrinks_and_a_single_sentence_has_no_fine_figures():
    texts = ["a b", "a b", "a b", "c d"]  # query 0..2 have one different sentence
    got = protocol_metrics(np.eye(4), texts, RetrievalConfig(fine_k=10), "de")
    assert got["retrieval_protocol"]["fine_k_used"] == 1 and got["fine_v2t_r1"] == 100.0
    got = protocol_metrics(np.eye(3), ["a", "a", "a"], RetrievalConfig(), "de")
    assert got["retrieval_protocol"]["fine_k_used"] == 0
    assert not any(key.startswith("fine_v2t") for key in got)
    with pytest.raises(ValueError, match="for 3 sentences"):
        protocol_metrics(np.eye(4), ["a", "b", "c"], RetrievalConfig(), "de")
    with pytest.raises(ValueError, match="unknown language"):
        protocol_metrics(np.eye(2), ["a", "b"], RetrievalConfig(), "fr")


def test_from_features_equals_direct_similarity():
    torch.manual_seed(0)
    d = 8
    v_len, t_len = [3, 1, 4, 2, 3, 2], [2, 3, 1, 2, 4, 2]
    video = [torch.nn.functional.normalize(torch.randn(t, d), dim=1) for t in v_len]
    text = [torch.nn.functional.normalize(torch.randn(t, d), dim=1) for t in t_len]
    texts = ["a x", "b y", "c x", "d y", "b y", "e z"]  # samples 1 and 4 share a sentence
    v_set = TokenSet(torch.cat(video), np.array(v_len))
    t_set = TokenSet(torch.cat(text), np.array([len(t) for t in text]))
    v, vm = v_set.padded()
    t, tm = t_set.padded()
    sim = pairwise_similarity(v, vm, t, tm, "cico", 0.07).numpy()
    for mode in ("hit", "miss", "exclude"):
        protocol = RetrievalConfig(duplicates=mode, fine_k=3)
        got = retrieval.retrieval_from_features(v_set, t_set, "cico", 0.07, texts, protocol, "de")
        assert got == protocol_metrics(sim, texts, protocol, "de")
    with pytest.raises(ValueError, match="5 sentences for 6 samples"):
        retrieval.retrieval_from_features(v_set, t_set, "cico", 0.07, texts[:5], protocol, "de")


def test_training_config_carries_the_protocol():
    """One place for training runs: ``retrieval.*``, checked before any work; changing it does
    not block a resume (each dev record names its own protocol)."""
    from scl_slt.config import ConfigError, compose_config
    from scl_slt.config_checks import validate_train
    from scl_slt.training.resume import resume_config_differences

    cfg = validate_train(compose_config("train", ["retrieval.duplicates=miss"]))
    assert cfg.retrieval.duplicates.value == "miss" and cfg.retrieval.fine_k == 10
    assert validate_train(compose_config("train")).retrieval.duplicates.value == "exclude"
    with pytest.raises(ConfigError, match="retrieval.fine_k"):
        validate_train(compose_config("train", ["retrieval.fine_k=0"]))
    saved, current = {"retrieval": {"duplicates": "hit"}}, {"retrieval": {"duplicates": "miss"}}
    assert resume_config_differences(saved, current) == []
