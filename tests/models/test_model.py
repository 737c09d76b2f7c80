"""SignTranslationModel on tiny sizes: shapes and masks, padding invariance against per-clip
references, exactly-intended gradients, save/reload, generation against naive references, and
the stage 1 -> 2 hand-off."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tiny_models import FEATURE_DIM, TEXTS, train_tokenizer

from scl_slt.config import DataConfig, ModelConfig, SignEmbeddingConfig
from scl_slt.models.builder import build_model, count_parameters
from scl_slt.models.handoff import HandOffError, load_submodules
from scl_slt.models.sign_embedding import (
    SignEmbedding,
    imagenet_weights_path,
    resnet18_backbone,
    resnet18_weights,
)
from scl_slt.models.slt import beam_search
from scl_slt.models.tokenizer import SLTTokenizer


@pytest.fixture(scope="module")
def tok() -> SLTTokenizer:
    return train_tokenizer()


def tiny_cfg(lora=False, freeze_text=True, method="cico", pretrained="none") -> ModelConfig:
    cfg = ModelConfig(
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        attention_heads=2,
        ffn_dim=32,
        max_position_embeddings=64,
        dropout=0.1,
        freeze_text_encoder=freeze_text,
    )
    cfg.sign_embedding = SignEmbeddingConfig(
        feature_dim=FEATURE_DIM, pretrained=pretrained, hidden=12, kernel=5
    )
    cfg.lora.enabled, cfg.lora.r, cfg.lora.alpha = lora, 4, 8
    cfg.similarity.method, cfg.similarity.proj_dim = method, 8
    return cfg


def make_model(tok, modality="features", seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(**kw), DataConfig(modality=modality), tok)


def make_inputs(lengths, modality="features", total=None, seed=1, garbage_padding=False):
    """Random clips padded to `total` steps with zeros (the batch contract) or with noise."""
    gen = torch.Generator().manual_seed(seed)
    total = total or max(lengths)
    shape = (FEATURE_DIM,) if modality == "features" else (3, 16, 16)
    x = torch.zeros(len(lengths), total, *shape)
    if garbage_padding:
        x = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 100)) * 3
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randn(n, *shape, generator=gen)
    return x, torch.tensor(lengths)


def perturb_lora(model, seed=3):
    """LoRA B starts at zero; give it values so that adapters change outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


# ------------------------------------------------------------------ sign embedding
def test_lengths_and_masks_after_downsampling_odd_lengths():
    torch.manual_seed(0)
    emb = SignEmbedding(SignEmbeddingConfig(feature_dim=FEATURE_DIM, hidden=8), "features", 10)
    lengths = list(range(1, 14))
    x, lens = make_inputs(lengths)
    feats, out_lens, mask = emb(x, lens)
    expected = [math.ceil(math.ceil(n / 2) / 2) for n in lengths]
    assert out_lens.tolist() == expected
    assert feats.shape == (13, math.ceil(math.ceil(13 / 2) / 2), 10)
    assert mask.sum(1).tolist() == expected
    assert mask.tolist() == [[t < n for t in range(feats.shape[1])] for n in expected]
    assert (feats[~mask] == 0).all() and (feats[mask].abs().sum(-1) > 0).all()


def _reference_sign_embedding(emb: SignEmbedding, clips: list[torch.Tensor], training: bool):
    """Each clip alone through the blocks; train-mode BN statistics over all clips' steps."""
    xs = [c.T[None] for c in clips]  # (1, C, T_i)
    for block in emb.blocks:
        xs = [block.conv(x) for x in xs]
        flat = torch.cat([x[0].T for x in xs])  # (sum T_i, C)
        if training:
            mean, var = flat.mean(0), flat.var(0, unbiased=False)
        else:
            mean, var = block.bn.running_mean, block.bn.running_var
        xs = [(x - mean[:, None]) / torch.sqrt(var[:, None] + block.bn.eps) for x in xs]
        xs = [F.relu(x * block.bn.weight[:, None] + block.bn.bias[:, None]) for x in xs]
        xs = [F.max_pool1d(x, 2, ceil_mode=True) for x in xs]
    return [emb.proj(x[0].T) for x in xs]  # (T'_i, D)


