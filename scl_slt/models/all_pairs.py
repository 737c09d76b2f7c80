"""Score every (video, text) pair of two token-feature collections with `pairwise_similarity`.

The tracker stores, per snapshot, the projected token features of every training sample
(`TokenSet`: packed (sum T_i, d) features + lengths). Trajectory scoring and retrieval need the
similarity of all Nv x Nt pairs (up to 18,401^2 on CSL-Daily), which does not fit the batch
path's (Nv, Nt, T, L) intermediate. `score_all_pairs` gives the same numbers block by block:

- length bucketing: videos and texts are sorted by length and cut into blocks of similar length,
  so padding to the block maximum wastes little work;
- one GEMM per (video block, text block): all frame-token products e = v . t of the block at
  once, then a handful of elementwise passes and reductions over a buffer that stays in cache;
- the softmaxes need no per-row maximum: features are unit vectors, so every logit e / tau is at
  most c = max|v| max|t| / tau, and exp(e / tau - c) can neither overflow nor (for 2c < 80)
  underflow in fp32. The shift -c and the padding mask (-1e4 on padded rows / columns, which
  exp turns into exact zeros) ride in two extra feature columns, so the GEMM output is already
  the shifted, masked logit. Inputs outside that range (not normalised, tiny tau) fall back to
  `pairwise_similarity` itself on each block;
- memory beyond the inputs: the packed text side (about the text features in the compute
  dtype), a working buffer of 2 x `block_elements` fp32 values, and one row block of the result;
  `out` may be a memory-mapped `.npy` written row block by row block, so the N x N matrix never
  needs to be in memory.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from scl_slt.config import SimilarityMethod
from scl_slt.models.similarity import as_method, pairwise_similarity

log = logging.getLogger(__name__)

_PAD_LOGIT = -1.0e4  # added to the logit of any pair involving a padded position: exp -> 0
_MAX_LOGIT_RANGE = 80.0  # exp(-80) is a normal fp32 number: no row can underflow to all zeros


@dataclass
class TokenSet:
    """Variable-length token features of N samples, packed: sample i owns rows
    offsets[i] : offsets[i] + lengths[i] of `features` (sum T_i, d). fp16 or fp32."""

    features: Tensor | np.ndarray
    lengths: Tensor | np.ndarray

    def __post_init__(self) -> None:
        if isinstance(self.features, np.ndarray):
            features = np.ascontiguousarray(self.features)
            if not features.flags.writeable:  # a read-only memmap (snapshot): load it
                features = np.array(features)
            self.features = torch.from_numpy(features)
        lengths = np.asarray(
            self.lengths.cpu() if isinstance(self.lengths, Tensor) else self.lengths
        )
        if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
            raise ValueError(f"TokenSet.lengths: expected (N,) integers, got {lengths.dtype}")
        self.lengths = lengths.astype(np.int64)
        if self.features.dim() != 2:
            raise ValueError(
                f"TokenSet.features: expected (sum T_i, d), got {tuple(self.features.shape)}"
            )
        if (self.lengths < 1).any():
            raise ValueError("TokenSet.lengths: every sample needs at least one token")
        if int(self.lengths.sum()) != self.features.shape[0]:
            raise ValueError(
                f"TokenSet: lengths sum to {int(self.lengths.sum())} but features have "
                f"{self.features.shape[0]} rows"
            )

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    @classmethod
    def from_padded(cls, tokens: Tensor, mask: Tensor) -> TokenSet:
        """Pack (N, T, d) tokens with an (N, T) bool mask; valid tokens must come first."""
        lengths = mask.sum(dim=1)
        positions = torch.arange(mask.shape[1], device=mask.device)
        if not torch.equal(mask, positions[None, :] < lengths[:, None]):
            raise ValueError("TokenSet.from_padded: mask must be right-padded")
        return cls(tokens[mask].detach().cpu(), lengths.cpu().numpy())

    def padded(self, indices: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
        """(n, T_max, d) zero-padded features and (n, T_max) mask of the given samples."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices)
        lengths = self.lengths[idx]
        max_len = int(lengths.max())
        rows, valid = _gather_rows(self.offsets[idx], lengths, max_len)
        feats = self.features[torch.from_numpy(rows)]  # (n * T_max, d)
        feats = feats * torch.from_numpy(valid)[:, None].to(feats.dtype)
        return feats.view(len(idx), max_len, -1), torch.from_numpy(valid).view(len(idx), max_len)


