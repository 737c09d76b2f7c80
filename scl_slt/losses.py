"""Training losses (method §3): contrastive InfoNCE, translation cross-entropy, SignCL.

Contrastive loss across ranks
-----------------------------
The sampler chooses a *global* batch of B = sum_r B_r samples split over W ranks, and the
in-batch negatives must be that whole batch. Each rank gathers every rank's projected features
with gradient (`all_gather_padded(..., with_grad=True)`), then scores only its own rows: its
videos against all texts (video->text) and all videos against its texts (text->video). With
CE the cross-entropy of one row,

    L = 1 / (2B) * sum over all B samples of (CE_v2t + CE_t2v) = sum_r C_r,
    C_r = 1 / (2B) * sum over rank r's samples of (CE_v2t + CE_t2v).

Rank r backpropagates W * C_r. The gather's backward gives rank q's features the sum over ranks
of their gradients, so rank q's parameters receive sum_r d(W C_r)/d(theta via rank q's
features), plus d(W C_q)/d(theta) for parameters used directly (the logit scale). DDP then
averages over ranks, dividing by W, and the result is d(sum_r C_r)/d(theta) = dL/dtheta: the
gradient of the single-process loss on the global batch, also with uneven B_r. The returned
value is L itself (an all-reduce of the detached C_r), with the gradient of W * C_r attached,
so logs show the global loss on every rank. One process: W = 1 and this is plain InfoNCE.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from scl_slt import distributed
from scl_slt.config import SimilarityMethod
from scl_slt.models.similarity import pairwise_similarity


def _at_least_fp32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _hashable(key: Any) -> Any:
    if isinstance(key, Tensor):
        key = key.tolist()
    return tuple(key) if isinstance(key, list) else key


def _duplicate_mask(keys: Sequence[Any], rows: range, device: torch.device) -> Tensor:
    """(len(rows), len(keys)) True where key[row] == key[col] and row != col."""
    codes: dict[Any, int] = {}
    ids = torch.tensor([codes.setdefault(_hashable(k), len(codes)) for k in keys], device=device)
    same = ids[rows.start : rows.stop, None] == ids[None, :]  # (R, N)
    diagonal = torch.arange(rows.start, rows.stop, device=device)[:, None] == torch.arange(
        len(keys), device=device
    )
    return same & ~diagonal


def contrastive_loss(
    v: Tensor,
    vm: Tensor,
    t: Tensor,
    tm: Tensor,
    scale: Tensor | float,
    method: SimilarityMethod | str,
    tau: float,
    text_keys: Sequence[Any] | Tensor | None = None,
) -> Tensor:
    """Symmetric InfoNCE over the global batch; sample i's video and text are the positive pair.

    v (B, T, d), vm (B, T), t (B, L, d), tm (B, L): this rank's `SimilarityHead` outputs.
    `scale` multiplies the similarities (the clamped exp(logit_scale)). `text_keys` (one per
    sample: target strings or token ids): off-diagonal pairs with identical keys are removed from
    both softmaxes, so a duplicate sentence is not pushed away as a negative (token-id rows are
    compared with their padding, which differs across ranks: prefer the strings). Under
    torch.distributed the loss covers all ranks' samples; see the module docstring for why the
    gradient is right after DDP's averaging.
    """
    if v.shape[0] != t.shape[0]:
        raise ValueError(f"contrastive_loss: {v.shape[0]} videos but {t.shape[0]} texts")
    if text_keys is not None and len(text_keys) != v.shape[0]:
        raise ValueError(f"contrastive_loss: {len(text_keys)} text_keys for {v.shape[0]} samples")
    world = distributed.get_world_size()
    all_v, sizes = distributed.all_gather_padded(v, with_grad=True)  # (B, T*, d)
    all_vm, _ = distributed.all_gather_padded(vm)  # (B, T*)
    all_t, _ = distributed.all_gather_padded(t, with_grad=True)  # (B, L*, d)
    all_tm, _ = distributed.all_gather_padded(tm)  # (B, L*)
    start = sum(sizes[: distributed.get_rank()])
    local = range(start, start + v.shape[0])
    total = sum(sizes)

    # fp32 even under autocast: 1/tau = 14 and the logit scale (up to 100) amplify bf16 rounding
    # of the similarities, and the (B_r, B) score matrices are small.
    with torch.autocast(device_type=v.device.type, enabled=False):
        v, t, all_v, all_t = (_at_least_fp32(x) for x in (v, t, all_v, all_t))
        v2t = scale * pairwise_similarity(v, vm, all_t, all_tm, method, tau)  # (B_r, B)
        t2v = scale * pairwise_similarity(all_v, all_vm, t, tm, method, tau).T  # (B_r, B)
    if text_keys is not None:
        keys = text_keys.tolist() if isinstance(text_keys, Tensor) else list(text_keys)
        all_keys = [k for part in distributed.all_gather_object(keys) for k in part]
        drop = _duplicate_mask(all_keys, local, v2t.device)  # (B_r, B)
        v2t = v2t.masked_fill(drop, -math.inf)
        t2v = t2v.masked_fill(drop, -math.inf)
    targets = torch.arange(local.start, local.stop, device=v2t.device)  # (B_r,)
    ce = F.cross_entropy(v2t, targets, reduction="sum") + F.cross_entropy(
        t2v, targets, reduction="sum"
    )
    share = ce / (2 * total)  # C_r
    if world == 1:
        return share
    global_loss = distributed.all_reduce_sum(share.detach().clone())
    scaled = world * share
    return scaled + (global_loss - scaled).detach()


def output_contrastive_loss(
    out: Any,
    method: SimilarityMethod | str,
    tau: float,
    text_keys: Sequence[Any] | Tensor | None = None,
) -> Tensor:
    """``contrastive_loss`` of a model output's projections (``ModelOutput``: ``video_proj``,
    ``text_proj``, their masks and ``logit_scale``), in fp32 whatever the autocast dtype."""
    return contrastive_loss(
        out.video_proj.float(),  # (B, Tv, d)
        out.video_proj_mask,
        out.text_proj.float(),  # (B, Lt, d)
        out.text_proj_mask,
        out.logit_scale.float(),
        method,
        tau,
        text_keys=text_keys,
    )


def translation_loss(
    logits: Tensor, text_ids: Tensor, text_mask: Tensor, label_smoothing: float = 0.2
) -> Tensor:
    """Token cross-entropy with label smoothing, averaged over the valid (non-padding) tokens.

    logits (B, L, V): `logits[:, l]` predicts `text_ids[:, l]`; text_mask (B, L) bool.
    """
    if logits.shape[:2] != text_ids.shape or text_mask.shape != text_ids.shape:
        raise ValueError(
            f"translation_loss: logits {tuple(logits.shape)}, text_ids {tuple(text_ids.shape)} "
            f"and text_mask {tuple(text_mask.shape)} disagree"
        )
    if not bool(text_mask.any()):
        raise ValueError("translation_loss: text_mask has no valid token")
    targets = text_ids.masked_fill(~text_mask, -100)  # (B, L)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=-100,
        label_smoothing=label_smoothing,
    )


def spoken_units(text: str, language: str) -> int:
    """len(text) in SignCL's margin: spoken words for German (whitespace-separated tokens with a
    letter or digit), characters for Chinese (letters and digits; punctuation and spaces
    dropped). At least 1, so an empty sentence cannot divide by zero."""
    if language == "zh":
        units = sum(1 for c in text if c.isalnum())
    else:
        units = sum(1 for w in text.split() if any(c.isalnum() for c in w))
    return max(1, units)


def signcl_margin_frames(
    video_frames: Tensor, text_units: Tensor, margin_min: float = 10.0, ratio: float = 2.3
) -> Tensor:
    """SignCL's margin in video frames (§4.1, A.2.1): max(margin_min, frames / words x ratio),
    the estimated frames of one gloss (a gloss is ~2.3 spoken words). (B,) float."""
    return torch.clamp(video_frames.double() / text_units.double() * ratio, min=margin_min)


def signcl_loss(
    frame_features: Tensor,
    lengths: Tensor,
    video_frames: Tensor,
    text_units: Tensor,
    margin_min: float = 10.0,
    ratio: float = 2.3,
    m: float = 64.0,
) -> Tensor:
    """SignCL frame-level contrastive loss (method §3), in the paper's units, deterministic.

    frame_features (B, T, D) with ``lengths`` (B,) valid feature steps; ``video_frames`` (B,) the
    clip's frames as loaded (before any temporal subsampling) and ``text_units`` (B,) its spoken
    words (``spoken_units``: characters for Chinese).

    The margin is the paper's, in video frames (``signcl_margin_frames``). It is converted to
    feature steps here and only here: a clip's T' steps cover its F video frames, so one step is
    F / T' frames (4 after the sign embedding's two stride-2 pools; more when the clip was
    subsampled to data.max_frames), and ``margin_steps = margin_frames * T' / F``. Positives
    are adjacent steps (|s - p| = 1, a few frames apart: the same sign); negatives are steps more
    than 2 x margin apart. Cap (so that every clip of at least 3 steps, i.e. about 9 frames, less
    than two signs, has negatives): 2 x margin_steps <= T' - 2, so at least the first and last
    step form a negative pair. The paper samples one positive and one negative per anchor frame;
    instead of sampling we take its expectation: for every valid anchor, the mean d over its
    positives plus the mean max(0, m - d) over its negatives (an empty mean counts 0), averaged
    over the anchors of a sample and then over the samples. d is Euclidean.
    """
    if frame_features.dim() != 3:
        raise ValueError(f"signcl_loss: expected (B, T, D), got {tuple(frame_features.shape)}")
    batch, frames, _ = frame_features.shape
    if any(t.shape != (batch,) for t in (lengths, video_frames, text_units)):
        raise ValueError("signcl_loss: lengths, video_frames and text_units must be (B,)")
    if bool((lengths < 1).any()) or bool((text_units < 1).any()):
        raise ValueError("signcl_loss: every sample needs >= 1 feature step and >= 1 word")
    if bool((video_frames < lengths).any()):
        raise ValueError("signcl_loss: a clip has fewer video frames than feature steps")
    device = frame_features.device
    lengths = lengths.to(device)
    margin_frames = signcl_margin_frames(video_frames, text_units, margin_min, ratio).to(device)
    # The one conversion from video frames to feature steps.
    margin = margin_frames * lengths.double() / video_frames.to(device).double()  # (B,) steps
    margin = torch.minimum(margin, (lengths.double() - 2).clamp(min=0) / 2)  # the cap
    dist = torch.cdist(
        frame_features, frame_features, compute_mode="donot_use_mm_for_euclid_dist"
    )  # (B, T, T)
    pos = torch.arange(frames, device=device)
    gap = (pos[:, None] - pos[None, :]).abs()  # (T, T)
    valid = pos[None, :] < lengths[:, None]  # (B, T)
    pair_valid = valid[:, :, None] & valid[:, None, :]  # (B, T, T)
    positive = pair_valid & (gap == 1)
    negative = pair_valid & (gap[None] > 2 * margin[:, None, None])
    zero = torch.zeros((), dtype=dist.dtype, device=device)
    pull = torch.where(positive, dist, zero).sum(2) / positive.sum(2).clamp(min=1)  # (B, T)
    hinge = torch.where(negative, F.relu(m - dist), zero)
    push = hinge.sum(2) / negative.sum(2).clamp(min=1)  # (B, T)
    per_sample = ((pull + push) * valid).sum(1) / lengths  # (B,)
    return per_sample.mean()