@pytest.mark.parametrize("training", [True, False])
def test_sign_embedding_matches_per_clip_reference(training):
    torch.manual_seed(0)
    emb = SignEmbedding(SignEmbeddingConfig(feature_dim=FEATURE_DIM, hidden=8), "features", 10)
    with torch.no_grad():
        for block in emb.blocks:  # non-trivial running statistics for the eval case
            block.bn.running_mean.uniform_(-0.5, 0.5)
            block.bn.running_var.uniform_(0.5, 2.0)
    emb.train(training)
    lengths = [7, 12, 1, 5]
    x, lens = make_inputs(lengths, total=15, garbage_padding=True)  # must not leak
    feats, _, mask = emb(x, lens)
    weights = torch.randn_like(feats)
    (feats * weights).sum().backward()
    got_grads = {n: p.grad.clone() for n, p in emb.named_parameters()}
    emb.zero_grad()

    clips = [x[i, :n] for i, n in enumerate(lengths)]
    ref = _reference_sign_embedding(emb, clips, training)  # same weights, clip by clip
    ref_loss = sum((r * weights[i, : r.shape[0]]).sum() for i, r in enumerate(ref))
    ref_loss.backward()
    for i, r in enumerate(ref):
        torch.testing.assert_close(feats[i, : r.shape[0]], r, atol=1e-5, rtol=1e-5)
        assert mask[i].sum() == r.shape[0]
    for name, p in emb.named_parameters():
        torch.testing.assert_close(got_grads[name], p.grad, atol=1e-5, rtol=1e-4)


def test_masked_batchnorm_running_stats_match_batchnorm_on_valid_steps():
    torch.manual_seed(0)
    emb = SignEmbedding(SignEmbeddingConfig(feature_dim=FEATURE_DIM, hidden=8), "features", 10)
    bn = emb.blocks[0].bn
    plain = torch.nn.BatchNorm1d(8)
    plain.load_state_dict(bn.state_dict())
    x = torch.randn(3, 8, 9)
    mask = torch.arange(9)[None] < torch.tensor([[9], [4], [6]])
    x = x * mask[:, None]
    out = bn(x, mask)
    ref = plain(x.transpose(1, 2)[mask])  # (N_valid, C)
    torch.testing.assert_close(out.transpose(1, 2)[mask], ref)
    torch.testing.assert_close(bn.running_mean, plain.running_mean)
    torch.testing.assert_close(bn.running_var, plain.running_var)
    assert (out.transpose(1, 2)[~mask] == 0).all()


# ----------------------------------------------------------------------- forward
def test_forward_shapes_and_text_free_calls(tok):
    model = make_model(tok, method="cls").eval()
    x, lens = make_inputs([9, 4])
    ids, mask = tok.encode_targets(TEXTS[:2])
    out = model(x, lens, ids, mask)
    t_prime = math.ceil(math.ceil(9 / 2) / 2)
    assert out.sign_features.shape == (2, t_prime, 16)
    assert out.video_tokens.shape == (2, t_prime + 1, 16)  # CLS at position 0
    assert out.video_mask[:, 0].all() and out.video_mask.sum(1).tolist() == [4, 2]
    assert out.video_proj.shape == (2, 1, 8) and out.text_proj.shape == (2, 1, 8)
    assert out.text_tokens.shape == (2, ids.shape[1], 16)
    assert out.logits.shape == (2, ids.shape[1], tok.vocab_size)
    assert out.logit_scale.shape == () and out.logit_scale > 1
    bare = model(x, lens, with_text=False, with_decoder=False)
    assert bare.text_tokens is None and bare.logits is None and bare.video_proj is not None
    with pytest.raises(ValueError, match="text_ids"):
        model(x, lens)


def test_bad_inputs_name_the_problem(tok):
    model = make_model(tok)
    x, lens = make_inputs([5, 3])
    with pytest.raises(ValueError, match="model.sign_embedding.feature_dim"):
        model(x[..., :4], lens, with_text=False, with_decoder=False)
    with pytest.raises(ValueError, match="input_lengths"):
        model(x, torch.tensor([6, 3]), with_text=False, with_decoder=False)


