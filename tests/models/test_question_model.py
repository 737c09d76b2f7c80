"""The question branch inside the translation model: built only for question data, the decoder
reads the question through the fusion (and not at all with fusion=none), padding of the question
never changes a result, ``generate`` takes the question, the MLM masks are reproducible, and the
video-question InfoNCE is the contrastive loss with the question in the text's place."""

from __future__ import annotations

import pytest
import torch

from scl_slt import losses
from scl_slt.config import DataConfig, ModelConfig
from scl_slt.models import builder
from scl_slt.models.question_mlm import IGNORE_INDEX
from scl_slt.models.tokenizer import SLTTokenizer
from scl_slt.training.question import mlm_generator

TEXTS = ["am montag regnet es im norden", "heute sinken die temperaturen", "morgen wird es warm"]
QUESTIONS = [
    "was macht das wetter norden",
    "wie wird die temperatur",
    "was macht das wetter morgen",
]


def _model(fusion: str, assist: str = "question", seed: int = 0):
    model_cfg = ModelConfig(
        d_model=32, encoder_layers=1, decoder_layers=1, attention_heads=2, ffn_dim=64,
        vocab_size=120, fusion=fusion, dropout=0.0,
    )  # fmt: skip
    model_cfg.sign_embedding.feature_dim = 8
    model_cfg.sign_embedding.hidden = 16
    model_cfg.lora.enabled = False
    data_cfg = DataConfig(assist=assist)
    tokenizer = SLTTokenizer.train([*TEXTS, *QUESTIONS], "de", "de_DE", 120)
    torch.manual_seed(seed)
    return builder.build_model(model_cfg, data_cfg, tokenizer).eval(), tokenizer


def _batch(tokenizer, questions=QUESTIONS, pad_question: int = 0):
    torch.manual_seed(1)
    inputs = torch.randn(3, 7, 8)
    lengths = torch.tensor([7, 5, 6])
    text_ids, text_mask = tokenizer.encode_targets(TEXTS)
    q_ids, q_mask = tokenizer.encode_targets(list(questions))
    if pad_question:  # extra padding columns holding arbitrary ids
        q_ids = torch.cat([q_ids, torch.full((3, pad_question), 7)], dim=1)
        q_mask = torch.cat([q_mask, torch.zeros(3, pad_question, dtype=torch.bool)], dim=1)
    return inputs, lengths, text_ids, text_mask, q_ids, q_mask


def _logits(model, batch, **kwargs):
    inputs, lengths, text_ids, text_mask, q_ids, q_mask = batch
    with torch.no_grad():
        out = model(inputs, lengths, text_ids, text_mask, question_ids=q_ids,
                    question_mask=q_mask, **kwargs)  # fmt: skip
    return out


def test_branch_only_for_question_data_and_fusion_decides_what_the_decoder_reads():
    plain, _ = _model("ssaw", assist="none")
    assert plain.question is None
    for fusion, reads_question in (("none", False), ("concat", True), ("ssaw", True)):
        model, tokenizer = _model(fusion)
        assert model.question is not None
        a = _logits(model, _batch(tokenizer)).logits
        b = _logits(model, _batch(tokenizer, questions=list(reversed(QUESTIONS)))).logits
        assert torch.equal(a, b) != reads_question, fusion
    with pytest.raises(ValueError, match="question_ids and question_mask are required"):
        inputs, lengths, text_ids, text_mask, *_ = _batch(tokenizer)
        model(inputs, lengths, text_ids, text_mask)


@pytest.mark.parametrize("fusion", ["concat", "softmax", "ssaw"])
def test_question_padding_never_changes_the_logits_or_the_generated_ids(fusion):
    model, tokenizer = _model(fusion)
    tight, padded = _batch(tokenizer), _batch(tokenizer, pad_question=5)
    torch.testing.assert_close(_logits(model, tight).logits, _logits(model, padded).logits)
    generated = [
        model.generate(b[0], b[1], num_beams=2, max_length=6, question_ids=b[4], question_mask=b[5])
        for b in (tight, padded)
    ]
    assert torch.equal(*generated)
    # A sample's translation does not depend on the other samples' questions.
    other = _batch(tokenizer, questions=[QUESTIONS[0], QUESTIONS[0], QUESTIONS[0]])
    torch.testing.assert_close(_logits(model, tight).logits[0], _logits(model, other).logits[0])


def test_mlm_masks_are_reproducible_and_only_real_question_tokens_are_masked():
    model, tokenizer = _model("ssaw")
    batch = _batch(tokenizer)
    indices = torch.tensor([4, 9, 2])
    runs = [
        _logits(model, batch, mlm_ratio=0.5, mlm_generator=mlm_generator(0, indices))
        for _ in range(2)
    ]
    assert torch.equal(runs[0].mlm_labels, runs[1].mlm_labels)
    assert torch.equal(runs[0].mlm_logits, runs[1].mlm_logits)
    other = _logits(model, batch, mlm_ratio=0.5, mlm_generator=mlm_generator(1, indices))
    labels, q_ids, q_mask = runs[0].mlm_labels, batch[4], batch[5]
    chosen = labels != IGNORE_INDEX
    assert not torch.equal(other.mlm_labels, labels)  # another seed, other masks
    assert torch.equal(labels[chosen], q_ids[chosen])  # labels are the original ids
    specials = set(tokenizer.special_ids)
    assert all(int(i) not in specials for i in q_ids[chosen]) and not (chosen & ~q_mask).any()
    real = (q_mask & ~torch.isin(q_ids, torch.tensor(sorted(specials)))).sum(1)
    assert chosen.sum(1).tolist() == [max(1, -(-int(n) // 2)) for n in real]  # ceil(n / 2)
    assert runs[0].mlm_logits.shape == (*q_ids.shape, model.config.vocab_size)


def test_video_question_infonce_is_the_contrastive_loss_on_the_question_projection():
    from scl_slt.config import TrainConfig
    from scl_slt.training.question import question_terms

    model, tokenizer = _model("ssaw")
    out = _logits(model, _batch(tokenizer))
    cfg = TrainConfig()
    cfg.loss.question_contrastive_weight = 0.3  # the MLM term stays off (mlm_weight 0)
    terms = question_terms(out, {"questions": QUESTIONS}, cfg)
    assert set(terms) == {"question_contrastive"} and terms["question_contrastive"][0] == 0.3
    # The question's tokens through the text projection, scored by the plain contrastive loss.
    q_proj, q_mask = model.similarity.project_text(out.question_tokens, out.question_mask)
    expected = losses.contrastive_loss(
        out.video_proj, out.video_proj_mask, q_proj, q_mask, out.logit_scale, "cico", 0.07
    )
    torch.testing.assert_close(terms["question_contrastive"][1], expected)
    assert not torch.allclose(expected, losses.output_contrastive_loss(out, "cico", 0.07))


def test_lora_adapts_the_question_encoder_like_the_visual_encoder_and_decoder():
    from scl_slt.models.builder import apply_lora

    model, _ = _model("ssaw")
    cfg = ModelConfig()
    cfg.lora.target_modules = ["q_proj", "v_proj"]
    apply_lora(model, cfg.lora)
    trainable = {n for n, p in model.question.named_parameters() if p.requires_grad}
    assert trainable and all(
        "lora_" in n or n.startswith(("fusion.", "mlm_head.")) for n in trainable
    )
    assert not model.question.encoder.embed_tokens.weight.requires_grad
