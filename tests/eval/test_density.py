"""Sign Density Ratio against a hand-worked case and a direct loop over instance pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scl_slt.config import SyntheticConfig
from scl_slt.data.synthetic import generate as synthetic
from scl_slt.eval import density
from scl_slt.eval.density import density_stats, gloss_instances, sign_density_ratio


def direct_sdr(points: list[np.ndarray], labels: list[int]) -> float:
    """SDR(G_i) = mean distinct-pair distance in G_i / mean_{j != i} mean cross distance."""

    def d(a, b):
        return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))

    glosses = sorted(set(labels))
    members = {g: [p for p, lab in zip(points, labels) if lab == g] for g in glosses}

    def between(g, h):
        pairs = [d(x, y) for x in members[g] for y in members[h]]
        return sum(pairs) / len(pairs)

    ratios = []
    for g in glosses:
        inst = members[g]
        if len(inst) < 2:
            continue
        intra = [d(x, y) for a, x in enumerate(inst) for b, y in enumerate(inst) if a != b]
        inter = [between(g, h) for h in glosses if h != g]
        ratios.append((sum(intra) / len(intra)) / (sum(inter) / len(inter)))
    return sum(ratios) / len(ratios)


def test_hand_worked_two_glosses():
    # Gloss 0 at (0, 0) and (0, 2); gloss 1 at (10, 0) and (10, 2). One frame per span.
    features = [np.array([[0, 0], [10, 0]]), np.array([[10, 2], [0, 2]])]
    alignments = [[[0, 0, 1], [1, 1, 2]], [[1, 0, 1], [0, 1, 2]]]
    inter = (10 + 10 + 2 * math.sqrt(104)) / 4
    assert sign_density_ratio(features, alignments) == pytest.approx(2 / inter)
    stats = density_stats(*gloss_instances(features, alignments))
    assert stats.intra.tolist() == pytest.approx([2.0, 2.0])
    assert stats.inter.tolist() == pytest.approx([inter, inter])


def tiny_labelled_set(seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((5, 3)) * 3
    features, alignments = [], []
    for _ in range(6):
        glosses = rng.integers(0, 5, size=rng.integers(2, 5))
        spans, rows, start = [], [], 0
        for g in glosses:
            frames = int(rng.integers(4, 9))
            spans.append([int(g), start, start + frames])
            rows.append(centres[g] + rng.standard_normal((frames, 3)))
            start += frames
        features.append(np.concatenate(rows))
        alignments.append(spans)
    return features, alignments


@pytest.mark.parametrize("instance", ["center", "mean"])
@pytest.mark.parametrize("stride", [1, 4])
def test_matches_direct_computation(instance, stride, monkeypatch):
    features, alignments = tiny_labelled_set()
    # Downsample like the sign embedding: row k summarises frames [k * stride, (k + 1) * stride).
    down = [
        np.stack([f[k : k + stride].mean(0) for k in range(0, len(f), stride)]) for f in features
    ]
    points, labels = [], []
    for f, spans in zip(down, alignments):
        for g, s, e in spans:
            if instance == "center":
                points.append(f[((s + e - 1) // 2) // stride])
            else:
                points.append(f[s // stride : math.ceil(e / stride)].mean(0))
            labels.append(g)
    expected = direct_sdr(points, labels)
    assert sign_density_ratio(down, alignments, stride, instance) == pytest.approx(expected)
    monkeypatch.setattr(density, "_BLOCK_ELEMENTS", 7)  # one instance row per block
    assert sign_density_ratio(down, alignments, stride, instance) == pytest.approx(expected)


def test_stride_maps_spans_to_feature_rows():
    feats = np.arange(8, dtype=float)[:, None].repeat(2, axis=1)  # row k holds the value k
    spans = [[3, 0, 8], [5, 8, 20], [3, 20, 32]]  # 32 original frames -> 8 rows at stride 4
    center, ids = gloss_instances([feats], [spans], stride=4, instance="center")
    assert center[:, 0].tolist() == [0.0, 3.0, 6.0]  # middle frames 3, 13, 25
    mean, _ = gloss_instances([feats], [spans], stride=4, instance="mean")
    assert mean[:, 0].tolist() == [0.5, 3.0, 6.0]  # rows [0, 2), [2, 5), [5, 8)
    assert ids.tolist() == [3, 5, 3]


def test_lengths_padding_and_torch_input():
    features, alignments = tiny_labelled_set(1)
    lengths = [len(f) for f in features]
    padded = torch.zeros(len(features), max(lengths), 3)
    for i, f in enumerate(features):
        padded[i, : len(f)] = torch.from_numpy(f)
    got = sign_density_ratio(list(padded), alignments, instance="mean", lengths=lengths)
    assert got == pytest.approx(sign_density_ratio(features, alignments, instance="mean"), rel=1e-5)


def test_single_instance_glosses_are_left_out_of_the_mean():
    features = [np.array([[0.0], [1.0], [5.0], [9.0]])]
    alignments = [[[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]]]  # glosses 1, 2 occur once
    stats = density_stats(*gloss_instances(features, alignments))
    assert np.isnan(stats.intra[1:]).all()
    # gloss 0: intra 1; inter = mean(D(0, 1), D(0, 2)) = mean(4.5, 8.5) = 6.5
    assert stats.sdr == pytest.approx(1 / 6.5)
    assert stats.as_dict()["glosses_scored"] == 1


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="clip 0 span .* feature row 3"):
        sign_density_ratio([np.zeros((2, 2))], [[[0, 12, 16]]], stride=4)
    with pytest.raises(ValueError, match="two distinct glosses"):
        sign_density_ratio([np.zeros((4, 2))], [[[0, 0, 2], [0, 2, 4]]])
    with pytest.raises(ValueError, match="instance"):
        sign_density_ratio([np.zeros((4, 2))], [[[0, 0, 2]]], instance="best")
    with pytest.raises(ValueError, match="2 clips but 1"):
        sign_density_ratio([np.zeros((4, 2))] * 2, [[[0, 0, 2]]])


def test_synthetic_alignments_give_lower_density_than_shuffled_labels():
    cfg = SyntheticConfig(num_train=40, num_dev=4, num_test=4, num_glosses=12, feature_dim=8)
    language = synthetic.build_language(cfg)
    records = list(synthetic.plan_dataset(cfg, language)["train"].values())
    styles = synthetic.signer_styles(cfg)
    rng = np.random.default_rng(0)
    features = [
        synthetic.render_features(r, language, styles[r["signer"]], cfg.noise, rng) for r in records
    ]
    alignments = [r["alignment"] for r in records]
    true_sdr = sign_density_ratio(features, alignments, instance="mean")
    shuffled_ids = rng.permutation([g for a in alignments for g, _, _ in a])
    it = iter(shuffled_ids.tolist())
    shuffled = [[[next(it), s, e] for _, s, e in a] for a in alignments]
    assert true_sdr < 0.9 * sign_density_ratio(features, shuffled, instance="mean")