def test_padding_a_sample_further_changes_nothing(tok):
    model = make_model(tok, lora=True).eval()
    perturb_lora(model)
    x, lens = make_inputs([9, 5], total=9)
    x_long = torch.cat([x, torch.randn(2, 8, FEATURE_DIM)], dim=1)  # 8 more (noisy) pad frames
    ids, mask = tok.encode_targets(TEXTS[:2])
    ids_long = torch.cat([ids, torch.full((2, 3), tok.pad_id)], 1)
    mask_long = torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], 1)
    a = model(x, lens, ids, mask)
    b = model(x_long, lens, ids_long, mask_long)
    vm, tm = a.video_mask, a.text_mask
    close = dict(atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(a.sign_features[a.sign_mask], b.sign_features[b.sign_mask], **close)
    torch.testing.assert_close(a.video_tokens[vm], b.video_tokens[b.video_mask], **close)
    torch.testing.assert_close(a.video_proj[vm], b.video_proj[b.video_proj_mask], **close)
    torch.testing.assert_close(a.text_proj[tm], b.text_proj[b.text_proj_mask], **close)
    torch.testing.assert_close(a.logits[tm], b.logits[mask_long], **close)
    gen_a = model.generate(x, lens, num_beams=2, max_length=6)
    gen_b = model.generate(x_long, lens, num_beams=2, max_length=6)
    assert torch.equal(gen_a, gen_b)


# --------------------------------------------------------------------- gradients
def _intended(name: str, lora: bool, freeze_text: bool) -> bool:
    top = name.split(".", 1)[0]
    if top in ("sign_embedding", "similarity") or name == "visual_encoder.cls_token":
        return True
    if top == "text_encoder":
        return not freeze_text
    return "lora_" in name if lora else True  # visual_encoder, decoder


@pytest.mark.parametrize(
    "lora,freeze_text,modality,method",
    [
        (True, True, "features", "cico"),
        (False, True, "features", "cico"),
        (False, False, "features", "mean"),
        (True, True, "frames", "cls"),
    ],
)
def test_gradients_reach_exactly_the_intended_parameters(tok, lora, freeze_text, modality, method):
    model = make_model(tok, modality, lora=lora, freeze_text=freeze_text, method=method).train()
    x, lens = make_inputs([6, 4, 3], modality)
    ids, mask = tok.encode_targets(TEXTS[:3])
    out = model(x, lens, ids, mask)
    loss = F.cross_entropy(out.logits[mask], ids[mask]) + out.logit_scale
    loss = loss + (out.video_proj.sum() - out.text_proj.sum()) * 1e-2 + out.sign_features.sum()
    loss.backward()
    names = [n for n, _ in model.named_parameters()]
    intended = {n for n in names if _intended(n, lora, freeze_text)}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    requires = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad == intended, (sorted(with_grad ^ intended))[:10]
    assert requires == intended
    if lora:
        for top in ("visual_encoder", "decoder"):
            assert any(n.startswith(top) and "lora_A" in n for n in intended)
        assert not any(n.startswith("text_encoder") and "lora_" in n for n in names)
    if modality == "frames":
        assert "sign_embedding.backbone.conv1.weight" in with_grad
    counts = count_parameters(model)
    assert counts["trainable"] == sum(
        p.numel() for n, p in model.named_parameters() if n in intended
    )
    assert counts["trainable"] + counts["frozen"] == counts["total"]
    assert sum(c["total"] for c in counts["submodules"].values()) == counts["total"]


def test_frozen_text_encoder_stays_in_eval_mode(tok):
    model = make_model(tok).train()
    assert not model.text_encoder.training and model.visual_encoder.training
    ids, mask = tok.encode_targets(TEXTS[:2])
    a, b = model.encode_text(ids, mask), model.encode_text(ids, mask)
    assert torch.equal(a, b)  # no dropout in the frozen text prior


# ------------------------------------------------------------------ save / reload
def test_saved_and_reloaded_model_gives_identical_outputs(tok, tmp_path):
    model = make_model(tok, lora=True, seed=0).eval()
    perturb_lora(model)
    x, lens = make_inputs([7, 5])
    ids, mask = tok.encode_targets(TEXTS[:2])
    save_file(model.state_dict(), tmp_path / "model.safetensors")  # no shared tensors
    fresh = make_model(tok, lora=True, seed=1).eval()
    before = fresh(x, lens, ids, mask).logits
    fresh.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    a, b = model(x, lens, ids, mask), fresh(x, lens, ids, mask)
    assert not torch.equal(before, a.logits)  # the comparison below can fail
    for field in ("video_tokens", "text_tokens", "video_proj", "text_proj", "logits"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert torch.equal(model.generate(x, lens, 3, 6), fresh.generate(x, lens, 3, 6))


# -------------------------------------------------------------------- generation
@pytest.fixture(scope="module")
def gen_model(tok):
    """A decoder with sharp, input-dependent distributions (a freshly initialised tiny one just
    echoes one token) and a </s> bias, so hypotheses differ and end at different lengths."""
    model = make_model(tok, seed=4).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.decoder.named_parameters():
            if "layers" in name and p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen))
        embedding = model.decoder.decoder.embed_tokens.weight
        embedding.copy_(torch.randn(embedding.shape, generator=gen) * 0.3)
        model.decoder.final_logits_bias[0, tok.eos_id] = 1.0
    return model


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_with_and_without_cache_agree(gen_model, tok, num_beams):
    x, lens = make_inputs([9, 6, 3], seed=5)
    a = gen_model.generate(x, lens, num_beams=num_beams, max_length=7, use_cache=True)
    b = gen_model.generate(x, lens, num_beams=num_beams, max_length=7, use_cache=False)
    assert torch.equal(a, b)
    assert a.shape[1] <= 7 and (a == tok.eos_id).any(1).all()
    lengths = (a != tok.pad_id).sum(1)
    assert len(set(lengths.tolist())) > 1 or len({tuple(r) for r in a.tolist()}) > 1
    assert not set(a.flatten().tolist()) & (set(tok.special_ids) - {tok.eos_id, tok.pad_id})


