"""QuestionFusion against a naive reference written from the definition (token by token, head by
head, key by key on the valid tokens only), forward and backward; masks never change results."""

from __future__ import annotations

import math

import pytest
import torch

from scl_slt.config import Fusion
from scl_slt.models.question_fusion import QuestionFusion

D, HEADS, EPS = 8, 2, 1e-5
D_TYPE = torch.float64


def layer_norm(x, weight, bias):
    mean = x.mean()
    var = ((x - mean) ** 2).mean()
    return (x - mean) / torch.sqrt(var + EPS) * weight + bias


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def naive_fusion(p, mode, video, video_mask, question, question_mask):
    """The attention modes from their definition. p: parameter name -> tensor. Returns the memory
    (B, Tv + Tq, d) (zeros at padded positions) and the weights as {(b, h, i, j): w} over valid
    joined positions i (query) and j (key)."""
    B, Tv, d = video.shape
    Tq = question.shape[1]
    dh = d // HEADS
    rows, weights = [], {}
    for b in range(B):
        tokens = {}  # joined position -> input vector, valid positions only
        for t in range(Tv):
            if video_mask[b, t]:
                tokens[t] = video[b, t] + p["segment.weight"][0]
        for t in range(Tq):
            if question_mask[b, t]:
                tokens[Tv + t] = question[b, t] + p["segment.weight"][1]
        out = [torch.zeros(d, dtype=video.dtype) for _ in range(Tv + Tq)]
        for i, x_i in tokens.items():
            heads = []
            for h in range(HEADS):
                part = slice(h * dh, (h + 1) * dh)
                q = (p["q_proj.weight"] @ x_i + p["q_proj.bias"])[part]
                scores, values = {}, {}
                for j, x_j in tokens.items():
                    k = (p["k_proj.weight"] @ x_j + p["k_proj.bias"])[part]
                    values[j] = (p["v_proj.weight"] @ x_j + p["v_proj.bias"])[part]
                    scores[j] = torch.dot(q, k) / math.sqrt(dh)
                if mode == "ssaw":
                    w = {j: torch.sigmoid(s + p["sigmoid_bias"][h]) for j, s in scores.items()}
                else:
                    total = sum(torch.exp(s) for s in scores.values())
                    w = {j: torch.exp(s) / total for j, s in scores.items()}
                for j in tokens:
                    weights[b, h, i, j] = w[j]
                heads.append(sum(w[j] * values[j] for j in tokens))
            attended = p["out_proj.weight"] @ torch.cat(heads) + p["out_proj.bias"]
            y = layer_norm(x_i + attended, p["attn_norm.weight"], p["attn_norm.bias"])
            hidden = gelu(p["ffn.0.weight"] @ y + p["ffn.0.bias"])
            ffn = p["ffn.2.weight"] @ hidden + p["ffn.2.bias"]
            out[i] = layer_norm(y + ffn, p["ffn_norm.weight"], p["ffn_norm.bias"])
        rows.append(torch.stack(out))
    return torch.stack(rows), weights


def make_module(mode, seed=0):
    torch.manual_seed(seed)
    module = QuestionFusion(D, HEADS, mode).double()
    with torch.no_grad():  # random everything, so biases and LayerNorm affine are exercised
        for param in module.parameters():
            param.copy_(torch.randn_like(param) * 0.4)
        if mode == "ssaw":
            module.sigmoid_bias.copy_(torch.tensor([-1.0, 0.5]))
    return module


def make_inputs(v_len, q_len, Tv, Tq, seed=1, garbage=0.0):
    g = torch.Generator().manual_seed(seed)
    B = len(v_len)
    video = torch.randn(B, Tv, D, generator=g, dtype=torch.float64)
    question = torch.randn(B, Tq, D, generator=g, dtype=torch.float64)
    vm = torch.arange(Tv)[None] < torch.tensor(v_len)[:, None]
    qm = torch.arange(Tq)[None] < torch.tensor(q_len)[:, None]
    video = torch.where(vm[..., None], video, torch.full_like(video, garbage))
    question = torch.where(qm[..., None], question, torch.full_like(question, garbage))
    return video, vm, question, qm


def random_masks_inputs(seed):
    """Masks with holes (not only right padding) and a sample with an empty question."""
    g = torch.Generator().manual_seed(seed)
    video, _, question, _ = make_inputs([5, 5, 5], [4, 4, 4], 5, 4, seed=seed)
    vm = torch.rand(3, 5, generator=g) < 0.7
    vm[:, 0] = True
    qm = torch.rand(3, 4, generator=g) < 0.6
    qm[1] = False  # no question for this sample
    qm[2, 1] = True
    return video, vm, question, qm


