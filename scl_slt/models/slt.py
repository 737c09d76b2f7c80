"""SignTranslationModel (method §1): sign embedding, visual encoder, text encoder, decoder, head.

Submodule names are the stage-1 -> stage-2 hand-off contract (`handoff.load_submodules`):

    sign_embedding   ResNet-18 / features -> temporal conv block      (B, T', D)
    visual_encoder   MBart encoder fed `inputs_embeds` (+ CLS token for the `cls` method)
    text_encoder     a second MBart encoder over the target sentence (frozen by default)
    decoder          MBart decoder + LM head (tied to its embeddings), cross-attends to video
                     (or to the question fusion's memory)
    similarity       SimilarityHead (projection, pooling, logit scale)
    question         question-based SLT only (`data.assist`): question encoder, fusion block,
                     MLM head (`question.QuestionBranch`); kept through stage 2 and inference

The module builds everything from an `MBartConfig` with random weights; pretrained weights,
ResNet weights and LoRA are applied by `builder.build_model`, the only place that reads files.
Generation is a batched beam search written here (KV cache optional) so that its semantics do
not move with the transformers version; the few places where transformers' decoder API did move
(the cache keyword, the cache type) are bridged once, in `CACHE_KEYWORD`, `new_kv_cache` and
`reorder_kv_cache`.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import MBartConfig, cache_utils
from transformers.models.mbart import modeling_mbart
from transformers.models.mbart.modeling_mbart import MBartDecoder, MBartEncoder

from ..config import Fusion, Modality, SignEmbeddingConfig, SimilarityConfig, SimilarityMethod
from .question import QuestionBranch
from .sign_embedding import SignEmbedding
from .similarity import SimilarityHead

log = logging.getLogger(__name__)

TEXT_BRANCH = ("text_encoder", "similarity")

# The decoder's KV-cache keyword, which is also its output field: `past_key_values` up to
# transformers 5.23, `cache` from 5.24 (where the old name warns on every call and goes in 5.40).
CACHE_KEYWORD = (
    "cache" if "cache" in inspect.signature(MBartDecoder.forward).parameters else "past_key_values"
)


def new_kv_cache():
    """The cache for the first cached decoder call. None lets the decoder start its own: tuples
    of tensors up to transformers 4.51, a Cache object with the `cache` keyword (5.24+). Where
    `past_key_values` takes Cache objects (4.52-5.23), 4.52-4.55 read None as a deprecated tuple
    cache (and warn), so from 4.52 to 5.23 the empty cache is built here."""
    if CACHE_KEYWORD == "cache" or not hasattr(modeling_mbart, "EncoderDecoderCache"):
        return None
    return cache_utils.EncoderDecoderCache(cache_utils.DynamicCache(), cache_utils.DynamicCache())


def reorder_kv_cache(cache, rows: Tensor):
    """The cache of the beams in `rows` (B*K,): a Cache object is reordered in place, a tuple
    cache (per layer: self-attention key, value, cross-attention key, value; each (B*K, H, t, d))
    is indexed."""
    if isinstance(cache, tuple):
        return tuple(tuple(t.index_select(0, rows) for t in layer) for layer in cache)
    cache.reorder_cache(rows)
    return cache


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids the model needs: decoder start (</s>), forced language code, padding."""

    pad_id: int
    eos_id: int
    lang_id: int
    suppressed: tuple[int, ...]  # never generated: every special except </s>

    @classmethod
    def from_tokenizer(cls, tokenizer) -> SpecialTokens:
        suppressed = tuple(i for i in tokenizer.special_ids if i != tokenizer.eos_id)
        return cls(tokenizer.pad_id, tokenizer.eos_id, tokenizer.lang_id, suppressed)