def test_greedy_generation_matches_teacher_forced_argmax(gen_model, tok):
    """num_beams=1 against a naive loop over the training forward (shift-right convention)."""
    x, lens = make_inputs([9, 6, 3], seed=5)
    max_length = 6
    generated = gen_model.generate(x, lens, num_beams=1, max_length=max_length)
    banned = [i for i in tok.special_ids if i != tok.eos_id]
    for b in range(x.shape[0]):
        tokens: list[int] = []
        while True:
            ids = torch.tensor([[tok.lang_id, *tokens, tok.pad_id]])  # last position: next token
            out = gen_model(
                x[b : b + 1],
                lens[b : b + 1],
                ids,
                torch.ones_like(ids, dtype=torch.bool),
                with_text=False,
            )
            logits = out.logits[0, -1].clone()
            logits[banned] = -math.inf
            nxt = tok.eos_id if len(tokens) == max_length - 1 else int(logits.argmax())
            tokens.append(nxt)
            if nxt == tok.eos_id:
                break
        row = generated[b].tolist()
        assert row[: len(tokens)] == tokens and all(t == tok.pad_id for t in row[len(tokens) :])


def _naive_beam_search(model, memory, memory_mask, special, beams, max_length, penalty):
    live = [(0.0, [])]
    finished: list[tuple[float, list[int]]] = []
    for step in range(max_length):
        candidates = []
        for score, tokens in live:
            ids = torch.tensor([[special.eos_id, special.lang_id, *tokens]])
            logits, _ = model.decoder(ids, None, memory, memory_mask)
            logp = logits[0, -1].float().log_softmax(-1)
            for t in range(logp.shape[0]):
                if t in special.suppressed or (step == max_length - 1 and t != special.eos_id):
                    continue
                candidates.append((score + float(logp[t]), tokens, t))
        candidates.sort(key=lambda c: -c[0])
        live = []
        for rank, (score, tokens, t) in enumerate(candidates[: 2 * beams]):
            if t == special.eos_id:
                if rank < beams:
                    finished.append((score / (len(tokens) + 2) ** penalty, tokens + [t]))
            elif len(live) < beams:
                live.append((score, tokens + [t]))
        finished = sorted(finished, key=lambda h: -h[0])[:beams]
        if len(finished) >= beams:
            break
    return max(finished, key=lambda h: h[0])


@pytest.mark.parametrize("penalty", [0.6, 1.4])
def test_beam_search_matches_naive_reference(gen_model, penalty):
    x, lens = make_inputs([9, 6, 3], seed=6)
    beams, max_length = 3, 5
    got = gen_model.generate(
        x, lens, num_beams=beams, max_length=max_length, length_penalty=penalty
    )
    with torch.no_grad():
        _, _, memory, memory_mask = gen_model.encode_video(x, lens)
        again, scores = beam_search(
            gen_model.decoder,
            memory,
            memory_mask,
            gen_model.special,
            beams,
            max_length,
            penalty,
            use_cache=True,
            return_scores=True,
        )
        assert torch.equal(again, got)
        for b in range(x.shape[0]):
            ref_score, ref = _naive_beam_search(
                gen_model,
                memory[b : b + 1],
                memory_mask[b : b + 1],
                gen_model.special,
                beams,
                max_length,
                penalty,
            )
            assert got[b, : len(ref)].tolist() == ref
            assert (got[b, len(ref) :] == gen_model.special.pad_id).all()
            assert float(scores[b]) == pytest.approx(ref_score, abs=1e-4)
    assert len({tuple(row) for row in got.tolist()}) > 1  # not a degenerate decoder


