"""Video-text similarity (method §2): the projection head and the one scoring function.

`SimilarityHead` projects visual and text encoder tokens into a shared space and L2-normalises
them; for the pooled ablations (`cls`, `mean`) it pools first and returns one token per sample.
`pairwise_similarity` scores every (video, text) pair of two padded batches. The contrastive loss
calls it on a training batch and `score_all_pairs` reproduces its numbers on all pairs of a split,
so the training signal and the trajectory scores are the same quantity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scl_slt.config import SimilarityConfig, SimilarityMethod


def as_method(method: SimilarityMethod | str) -> SimilarityMethod:
    """The enum member for a method name; a clear error for an unknown one."""
    try:
        return SimilarityMethod(method)
    except ValueError as err:
        choices = ", ".join(m.value for m in SimilarityMethod)
        raise ValueError(f"similarity method: unknown {method!r} (expected {choices})") from err


def _check_tokens(name: str, tokens: Tensor, mask: Tensor) -> None:
    if tokens.dim() != 3 or mask.shape != tokens.shape[:2]:
        raise ValueError(
            f"{name}: expected tokens (B, T, D) and mask (B, T), got {tuple(tokens.shape)} "
            f"and {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"{name}: mask must be bool, got {mask.dtype}")
    if tokens.shape[0] and not bool(mask.any(dim=1).all()):
        raise ValueError(f"{name}: every sample needs at least one valid token")


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean over the valid tokens of each sample; padding (whatever its value) is ignored."""
    keep = mask.unsqueeze(-1)  # (B, T, 1)
    total = torch.where(keep, tokens, torch.zeros((), dtype=tokens.dtype, device=tokens.device))
    return total.sum(dim=1) / mask.sum(dim=1, keepdim=True).to(tokens.dtype)  # (B, D)


def last_valid(tokens: Tensor, mask: Tensor) -> Tensor:
    """The last valid token of each sample (the text EOS token under right padding)."""
    positions = torch.arange(mask.shape[1], device=mask.device)  # (T,)
    last = torch.where(mask, positions, -1).amax(dim=1)  # (B,)
    return tokens[torch.arange(tokens.shape[0], device=tokens.device), last]  # (B, D)