def _gather_rows(offsets: np.ndarray, lengths: np.ndarray, max_len: int):
    """Packed-row index of every (sample, position < max_len) and whether it is valid."""
    pos = np.arange(max_len)[None, :]  # (1, T)
    valid = pos < lengths[:, None]  # (n, T)
    rows = np.where(valid, offsets[:, None] + pos, 0)  # padding reads row 0, then is masked
    return rows.reshape(-1), valid.reshape(-1)


@dataclass
class _Block:
    """Samples of similar length, padded to a common length and packed for one GEMM side.

    Video rows are frame-major per sample (row = sample * T + frame); text rows are
    position-major (row = position * n + sample), so that both reductions of a block run over
    an outer dimension with a long contiguous inner one.
    """

    ids: np.ndarray  # (n,) sample indices into the TokenSet
    packed: Tensor  # (n * max_len, d + 2) on the compute device and dtype
    pad: Tensor  # video (n, max_len, 1) / text (max_len, n): 1.0 at padding, fp32
    inv_lengths: Tensor  # (n,) 1 / length, fp32

    @property
    def max_len(self) -> int:
        return self.packed.shape[0] // len(self.ids)


def length_blocks(lengths: np.ndarray, target_rows: int) -> list[np.ndarray]:
    """Sample ids sorted by length, cut into blocks whose count x longest stays within
    `target_rows` (a block holds at least one sample): the length bucketing of the scorer."""
    order = np.argsort(lengths, kind="stable")
    blocks, start = [], 0
    for end in range(1, len(order) + 1):
        if end == len(order) or (end + 1 - start) * lengths[order[end]] > target_rows:
            blocks.append(order[start:end])
            start = end
    return blocks


def _pack(
    tokens: TokenSet,
    ids: np.ndarray,
    side: str,
    tau: float,
    shift: float,
    device: torch.device,
    dtype: torch.dtype,
) -> _Block:
    """Pad one block and append the two columns that fold the shift and the mask into the GEMM.

    Video rows: [v / tau, 1, 0 or PAD]; text rows: [t, -shift or PAD, 1]. Their product is
    e / tau - shift for a valid pair and about PAD (exp -> 0) for any pair touching padding.
    """
    lengths = tokens.lengths[ids]
    max_len = int(lengths.max())
    rows, valid = _gather_rows(tokens.offsets[ids], lengths, max_len)  # sample-major
    if side == "text":  # position-major: row = position * n + sample
        rows = rows.reshape(len(ids), max_len).T.reshape(-1)
        valid = valid.reshape(len(ids), max_len).T.reshape(-1)
    feats = tokens.features[torch.from_numpy(rows)].to(device=device, dtype=torch.float32)
    valid_t = torch.from_numpy(valid).to(device)[:, None]  # (rows, 1)
    feats = feats * valid_t  # (rows, d)
    pad_logit = torch.where(valid_t, 0.0, _PAD_LOGIT)  # (rows, 1)
    one = torch.ones_like(pad_logit)
    pad = (~valid_t).float()
    if side == "video":
        packed = torch.cat([feats / tau, one, pad_logit], dim=1)
        pad = pad.view(len(ids), max_len, 1)
    else:
        packed = torch.cat([feats, torch.where(valid_t, -shift, pad_logit), one], dim=1)
        pad = pad.view(max_len, len(ids))
    return _Block(
        ids=ids,
        packed=packed.to(dtype).contiguous(),
        pad=pad,
        inv_lengths=1.0 / torch.from_numpy(lengths).to(device=device, dtype=torch.float32),
    )