def test_generation_rejects_impossible_lengths(gen_model):
    x, lens = make_inputs([4])
    with pytest.raises(ValueError, match="positions"):
        gen_model.generate(x, lens, num_beams=2, max_length=63)


# ----------------------------------------------------------------------- hand-off
def test_handoff_drops_text_branch_and_loads_the_rest(tok, caplog):
    stage1 = make_model(tok, lora=True, seed=0).eval()
    perturb_lora(stage1)
    state = stage1.state_dict()
    stage2 = make_model(tok, lora=True, seed=1).eval()
    with caplog.at_level(logging.INFO):
        report = load_submodules(stage2, state)
    assert stage2.text_encoder is None and stage2.similarity is None
    assert report["dropped"]["text_encoder"] > 0 and report["dropped"]["similarity"] > 0
    assert set(report["loaded"]) == {"sign_embedding", "visual_encoder", "decoder"}
    assert "dropping text_encoder" in caplog.text and "on purpose" in caplog.text
    for key, value in stage2.state_dict().items():
        assert torch.equal(value, state[key]), key
    x, lens = make_inputs([7, 5])
    ids, mask = tok.encode_targets(TEXTS[:2])
    out = stage2(x, lens, ids, mask)
    assert out.text_tokens is None and out.video_proj is None and out.logit_scale is None
    assert torch.equal(out.logits, stage1(x, lens, ids, mask).logits)


def test_handoff_fails_on_unexpected_or_missing_keys(tok):
    state = make_model(tok, lora=True).state_dict()
    extra = dict(state, **{"decoder.bogus.weight": torch.zeros(1)})
    with pytest.raises(HandOffError, match="decoder.bogus.weight"):
        load_submodules(make_model(tok, lora=True), extra)
    missing = {k: v for k, v in state.items() if k != "sign_embedding.proj.weight"}
    with pytest.raises(HandOffError, match="sign_embedding.proj.weight"):
        load_submodules(make_model(tok, lora=True), missing)
    with pytest.raises(HandOffError, match="lora_A"):  # stage 1 with LoRA, stage 2 without
        load_submodules(make_model(tok, lora=False), state)


# ---------------------------------------------------------------- ResNet weights
def test_resnet_weights_local_only(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert resnet18_weights("none") is None
    expected = imagenet_weights_path()
    assert expected.name == "resnet18-f37072fd.pth" and str(tmp_path) in str(expected)
    with pytest.raises(FileNotFoundError, match=str(expected)):
        resnet18_weights("imagenet")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        resnet18_weights(str(tmp_path / "missing.pth"))
    torch.manual_seed(7)
    source = resnet18_backbone()
    state = {k: v for k, v in source.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    expected.parent.mkdir(parents=True)
    torch.save(state, expected)
    torch.save({"state_dict": state}, tmp_path / "wrapped.pth")
    for spec in ("imagenet", str(tmp_path / "wrapped.pth")):
        model = make_model(tok, "frames", pretrained=spec)
        for key, value in source.state_dict().items():
            assert torch.equal(model.sign_embedding.backbone.state_dict()[key], value), key
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        resnet18_weights(str(tmp_path / "bad.pth"))


# ------------------------------------------------------------------------ learning
def test_tiny_model_learns_to_translate_a_small_set(tok):
    """Full training (LoRA off, as configs/model/tiny.yaml) fits 4 clips: the loss falls and
    beam search then returns every training sentence exactly."""
    torch.manual_seed(0)
    cfg = tiny_cfg(lora=False)
    cfg.dropout = 0.0
    model = build_model(cfg, DataConfig(), tok)
    x, lens = make_inputs([12, 9, 7, 10], seed=11)
    ids, mask = tok.encode_targets(TEXTS)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    model.train()
    for _ in range(80):
        out = model(x, lens, ids, mask, with_text=False)
        loss = F.cross_entropy(out.logits[mask], ids[mask])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 < 3.0 < losses[0]
    model.eval()
    generated = model.generate(x, lens, num_beams=3, max_length=60)
    assert tok.decode(generated) == TEXTS


def test_init_std_reaches_the_tiny_mbart(tok):
    cfg = tiny_cfg()
    cfg.init_std = 0.1
    torch.manual_seed(0)
    model = build_model(cfg, DataConfig(), tok)
    std = model.decoder.decoder.layers[0].fc1.weight.std().item()
    assert abs(std - 0.1) < 0.02 and model.config.init_std == 0.1
