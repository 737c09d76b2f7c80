"""Trajectory delta, H/L categories and enrichment against hand-built trajectories."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scl_slt.selection.trajectory import (
    CATEGORIES,
    categorize,
    category_enrichment,
    category_mean_delta,
    confusable_pairs,
    duplicate_target_pairs,
    trajectory_delta,
)
from scl_slt.selection.trajectory_report import write_report

# Twelve negative pairs of four samples, with the similarity at the first and last snapshot.
# Last-snapshot negatives are 0.05 .. 0.60, so their median (the default threshold) is 0.325.
# The category of each pair under that threshold is written out by hand in the last column.
HAND_PAIRS = [
    # (i, j, S^0, S^K, category with last_median)
    (0, 1, 0.90, 0.05, "H->L"),
    (0, 2, 0.80, 0.10, "H->L"),
    (0, 3, 0.70, 0.15, "H->L"),
    (1, 0, 0.10, 0.20, "L->L"),
    (1, 2, 0.50, 0.25, "H->L"),
    (1, 3, 0.20, 0.30, "L->L"),
    (2, 0, 0.60, 0.35, "H->H"),
    (2, 1, 0.00, 0.40, "L->H"),
    (2, 3, 0.40, 0.45, "H->H"),
    (3, 0, 0.15, 0.50, "L->H"),
    (3, 1, 0.30, 0.55, "L->H"),
    (3, 2, 0.95, 0.60, "H->H"),
]
# per_snapshot: S^0's own negative median is (0.40 + 0.50) / 2 = 0.45, so pair (2, 3) (0.40) is L
# at the start and becomes L->H; the other pairs keep their category.
EXPECTED_SHARES_LAST_MEDIAN = {"H->L": 4 / 12, "H->H": 3 / 12, "L->H": 3 / 12, "L->L": 2 / 12}
EXPECTED_SHARES_PER_SNAPSHOT = {"H->L": 4 / 12, "H->H": 2 / 12, "L->H": 4 / 12, "L->L": 2 / 12}


def hand_matrices():
    s0 = np.full((4, 4), 2.0)  # positives far above every negative: must not move the median
    sk = np.full((4, 4), 2.0)
    for i, j, a, b, _ in HAND_PAIRS:
        s0[i, j], sk[i, j] = a, b
    return s0, sk


def test_categories_last_median_by_hand():
    s0, sk = hand_matrices()
    cats = categorize(s0, sk, "last_median")
    assert cats.thresholds == pytest.approx((0.325, 0.325))
    for i, j, _, _, expected in HAND_PAIRS:
        assert CATEGORIES[cats.codes[i, j]] == expected, (i, j)
    assert (np.diag(cats.codes) == -1).all()
    assert cats.num_negatives == 12
    assert cats.shares == pytest.approx(EXPECTED_SHARES_LAST_MEDIAN)


def test_categories_per_snapshot_by_hand():
    s0, sk = hand_matrices()
    cats = categorize(s0, sk, "per_snapshot")
    assert cats.thresholds == pytest.approx((0.45, 0.325))
    assert CATEGORIES[cats.codes[2, 3]] == "L->H"
    assert cats.shares == pytest.approx(EXPECTED_SHARES_PER_SNAPSHOT)


def test_categories_blockwise_equal_one_block_and_fp16_input():
    rng = np.random.default_rng(0)
    s0 = rng.normal(size=(37, 37)).astype(np.float16)
    sk = rng.normal(size=(37, 37)).astype(np.float16)
    whole = categorize(s0, sk, block_rows=1000)
    blocks = categorize(s0, sk, block_rows=5)
    np.testing.assert_array_equal(whole.codes, blocks.codes)
    # Naive reference: a plain loop over the pairs.
    neg = ~np.eye(37, dtype=bool)
    t = float(np.median(sk.astype(np.float32)[neg]))
    for i in range(37):
        for j in range(37):
            if i == j:
                continue
            h0, hk = float(s0[i, j]) > t, float(sk[i, j]) > t
            name = ("H" if h0 else "L") + "->" + ("H" if hk else "L")
            assert CATEGORIES[whole.codes[i, j]] == name


def test_delta_endpoints_is_last_minus_first():
    s0, sk = hand_matrices()
    middle = np.random.default_rng(1).normal(size=(4, 4))
    delta = trajectory_delta([s0, middle, sk], [0, 5, 10], "endpoints")
    for i, j, a, b, _ in HAND_PAIRS:
        assert delta[i, j] == pytest.approx(b - a, abs=1e-6)


def test_delta_slope_by_hand():
    # One pair, values 0.2, 0.5, 0.5, 0.9 at epochs 0, 5, 10, 15: mean epoch 7.5, centred epochs
    # -7.5, -2.5, 2.5, 7.5, sum of squares 125; slope = (-1.5 - 1.25 + 1.25 + 6.75) / 125 = 0.042.
    values = [0.2, 0.5, 0.5, 0.9]
    mats = [np.full((2, 2), v) for v in values]
    slope = trajectory_delta(mats, [0, 5, 10, 15], "slope")
    assert slope[0, 1] == pytest.approx(0.042, abs=1e-7)


@pytest.mark.parametrize("epochs", [[0, 1, 3, 7, 10], [0, 5, 10]])
def test_delta_slope_equals_polyfit_per_pair(epochs):
    rng = np.random.default_rng(2)
    n = 9
    mats = [rng.normal(size=(n, n)).astype(np.float16) for _ in epochs]
    # A lazy iterable: the function must not need to hold all K matrices.
    ours = trajectory_delta((m for m in mats), epochs, "slope", block_rows=4)
    stacked = np.stack([m.astype(np.float64) for m in mats])  # (K, N, N)
    for i in range(n):
        for j in range(n):
            expected = np.polyfit(np.asarray(epochs, float), stacked[:, i, j], 1)[0]
            assert ours[i, j] == pytest.approx(expected, abs=1e-5)


def test_delta_writes_into_fp16_memmap(tmp_path):
    rng = np.random.default_rng(3)
    mats = [rng.normal(size=(6, 6)).astype(np.float16) for _ in range(3)]
    out = np.lib.format.open_memmap(tmp_path / "d.npy", mode="w+", dtype=np.float16, shape=(6, 6))
    trajectory_delta(mats, [0, 2, 4], "endpoints", out=out, block_rows=4)
    out.flush()
    stored = np.load(tmp_path / "d.npy")
    expected = mats[2].astype(np.float32) - mats[0].astype(np.float32)
    np.testing.assert_allclose(stored.astype(np.float32), expected, atol=2e-3)


def test_delta_rejects_bad_inputs():
    m = np.zeros((3, 3))
    with pytest.raises(ValueError, match="at least two"):
        trajectory_delta([m], [0])
    with pytest.raises(ValueError, match="strictly increasing"):
        trajectory_delta([m, m], [5, 5])
    with pytest.raises(ValueError, match="2 similarity matrices for 3 epochs"):
        trajectory_delta([m, m], [0, 1, 2], "slope")
    with pytest.raises(ValueError, match="shape"):
        trajectory_delta([m, np.zeros((2, 2))], [0, 1])
    with pytest.raises(ValueError):
        trajectory_delta([m, m], [0, 1], "median")


def test_enrichment_by_hand():
    s0, sk = hand_matrices()
    cats = categorize(s0, sk)
    # (0, 1) H->L, (2, 0) H->H, (2, 1) L->H.
    result = category_enrichment(cats, {"set": [(0, 1), (2, 0), (2, 1)], "empty": []})
    entry = result["set"]
    assert entry["pairs"] == 3
    assert entry["shares"] == pytest.approx(
        {"H->L": 1 / 3, "H->H": 1 / 3, "L->H": 1 / 3, "L->L": 0}
    )
    # Ratios to all negatives (4/12, 3/12, 3/12, 2/12).
    assert entry["enrichment"] == pytest.approx(
        {"H->L": 1.0, "H->H": 4 / 3, "L->H": 4 / 3, "L->L": 0}
    )
    assert result["all_negatives"]["pairs"] == 12
    assert result["empty"] == {"pairs": 0, "shares": None, "enrichment": None}
    with pytest.raises(ValueError, match="positive pairs"):
        category_enrichment(cats, {"bad": [(1, 1)]})
    with pytest.raises(ValueError, match="indices"):
        category_enrichment(cats, {"bad": [(0, 4)]})


def test_mean_delta_per_category_by_hand():
    s0, sk = hand_matrices()
    cats = categorize(s0, sk)
    means = category_mean_delta(cats, trajectory_delta([s0, sk], [0, 1]), block_rows=3)
    # H->L pairs: -0.85, -0.70, -0.55, -0.25; L->L: 0.10, 0.10; H->H: -0.25, 0.05, -0.35;
    # L->H: 0.40, 0.35, 0.25.
    assert means["H->L"] == pytest.approx(-2.35 / 4)
    assert means["L->L"] == pytest.approx(0.10)
    assert means["H->H"] == pytest.approx(-0.55 / 3)
    assert means["L->H"] == pytest.approx(1.00 / 3)


def test_duplicate_target_pairs():
    pairs = duplicate_target_pairs(["a", "b", "a", "c", "a", "b"])
    expected = {(0, 2), (0, 4), (2, 0), (2, 4), (4, 0), (4, 2), (1, 5), (5, 1)}
    assert sorted(pairs) == sorted(expected)


def test_confusable_pairs():
    glosses = [["A", "B"], ["A", "C"], ["D", "B"], ["A", "B", "E"], ["A", "C"], ["C", "C"]]
    texts = ["t0", "t1", "t2", "t3", "t4", "t5"]
    # B and C are twins: 0 ~ 1 ~ 4 (A then B/C); 5 (C C) differs from 0 in the first gloss.
    pairs = confusable_pairs(glosses, texts, [("B", "C")])
    assert sorted(pairs) == sorted([(0, 1), (1, 0), (0, 4), (4, 0)])
    # Identical targets are duplicate-target pairs, not confusable ones.
    texts[4] = "t0"
    assert sorted(confusable_pairs(glosses, texts, [("B", "C")])) == [(0, 1), (1, 0)]


def test_write_report(tmp_path):
    s0, sk = hand_matrices()
    middle = (s0 + sk) / 2
    cats = categorize(s0, sk)
    delta = trajectory_delta([s0, middle, sk], [0, 5, 10])
    enrichment = category_enrichment(cats, {"set": [(0, 1), (2, 0)]})
    out = write_report(
        tmp_path, [s0, middle, sk], [0, 5, 10], cats, delta, enrichment, info={"delta": "endpoints"}
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shares"] == pytest.approx(EXPECTED_SHARES_LAST_MEDIAN)
    assert summary["delta"] == "endpoints" and summary["epochs"] == [0, 5, 10]
    assert summary["enrichment"]["set"]["pairs"] == 2
    for name, sample in summary["sample_trajectories"].items():
        assert sample["pairs"], name  # every category is populated in the hand set
        for (i, j), values in zip(sample["pairs"], sample["similarity"]):
            assert CATEGORIES[cats.codes[i, j]] == name
            assert values == pytest.approx([s0[i, j], middle[i, j], sk[i, j]])
    png = (out / "categories.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
