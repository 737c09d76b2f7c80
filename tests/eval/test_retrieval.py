"""Retrieval metrics against rankings worked out by hand, and against a plain loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scl_slt.eval import retrieval
from scl_slt.eval.retrieval import identical_text_positives, query_ranks, retrieval_metrics
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


def test_from_features_equals_direct_similarity():
    torch.manual_seed(0)
    d = 8
    v_len, t_len = [3, 1, 4, 2, 3, 2], [2, 3, 1, 2, 4, 2]
    video = [torch.nn.functional.normalize(torch.randn(t, d), dim=1) for t in v_len]
    text = [torch.nn.functional.normalize(torch.randn(t, d), dim=1) for t in t_len]
    texts = [  # samples 1 and 4 share a sentence (features differ: no exact ties to break)
        "a",
        "b",
        "c",
        "d",
        "b",
        "e",
    ]
    v_set = TokenSet(torch.cat(video), np.array(v_len))
    t_set = TokenSet(torch.cat(text), np.array([len(t) for t in text]))
    got = retrieval.retrieval_from_features(v_set, t_set, "cico", 0.07, texts=texts)
    v, vm = v_set.padded()
    t, tm = t_set.padded()
    sim = pairwise_similarity(v, vm, t, tm, "cico", 0.07).numpy()
    assert got == retrieval_metrics(sim, identical_text_positives(texts))
    strict = retrieval.retrieval_from_features(v_set, t_set, "cico", 0.07)
    assert strict == retrieval_metrics(sim)