@pytest.mark.parametrize("mode", ["ssaw", "softmax"])
def test_forward_and_gradients_match_naive_reference(mode):
    module = make_module(mode)
    video, vm, question, qm = random_masks_inputs(seed=3)
    video.requires_grad_(True)
    question.requires_grad_(True)
    memory, mask = module(video, vm, question, qm)
    assert memory.shape == (3, 9, D)
    assert torch.equal(mask, torch.cat([vm, qm], dim=1))

    params = {n: t.detach().clone().requires_grad_(True) for n, t in module.named_parameters()}
    v_ref = video.detach().clone().requires_grad_(True)
    q_ref = question.detach().clone().requires_grad_(True)
    expected, _ = naive_fusion(params, mode, v_ref, vm, q_ref, qm)
    torch.testing.assert_close(memory, expected, atol=1e-10, rtol=1e-7)

    probe = torch.randn(memory.shape, generator=torch.Generator().manual_seed(7), dtype=D_TYPE)
    (memory * probe).sum().backward()
    (expected * probe).sum().backward()
    torch.testing.assert_close(video.grad, v_ref.grad, atol=1e-10, rtol=1e-7)
    torch.testing.assert_close(question.grad, q_ref.grad, atol=1e-10, rtol=1e-7)
    for name, param in module.named_parameters():
        torch.testing.assert_close(param.grad, params[name].grad, atol=1e-10, rtol=1e-7, msg=name)
    assert video.grad.abs().sum() > 0 and question.grad[qm].abs().sum() > 0
    # padded inputs get no gradient
    assert torch.all(video.grad[~vm] == 0) and torch.all(question.grad[~qm] == 0)


@pytest.mark.parametrize("mode", ["ssaw", "softmax"])
def test_attention_weights_match_reference_and_padding_is_exactly_zero(mode):
    module = make_module(mode)
    video, vm, question, qm = random_masks_inputs(seed=4)
    weights = module.attention_weights(video, vm, question, qm)  # (B, H, M, M)
    _, expected = naive_fusion(dict(module.named_parameters()), mode, video, vm, question, qm)
    joined = torch.cat([vm, qm], dim=1)
    for b in range(3):
        for h in range(HEADS):
            for i in range(9):
                for j in range(9):
                    if joined[b, i] and joined[b, j]:
                        assert weights[b, h, i, j].item() == pytest.approx(
                            expected[b, h, i, j].item(), abs=1e-12
                        )
                    else:
                        assert weights[b, h, i, j].item() == 0.0


def test_sigmoid_weights_do_not_sum_to_one_and_softmax_do():
    ssaw, softmax = make_module("ssaw"), make_module("softmax")
    softmax.load_state_dict({k: v for k, v in ssaw.state_dict().items() if k != "sigmoid_bias"})
    video, vm, question, qm = random_masks_inputs(seed=5)
    valid = torch.cat([vm, qm], dim=1)[:, None, :].expand(3, HEADS, 9)  # (B, H, M) query rows
    sums_soft = softmax.attention_weights(video, vm, question, qm).sum(-1)  # (B, H, M)
    sums_sig = ssaw.attention_weights(video, vm, question, qm).sum(-1)  # (B, H, M)
    torch.testing.assert_close(sums_soft[valid], torch.ones_like(sums_soft[valid]))
    assert (sums_sig[valid] - 1).abs().max() > 0.5
    out_soft, _ = softmax(video, vm, question, qm)
    out_sig, _ = ssaw(video, vm, question, qm)
    assert (out_soft - out_sig).abs().max() > 1e-2


def test_sigmoid_gates_each_pair_alone_softmax_does_not():
    """Appending a valid question token leaves every other SSAW weight unchanged (no competition
    between keys); under softmax the existing weights shrink."""
    video, vm, question, _ = make_inputs([4], [3], 4, 3, seed=6)
    short = torch.tensor([[True, True, False]])
    longer = torch.tensor([[True, True, True]])
    for mode, unchanged in (("ssaw", True), ("softmax", False)):
        module = make_module(mode)
        before = module.attention_weights(video, vm, question, short)[..., :6, :6]
        after = module.attention_weights(video, vm, question, longer)[..., :6, :6]
        assert torch.allclose(before, after, atol=1e-12) == unchanged, mode


@pytest.mark.parametrize("mode", ["ssaw", "softmax", "concat"])
def test_extra_padding_and_garbage_never_change_valid_outputs(mode):
    module = make_module(mode)
    video, vm, question, qm = random_masks_inputs(seed=8)
    memory, _ = module(video, vm, question, qm)

    # Longer padding on both parts, garbage (large, inf, NaN) at every padded position.
    g = torch.Generator().manual_seed(9)
    Tv2, Tq2 = 8, 7
    video2 = torch.randn(3, Tv2, D, generator=g, dtype=D_TYPE) * 1e3
    question2 = torch.randn(3, Tq2, D, generator=g, dtype=D_TYPE) * 1e3
    video2[0, 6, 0], question2[2, 5, 1] = float("nan"), float("inf")
    vm2 = torch.zeros(3, Tv2, dtype=torch.bool)
    qm2 = torch.zeros(3, Tq2, dtype=torch.bool)
    video2[:, :5], vm2[:, :5] = torch.where(vm[..., None], video, 1e3), vm
    question2[:, :4], qm2[:, :4] = torch.where(qm[..., None], question, -7.0), qm
    video2.requires_grad_(True)
    memory2, mask2 = module(video2, vm2, question2, qm2)
    assert torch.isfinite(memory2).all()
    torch.testing.assert_close(memory2[:, :5][vm], memory[:, :5][vm], atol=1e-12, rtol=0)
    torch.testing.assert_close(memory2[:, Tv2 : Tv2 + 4][qm], memory[:, 5:][qm], atol=1e-12, rtol=0)
    assert torch.all(memory2[~mask2] == 0)  # padded rows of the memory are zero
    memory2.sum().backward()
    assert torch.isfinite(video2.grad).all() and torch.all(video2.grad[~vm2] == 0)


