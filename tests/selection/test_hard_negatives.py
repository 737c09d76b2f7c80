"""SAN's hard-negative sampler (``selection/hard_negatives.py``) against plain implementations
written from the rule: neighbour lists against a brute-force argsort, whole epochs against a
one-negative-at-a-time greedy over every sample, and the guarantees (each sample once per epoch,
no mined pair with the same target, resume, rank shares)."""

from __future__ import annotations

import numpy as np
import pytest

from scl_slt.selection.hard_negatives import HardNegativeBatchSampler, neighbour_lists
from scl_slt.selection.pair_scores.text import pair_similarity, tfidf_vectors

NEAR = 0.8  # the near-identical TF-IDF threshold the sampler documents


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


WORDS = "regen sonne wind nord sued morgen heute warm kalt schnee nebel frost".split()


def sentences(n: int, distinct: int, seed: int, length: int = 4) -> list[str]:
    """n targets over ``distinct`` sentences (so many clips share one) of ``length`` of 12 words;
    at length 8 many different sentences are near-identical (TF-IDF cosine >= 0.8)."""
    rng = np.random.default_rng(seed)
    pool = [" ".join(rng.choice(WORDS, size=length, replace=False)) for _ in range(distinct)]
    return [pool[i] for i in rng.integers(0, distinct, size=n)]


def near_identical(texts: list[str]) -> np.ndarray:
    """(N, N) bool: TF-IDF cosine of the targets >= NEAR, from pair_similarity pair by pair."""
    tfidf = tfidf_vectors(texts, "de")
    n = len(texts)
    i, j = np.divmod(np.arange(n * n), n)
    return (pair_similarity(tfidf, i, j) >= NEAR).reshape(n, n)


def brute_neighbours(v, texts, m, excluded=None):
    """Each row: the other samples with a different target (and not excluded), by descending
    cosine, ties to the lower index, the first m, padded with -1."""
    n = len(texts)
    sims = v.astype(np.float64) @ v.astype(np.float64).T
    out = np.full((n, m), -1)
    for a in range(n):
        allowed = [j for j in range(n) if texts[j] != texts[a]]
        if excluded is not None:
            allowed = [j for j in allowed if not excluded[a, j]]
        ranked = sorted(allowed, key=lambda j: (-sims[a, j], j))[:m]
        out[a, : len(ranked)] = ranked
    return out


def greedy_epoch(v, texts, batch_size, seed, epoch, k, excluded=None):
    """The rule, one negative at a time over every sample: returns (batches, mined pairs)."""
    n = len(texts)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    used, batches, batch, pairs = set(), [], [], []
    for a in order.tolist():
        if a in used:
            continue
        used.add(a)
        batch.append(a)
        for _ in range(min(k, batch_size - len(batch))):
            best, best_sim = None, None
            for j in range(n):
                if j in used or any(texts[j] == texts[b] for b in batch):
                    continue  # used, or its target already in the batch (the anchor's included)
                if excluded is not None and excluded[a, j]:
                    continue
                sim = float(np.dot(v[a].astype(np.float64), v[j].astype(np.float64)))
                if best is None or sim > best_sim:  # strict: ties keep the lower index
                    best, best_sim = j, sim
            if best is None:
                break
            used.add(best)
            batch.append(best)
            pairs.append((a, best))
        if len(batch) == batch_size:
            batches.append(batch)
            batch = []
    if batch:
        batches.append(batch)
    return batches, pairs


# ------------------------------------------------------------------------- neighbour lists
@pytest.mark.parametrize("near", [False, True])
def test_neighbour_lists_are_the_brute_force_argsort(near):
    n, m = 37, 6
    v = unit_rows(n, 5, seed=1)
    v[20] = v[3]  # exact ties: the lower index first
    v[31] = v[3]
    texts = sentences(n, 9, seed=2, length=8 if near else 4)
    texts[20], texts[31] = "anders als alle", "noch ein satz"
    excluded = near_identical(texts) if near else None
    tfidf = tfidf_vectors(texts, "de") if near else None
    groups = np.unique(texts, return_inverse=True)[1]
    got = neighbour_lists(v, groups, m, tfidf)
    assert np.array_equal(got, brute_neighbours(v, texts, m, excluded))
    if near:  # the case excludes different sentences, not only equal ones
        assert any(excluded[a, j] and texts[a] != texts[j] for a in range(n) for j in range(n))


