"""QuestionFusion: how the question joins the video memory the decoder attends to (QB-SLT).

Question-based SLT (SSL-SSAW, arXiv 2509.14036) gives the model the question a signer answers
next to the sign video. The decoder's cross-attention reads one memory; this block builds it
from the visual encoder's tokens and the question encoder's tokens. The memory always keeps the
joined order ``[video; question]`` (each part padded to its own length, the mask saying which
positions are real), so the decoder reads both and the mask alone tells it what to skip.

Modes (``model.fusion``), the rows of the ablation:

- ``none``: the video tokens and mask unchanged; the question is ignored. The no-question
  baseline, and the reference the other rows must beat.
- ``concat``: ``[video + seg[0]; question + seg[1]]`` with learned segment embeddings and no
  mixing: the decoder sees both, but each token only knows its own modality. Tells whether the
  question helps at all, without any fusion.
- ``softmax``: the joined sequence through one self-attention block (own q/k/v/out projections,
  a small FFN) with ordinary softmax weights over the valid keys. The control for ``ssaw``: the
  same block, the same parameters, only the weighting differs.
- ``ssaw`` (Sigmoid Self-Attention Weighting): the same block with
  ``w[i, j] = sigmoid(q_i . k_j / sqrt(d_h) + b_h)``, per query, key and head, padded keys exactly
  0. Why sigmoid: softmax makes the keys of a query compete for a budget of 1, so a query can
  never say "nothing here is relevant" and the question's few tokens must crowd out video tokens
  to be read at all. Sigmoid gates every (query, key) pair on its own: a video token can take in
  the whole question, a little of it or none of it, independently of how many frames the clip
  has. The weights are not normalised by anything (a row may sum to anything in
  ``[0, n_valid]``); instead ``b_h`` (one learnable scalar per head) starts at
  ``-log(typical_length)``, so at initialisation each weight is about ``1 / typical_length`` and
  a row sums to about 1 on a sequence of typical length, the start softmax would have (the
  practice of sigmoid attention, Ramapuram et al. 2024); training moves it freely.

The attention modes use a **post-LN** residual block, ``x = LN(x + attn(x))``,
``x = LN(x + ffn(x))``: the visual encoder (mBART's, with its final LayerNorm) hands the decoder
layer-normalised tokens, and post-LN keeps the memory on that scale whatever the fusion learns,
while one layer is too shallow for post-LN's depth instability to matter. There is no positional
embedding here: the video tokens already carry the visual encoder's positions and the question
tokens the question encoder's.

Padding: padded input positions are zeroed on entry (so anything there, even NaN, can never
reach a valid output), padded keys get weight exactly 0 in both modes, and padded rows of the
memory are zero in every mode but ``none``. A sample's output never depends on the padding or on
the other samples of the batch. An empty question (``question_mask`` all False, or ``Tq == 0``)
leaves the video to attend to itself.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import Fusion

ATTENTION_MODES = (Fusion.softmax, Fusion.ssaw)


class QuestionFusion(nn.Module):
    """Video tokens + question tokens -> the decoder's cross-attention memory (see module doc)."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        mode: Fusion | str,
        dropout: float = 0.0,
        typical_length: int = 64,
    ) -> None:
        super().__init__()
        self.mode = Fusion(mode)
        self.d_model = d_model
        self.num_heads = num_heads
        if self.mode == Fusion.none:
            return
        # Small init (BERT's token-type embeddings): the encoders' layer-normalised tokens are
        # barely moved at the start, so a pretrained decoder still reads a familiar memory.
        self.segment = nn.Embedding(2, d_model)
        nn.init.normal_(self.segment.weight, std=0.02)
        if self.mode not in ATTENTION_MODES:
            return
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        if typical_length < 1:
            raise ValueError(f"typical_length must be >= 1, got {typical_length}")
        self.head_dim = d_model // num_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.attn_norm = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model)
        )
        self.ffn_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        if self.mode == Fusion.ssaw:
            self.sigmoid_bias = nn.Parameter(torch.full((num_heads,), -math.log(typical_length)))

    def forward(
        self,
        video: torch.Tensor,
        video_mask: torch.Tensor,
        question: torch.Tensor | None,
        question_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Tv, d), (B, Tv) bool, (B, Tq, d), (B, Tq) bool -> memory (B, M, d), mask (B, M)
        with M = Tv in ``none`` mode and M = Tv + Tq otherwise. ``question`` may be None only in
        ``none`` mode."""
        if self.mode == Fusion.none:
            return video, video_mask
        x, mask = self._joined(video, video_mask, question, question_mask)  # (B, M, d), (B, M)
        if self.mode == Fusion.concat:
            return x, mask
        weights = self._weights(x, mask)  # (B, H, M, M)
        B, M, _ = x.shape
        v = self.v_proj(x).view(B, M, self.num_heads, self.head_dim).transpose(1, 2)  # (B,H,M,dh)
        mixed = (self.dropout(weights) @ v).transpose(1, 2).reshape(B, M, self.d_model)  # (B,M,d)
        x = self.attn_norm(x + self.dropout(self.out_proj(mixed)))  # (B, M, d)
        x = self.ffn_norm(x + self.dropout(self.ffn(x)))  # (B, M, d)
        return x * mask[..., None], mask  # (B, M, d) padded rows zero, (B, M)

    @torch.no_grad()
    def attention_weights(
        self,
        video: torch.Tensor,
        video_mask: torch.Tensor,
        question: torch.Tensor,
        question_mask: torch.Tensor,
    ) -> torch.Tensor:
        """The attention weights (B, H, M, M) over the joined sequence, for inspection and
        visualisation (rows = queries, columns = keys; padded keys and padded query rows 0)."""
        if self.mode not in ATTENTION_MODES:
            raise ValueError(f"fusion mode {self.mode.value!r} has no attention weights")
        x, mask = self._joined(video, video_mask, question, question_mask)  # (B, M, d), (B, M)
        return self._weights(x, mask)  # (B, H, M, M)

    def _joined(
        self,
        video: torch.Tensor,
        video_mask: torch.Tensor,
        question: torch.Tensor | None,
        question_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[video + seg[0]; question + seg[1]]`` (B, Tv + Tq, d) with padded rows zeroed, and
        the joined mask (B, Tv + Tq)."""
        if question is None or question_mask is None:
            raise ValueError(f"fusion mode {self.mode.value!r} needs a question and its mask")
        if question.shape[:2] != question_mask.shape or video.shape[:2] != video_mask.shape:
            raise ValueError(
                f"features and masks disagree: video {tuple(video.shape)} / "
                f"{tuple(video_mask.shape)}, question {tuple(question.shape)} / "
                f"{tuple(question_mask.shape)}"
            )
        video = video + self.segment.weight[0]  # (B, Tv, d)
        question = question.to(video.dtype) + self.segment.weight[1]  # (B, Tq, d)
        x = torch.cat([video, question], dim=1)  # (B, M, d)
        mask = torch.cat([video_mask, question_mask.to(video_mask.device)], dim=1)  # (B, M)
        return x.masked_fill(~mask[..., None], 0.0), mask  # (B, M, d), (B, M)

    def _weights(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention weights (B, H, M, M) of the joined, zero-padded sequence x (B, M, d)."""
        B, M, _ = x.shape
        q = self.q_proj(x).view(B, M, self.num_heads, self.head_dim).transpose(1, 2)  # (B,H,M,dh)
        k = self.k_proj(x).view(B, M, self.num_heads, self.head_dim).transpose(1, 2)  # (B,H,M,dh)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, M, M)
        keys = mask[:, None, None, :]  # (B, 1, 1, M)
        if self.mode == Fusion.ssaw:
            scores = scores + self.sigmoid_bias.view(1, -1, 1, 1)  # (B, H, M, M)
            weights = torch.sigmoid(scores)  # (B, H, M, M) each pair gated on its own
        else:
            # A finite fill rather than -inf: a sample with no valid token at all gives a uniform
            # row (zeroed below) instead of NaN; with one valid key exp(min - max) is exactly 0.
            scores = scores.masked_fill(~keys, torch.finfo(scores.dtype).min)  # (B, H, M, M)
            weights = torch.softmax(scores, dim=-1)  # (B, H, M, M)
        rows = mask[:, None, :, None]  # (B, 1, M, 1)
        return weights * (keys & rows)  # (B, H, M, M) padded keys and padded query rows 0