@pytest.mark.parametrize("mode", ["ssaw", "softmax"])
def test_a_sample_does_not_depend_on_the_batch(mode):
    module = make_module(mode)
    video, vm, question, qm = random_masks_inputs(seed=10)
    memory, _ = module(video, vm, question, qm)
    for b in range(3):
        alone, _ = module(video[b : b + 1], vm[b : b + 1], question[b : b + 1], qm[b : b + 1])
        torch.testing.assert_close(alone[0], memory[b], atol=1e-12, rtol=0)
    # A sample's output with another sample swapped for different content is unchanged.
    other = video.clone()
    other[0] = torch.randn_like(other[0])
    memory_other, _ = module(other, vm, question, qm)
    torch.testing.assert_close(memory_other[1:], memory[1:], atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", ["ssaw", "softmax"])
def test_empty_question_means_video_only(mode):
    """Tq = 0, and a question that is all padding, both give the video attending to itself."""
    module = make_module(mode)
    video, vm, question, _ = make_inputs([5, 3], [0, 0], 5, 4, seed=11)
    none_q = torch.zeros(2, 0, D, dtype=D_TYPE)
    none_m = torch.zeros(2, 0, dtype=torch.bool)
    memory0, mask0 = module(video, vm, none_q, none_m)
    assert memory0.shape == (2, 5, D) and torch.equal(mask0, vm)
    expected, _ = naive_fusion(dict(module.named_parameters()), mode, video, vm, none_q, none_m)
    torch.testing.assert_close(memory0, expected, atol=1e-10, rtol=1e-7)
    padded_only, _ = module(video, vm, question, torch.zeros(2, 4, dtype=torch.bool))
    torch.testing.assert_close(padded_only[:, :5], memory0, atol=1e-12, rtol=0)
    assert torch.all(padded_only[:, 5:] == 0)


def test_none_returns_the_video_unchanged():
    module = QuestionFusion(D, HEADS, Fusion.none)
    video, vm, question, qm = make_inputs([3, 2], [2, 1], 3, 2)
    memory, mask = module(video, vm, question, qm)
    assert memory is video and mask is vm
    assert module(video, vm, None, None)[0] is video
    assert not list(module.parameters())


def test_concat_joins_with_segment_embeddings_and_no_mixing():
    module = make_module("concat")
    video, vm, question, qm = make_inputs([3, 1], [2, 0], 3, 2, garbage=5.0)
    memory, mask = module(video, vm, question, qm)
    seg = module.segment.weight
    assert torch.equal(mask, torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).bool())
    for b in range(2):
        for t in range(3):
            want = video[b, t] + seg[0] if vm[b, t] else torch.zeros(D, dtype=D_TYPE)
            assert torch.equal(memory[b, t], want)
        for t in range(2):
            want = question[b, t] + seg[1] if qm[b, t] else torch.zeros(D, dtype=D_TYPE)
            assert torch.equal(memory[b, 3 + t], want)
    assert [n for n, _ in module.named_parameters()] == ["segment.weight"]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        QuestionFusion(6, 4, "ssaw")
    with pytest.raises(ValueError):
        QuestionFusion(D, HEADS, "gated")
    module = QuestionFusion(D, HEADS, "ssaw")
    video = torch.randn(1, 3, D)
    with pytest.raises(ValueError, match="needs a question"):
        module(video, torch.ones(1, 3, dtype=torch.bool), None, None)
    with pytest.raises(ValueError, match="no attention weights"):
        QuestionFusion(D, HEADS, "concat").attention_weights(
            video, torch.ones(1, 3, dtype=torch.bool), video, torch.ones(1, 3, dtype=torch.bool)
        )


def test_ssaw_bias_starts_at_minus_log_typical_length_and_dropout_only_in_training():
    module = QuestionFusion(D, HEADS, "ssaw", dropout=0.5, typical_length=32)
    torch.testing.assert_close(module.sigmoid_bias, torch.full((HEADS,), -math.log(32)))
    video, vm, question, qm = make_inputs([4, 2], [3, 1], 4, 3)
    video, question = video.float(), question.float()
    module.eval()
    a, _ = module(video, vm, question, qm)
    b, _ = module(video, vm, question, qm)
    assert torch.equal(a, b)
    module.train()
    c, _ = module(video, vm, question, qm)
    assert not torch.allclose(a, c)