def test_neighbour_lists_pad_when_few_are_allowed():
    texts = ["a b", "a b", "c d", "e f"]
    v = unit_rows(4, 3, seed=0)
    groups = np.unique(texts, return_inverse=True)[1]
    got = neighbour_lists(v, groups, 5)
    assert np.array_equal(got, brute_neighbours(v, texts, 5))
    assert (got[0] == -1).sum() == 3  # only clips 2 and 3 may be its negatives


# ---------------------------------------------------------------------------------- epochs
@pytest.mark.parametrize(
    ("n", "batch_size", "k", "m", "distinct", "near"),
    [
        (40, 8, 3, 12, 12, False),
        (41, 8, 3, 3, 6, False),  # M = k: the exhaustive fall-back carries most anchors
        (30, 5, 2, 4, 4, False),  # few sentences: anchors run out of allowed negatives
        (36, 6, 3, 6, 10, True),  # near-identical targets excluded too
        (17, 16, 15, 15, 17, False),  # one anchor takes (almost) the whole batch
    ],
)
def test_epochs_are_the_greedy_rule(n, batch_size, k, m, distinct, near):
    v = unit_rows(n, 4, seed=n)
    texts = sentences(n, distinct, seed=k, length=8 if near else 4)
    excluded = near_identical(texts) if near else None
    tfidf = tfidf_vectors(texts, "de") if near else None
    sampler = HardNegativeBatchSampler(v, texts, batch_size, 7, k, m, tfidf=tfidf)
    for epoch in (0, 1, 5):
        expected, pairs = greedy_epoch(v, texts, batch_size, 7, epoch, k, excluded)
        got = sampler.global_batches(epoch)
        assert got == expected
        flat = [i for b in got for i in b]
        assert sorted(flat) == list(range(n))  # every sample exactly once
        assert pairs and all(texts[a] != texts[j] for a, j in pairs)
        if near:
            assert not any(excluded[a, j] for a, j in pairs)
            assert any(excluded[a, j] and texts[a] != texts[j] for a in range(n) for j in range(n))
    assert sampler.global_batches(0) != sampler.global_batches(1)


def test_mined_negatives_are_the_hardest_allowed():
    """Each anchor (first in its group of k + 1) is followed by its k most similar clips with
    other targets, while nothing is used yet (the first batch of the epoch)."""
    n, k = 50, 3
    v = unit_rows(n, 6, seed=3)
    texts = sentences(n, 15, seed=4)
    sampler = HardNegativeBatchSampler(v, texts, 4, 0, k, 8)
    first = sampler.global_batches(2)[0]
    anchor = first[0]
    sims = v @ v[anchor]
    allowed = [j for j in range(n) if texts[j] != texts[anchor]]
    hardest, seen = [], {texts[anchor]}
    for j in sorted(allowed, key=lambda j: (-sims[j], j)):
        if texts[j] not in seen:
            hardest.append(j)
            seen.add(texts[j])
    assert first[1:] == hardest[:k]
    # and they are harder than a random clip's similarity on average
    assert sims[first[1:]].mean() > np.delete(sims, anchor).mean()


# --------------------------------------------------------------------- resume, ranks, input
def test_resume_and_rank_shares_give_the_same_batches():
    n = 45
    v, texts = unit_rows(n, 4, seed=9), sentences(n, 12, seed=9)
    sampler = HardNegativeBatchSampler(v, texts, 8, 3, 3, 6)
    sampler.set_epoch(2, start_batch=3)
    state = sampler.state_dict()
    resumed = HardNegativeBatchSampler(v, texts, 8, 3, 3, 6)
    resumed.load_state_dict(state)
    assert list(resumed) == sampler.global_batches(2)[3:]
    ranks = [HardNegativeBatchSampler(v, texts, 8, 3, 3, 6, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(2)
    assert [a + b for a, b in zip(*ranks)] == sampler.global_batches(2)
    for other in (
        HardNegativeBatchSampler(v, texts, 8, 3, 2, 6),  # another k
        HardNegativeBatchSampler(v[::-1].copy(), texts, 8, 3, 3, 6),  # other embeddings
        HardNegativeBatchSampler(v, texts, 8, 3, 3, 6, tfidf=tfidf_vectors(texts, "de")),
    ):
        with pytest.raises(ValueError, match="sampler state"):
            other.load_state_dict(state)


def test_bad_input_is_named():
    v, texts = unit_rows(6, 3, 0), sentences(6, 3, 0)
    with pytest.raises(ValueError, match="k <= candidates"):
        HardNegativeBatchSampler(v, texts, 4, 0, k=4, candidates=2)
    with pytest.raises(ValueError, match="one target per row"):
        HardNegativeBatchSampler(v, texts[:5], 4, 0)
    bad = v.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        HardNegativeBatchSampler(bad, texts, 4, 0)
