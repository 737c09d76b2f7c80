"""score_all_pairs against the batch path and a plain per-pair loop.

Tolerances: the fp32 blocked path agrees with an fp64 reference within 1e-6 absolute (scores
lie in [-1, 1]; the shifted exp and fp32 accumulation cost a few ulps); bf16 within 1e-2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scl_slt.config import SimilarityConfig
from scl_slt.models.all_pairs import TokenSet, padded_products, score_all_pairs
from scl_slt.models.similarity import SimilarityHead, pairwise_similarity

TAU = 0.07
FP32_ATOL = 1e-6


def random_set(n, low, high, dim, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high + 1, (n,), generator=g).numpy()
    feats = F.normalize(torch.randn(int(lengths.sum()), dim, generator=g), dim=1) * scale
    return TokenSet(feats, lengths)


def naive_loop(video: TokenSet, text: TokenSet, tau: float) -> np.ndarray:
    """Method §2 pair by pair on the unpadded tokens, in fp64."""
    out = np.empty((len(video), len(text)))
    for i, (vo, vl) in enumerate(zip(video.offsets, video.lengths)):
        v = video.features[vo : vo + vl].double()
        for j, (to, tl) in enumerate(zip(text.offsets, text.lengths)):
            e = v @ text.features[to : to + tl].double().T  # (T, L)
            v2t = (torch.softmax(e / tau, dim=1) * e).sum(dim=1).mean()
            t2v = (torch.softmax(e / tau, dim=0) * e).sum(dim=0).mean()
            out[i, j] = float((v2t + t2v) / 2)
    return out


def batch_path(video: TokenSet, text: TokenSet, method="cico", tau=TAU) -> np.ndarray:
    v, vm = video.padded()
    t, tm = text.padded()
    return pairwise_similarity(v.double(), vm, t.double(), tm, method, tau).numpy()


@pytest.fixture(scope="module")
def sets():
    return random_set(13, 1, 17, 12, seed=0), random_set(11, 1, 9, 12, seed=1)


@pytest.fixture(scope="module")
def naive(sets):
    return naive_loop(*sets, TAU)


@pytest.mark.parametrize("block_elements", [1, 40, 300, 2**20])
def test_equals_batch_path_and_naive_loop(sets, naive, block_elements):
    video, text = sets
    got = score_all_pairs(video, text, "cico", TAU, block_elements=block_elements)
    assert got.shape == (13, 11) and got.dtype == np.float32
    np.testing.assert_allclose(got, batch_path(video, text), rtol=0, atol=FP32_ATOL)
    np.testing.assert_allclose(got, naive, rtol=0, atol=FP32_ATOL)


@pytest.mark.parametrize("workers", [1, 3])
def test_worker_threads_give_the_same_scores(sets, naive, workers):
    video, text = sets
    threads = torch.get_num_threads()
    got = score_all_pairs(video, text, "cico", TAU, block_elements=100, workers=workers)
    np.testing.assert_allclose(got, naive, rtol=0, atol=FP32_ATOL)
    assert torch.get_num_threads() == threads  # restored after the pool


def test_other_tau_and_self_scores_are_symmetric(sets):
    video, _ = sets
    got = score_all_pairs(video, video, "cico", 0.5, block_elements=200)
    np.testing.assert_allclose(got, batch_path(video, video, tau=0.5), rtol=0, atol=FP32_ATOL)
    np.testing.assert_allclose(got, got.T, rtol=0, atol=FP32_ATOL)


def test_fp16_snapshot_features(sets):
    video, text = sets
    video16 = TokenSet(video.features.half(), video.lengths)
    text16 = TokenSet(text.features.half(), text.lengths)
    got = score_all_pairs(video16, text16, "cico", TAU, block_elements=500)
    np.testing.assert_allclose(got, batch_path(video16, text16), rtol=0, atol=FP32_ATOL)


def test_bf16_products_stay_close(sets):
    video, text = sets
    got = score_all_pairs(video, text, "cico", TAU, dtype=torch.bfloat16, block_elements=500)
    np.testing.assert_allclose(got, batch_path(video, text), rtol=0, atol=1e-2)


def test_unnormalised_features_fall_back_to_the_batch_path(sets, caplog):
    video, text = sets
    big = TokenSet(video.features * 4, video.lengths)
    got = score_all_pairs(big, text, "cico", TAU, block_elements=2000)
    assert "too large for the shifted exp" in caplog.text
    np.testing.assert_allclose(got, batch_path(big, text), rtol=0, atol=FP32_ATOL)


def test_memmap_output_equals_in_memory(sets, tmp_path):
    video, text = sets
    in_memory = score_all_pairs(video, text, "cico", TAU, block_elements=300)
    path = tmp_path / "scores.npy"
    written = score_all_pairs(video, text, "cico", TAU, block_elements=300, out=path)
    assert isinstance(written, np.memmap)
    del written
    np.testing.assert_array_equal(np.load(path, mmap_mode="r"), in_memory)
    # An existing fp16 memory map (the pair_scores format) is filled in place.
    target = np.lib.format.open_memmap(
        tmp_path / "s16.npy", mode="w+", dtype=np.float16, shape=(13, 11)
    )
    score_all_pairs(video, text, "cico", TAU, out=target)
    np.testing.assert_array_equal(np.load(tmp_path / "s16.npy"), in_memory.astype(np.float16))


@pytest.mark.parametrize("method", ["cls", "mean"])
def test_pooled_methods_equal_batch_path(method):
    video = random_set(9, 1, 1, 6, seed=2)
    text = random_set(7, 1, 1, 6, seed=3)
    got = score_all_pairs(video, text, method, TAU, block_elements=20)
    np.testing.assert_allclose(got, batch_path(video, text, method), rtol=0, atol=FP32_ATOL)
    expected = video.features.double() @ text.features.double().T
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=FP32_ATOL)
    with pytest.raises(ValueError, match="one token per sample"):
        score_all_pairs(random_set(3, 1, 4, 6, seed=4), text, method, TAU)


def test_head_outputs_score_the_same_as_in_training():
    torch.manual_seed(0)
    head = SimilarityHead(SimilarityConfig(proj_dim=8), enc_dim=10)
    g = torch.Generator().manual_seed(5)
    video = torch.randn(6, 7, 10, generator=g)
    video_mask = torch.arange(7)[None] < torch.tensor([7, 3, 5, 1, 6, 2])[:, None]
    text = torch.randn(6, 5, 10, generator=g)
    text_mask = torch.arange(5)[None] < torch.tensor([5, 2, 4, 3, 1, 5])[:, None]
    with torch.no_grad():
        v, vm, t, tm = head(video, video_mask, text, text_mask)
        batch = pairwise_similarity(v, vm, t, tm, "cico", TAU).numpy()
    got = score_all_pairs(TokenSet.from_padded(v, vm), TokenSet.from_padded(t, tm), "cico", TAU)
    np.testing.assert_allclose(got, batch, rtol=0, atol=FP32_ATOL)


def test_token_set_round_trip_and_validation():
    tokens = torch.randn(3, 4, 5)
    mask = torch.arange(4)[None] < torch.tensor([4, 1, 2])[:, None]
    packed = TokenSet.from_padded(tokens, mask)
    assert packed.features.shape == (7, 5) and list(packed.lengths) == [4, 1, 2]
    padded, padded_mask = packed.padded()
    assert torch.equal(padded_mask, mask)
    assert torch.equal(padded[mask], tokens[mask]) and (padded[~mask] == 0).all()
    sub, sub_mask = packed.padded(np.array([2, 1]))
    assert torch.equal(sub[0, :2], tokens[2, :2]) and sub_mask.shape == (2, 2)
    with pytest.raises(ValueError, match="lengths sum to 6 but features have 7 rows"):
        TokenSet(packed.features, np.array([4, 1, 1]))
    with pytest.raises(ValueError, match="at least one token"):
        TokenSet(packed.features, np.array([7, 0]))
    with pytest.raises(ValueError, match="right-padded"):
        TokenSet.from_padded(tokens, mask.flip(1))
    with pytest.raises(ValueError, match="out must be a path or an array of shape"):
        score_all_pairs(packed, packed, "cico", TAU, out=np.zeros((2, 2), dtype=np.float32))


def test_padded_products_counts_bucketing_waste():
    lengths = np.array([3, 3, 3, 3])
    assert padded_products(lengths, lengths, 2**20) == 12 * 12
    mixed = np.array([1, 5, 2, 5])
    assert padded_products(mixed, mixed, 2**20) == (4 * 5) ** 2  # one block, padded to 5
    assert padded_products(mixed, mixed, 1) == 13 * 13  # one sample per block: no padding
