"""Pair Selection curriculum (method §5): schedules, picks against a plain reference, the effect
of α on batch scores, coverage, determinism, and the pair-score file checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scl_slt.config import ConfigError, Schedule
from scl_slt.selection.curriculum import (
    CurriculumBatchSampler,
    batch_score,
    build_curriculum_batches,
    load_pair_scores,
    quantile_position,
    schedule_alpha,
)


def planted_scores(n: int, seed: int = 0, cluster: int = 8) -> np.ndarray:
    """Planted clusters of ``cluster`` samples: δ ≈ +1 within a cluster (pairs the reference
    model pulled together: hard), ≈ −1 across clusters (pushed apart: easy), plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(n) // cluster
    same = labels[:, None] == labels[None, :]
    delta = np.where(same, 1.0, -1.0) + 0.5 * rng.standard_normal((n, n))
    return delta.astype(np.float16)


def tied_scores(n: int, seed: int = 1) -> np.ndarray:
    """Few distinct values, so many candidates tie and the index tie-break decides."""
    return np.random.default_rng(seed).integers(-1, 2, size=(n, n)).astype(np.float16)


def reference_batches(scores, batch_size, alpha, seed, epoch, pool_size=None):
    """Method §5 written plainly: Δ recomputed from the batch members for every candidate and
    every pick, candidates sorted by (Δ, index), the pick at floor(α · (n − 1))."""
    rng = np.random.default_rng([seed, epoch])
    unused = list(range(scores.shape[0]))
    batches = []
    while unused:
        batch = [unused.pop(int(rng.integers(len(unused))))]
        while len(batch) < batch_size and unused:
            if pool_size is not None and len(unused) > pool_size:
                positions = sorted(rng.choice(len(unused), pool_size, replace=False).tolist())
            else:
                positions = list(range(len(unused)))
            ranked = []
            for position in positions:
                u = unused[position]
                delta = sum(float(scores[u, c]) + float(scores[c, u]) for c in batch)
                ranked.append((delta, u, position))
            ranked.sort()
            _, u, position = ranked[math.floor(alpha * (len(ranked) - 1))]
            batch.append(u)
            unused.pop(position)
        batches.append(batch)
    return batches


def fast_batches(scores, batch_size, alpha, seed, epoch, pool_size=None):
    rng = np.random.default_rng([seed, epoch])
    return build_curriculum_batches(scores, batch_size, alpha, rng, pool_size)


def mean_batch_score(scores, batches):
    return float(np.mean([batch_score(scores, b) for b in batches if len(b) > 1]))


# ----------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("progress", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_schedule_alpha_formulas(progress):
    assert schedule_alpha("linear", progress) == pytest.approx(progress)
    assert schedule_alpha(Schedule.sqrt, progress) == pytest.approx(math.sqrt(progress))
    expected_log = math.log(1 + 9 * progress) / math.log(10)
    assert schedule_alpha("log", progress) == pytest.approx(expected_log)
    assert schedule_alpha("easy_only", progress) == 0.0
    assert schedule_alpha("hard_only", progress) == 1.0


def test_schedule_alpha_rejects_bad_input():
    with pytest.raises(ConfigError, match="selection.schedule"):
        schedule_alpha("cubic", 0.5)
    with pytest.raises(ValueError, match="progress"):
        schedule_alpha("linear", 1.5)