@dataclass
class ModelOutput:
    """What one forward returns (docs/architecture.md, "Model"); None where not computed."""

    sign_features: Tensor  # (B, T', D) sign embedding output (SignCL, SDR)
    sign_mask: Tensor  # (B, T') bool
    video_tokens: Tensor  # (B, Tv, D) visual encoder output, Tv = T' (+1 with a CLS token)
    video_mask: Tensor  # (B, Tv) bool
    text_tokens: Tensor | None = None  # (B, L, D) text encoder output
    text_mask: Tensor | None = None  # (B, L) bool
    video_proj: Tensor | None = None  # (B, Tv', d) L2-normalised (Tv' = 1 when pooled)
    video_proj_mask: Tensor | None = None  # (B, Tv')
    text_proj: Tensor | None = None  # (B, Lt, d)
    text_proj_mask: Tensor | None = None  # (B, Lt)
    logit_scale: Tensor | None = None  # () exp(logit_scale), clamped
    logits: Tensor | None = None  # (B, L, V); logits[:, l] predicts text_ids[:, l]
    question_tokens: Tensor | None = None  # (B, Lq, D) question encoder output
    question_mask: Tensor | None = None  # (B, Lq) bool
    question_proj: Tensor | None = None  # (B, Lq', d) the question through the text projection
    question_proj_mask: Tensor | None = None  # (B, Lq')
    mlm_logits: Tensor | None = None  # (B, Lq, V) of the masked question
    mlm_labels: Tensor | None = None  # (B, Lq) masked tokens' ids, -100 elsewhere


class VisualEncoder(nn.Module):
    """MBart encoder over sign features. It has no token embedding table (inputs are vectors);
    the `cls` similarity method adds a learned CLS vector at position 0."""

    def __init__(self, config: MBartConfig, with_cls: bool):
        super().__init__()
        self.encoder = MBartEncoder(config)
        self.encoder.embed_tokens = None  # unused with inputs_embeds; saves V x D parameters
        self.cls_token = (
            nn.Parameter(torch.randn(1, 1, config.d_model) * 0.02) if with_cls else None
        )

    def forward(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """features (B, T', D), mask (B, T') -> tokens (B, Tv, D), mask (B, Tv)."""
        if self.cls_token is not None:
            cls = self.cls_token.expand(features.shape[0], -1, -1).to(features.dtype)  # (B, 1, D)
            features = torch.cat([cls, features], dim=1)  # (B, 1 + T', D)
            mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)  # (B, 1 + T')
        limit = self.encoder.config.max_position_embeddings
        if features.shape[1] > limit:
            raise ValueError(
                f"visual encoder input has {features.shape[1]} steps, more than the "
                f"{limit} positions of the encoder: lower data.max_frames"
            )
        tokens = self.encoder(inputs_embeds=features, attention_mask=mask).last_hidden_state
        return tokens * mask[..., None].to(tokens.dtype), mask  # (B, Tv, D), padding zeroed


class TextDecoder(nn.Module):
    """MBart decoder with its LM head, which is tied to the decoder's token embeddings (as in
    mBART) by reading the embedding matrix directly, so no tensor is stored twice."""

    def __init__(self, config: MBartConfig):
        super().__init__()
        self.decoder = MBartDecoder(config)
        self.register_buffer("final_logits_bias", torch.zeros(1, config.vocab_size))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        memory: Tensor,
        memory_mask: Tensor,
        cache=None,
        use_cache: bool = False,
    ):
        """input_ids (B, L) -> logits (B, L, V) and the KV cache (None unless `use_cache`)."""
        out = self.decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=memory,
            encoder_attention_mask=memory_mask,
            use_cache=use_cache,
            **{CACHE_KEYWORD: cache},
        )
        hidden = out.last_hidden_state  # (B, L, D)
        logits = F.linear(hidden, self.decoder.embed_tokens.weight) + self.final_logits_bias
        return logits, getattr(out, CACHE_KEYWORD) if use_cache else None


def shift_right(text_ids: Tensor, text_mask: Tensor, special: SpecialTokens) -> Tensor:
    """Decoder inputs `</s> [lang] tokens` for targets `[lang] tokens </s>` (mBART convention)."""
    start = text_ids.new_full((text_ids.shape[0], 1), special.eos_id)  # (B, 1)
    shifted = torch.cat([start, text_ids[:, :-1]], dim=1)  # (B, L)
    return shifted.masked_fill(~text_mask, special.pad_id)


