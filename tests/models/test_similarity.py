"""SimilarityHead and pairwise_similarity against plain per-pair references (forward and grad)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scl_slt.config import SimilarityConfig
from scl_slt.models.similarity import SimilarityHead, pairwise_similarity

TAU = 0.07


def reference_cico(v, v_len, t, t_len, tau):
    """Method §2 written out pair by pair and token by token on the valid tokens only."""
    rows = []
    for a in range(len(v_len)):
        row = []
        for b in range(len(t_len)):
            frames = v[a, : v_len[a]]
            tokens = t[b, : t_len[b]]
            v2t_terms = []
            for i in range(v_len[a]):
                e = torch.stack([frames[i] @ tokens[j] for j in range(t_len[b])])
                weights = torch.exp(e / tau) / torch.exp(e / tau).sum()
                v2t_terms.append((weights * e).sum())
            t2v_terms = []
            for j in range(t_len[b]):
                e = torch.stack([frames[i] @ tokens[j] for i in range(v_len[a])])
                weights = torch.exp(e / tau) / torch.exp(e / tau).sum()
                t2v_terms.append((weights * e).sum())
            s_v2t = sum(v2t_terms) / len(v2t_terms)
            s_t2v = sum(t2v_terms) / len(t2v_terms)
            row.append((s_v2t + s_t2v) / 2)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def padded_unit_tokens(lengths, max_len, dim, generator, garbage=0.0):
    """Random unit vectors at valid positions, `garbage` everywhere else."""
    x = F.normalize(torch.randn(len(lengths), max_len, dim, generator=generator), dim=-1)
    mask = torch.arange(max_len)[None, :] < torch.tensor(lengths)[:, None]
    x = torch.where(mask[..., None], x, torch.full_like(x, garbage))
    return x.double(), mask


def test_cico_matches_reference_forward_and_backward():
    g = torch.Generator().manual_seed(0)
    v_len, t_len = [3, 5, 1], [4, 2, 6, 1]
    v, vm = padded_unit_tokens(v_len, 5, 8, g)
    t, tm = padded_unit_tokens(t_len, 6, 8, g)
    v.requires_grad_(True)
    t.requires_grad_(True)
    weights = torch.randn(3, 4, generator=g, dtype=torch.float64)

    ours = pairwise_similarity(v, vm, t, tm, "cico", TAU)
    (ours * weights).sum().backward()
    grad_v, grad_t = v.grad.clone(), t.grad.clone()
    v.grad, t.grad = None, None

    ref = reference_cico(v, v_len, t, t_len, TAU)
    (ref * weights).sum().backward()
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_v, v.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad_t, t.grad, rtol=1e-9, atol=1e-12)
    # Padding positions receive no gradient.
    assert grad_v[~vm].abs().max() == 0 and grad_t[~tm].abs().max() == 0


@pytest.mark.parametrize("garbage", [3.0, math.nan, math.inf])
def test_cico_padding_never_changes_a_score(garbage):
    g = torch.Generator().manual_seed(1)
    v_len, t_len = [2, 4, 3], [5, 1, 3]
    v, vm = padded_unit_tokens(v_len, 4, 6, g)
    t, tm = padded_unit_tokens(t_len, 5, 6, g)
    base = pairwise_similarity(v, vm, t, tm, "cico", TAU)
    # Longer padding filled with garbage: same scores.
    v_pad = torch.cat([v, torch.full((3, 3, 6), garbage, dtype=v.dtype)], dim=1)
    vm_pad = torch.cat([vm, torch.zeros(3, 3, dtype=torch.bool)], dim=1)
    t_pad = torch.cat([t, torch.full((3, 2, 6), garbage, dtype=t.dtype)], dim=1)
    tm_pad = torch.cat([tm, torch.zeros(3, 2, dtype=torch.bool)], dim=1)
    t_pad[~tm_pad] = garbage
    v_pad[~vm_pad] = garbage
    padded = pairwise_similarity(v_pad, vm_pad, t_pad, tm_pad, "cico", TAU)
    torch.testing.assert_close(padded, base, rtol=1e-12, atol=1e-12)


def test_cico_is_symmetric_in_its_two_sides():
    g = torch.Generator().manual_seed(2)
    v, vm = padded_unit_tokens([3, 2, 4], 4, 5, g)
    t, tm = padded_unit_tokens([1, 4], 4, 5, g)
    forward = pairwise_similarity(v, vm, t, tm, "cico", TAU)
    swapped = pairwise_similarity(t, tm, v, vm, "cico", TAU)
    torch.testing.assert_close(swapped, forward.T)
    # A sample scored against itself: both directions agree, so the diagonal is symmetric too.
    self_scores = pairwise_similarity(v, vm, v, vm, "cico", TAU)
    torch.testing.assert_close(self_scores, self_scores.T)


def test_cico_small_tau_tends_to_max_and_large_tau_to_mean():
    g = torch.Generator().manual_seed(3)
    v, vm = padded_unit_tokens([3], 3, 4, g)
    t, tm = padded_unit_tokens([2], 2, 4, g)
    e = v[0] @ t[0].T  # (3, 2)
    hard = (e.max(dim=1).values.mean() + e.max(dim=0).values.mean()) / 2
    torch.testing.assert_close(pairwise_similarity(v, vm, t, tm, "cico", 1e-4)[0, 0], hard)
    torch.testing.assert_close(pairwise_similarity(v, vm, t, tm, "cico", 1e9)[0, 0], e.mean())


def make_head(method, proj_dim=6, enc_dim=10, seed=0):
    torch.manual_seed(seed)
    return SimilarityHead(SimilarityConfig(method=method, proj_dim=proj_dim), enc_dim).double()


def encoder_batch(lengths, max_len, dim, generator):
    x = torch.randn(len(lengths), max_len, dim, generator=generator, dtype=torch.float64)
    mask = torch.arange(max_len)[None, :] < torch.tensor(lengths)[:, None]
    return x, mask


@pytest.mark.parametrize("method", ["cico", "cls", "mean"])
def test_head_matches_reference_forward_and_backward(method):
    g = torch.Generator().manual_seed(4)
    head = make_head(method)
    v_len, t_len = [4, 2, 3], [3, 5]
    video, video_mask = encoder_batch(v_len, 4, 10, g)
    text, text_mask = encoder_batch(t_len, 5, 10, g)
    weights = torch.randn(3, 2, generator=g, dtype=torch.float64)

    v, vm, t, tm = head(video, video_mask, text, text_mask)
    if method == "cico":
        assert v.shape == (3, 4, 6) and t.shape == (2, 5, 6)
        assert torch.equal(vm, video_mask) and torch.equal(tm, text_mask)
    else:
        assert v.shape == (3, 1, 6) and t.shape == (2, 1, 6)
        assert vm.all() and tm.all() and vm.shape == (3, 1) and tm.shape == (2, 1)
    ours = pairwise_similarity(v, vm, t, tm, method, TAU)
    (ours * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in head.named_parameters() if p.grad is not None}
    head.zero_grad(set_to_none=True)

    # Reference: per-sample pooling by explicit indexing, then the per-pair formula.
    wv, bv = head.video_proj.weight, head.video_proj.bias
    wt, bt = head.text_proj.weight, head.text_proj.bias

    def unit(x):
        return x / torch.sqrt((x * x).sum(-1, keepdim=True))

    if method == "cico":
        pv = [unit(video[a, : v_len[a]] @ wv.T + bv) for a in range(3)]
        pt = [unit(text[b, : t_len[b]] @ wt.T + bt) for b in range(2)]
        v_ref = torch.zeros(3, 4, 6, dtype=torch.float64)
        t_ref = torch.zeros(2, 5, 6, dtype=torch.float64)
        for a in range(3):
            v_ref[a, : v_len[a]] = pv[a]
        for b in range(2):
            t_ref[b, : t_len[b]] = pt[b]
        ref = reference_cico(v_ref, v_len, t_ref, t_len, TAU)
    else:
        if method == "cls":
            pooled_v = [video[a, 0] for a in range(3)]
            pooled_t = [text[b, t_len[b] - 1] for b in range(2)]
        else:
            pooled_v = [video[a, : v_len[a]].sum(0) / v_len[a] for a in range(3)]
            pooled_t = [text[b, : t_len[b]].sum(0) / t_len[b] for b in range(2)]
        pv = [unit(x @ wv.T + bv) for x in pooled_v]
        pt = [unit(x @ wt.T + bt) for x in pooled_t]
        ref = torch.stack([torch.stack([pv[a] @ pt[b] for b in range(2)]) for a in range(3)])
        cos = F.cosine_similarity(
            torch.stack(pooled_v) @ wv.T + bv, (torch.stack(pooled_t) @ wt.T + bt)[:, None], dim=-1
        ).T
        torch.testing.assert_close(ours, cos)
    (ref * weights).sum().backward()
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    for name, p in head.named_parameters():
        if name == "logit_scale":
            continue
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["cico", "cls", "mean"])
def test_head_ignores_encoder_padding(method):
    g = torch.Generator().manual_seed(5)
    head = make_head(method)
    video, video_mask = encoder_batch([3, 1], 3, 10, g)
    text, text_mask = encoder_batch([2, 4], 4, 10, g)
    base = pairwise_similarity(*head(video, video_mask, text, text_mask), method, TAU)
    video2 = torch.cat([video, torch.randn(2, 2, 10, generator=g, dtype=torch.float64)], 1)
    text2 = torch.cat([text, torch.randn(2, 3, 10, generator=g, dtype=torch.float64)], 1)
    video2[~torch.cat([video_mask, torch.zeros(2, 2, dtype=torch.bool)], 1)] = 50.0
    text2[~torch.cat([text_mask, torch.zeros(2, 3, dtype=torch.bool)], 1)] = -50.0
    vm2 = torch.cat([video_mask, torch.zeros(2, 2, dtype=torch.bool)], 1)
    tm2 = torch.cat([text_mask, torch.zeros(2, 3, dtype=torch.bool)], 1)
    padded = pairwise_similarity(*head(video2, vm2, text2, tm2), method, TAU)
    torch.testing.assert_close(padded, base, rtol=1e-12, atol=1e-12)


def test_project_one_side_matches_forward_and_projections_are_separate():
    g = torch.Generator().manual_seed(6)
    head = make_head("cico")
    video, video_mask = encoder_batch([2, 3], 3, 10, g)
    v, vm, t, tm = head(video, video_mask, video, video_mask)
    v1, vm1 = head.project_video(video, video_mask)
    t1, tm1 = head.project_text(video, video_mask)
    torch.testing.assert_close(v1, v)
    torch.testing.assert_close(t1, t)
    assert not torch.allclose(v, t)  # separate Linear layers
    norms = v.norm(dim=-1)
    torch.testing.assert_close(norms[vm], torch.ones_like(norms[vm]))
    assert (v[~vm] == 0).all()


def test_logit_scale_init_and_clamp():
    head = SimilarityHead(SimilarityConfig(), enc_dim=4)
    torch.testing.assert_close(head.scale(), torch.tensor(1 / 0.07), rtol=1e-4, atol=0)
    with torch.no_grad():
        head.logit_scale.fill_(7.0)
    torch.testing.assert_close(head.scale(), torch.tensor(100.0), rtol=1e-4, atol=0)
    head.scale().backward()
    assert head.logit_scale.grad == 0  # clamped: no push beyond the cap


def test_bad_inputs_raise_clear_errors():
    v = torch.ones(2, 3, 4)
    vm = torch.tensor([[True, True, False], [False, False, False]])
    with pytest.raises(ValueError, match="at least one valid token"):
        pairwise_similarity(v, vm, v, torch.ones(2, 3, dtype=torch.bool), "cico", TAU)
    ok = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="unknown 'max'"):
        pairwise_similarity(v, ok, v, ok, "max", TAU)
    with pytest.raises(ValueError, match="one pooled token"):
        pairwise_similarity(v, ok, v, ok, "mean", TAU)
    with pytest.raises(ValueError, match="mask must be bool"):
        pairwise_similarity(v, ok.float(), v, ok, "cico", TAU)