class SimilarityHead(nn.Module):
    """Projection of both modalities into the shared space, pooling, and the logit scale.

    `cico` keeps every token (fine-grained similarity); `cls` takes the visual CLS token (position
    0, prepended by the model) and the text EOS token (the last valid one); `mean` averages the
    valid tokens. Pooled methods return one token per sample with an all-True mask, so every
    consumer handles the three methods through the same (B, T, d) + mask shapes.
    """

    def __init__(self, cfg: SimilarityConfig, enc_dim: int):
        super().__init__()
        self.method = as_method(cfg.method)
        self.max_logit_scale = float(cfg.max_logit_scale)
        self.video_proj = nn.Linear(enc_dim, cfg.proj_dim)
        self.text_proj = nn.Linear(enc_dim, cfg.proj_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))

    def scale(self) -> Tensor:
        """exp(logit_scale), clamped at exp(max_logit_scale) (100 by default) as in CLIP."""
        return self.logit_scale.clamp(max=self.max_logit_scale).exp()

    def _project(
        self, proj: nn.Linear, tokens: Tensor, mask: Tensor, pool_token: str
    ) -> tuple[Tensor, Tensor]:
        if self.method is SimilarityMethod.cico:
            out = F.normalize(proj(tokens), dim=-1)  # (B, T, d)
            zero = torch.zeros((), dtype=out.dtype, device=out.device)
            return torch.where(mask.unsqueeze(-1), out, zero), mask
        if self.method is SimilarityMethod.cls:
            pooled = tokens[:, 0] if pool_token == "first" else last_valid(tokens, mask)  # (B, D)
        else:
            pooled = masked_mean(tokens, mask)  # (B, D)
        out = F.normalize(proj(pooled), dim=-1).unsqueeze(1)  # (B, 1, d)
        return out, torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)

    def project_video(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, D) visual encoder tokens -> (B, Tv, d) normalised features and (B, Tv) mask."""
        _check_tokens("video", tokens, mask)
        return self._project(self.video_proj, tokens, mask, pool_token="first")

    def project_text(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(B, L, D) text encoder tokens -> (B, Lt, d) normalised features and (B, Lt) mask."""
        _check_tokens("text", tokens, mask)
        return self._project(self.text_proj, tokens, mask, pool_token="last")

    def forward(
        self, video_tokens: Tensor, video_mask: Tensor, text_tokens: Tensor, text_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        v, vm = self.project_video(video_tokens, video_mask)
        t, tm = self.project_text(text_tokens, text_mask)
        return v, vm, t, tm


def cico_similarity(v: Tensor, vm: Tensor, t: Tensor, tm: Tensor, tau: float) -> Tensor:
    """Fine-grained similarity of every (video, text) pair, padding masked twice.

    e_il = v_i . t_l; s_v2t = mean_i sum_l softmax_l(e_il / tau) e_il over valid frames i and
    tokens l, s_t2v the same with the roles swapped, s = (s_v2t + s_t2v) / 2. Padding is excluded
    from each inner softmax and from each outer mean, so padded positions never change a score.
    Memory is O(Nv * Nt * T * L): meant for a batch; `score_all_pairs` chunks larger sets.
    """
    zero = torch.zeros((), dtype=v.dtype, device=v.device)
    v = torch.where(vm.unsqueeze(-1), v, zero)  # (Nv, T, d); NaN/inf padding cannot leak
    t = torch.where(tm.unsqueeze(-1), t, zero)  # (Nt, L, d)
    e = torch.einsum("atd,bld->abtl", v, t)  # (Nv, Nt, T, L)
    logits = e / tau
    text_pad = ~tm[None, :, None, :]  # (1, Nt, 1, L)
    video_pad = ~vm[:, None, :, None]  # (Nv, 1, T, 1)
    v2t_tok = (logits.masked_fill(text_pad, -math.inf).softmax(dim=3) * e).sum(dim=3)  # (Nv,Nt,T)
    t2v_tok = (logits.masked_fill(video_pad, -math.inf).softmax(dim=2) * e).sum(dim=2)  # (Nv,Nt,L)
    v_keep = vm[:, None, :].to(e.dtype)  # (Nv, 1, T)
    t_keep = tm[None, :, :].to(e.dtype)  # (1, Nt, L)
    v2t = (v2t_tok * v_keep).sum(dim=2) / v_keep.sum(dim=2)  # (Nv, Nt)
    t2v = (t2v_tok * t_keep).sum(dim=2) / t_keep.sum(dim=2)  # (Nv, Nt)
    return (v2t + t2v) / 2


def pairwise_similarity(
    v: Tensor,
    vm: Tensor,
    t: Tensor,
    tm: Tensor,
    method: SimilarityMethod | str,
    tau: float,
) -> Tensor:
    """Similarity of every video in (v, vm) with every text in (t, tm): (Nv, Nt).

    Inputs are `SimilarityHead` outputs: v (Nv, T, d), vm (Nv, T) bool, t (Nt, L, d), tm (Nt, L).
    `cico` is the fine-grained score; pooled methods (one token per sample) are the dot product
    of the normalised pooled vectors, i.e. their cosine similarity. `tau` only affects `cico`.
    """
    method = as_method(method)
    _check_tokens("video", v, vm)
    _check_tokens("text", t, tm)
    if v.shape[-1] != t.shape[-1]:
        raise ValueError(f"feature dims differ: video {v.shape[-1]}, text {t.shape[-1]}")
    if method is SimilarityMethod.cico:
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        return cico_similarity(v, vm, t, tm, tau)
    if v.shape[1] != 1 or t.shape[1] != 1:
        raise ValueError(
            f"method {method.value!r} scores one pooled token per sample, got video length "
            f"{v.shape[1]} and text length {t.shape[1]}"
        )
    return v[:, 0] @ t[:, 0].T  # (Nv, Nt)
