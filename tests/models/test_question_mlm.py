"""Question MLM: the masking rule, the head and the loss against naive per-position references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scl_slt.models.question_mlm import IGNORE_INDEX, MLMHead, mask_question_tokens, mlm_loss

PAD, EOS, LANG, MASK = 1, 2, 50, 99
SPECIALS = {0, PAD, EOS, 3, LANG}


def question_batch():
    """`[lang] tokens </s>` + pad rows of 20, 7, 1 and 0 tokens."""
    rows = [[LANG, *range(10, 30), EOS], [LANG, *range(30, 37), EOS], [LANG, 40, EOS], [LANG, EOS]]
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), PAD)
    mask = torch.zeros(len(rows), L, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    return ids, mask


def expected_count(ratio, n):
    """ceil(ratio * n), at least 1, at most n, with the float noise of ratio * n rounded away."""
    return min(n, max(1, math.ceil(round(ratio * n, 9)))) if n else 0


@pytest.mark.parametrize("ratio", [0.15, 0.3, 0.5, 1.0, 0.01])
def test_masked_share_specials_and_labels(ratio):
    ids, mask = question_batch()
    g = torch.Generator().manual_seed(0)
    masked, labels = mask_question_tokens(ids, mask, ratio, MASK, SPECIALS, g)
    chosen = labels != IGNORE_INDEX
    for b, n in enumerate([20, 7, 1, 0]):
        assert chosen[b].sum().item() == expected_count(ratio, n)
        for t in range(ids.shape[1]):
            if chosen[b, t]:
                assert mask[b, t] and ids[b, t].item() not in SPECIALS
                assert masked[b, t] == MASK and labels[b, t] == ids[b, t]
            else:
                assert masked[b, t] == ids[b, t] and labels[b, t] == IGNORE_INDEX
    assert chosen.dtype == torch.bool and masked.dtype == ids.dtype == labels.dtype


def test_ceil_is_exact_on_float_noise():
    """0.14 * 50 is 7.000000000000001 in floating point: still 7 tokens, not 8."""
    ids = torch.tensor([[LANG, *range(100, 150), EOS]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    _, labels = mask_question_tokens(ids, mask, 0.14, MASK, SPECIALS, torch.Generator())
    assert (labels != IGNORE_INDEX).sum() == 7


def test_tokens_outside_the_mask_are_never_chosen():
    ids = torch.tensor([[LANG, 11, 12, 13, 14, 15, EOS]])
    mask = torch.tensor([[True, True, True, False, False, True, True]])  # 13, 14 are padding
    for seed in range(30):
        g = torch.Generator().manual_seed(seed)
        _, labels = mask_question_tokens(ids, mask, 1.0, MASK, SPECIALS, g)
        assert labels[0].tolist() == [-100, 11, 12, -100, -100, 15, -100]


def test_deterministic_with_the_generator_and_varies_with_the_seed():
    ids, mask = question_batch()
    draw = lambda seed: mask_question_tokens(  # noqa: E731
        ids, mask, 0.3, MASK, SPECIALS, torch.Generator().manual_seed(seed)
    )
    a, b = draw(5), draw(5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert any(not torch.equal(draw(5)[1], draw(s)[1]) for s in range(6, 10))
    torch.manual_seed(123)  # the global RNG plays no part
    c = draw(5)
    torch.manual_seed(456)
    assert torch.equal(c[1], draw(5)[1])


def test_choice_is_uniform_over_the_maskable_tokens():
    """3 of 10 tokens: each position chosen with frequency 0.3 over many rows."""
    rows = 6000
    ids = torch.tensor([[LANG, *range(10, 20), EOS]]).repeat(rows, 1)
    mask = torch.ones_like(ids, dtype=torch.bool)
    _, labels = mask_question_tokens(ids, mask, 0.3, MASK, SPECIALS, torch.Generator())
    freq = (labels[:, 1:11] != IGNORE_INDEX).double().mean(0)
    assert torch.all((freq - 0.3).abs() < 0.025), freq
    assert torch.all((labels != IGNORE_INDEX).sum(1) == 3)


def test_bad_ratio_is_refused():
    ids, mask = question_batch()
    for ratio in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="ratio"):
            mask_question_tokens(ids, mask, ratio, MASK, SPECIALS, torch.Generator())


def naive_head(dense_w, dense_b, ln_w, ln_b, proj, bias, hidden):
    """Position by position: LN(gelu(W h + b)), then one dot product per vocabulary entry."""
    B, L, _ = hidden.shape
    out = []
    for b in range(B):
        for t in range(L):
            x = dense_w @ hidden[b, t] + dense_b
            x = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
            x = (x - x.mean()) / torch.sqrt(((x - x.mean()) ** 2).mean() + 1e-5) * ln_w + ln_b
            out.append(torch.stack([torch.dot(proj[v], x) + bias[v] for v in range(len(bias))]))
    return torch.stack(out).view(B, L, -1)


@pytest.mark.parametrize("tied", [True, False])
def test_head_matches_naive_forward_and_backward(tied):
    torch.manual_seed(0)
    d, V = 6, 11
    embedding = nn.Embedding(V, d).double() if tied else None
    head = MLMHead(d, V, embedding).double()
    with torch.no_grad():
        for param in head.parameters():
            param.copy_(torch.randn_like(param) * 0.5)
    hidden = torch.randn(2, 3, d, dtype=torch.float64, requires_grad=True)
    logits = head(hidden)
    assert logits.shape == (2, 3, V)

    proj = head.projection()
    ref = {n: t.detach().clone().requires_grad_(True) for n, t in head.named_parameters()}
    ref["proj"] = proj.detach().clone().requires_grad_(True) if tied else ref["weight"]
    h_ref = hidden.detach().clone().requires_grad_(True)
    expected = naive_head(
        ref["dense.weight"], ref["dense.bias"], ref["norm.weight"], ref["norm.bias"],
        ref["proj"], ref["bias"], h_ref,
    )  # fmt: skip
    torch.testing.assert_close(logits, expected, atol=1e-10, rtol=1e-7)
    probe = torch.randn(logits.shape, dtype=torch.float64)
    (logits * probe).sum().backward()
    (expected * probe).sum().backward()
    torch.testing.assert_close(hidden.grad, h_ref.grad)
    torch.testing.assert_close(proj.grad, ref["proj"].grad)
    for name, param in head.named_parameters():
        torch.testing.assert_close(param.grad, ref[name].grad, msg=name)


def test_tied_head_shares_the_embedding_and_does_not_own_it():
    embedding = nn.Embedding(11, 6)
    head = MLMHead(6, 11, embedding)
    assert head.projection() is embedding.weight
    assert set(head.state_dict()) == {
        "dense.weight",
        "dense.bias",
        "norm.weight",
        "norm.bias",
        "bias",
    }
    assert all(p is not embedding.weight for p in head.parameters())
    before = head(torch.randn(1, 2, 6))
    with torch.no_grad():
        embedding.weight.add_(1.0)
    assert not torch.allclose(before, head(torch.randn(1, 2, 6)))
    with pytest.raises(ValueError, match="tied embedding"):
        MLMHead(6, 12, embedding)
    untied = MLMHead(6, 11, None)
    assert untied.projection().shape == (11, 6) and "weight" in untied.state_dict()


def naive_loss(logits, labels):
    terms = []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            if labels[b, t] != IGNORE_INDEX:
                row = logits[b, t]
                terms.append(torch.log(torch.exp(row).sum()) - row[labels[b, t]])
    return sum(terms) / len(terms)


def test_loss_equals_naive_average_forward_and_backward():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.full((3, 5), IGNORE_INDEX)
    labels[0, 1], labels[0, 4], labels[2, 0] = 3, 6, 0  # a sample without labels in between
    ours = mlm_loss(logits, labels)
    ref_logits = logits.detach().clone().requires_grad_(True)
    expected = naive_loss(ref_logits, labels)
    torch.testing.assert_close(ours, expected.float())  # computed in float32
    ours.backward()
    expected.backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad, atol=1e-6, rtol=1e-5)
    assert torch.all(logits.grad[1] == 0)  # unlabelled positions get nothing


def test_loss_with_no_labels_is_zero_with_a_gradient_path():
    head = MLMHead(4, 9, None)
    logits = head(torch.randn(2, 3, 4))
    loss = mlm_loss(logits, torch.full((2, 3), IGNORE_INDEX))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    for name, param in head.named_parameters():
        assert param.grad is not None and torch.all(param.grad == 0), name


def test_loss_of_half_precision_logits_is_float32():
    logits = torch.randn(2, 3, 5).bfloat16()
    labels = torch.tensor([[1, -100, 2], [-100, -100, 4]])
    loss = mlm_loss(logits, labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.cross_entropy(logits.float().view(6, 5), labels.view(6)))


def test_end_to_end_masking_head_and_loss_learn_something():
    """Masking, the tied head and the loss train together: the loss falls from chance."""
    torch.manual_seed(0)
    ids, mask = question_batch()
    embedding = nn.Embedding(100, 16)
    head = MLMHead(16, 100, embedding)
    opt = torch.optim.Adam([*head.parameters(), *embedding.parameters()], lr=3e-2)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(60):
        _, labels = mask_question_tokens(ids, mask, 0.3, MASK, SPECIALS, g)
        hidden = embedding(ids)  # (B, L, 16) the true ids' embeddings stand in for an encoder
        loss = mlm_loss(head(hidden), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 4.0 and sum(losses[-5:]) / 5 < 0.5