class SignTranslationModel(nn.Module):
    """The translation model with its contrastive text branch (see the module docstring)."""

    def __init__(
        self,
        config: MBartConfig,
        sign_cfg: SignEmbeddingConfig,
        modality: Modality | str,
        similarity_cfg: SimilarityConfig,
        special: SpecialTokens,
        freeze_text_encoder: bool = True,
        question: Fusion | str | None = None,
        mask_id: int | None = None,
    ):
        """``question``: the fusion mode of a question-based model (None: video only);
        ``mask_id``: its MLM mask token."""
        super().__init__()
        self.config = config
        self.special = special
        self.freeze_text_encoder = freeze_text_encoder
        with_cls = SimilarityMethod(similarity_cfg.method) is SimilarityMethod.cls
        self.sign_embedding = SignEmbedding(sign_cfg, modality, config.d_model)
        self.visual_encoder = VisualEncoder(config, with_cls)
        self.text_encoder: MBartEncoder | None = MBartEncoder(config)
        self.decoder = TextDecoder(config)
        self.similarity: SimilarityHead | None = SimilarityHead(similarity_cfg, config.d_model)
        if freeze_text_encoder:
            self.text_encoder.requires_grad_(False)
        self.question: QuestionBranch | None = None
        if question is not None:
            specials = (*special.suppressed, special.eos_id)
            self.question = QuestionBranch(config, question, mask_id, specials)

    # ------------------------------------------------------------------- structure
    def drop_text_branch(self) -> None:
        """Stage 2: remove the text encoder and the similarity head (translation only)."""
        for name in TEXT_BRANCH:
            setattr(self, name, None)

    def train(self, mode: bool = True) -> SignTranslationModel:
        """A frozen text encoder stays in eval mode (no dropout): a fixed text prior."""
        super().train(mode)
        if self.text_encoder is not None and self.freeze_text_encoder:
            self.text_encoder.eval()
        return self

    # --------------------------------------------------------------------- forward
    def encode_video(
        self, inputs: Tensor, input_lengths: Tensor, colour: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        """-> sign features (B, T', D), sign mask, video tokens (B, Tv, D), video mask."""
        sign, _, sign_mask = self.sign_embedding(inputs, input_lengths, colour)  # (B, T', D)
        video, video_mask = self.visual_encoder(sign, sign_mask)  # (B, Tv, D)
        return sign, sign_mask, video, video_mask

    def encode_text(self, text_ids: Tensor, text_mask: Tensor) -> Tensor:
        """Text encoder tokens (B, L, D) of `[lang] tokens </s>`, padding zeroed."""
        if self.text_encoder is None:
            raise RuntimeError("the text branch was dropped (stage 2): no text encoder")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_text_encoder):
            tokens = self.text_encoder(
                input_ids=text_ids, attention_mask=text_mask
            ).last_hidden_state
        return tokens * text_mask[..., None].to(tokens.dtype)  # (B, L, D)

    def forward(
        self,
        inputs: Tensor,
        input_lengths: Tensor,
        text_ids: Tensor | None = None,
        text_mask: Tensor | None = None,
        with_text: bool = True,
        with_decoder: bool = True,
        colour: Tensor | None = None,
        question_ids: Tensor | None = None,
        question_mask: Tensor | None = None,
        mlm_ratio: float = 0.0,
        mlm_generator: torch.Generator | None = None,
    ) -> ModelOutput:
        """inputs (B, T, D_in) or (B, T, 3, H, W); text_ids/text_mask (B, L) from
        `SLTTokenizer.encode_targets`; colour (B, 2, 3): the batch's ``colour``, present with
        augmented uint8 frames. After `drop_text_branch()` the text fields are None.
        question_ids/question_mask (B, Lq): the batch's question (a question-based model needs
        it); with ``mlm_generator`` a share ``mlm_ratio`` of it is masked for the MLM term."""
        if (with_text or with_decoder) and (text_ids is None or text_mask is None):
            raise ValueError("text_ids and text_mask are required with with_text or with_decoder")
        sign, sign_mask, video, video_mask = self.encode_video(inputs, input_lengths, colour)
        out = ModelOutput(sign, sign_mask, video, video_mask)
        self._encode_question(out, question_ids, question_mask)
        if self.similarity is not None:
            out.video_proj, out.video_proj_mask = self.similarity.project_video(video, video_mask)
            out.logit_scale = self.similarity.scale()
        if with_text and self.text_encoder is not None:
            out.text_tokens, out.text_mask = self.encode_text(text_ids, text_mask), text_mask
            if self.similarity is not None:
                out.text_proj, out.text_proj_mask = self.similarity.project_text(
                    out.text_tokens, text_mask
                )
            if out.question_tokens is not None and self.similarity is not None:
                out.question_proj, out.question_proj_mask = self.similarity.project_text(
                    out.question_tokens, out.question_mask
                )
        if mlm_generator is not None and self.question is not None:
            out.mlm_logits, out.mlm_labels = self.question.mlm(
                question_ids, question_mask, mlm_ratio, mlm_generator
            )
        if with_decoder:
            decoder_inputs = shift_right(text_ids, text_mask, self.special)  # (B, L)
            memory, memory_mask = self._memory(out)  # (B, M, D)
            out.logits, _ = self.decoder(decoder_inputs, text_mask, memory, memory_mask)
        return out

    def _encode_question(self, out: ModelOutput, ids: Tensor | None, mask: Tensor | None) -> None:
        """The question tokens (B, Lq, D) into ``out``, for a question-based model given one."""
        if self.question is not None and ids is not None:
            out.question_tokens, out.question_mask = self.question.encode(ids, mask), mask

    def _memory(self, out: ModelOutput) -> tuple[Tensor, Tensor]:
        """What the decoder cross-attends to: the video tokens, or with a question branch the
        fusion of video and the encoded question."""
        if self.question is None:
            return out.video_tokens, out.video_mask
        if out.question_tokens is None:
            raise ValueError(
                "this model reads a question with the video (data.assist): question_ids and "
                "question_mask are required"
            )
        return self.question.memory(
            out.video_tokens, out.video_mask, out.question_tokens, out.question_mask
        )

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        inputs: Tensor,
        input_lengths: Tensor,
        num_beams: int = 8,
        max_length: int = 100,
        length_penalty: float = 1.0,
        use_cache: bool = True,
        question_ids: Tensor | None = None,
        question_mask: Tensor | None = None,
    ) -> Tensor:
        """Batched beam search -> (B, L) ids after the forced language code: tokens, </s>, pad.

        The decoder starts from `</s> [lang]`. A hypothesis ends at </s> and is ranked by
        sum(log p) / n ** length_penalty, n = its length counting the language code and </s>;
        only </s> among the top `num_beams` candidates of a step ends a hypothesis; a sample is
        done when it has `num_beams` finished hypotheses; step `max_length` forces </s> (at most
        `max_length` tokens per output, </s> included). Call `model.eval()` first. Non-finite
        decoder logits raise FloatingPointError naming the step and the hypotheses. A
        question-based model needs the batch's `question_ids` / `question_mask` (B, Lq).
        """
        if num_beams < 1 or max_length < 1:
            raise ValueError(
                f"num_beams and max_length must be >= 1, got {num_beams}, {max_length}"
            )
        limit = self.config.max_position_embeddings
        if max_length + 2 > limit:
            raise ValueError(f"max_length {max_length} + 2 exceeds the decoder's {limit} positions")
        sign, sign_mask, video, video_mask = self.encode_video(inputs, input_lengths)
        out = ModelOutput(sign, sign_mask, video, video_mask)
        self._encode_question(out, question_ids, question_mask)
        memory, memory_mask = self._memory(out)  # (B, M, D)
        return beam_search(
            self.decoder,
            memory,
            memory_mask,
            self.special,
            num_beams,
            max_length,
            length_penalty,
            use_cache,
        )