def _cico_block(
    video: _Block, text: _Block, tau: float, shift: float, buffer: Tensor, dtype: torch.dtype
) -> Tensor:
    """CiCo scores of one (video block, text block): (n_video, n_text), fp32."""
    nv, tv = len(video.ids), video.max_len
    nt, lt = len(text.ids), text.max_len
    rows, cols = nv * tv, nt * lt
    work = buffer[: 2 * rows * cols].view(2, rows, cols)
    weights, logits = work[0], work[1]  # X = exp(E'), E' = e / tau - shift
    if dtype == torch.float32:
        torch.mm(video.packed, text.packed.T, out=logits)
    else:
        logits.copy_(video.packed @ text.packed.T)
    torch.exp(logits, out=weights)
    logits.mul_(weights)  # X * E'
    # video -> text: per frame, the softmax over the text's tokens; then the mean over frames.
    per_frame = work.view(2, nv, tv, lt, nt).sum(dim=3)  # (2, nv, tv, nt)
    v2t = (per_frame[1] / (per_frame[0] + video.pad)).sum(dim=1)  # (nv, nt); padded frames 0
    # text -> video: per token, the softmax over the video's frames; then the mean over tokens.
    per_token = work.view(2, nv, tv, lt, nt).sum(dim=2)  # (2, nv, lt, nt)
    t2v = (per_token[1] / (per_token[0] + text.pad)).sum(dim=1)  # (nv, nt)
    both = v2t.mul_(video.inv_lengths[:, None]).add_(t2v.mul_(text.inv_lengths[None, :]))
    return both.add_(2 * shift).mul_(tau / 2)


def _exact_block(video: TokenSet, vids, text: TokenSet, tids, tau, device) -> Tensor:
    """The batch path itself on one block: for inputs the shifted exp cannot take."""
    v, vm = video.padded(vids)
    t, tm = text.padded(tids)
    return pairwise_similarity(
        v.to(device, torch.float32), vm.to(device), t.to(device, torch.float32), tm.to(device),
        SimilarityMethod.cico, tau,
    )  # fmt: skip


def _open_output(out, shape: tuple[int, int], out_dtype) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=out_dtype)
    if isinstance(out, (str, os.PathLike)):
        return np.lib.format.open_memmap(os.fspath(out), mode="w+", dtype=out_dtype, shape=shape)
    if not isinstance(out, np.ndarray) or out.shape != shape:
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"score_all_pairs: out must be a path or an array of shape {shape}, got {got}"
        )
    return out


def default_block_elements(device: torch.device | str) -> int:
    """Frame x token products per block: 4 MB fp32 on CPU (the working pair of buffers stays
    near the L2/L3 caches), 256 MB on CUDA.

    The blocking decides the summation order, so another size changes the last bits of the
    scores (and, through fp16 pair scores, a curriculum's picks): results recorded with this
    default reproduce only with it. On a 2-core x86 host 2^19 was 5 % faster at PHOENIX14T train
    scale (scripts/bench_all_pairs.py: 117.6 s against 123.3 s); pass ``block_elements`` for it.
    """
    return 2**26 if torch.device(device).type == "cuda" else 2**20


def padded_products(
    video_lengths: np.ndarray, text_lengths: np.ndarray, block_elements: int
) -> int:
    """Frame x token products the blocked scorer computes, padding included (for reports on
    how much work length bucketing wastes)."""
    side = max(1, math.isqrt(block_elements))
    rows = sum(len(b) * int(video_lengths[b].max()) for b in length_blocks(video_lengths, side))
    cols = sum(len(b) * int(text_lengths[b].max()) for b in length_blocks(text_lengths, side))
    return rows * cols


def score_all_pairs(
    video: TokenSet,
    text: TokenSet,
    method: SimilarityMethod | str,
    tau: float,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    block_elements: int | None = None,
    out: str | os.PathLike | np.ndarray | None = None,
    out_dtype: np.dtype | type = np.float32,
    workers: int | None = None,
) -> np.ndarray:
    """S[i, j] = pairwise_similarity(video i, text j) for every pair: (Nv, Nt) numpy array.

    `device` (default CPU) and `dtype` (default fp32 on CPU, bf16 on CUDA) set where and in what
    precision the products are taken; reductions are fp32. `block_elements` bounds the frame x
    token products per block (default 2^20 on CPU, 2^26 on CUDA). `out`: a `.npy` path (created
    as a memory map), or an existing (Nv, Nt) array (e.g. an `open_memmap`), written in place and
    returned; `out_dtype` is the dtype of a newly created result. `workers`: CPU threads, each
    scoring its own row blocks (default: torch's intra-op thread count; 1 on CUDA).
    """
    method = as_method(method)
    device = torch.device(device if device is not None else "cpu")
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if block_elements is None:
        block_elements = default_block_elements(device)
    if workers is None:
        workers = torch.get_num_threads() if device.type == "cpu" else 1
    if video.dim != text.dim:
        raise ValueError(f"score_all_pairs: feature dims differ: {video.dim} vs {text.dim}")
    if tau <= 0:
        raise ValueError(f"score_all_pairs: tau must be positive, got {tau}")
    result = _open_output(out, (len(video), len(text)), out_dtype)
    if method is not SimilarityMethod.cico:
        if (video.lengths != 1).any() or (text.lengths != 1).any():
            raise ValueError(f"score_all_pairs: method {method.value!r} needs one token per sample")
        return _score_pooled(video, text, device, dtype, block_elements, result)

    return _score_cico(video, text, tau, device, dtype, block_elements, result, workers)


