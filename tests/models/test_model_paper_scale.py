"""The paper-scale model, built on the meta device (no weights, no download), has exactly the
parameter counts derived below from mBART-large-50's configuration and the method's settings.

Derivation (d = 1024, ffn f = 4096, vocabulary V = 250,054, positions P = 1024 (+2 offset rows),
12 + 12 layers, sign hidden H = 1024, projection p = 256, LoRA r = 16 on q/k/v/out_proj, fc1, fc2):

    attention block      4 (d^2 + d)                      layer norm   2d
    feed-forward         (d f + f) + (f d + d)
    encoder layer        attn + 2 LN + ffn                decoder layer  2 attn + 3 LN + ffn
    visual encoder       (P + 2) d + 2 LN + 12 enc layers              =   152,209,408
    text encoder         V d + visual encoder                           =   408,264,704
    decoder (+ LM head)  V d + (P + 2) d + 2 LN + 12 dec layers         =   458,670,080
                         (the LM head is the tied token table; final_logits_bias is a buffer)
    ResNet-18 w/o fc     conv/BN formula below                          =    11,176,512
    temporal block       512 H 5 + 2H + H H 5 + 2H (bias-free convs)    =     7,868,416
    projection           H d + d                                        =     1,049,600
    similarity head      2 (d p + p) + 1                                =       524,801
    LoRA                 12 [4 r 2d + r (d+f) + r (f+d)]
                         + 12 [8 r 2d + 2 r (d+f)]                      =     8,650,752
    total                                                               = 1,048,414,273
    trainable (LoRA; text encoder frozen): sign embedding + head + LoRA =    29,270,081

Cross-check: the visual encoder, text encoder and decoder together are mBART-large-50
(610,879,488 parameters, counted here on a meta MBartForConditionalGeneration) plus one more
encoder with its own token table (the text encoder is a separate copy so it can stay frozen).
"""

from __future__ import annotations

import pytest
import torch
from transformers import MBartConfig, MBartForConditionalGeneration

from scl_slt.config import Modality, ModelConfig
from scl_slt.models.builder import (
    assemble_model,
    build_paper_scale_model,
    count_parameters,
    mbart_large_50_config,
)
from scl_slt.models.slt import SpecialTokens
from scl_slt.models.tokenizer import SLTTokenizer

D, FFN, VOCAB, POSITIONS, LAYERS, HEADS = 1024, 4096, 250_054, 1024, 12, 16
HIDDEN, PROJ, RANK = 1024, 256, 16


def mbart_large_50_config_ref() -> MBartConfig:
    return MBartConfig(
        vocab_size=VOCAB,
        d_model=D,
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN,
        max_position_embeddings=POSITIONS,
        scale_embedding=True,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    )


def paper_model_cfg() -> ModelConfig:
    cfg = ModelConfig(mbart_path="facebook/mbart-large-50")
    cfg.sign_embedding.hidden = HIDDEN
    cfg.lora.enabled, cfg.lora.r, cfg.lora.alpha = True, RANK, 32
    cfg.similarity.proj_dim = PROJ
    return cfg


def resnet18_without_fc() -> int:
    def conv(cin, cout, k):
        return cin * cout * k * k  # bias-free

    def bn(c):
        return 2 * c

    def block(cin, cout, downsample):
        n = conv(cin, cout, 3) + bn(cout) + conv(cout, cout, 3) + bn(cout)
        return n + (conv(cin, cout, 1) + bn(cout) if downsample else 0)

    stages = [(64, 64, False), (64, 128, True), (128, 256, True), (256, 512, True)]
    total = conv(3, 64, 7) + bn(64)
    for cin, cout, down in stages:
        total += block(cin, cout, down) + block(cout, cout, False)
    return total