def beam_search(
    decoder: TextDecoder,
    memory: Tensor,
    memory_mask: Tensor,
    special: SpecialTokens,
    num_beams: int,
    max_length: int,
    length_penalty: float,
    use_cache: bool,
    return_scores: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """See `SignTranslationModel.generate`. memory (B, Tv, D) -> ids (B, L) [, scores (B,):
    the length-normalised log-probability of each returned hypothesis]."""
    batch, beams = memory.shape[0], num_beams
    device = memory.device
    memory = memory.repeat_interleave(beams, dim=0)  # (B*K, Tv, D)
    memory_mask = memory_mask.repeat_interleave(beams, dim=0)  # (B*K, Tv)
    prefix = torch.tensor([special.eos_id, special.lang_id], device=device)
    seqs = prefix.repeat(batch * beams, 1)  # (B*K, 2) decoder inputs so far
    # Only beam 0 is live at first, so the first step does not pick K copies of one token.
    scores = torch.full((batch, beams), -math.inf, device=device)  # (B, K) sum of log p
    scores[:, 0] = 0.0
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    suppressed = torch.tensor(special.suppressed, dtype=torch.long, device=device)
    cache = new_kv_cache() if use_cache else None
    for step in range(max_length):
        step_ids = seqs[:, -1:] if step > 0 and use_cache else seqs  # (B*K, 1) or (B*K, t)
        logits, cache = decoder(step_ids, None, memory, memory_mask, cache, use_cache)
        _check_finite(logits[:, -1], step, memory)
        logp = logits[:, -1].float().log_softmax(dim=-1)  # (B*K, V)
        logp[:, suppressed] = -math.inf
        if step == max_length - 1:  # last step: only </s>
            keep = logp[:, special.eos_id].clone()
            logp.fill_(-math.inf)
            logp[:, special.eos_id] = keep
        vocab = logp.shape[-1]
        total = (scores.reshape(-1, 1) + logp).reshape(batch, beams * vocab)  # (B, K*V)
        top_scores, top_index = total.topk(min(2 * beams, total.shape[1]), dim=1)  # (B, 2K)
        source_beam, token = top_index // vocab, top_index % vocab  # (B, 2K)
        is_eos = token == special.eos_id
        length = step + 2  # language code + `step` tokens + </s>
        for b, rank in (
            (is_eos[:, :beams] & torch.isfinite(top_scores[:, :beams])).nonzero().tolist()
        ):
            if done[b]:
                continue
            row = b * beams + int(source_beam[b, rank])
            tokens = seqs[row, 2:].tolist() + [special.eos_id]
            finished[b].append((float(top_scores[b, rank]) / length**length_penalty, tokens))
            finished[b] = sorted(finished[b], key=lambda h: -h[0])[:beams]
        for b in range(batch):
            done[b] = done[b] or len(finished[b]) >= beams
        if all(done):
            break
        # Next beams: the best K candidates that do not end (there are at least K of 2K).
        order = torch.where(is_eos, 2 * beams, torch.arange(is_eos.shape[1], device=device))
        pick = order.argsort(dim=1, stable=True)[:, :beams]  # (B, K)
        scores = top_scores.gather(1, pick)  # (B, K)
        rows = torch.arange(batch, device=device)[:, None] * beams + source_beam.gather(1, pick)
        rows = rows.reshape(-1)  # (B*K,) parent row of each new beam
        seqs = torch.cat([seqs[rows], token.gather(1, pick).reshape(-1, 1)], dim=1)
        if use_cache:
            cache = reorder_kv_cache(cache, rows)
    best = [max(hyps, key=lambda h: h[0]) for hyps in finished]
    out = torch.full((batch, max(len(t) for _, t in best)), special.pad_id, dtype=torch.long)
    for b, (_, tokens) in enumerate(best):
        out[b, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    if return_scores:
        return out.to(device), torch.tensor([score for score, _ in best], device=device)
    return out.to(device)


def _check_finite(logits: Tensor, step: int, memory: Tensor) -> None:
    """A NaN or inf logit poisons its hypothesis's whole log-softmax row, and beam search would
    then fail far from the cause; name it here instead. logits (B*K, V) of one step."""
    bad = ~torch.isfinite(logits).all(dim=-1)  # (B*K,)
    if not bad.any():
        return
    values = logits[bad]
    memory_note = (
        "the visual encoder output is non-finite too: check the input features and the model's "
        "weights"
        if not torch.isfinite(memory).all()
        else "the visual encoder output is finite, so the decoder blows up first: check its "
        "weights (the checkpoint, the training loss)"
    )
    raise FloatingPointError(
        f"beam search: the decoder logits at decoding step {step} (0 = the first output token) "
        f"are non-finite for {int(bad.sum())} of {logits.shape[0]} hypotheses "
        f"({int(values.isnan().sum())} NaN, {int(values.isinf().sum())} inf values); "
        f"{memory_note}"
    )