def _max_norm(features: Tensor, rows: int = 65536) -> float:
    """Largest row norm, in chunks so no fp32 copy of all features is made."""
    return max(
        float(features[i : i + rows].float().norm(dim=1).max())
        for i in range(0, len(features), rows)
    )


def _score_cico(video, text, tau, device, dtype, block_elements, result, workers) -> np.ndarray:
    shift = _max_norm(video.features) * _max_norm(text.features) / tau
    fast = 2 * shift < _MAX_LOGIT_RANGE
    if not fast:
        log.warning(
            "score_all_pairs: max|v| max|t| / tau = %.1f is too large for the shifted exp; "
            "scoring block by block with pairwise_similarity (slower)",
            shift,
        )
    shift = float(torch.tensor(shift).to(dtype))  # the GEMM sees the shift in `dtype`
    side = max(1, math.isqrt(block_elements))
    video_blocks = length_blocks(video.lengths, side)
    text_blocks = length_blocks(text.lengths, side)
    unsort = torch.from_numpy(np.argsort(np.concatenate(text_blocks))).to(device)
    if fast:
        text_packed = [_pack(text, ids, "text", tau, shift, device, dtype) for ids in text_blocks]
        widest = max(b.packed.shape[0] for b in text_packed)
        tallest = max(len(ids) * int(video.lengths[ids].max()) for ids in video_blocks)
    buffers = threading.local()  # one (X, X * E') working buffer per worker thread

    def score_rows(vids: np.ndarray) -> None:
        row = torch.empty(len(vids), len(text), device=device)  # (nv, Nt), sorted text order
        col = 0
        if fast:
            if not hasattr(buffers, "work"):
                buffers.work = torch.empty(2 * tallest * widest, device=device)
            vblock = _pack(video, vids, "video", tau, shift, device, dtype)
            for tblock in text_packed:
                scores = _cico_block(vblock, tblock, tau, shift, buffers.work, dtype)  # (nv, nt)
                row[:, col : col + len(tblock.ids)] = scores
                col += len(tblock.ids)
        else:
            for tids in text_blocks:
                row[:, col : col + len(tids)] = _exact_block(video, vids, text, tids, tau, device)
                col += len(tids)
        result[vids] = row.index_select(1, unsort).cpu().numpy()  # rows of distinct blocks

    _run_blocks(score_rows, video_blocks, workers)
    if isinstance(result, np.memmap):
        result.flush()
    return result


def _run_blocks(task, blocks: list[np.ndarray], workers: int) -> None:
    """Run `task` on every block, on `workers` threads that each use one intra-op thread.

    Coarse-grained parallelism (one block per thread) replaces torch's per-operation threading:
    the per-block operations are small, and splitting each of them across cores costs a
    synchronisation per operation, which stalls badly when the cores are shared with other
    processes. torch's thread count is restored afterwards.
    """
    if workers <= 1:
        for block in blocks:
            task(block)
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(task, blocks))  # re-raises a worker's exception here
    finally:
        torch.set_num_threads(previous)


def _score_pooled(video, text, device, dtype, block_elements, result) -> np.ndarray:
    """Pooled methods: one vector per sample, so the score matrix is a chunked V @ T^T."""
    text_feats = text.features.to(device=device, dtype=dtype)  # (Nt, d)
    rows = max(1, block_elements // max(1, len(text)))
    for start in range(0, len(video), rows):
        chunk = video.features[start : start + rows].to(device=device, dtype=dtype)  # (r, d)
        result[start : start + rows] = (chunk @ text_feats.T).float().cpu().numpy()
    if isinstance(result, np.memmap):
        result.flush()
    return result