def expected_counts() -> dict[str, int]:
    d, f, r = D, FFN, RANK
    attention, norm, ffn = 4 * (d * d + d), 2 * d, d * f + f + f * d + d
    encoder_layer = attention + 2 * norm + ffn
    decoder_layer = 2 * attention + 3 * norm + ffn
    positions = (POSITIONS + 2) * d
    visual = positions + 2 * norm + LAYERS * encoder_layer
    text = VOCAB * d + visual
    decoder = VOCAB * d + positions + 2 * norm + LAYERS * decoder_layer
    sign = resnet18_without_fc() + (
        512 * HIDDEN * 5 + 2 * HIDDEN + HIDDEN * HIDDEN * 5 + 2 * HIDDEN
    )
    sign += HIDDEN * d + d
    similarity = 2 * (d * PROJ + PROJ) + 1
    lora_visual = LAYERS * (4 * r * 2 * d + r * (d + f) + r * (f + d))
    lora_decoder = LAYERS * (8 * r * 2 * d + 2 * r * (d + f))
    return {
        "sign_embedding": sign,
        "visual_encoder": visual + lora_visual,
        "text_encoder": text,
        "decoder": decoder + lora_decoder,
        "similarity": similarity,
        "trainable": sign + similarity + lora_visual + lora_decoder,
        "lora": lora_visual + lora_decoder,
    }


@pytest.fixture(scope="module")
def paper_model():
    special = SpecialTokens(pad_id=1, eos_id=2, lang_id=250_003, suppressed=(0, 1, 3, 250_003))
    with torch.device("meta"):
        return assemble_model(
            mbart_large_50_config_ref(), paper_model_cfg(), Modality.frames, special
        )


def test_stated_values_follow_from_the_formula():
    expected = expected_counts()
    assert resnet18_without_fc() == 11_176_512
    assert expected["trainable"] == 29_270_081
    assert (
        sum(
            expected[k]
            for k in ("sign_embedding", "visual_encoder", "text_encoder", "decoder", "similarity")
        )
        == 1_048_414_273
    )


def test_paper_scale_parameter_counts(paper_model):
    assert all(p.is_meta for p in paper_model.parameters())
    counts = count_parameters(paper_model)
    expected = expected_counts()
    for name in ("sign_embedding", "visual_encoder", "text_encoder", "decoder", "similarity"):
        assert counts["submodules"][name]["total"] == expected[name], name
    assert counts["total"] == 1_048_414_273
    assert counts["trainable"] == expected["trainable"] == 29_270_081
    lora = sum(p.numel() for n, p in paper_model.named_parameters() if "lora_" in n)
    assert lora == expected["lora"] == 8_650_752
    assert counts["submodules"]["text_encoder"]["trainable"] == 0


def test_mbart_parts_are_mbart_large_50_plus_one_encoder(paper_model):
    with torch.device("meta"):
        hf = MBartForConditionalGeneration(mbart_large_50_config_ref())
    hf_total = sum(p.numel() for p in hf.parameters())  # tied LM head counted once
    assert hf_total == 610_879_488
    counts = count_parameters(paper_model)["submodules"]
    ours = sum(counts[k]["total"] for k in ("visual_encoder", "text_encoder", "decoder"))
    extra_encoder = counts["text_encoder"]["total"]  # the frozen copy, with its token table
    assert ours - expected_counts()["lora"] == hf_total + extra_encoder


def test_builder_builds_the_same_architecture_without_weights():
    """``builder.build_paper_scale_model`` (random weights, nothing read; the benchmark's
    model) gives mBART-large-50's dimensions and exactly the counts derived above."""
    tokenizer = SLTTokenizer.train(["regen im norden", "sonne im süden"], "de", "de_DE", 40)
    ours, reference = mbart_large_50_config(tokenizer, VOCAB), mbart_large_50_config_ref()
    for key in ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_ffn_dim"):
        assert getattr(ours, key) == getattr(reference, key), key
    for key in ("decoder_ffn_dim", "encoder_attention_heads", "decoder_attention_heads"):
        assert getattr(ours, key) == getattr(reference, key), key
    assert ours.max_position_embeddings == POSITIONS and ours.scale_embedding
    with torch.device("meta"):
        model = build_paper_scale_model(paper_model_cfg(), Modality.frames, tokenizer, VOCAB)
    counts = count_parameters(model)
    assert counts["total"] == 1_048_414_273
    assert counts["trainable"] == expected_counts()["trainable"]
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        mbart_large_50_config(tokenizer, 10)