def test_epoch_alpha_is_one_based_progress():
    sampler = CurriculumBatchSampler(planted_scores(20), 4, epochs=4, schedule="linear", seed=0)
    assert [sampler.alpha(e) for e in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    log_sampler = CurriculumBatchSampler(planted_scores(20), 4, epochs=80, schedule="log", seed=0)
    assert log_sampler.alpha(79) == 1.0
    with pytest.raises(ValueError, match="epoch 4"):
        sampler.global_batches(4)


# -------------------------------------------------------------------- picks vs reference
def test_quantile_position_matches_sorting():
    rng = np.random.default_rng(3)
    for _ in range(50):
        values = rng.integers(0, 4, size=int(rng.integers(1, 30))).astype(np.float64)
        alpha = float(rng.uniform())
        order = sorted(range(values.size), key=lambda i: (values[i], i))
        assert quantile_position(values, alpha) == order[math.floor(alpha * (values.size - 1))]
        assert quantile_position(values, 0.0) == order[0]
        assert quantile_position(values, 1.0) == order[-1]


@pytest.mark.parametrize("make_scores", [planted_scores, tied_scores])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_picks_equal_reference(make_scores, alpha):
    scores = make_scores(45)
    for batch_size in (4, 7):
        expected = reference_batches(scores, batch_size, alpha, seed=5, epoch=2)
        assert fast_batches(scores, batch_size, alpha, seed=5, epoch=2) == expected


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_pool_picks_equal_reference(alpha):
    scores = planted_scores(40)
    expected = reference_batches(scores, 6, alpha, seed=1, epoch=0, pool_size=9)
    assert fast_batches(scores, 6, alpha, seed=1, epoch=0, pool_size=9) == expected


def test_pool_covering_everything_equals_running_sums():
    # pool_size >= N never samples: the recomputed-Δ path must equal the running-sum path
    scores = tied_scores(37)
    full = fast_batches(scores, 5, 0.4, seed=2, epoch=3)
    assert fast_batches(scores, 5, 0.4, seed=2, epoch=3, pool_size=37) == full


# ------------------------------------------------------------------ coverage, determinism
@pytest.mark.parametrize("schedule", [s.value for s in Schedule])
@pytest.mark.parametrize("pool_size", [None, 6])
def test_every_sample_once_per_epoch(schedule, pool_size):
    n, batch_size = 53, 8
    sampler = CurriculumBatchSampler(
        planted_scores(n), batch_size, epochs=3, schedule=schedule, seed=0, pool_size=pool_size
    )
    for epoch in range(3):
        batches = sampler.global_batches(epoch)
        assert [len(b) for b in batches] == [8] * 6 + [5]
        assert sorted(i for b in batches for i in b) == list(range(n))


def test_deterministic_per_seed_and_epoch():
    scores = planted_scores(60)

    def batches(seed, epoch):
        sampler = CurriculumBatchSampler(scores, 8, epochs=4, schedule="sqrt", seed=seed)
        return sampler.global_batches(epoch)

    assert batches(3, 1) == batches(3, 1)
    assert batches(3, 1) != batches(3, 2)
    assert batches(3, 1) != batches(4, 1)


def test_global_batches_cached_per_epoch():
    sampler = CurriculumBatchSampler(planted_scores(30), 4, epochs=2, schedule="log", seed=0)
    assert sampler.global_batches(0) is sampler.global_batches(0)


# ----------------------------------------------------------------- α and batch difficulty
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_delta_rises_with_alpha(seed):
    scores = planted_scores(160, seed=seed)
    means = [
        mean_batch_score(scores, fast_batches(scores, 8, alpha, seed=seed, epoch=0))
        for alpha in (0.0, 0.25, 0.5, 0.75, 1.0)
    ]
    assert all(a < b for a, b in zip(means, means[1:])), means
    # hard-only batches recover the planted clusters: about +1 on each of the 56 pairs
    assert means[-1] > 40 and means[0] < -40


def test_easy_only_below_linear_late_below_hard_only():
    scores = planted_scores(160)

    def epoch_mean(schedule, epoch):
        sampler = CurriculumBatchSampler(scores, 8, epochs=5, schedule=schedule, seed=0)
        return mean_batch_score(scores, sampler.global_batches(epoch))

    easy, hard = epoch_mean("easy_only", 3), epoch_mean("hard_only", 3)
    linear_late = epoch_mean("linear", 3)  # alpha 0.8
    assert easy < linear_late < hard
    assert epoch_mean("linear", 0) < linear_late  # the curriculum gets harder


def test_batch_score_is_off_diagonal_sum():
    scores = planted_scores(12)
    batch = [3, 7, 0, 11]
    expected = sum(float(scores[i, j]) for i in batch for j in batch if i != j)
    assert batch_score(scores, batch) == pytest.approx(expected)


# ------------------------------------------------------------------- score file checks
def test_memory_mapped_file_gives_same_batches(tmp_path):
    scores = planted_scores(33)
    path = tmp_path / "pair_scores.npy"
    np.save(path, scores)
    mapped = load_pair_scores(path, num_samples=33)
    assert isinstance(mapped, np.memmap)
    a = CurriculumBatchSampler(mapped, 4, epochs=2, schedule="log", seed=0).global_batches(1)
    b = CurriculumBatchSampler(scores, 4, epochs=2, schedule="log", seed=0).global_batches(1)
    assert a == b


def test_load_pair_scores_errors(tmp_path):
    missing = tmp_path / "nope.npy"
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        load_pair_scores(missing, 10)
    with pytest.raises(ConfigError, match="selection.pair_scores"):
        load_pair_scores(None, 10)
    path = tmp_path / "scores.npy"
    np.save(path, planted_scores(10))
    with pytest.raises(ValueError, match=r"scores\.npy.*N=10.*12"):
        load_pair_scores(path, 12)
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(b"not an npy file")
    with pytest.raises(ValueError, match="corrupt.npy"):
        load_pair_scores(corrupt, 10)


def test_rejects_non_finite_and_non_square(tmp_path):
    scores = planted_scores(10)
    scores[6, 2] = np.nan
    path = tmp_path / "nan_scores.npy"
    np.save(path, scores)
    with pytest.raises(ValueError, match="nan_scores.npy.*row 6"):
        CurriculumBatchSampler(load_pair_scores(path), 4, epochs=1, schedule="log", seed=0)
    with pytest.raises(ValueError, match="N x N"):
        CurriculumBatchSampler(np.zeros((4, 5), np.float16), 2, 1, "log", seed=0)


def test_fortran_ordered_scores_give_same_batches():
    scores = tied_scores(31)
    expected = fast_batches(scores, 4, 0.6, seed=0, epoch=0)
    assert fast_batches(np.asfortranarray(scores), 4, 0.6, seed=0, epoch=0) == expected
    pooled = fast_batches(scores, 4, 0.6, seed=0, epoch=0, pool_size=5)
    assert fast_batches(np.asfortranarray(scores), 4, 0.6, seed=0, epoch=0, pool_size=5) == pooled
    with pytest.raises(ValueError, match="contiguous"):
        fast_batches(tied_scores(40)[::2, ::2], 4, 0.6, seed=0, epoch=0)
