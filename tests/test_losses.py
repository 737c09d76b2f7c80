"""Losses against explicit per-row / per-pair references, forward and gradients."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from scl_slt.losses import contrastive_loss, signcl_loss, spoken_units, translation_loss
from scl_slt.models.similarity import pairwise_similarity

TAU = 0.07


def unit_tokens(lengths, max_len, dim, generator):
    x = F.normalize(torch.randn(len(lengths), max_len, dim, generator=generator), dim=-1).double()
    mask = torch.arange(max_len)[None, :] < torch.tensor(lengths)[:, None]
    return x * mask[..., None], mask


def reference_infonce(sim, scale, keys=None):
    """Row by row: -log softmax of the positive, duplicates (same key, other index) removed."""
    n = sim.shape[0]
    logits = scale * sim
    terms = []
    for direction in (logits, logits.T):
        for i in range(n):
            kept = [
                j for j in range(n) if j == i or keys is None or keys[j] != keys[i]
            ]  # the positive and every non-duplicate negative
            denom = sum(torch.exp(direction[i, j]) for j in kept)
            terms.append(-torch.log(torch.exp(direction[i, i]) / denom))
    return sum(terms) / (2 * n)


def leaf(x):
    return x.clone().requires_grad_(True)


@pytest.mark.parametrize("method", ["cico", "cls", "mean"])
@pytest.mark.parametrize("keys", [None, ["a b", "c", "a b", "d", "c"]])
def test_contrastive_matches_reference_forward_and_backward(method, keys):
    g = torch.Generator().manual_seed(0)
    if method == "cico":
        v0, vm = unit_tokens([3, 5, 2, 4, 1], 5, 8, g)
        t0, tm = unit_tokens([4, 2, 6, 3, 3], 6, 8, g)
    else:
        v0, vm = unit_tokens([1] * 5, 1, 8, g)
        t0, tm = unit_tokens([1] * 5, 1, 8, g)
    v, t, scale = leaf(v0), leaf(t0), leaf(torch.tensor(10.0, dtype=torch.float64))
    ours = contrastive_loss(v, vm, t, tm, scale, method, TAU, text_keys=keys)
    ours.backward()
    got = (v.grad.clone(), t.grad.clone(), scale.grad.clone())

    v, t, scale = leaf(v0), leaf(t0), leaf(torch.tensor(10.0, dtype=torch.float64))
    ref = reference_infonce(pairwise_similarity(v, vm, t, tm, method, TAU), scale, keys)
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(got, (v.grad, t.grad, scale.grad)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_duplicate_masking_changes_the_loss_and_accepts_token_ids():
    g = torch.Generator().manual_seed(1)
    v, vm = unit_tokens([3, 2, 4, 3], 4, 6, g)
    t, tm = unit_tokens([2, 3, 3, 1], 3, 6, g)
    ids = torch.tensor([[5, 6, 2], [7, 2, 0], [5, 6, 2], [8, 2, 0]])
    plain = contrastive_loss(v, vm, t, tm, 20.0, "cico", TAU)
    by_ids = contrastive_loss(v, vm, t, tm, 20.0, "cico", TAU, text_keys=ids)
    by_str = contrastive_loss(v, vm, t, tm, 20.0, "cico", TAU, text_keys=["x", "y", "x", "z"])
    unique = contrastive_loss(v, vm, t, tm, 20.0, "cico", TAU, text_keys=["p", "q", "r", "s"])
    torch.testing.assert_close(by_ids, by_str)
    torch.testing.assert_close(unique, plain)
    assert by_ids < plain  # removing a negative can only raise the positive's probability


def test_contrastive_perfect_alignment_is_near_zero_and_roles_are_symmetric():
    eye = torch.eye(4, dtype=torch.float64)[:, None, :]  # (4, 1, 4): orthogonal pooled vectors
    ones = torch.ones(4, 1, dtype=torch.bool)
    loss = contrastive_loss(eye, ones, eye, ones, 100.0, "mean", TAU)
    assert 0 <= loss < 4 * math.exp(-100)  # each row: log(1 + 3 e^-100)
    g = torch.Generator().manual_seed(4)
    v, vm = unit_tokens([3, 1, 4], 4, 5, g)
    t, tm = unit_tokens([2, 2, 3], 3, 5, g)
    forward = contrastive_loss(v, vm, t, tm, 14.0, "cico", TAU)
    swapped = contrastive_loss(t, tm, v, vm, 14.0, "cico", TAU)  # video and text roles swapped
    torch.testing.assert_close(forward, swapped)


def test_contrastive_rejects_mismatched_batches():
    v = torch.ones(3, 1, 4)
    m = torch.ones(3, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="3 videos but 2 texts"):
        contrastive_loss(v, m, v[:2], m[:2], 1.0, "mean", TAU)
    with pytest.raises(ValueError, match="2 text_keys for 3 samples"):
        contrastive_loss(v, m, v, m, 1.0, "mean", TAU, text_keys=["a", "b"])


def test_translation_loss_matches_explicit_label_smoothing():
    g = torch.Generator().manual_seed(2)
    logits0 = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 7, (3, 5), generator=g)
    mask = torch.arange(5)[None, :] < torch.tensor([5, 2, 3])[:, None]
    eps = 0.2
    logits = leaf(logits0)
    ours = translation_loss(logits, ids, mask, label_smoothing=eps)
    ours.backward()
    grad = logits.grad.clone()

    logits = leaf(logits0)
    terms = []
    for b in range(3):
        for pos in range(5):
            if not mask[b, pos]:
                continue
            logp = logits[b, pos] - torch.log(torch.exp(logits[b, pos]).sum())
            terms.append((1 - eps) * -logp[ids[b, pos]] + eps * -logp.mean())
    ref = sum(terms) / len(terms)
    ref.backward()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grad, logits.grad)
    assert (grad[~mask] == 0).all()

    # Padding positions, whatever their logits and ids, do not change the loss.
    noisy = logits0.clone()
    noisy[~mask] = 1e3
    ids_noisy = ids.masked_fill(~mask, 3)
    torch.testing.assert_close(translation_loss(noisy, ids_noisy, mask, eps), ours.detach())


def reference_signcl(features, lengths, video_frames, words, margin_min, ratio, m):
    """SignCL written from the paper (§4.1, A.2.1) on raw frame indices, with exact fractions.

    Feature step s of a clip of F video frames and T' steps starts at video frame s * F / T'.
    margin = max(margin_min, F / words * ratio) video frames, capped so that 2 x margin is at most
    the video span of T' - 2 steps; two steps are a negative pair when their frames are more than
    2 x margin apart, a positive pair when they are adjacent steps."""
    per_sample = []
    for b in range(features.shape[0]):
        n, frames = int(lengths[b]), int(video_frames[b])
        frame_of = [Fraction(s * frames, n) for s in range(n)]
        margin = max(Fraction(margin_min), Fraction(frames, int(words[b])) * Fraction(str(ratio)))
        margin = min(margin, Fraction(max(n - 2, 0) * frames, 2 * n))
        anchors = []
        for s in range(n):
            pulls = [
                torch.sqrt(((features[b, s] - features[b, p]) ** 2).sum())
                for p in range(n)
                if abs(s - p) == 1
            ]
            pushes = [
                torch.clamp(m - torch.sqrt(((features[b, s] - features[b, q]) ** 2).sum()), min=0)
                for q in range(n)
                if abs(frame_of[s] - frame_of[q]) > 2 * margin
            ]
            pull = sum(pulls) / len(pulls) if pulls else 0.0
            push = sum(pushes) / len(pushes) if pushes else 0.0
            anchors.append(pull + push)
        per_sample.append(sum(anchors) / n)
    return sum(per_sample) / len(per_sample)


def test_signcl_matches_paper_reference_on_video_frames_forward_and_backward():
    g = torch.Generator().manual_seed(3)
    features0 = 3 * torch.randn(4, 30, 5, generator=g, dtype=torch.float64)
    features0[1, 20:] = 1e4  # padding garbage
    lengths = torch.tensor([30, 20, 1, 7])  # feature steps
    video_frames = torch.tensor([120, 80, 3, 27])  # 4 frames a step, 27/7 for the last
    words = torch.tensor([2, 11, 1, 3])
    # margins (frames): max(10, 138)=138 capped to 56; max(10, 16.7); 10 capped to 0; 20.7 capped
    args = dict(margin_min=10.0, ratio=2.3, m=6.0)
    features = leaf(features0)
    ours = signcl_loss(features, lengths, video_frames, words, **args)
    ours.backward()
    grad = features.grad.clone()
    features = leaf(features0)
    ref = reference_signcl(features, lengths, video_frames, words, **args)
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, features.grad, rtol=1e-9, atol=1e-12)
    assert (grad[1, 20:] == 0).all()


def test_signcl_margin_is_in_video_frames_and_every_clip_of_three_steps_has_negatives():
    """All steps identical: no pull, each negative costs m, so the loss counts the anchors that
    have a negative. An 84-frame clip (21 steps) at the floor margin of 10 frames has negatives
    at more than 20 frames = 5 steps (the old reading, a floor of 10 *steps*, gave none)."""
    features = torch.zeros(2, 21, 4, dtype=torch.float64, requires_grad=True)
    loss = signcl_loss(
        features, torch.tensor([21, 3]), torch.tensor([84, 12]), torch.tensor([12, 1])
    )
    loss.backward()
    assert torch.isfinite(features.grad).all()
    n0 = sum(1 for s in range(21) if any(abs(s - q) > 5 for q in range(21)))
    n1 = 2  # 3 steps: the cap leaves only the first-last pair
    torch.testing.assert_close(loss, torch.tensor((64 * n0 / 21 + 64 * n1 / 3) / 2).double())


def test_spoken_units_count_words_or_characters():
    assert spoken_units("und nun die wettervorhersage für morgen", "de") == 6
    assert spoken_units("am tag - sonne .", "de") == 3
    assert spoken_units("你们好！", "zh") == 3
    assert spoken_units("", "de") == 1


def test_signcl_rejects_bad_lengths():
    with pytest.raises(ValueError, match=">= 1 feature step"):
        signcl_loss(
            torch.zeros(2, 5, 3), torch.tensor([5, 0]), torch.tensor([20, 20]), torch.tensor([1, 1])
        )
    with pytest.raises(ValueError, match="fewer video frames"):
        signcl_loss(
            torch.zeros(2, 5, 3), torch.tensor([5, 5]), torch.tensor([20, 4]), torch.tensor([1, 1])
        )
