"""Losses against explicit per-row / per-pair references, forward and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scl_slt.losses import contrastive_loss, signcl_loss, translation_loss
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


def reference_signcl(features, lengths, text_lengths, margin_min, ratio, m):
    per_sample = []
    for b in range(features.shape[0]):
        n = int(lengths[b])
        margin = max(margin_min, n / int(text_lengths[b]) * ratio)
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
                if abs(s - q) > 2 * margin
            ]
            pull = sum(pulls) / len(pulls) if pulls else 0.0
            push = sum(pushes) / len(pushes) if pushes else 0.0
            anchors.append(pull + push)
        per_sample.append(sum(anchors) / n)
    return sum(per_sample) / len(per_sample)


def test_signcl_matches_loop_reference_forward_and_backward():
    g = torch.Generator().manual_seed(3)
    features0 = 3 * torch.randn(3, 24, 5, generator=g, dtype=torch.float64)
    features0[1, 20:] = 1e4  # padding garbage
    lengths = torch.tensor([24, 20, 1])
    text_lengths = torch.tensor([2, 10, 1])  # margins: max(2, 27.6)=27.6, max(2, 4.6)=4.6, 2
    args = dict(margin_min=2.0, ratio=2.3, m=6.0)
    features = leaf(features0)
    ours = signcl_loss(features, lengths, text_lengths, **args)
    ours.backward()
    grad = features.grad.clone()
    features = leaf(features0)
    ref = reference_signcl(features, lengths, text_lengths, **args)
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, features.grad, rtol=1e-9, atol=1e-12)
    assert (grad[1, 20:] == 0).all()


def test_signcl_defaults_and_duplicate_frames_keep_finite_gradients():
    features = torch.zeros(2, 50, 4, dtype=torch.float64, requires_grad=True)
    loss = signcl_loss(features, torch.tensor([50, 30]), torch.tensor([5, 30]))
    # All frames identical: no pull, and each negative costs m = 64. Sample 0 has margin
    # max(10, 50/5*2.3=23) -> pairs more than 46 apart (anchors 0..3 and 47..49 have some);
    # sample 1 has margin 10 -> gap > 20.
    loss.backward()
    assert torch.isfinite(features.grad).all()
    n0 = sum(1 for s in range(50) if any(abs(s - q) > 46 for q in range(50)))
    n1 = sum(1 for s in range(30) if any(abs(s - q) > 20 for q in range(30)))
    torch.testing.assert_close(loss, torch.tensor((64 * n0 / 50 + 64 * n1 / 30) / 2).double())


def test_signcl_rejects_bad_lengths():
    with pytest.raises(ValueError, match=">= 1 frame"):
        signcl_loss(torch.zeros(2, 5, 3), torch.tensor([5, 0]), torch.tensor([1, 1]))
