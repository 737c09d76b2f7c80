"""The question branch of question-based SLT (``data.assist=question|gloss``, SSL-SSAW).

One submodule of ``SignTranslationModel``, ``question``, so the stage hand-off moves it whole:

    encoder    an MBart encoder over the question ``[lang] tokens </s>`` (mBART-50's encoder at
               paper scale, copied from the pretrained model like the text encoder; the tiny
               one in tests); it trains (the MLM term updates it), unlike the frozen text encoder
    fusion     ``QuestionFusion`` (``model.fusion``): video tokens + question tokens -> the
               memory the decoder cross-attends to
    mlm_head   ``MLMHead`` tied to the encoder's token embeddings: masked question tokens ->
               their ids (the self-supervised term, ``loss.mlm_weight``)

The branch exists whenever the data carries questions, whatever ``model.fusion`` says, so that
``fusion=none`` (the no-question row of the ablation run on question data) and the fusion rows
have the same question encoder and MLM head, and only the way the question reaches the decoder
differs. It stays through stage 2 and inference (``generate`` takes the question); the
video-question InfoNCE of stage 1 projects the question tokens with the text projection of the
similarity head (``SignTranslationModel.forward``).

Masking for MLM (``mask``): the token ``<mask>`` when the vocabulary has it (mBART-50's does),
else ``<unk>`` (the tiny tokenizer has no mask token; an unknown word and a masked one then look
alike, which costs the tiny model nothing: its tokenizer is trained on the train texts and
questions and rarely emits ``<unk>``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import MBartConfig
from transformers.models.mbart.modeling_mbart import MBartEncoder

from ..config import Fusion
from .question_fusion import QuestionFusion
from .question_mlm import MLMHead, mask_question_tokens


class QuestionBranch(nn.Module):
    """Question encoder, fusion block and MLM head (see the module docstring)."""

    def __init__(self, config: MBartConfig, fusion: Fusion | str, mask_id: int, special_ids):
        super().__init__()
        self.encoder = MBartEncoder(config)
        self.fusion = QuestionFusion(
            config.d_model, config.encoder_attention_heads, fusion, config.dropout
        )
        self.mlm_head = MLMHead(config.d_model, config.vocab_size, self.encoder.embed_tokens)
        self.mask_id = int(mask_id)
        self.special_ids = set(int(i) for i in special_ids)  # never masked

    def encode(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Question ids (B, Lq), mask (B, Lq) bool -> tokens (B, Lq, D), padding zeroed."""
        tokens = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, Lq, D)
        return tokens * mask[..., None].to(tokens.dtype)

    def memory(
        self, video: Tensor, video_mask: Tensor, tokens: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The decoder's memory (B, M, D) and mask (B, M) from video (B, Tv, D) and question
        tokens (B, Lq, D); M = Tv with fusion=none, Tv + Lq otherwise."""
        return self.fusion(video, video_mask, tokens, mask)

    def mlm(
        self, ids: Tensor, mask: Tensor, ratio: float, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Mask a share ``ratio`` of each question's tokens (``generator`` draws) and predict
        them: logits (B, Lq, V) of the masked question and labels (B, Lq) (-100 = not masked)."""
        masked, labels = mask_question_tokens(
            ids, mask, ratio, self.mask_id, self.special_ids, generator
        )  # (B, Lq), (B, Lq)
        return self.mlm_head(self.encode(masked, mask)), labels  # (B, Lq, V), (B, Lq)
