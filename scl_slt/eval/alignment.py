"""Alignment quality of a model with a text branch (stage 1) on one split: retrieval and SDR.

Two measurements that show how well videos and sentences are aligned, independent of decoding:

* video->text and text->video retrieval of the split's projected token features, scored with
  the same all-pairs function as the loss (``retrieval.retrieval_from_features``), under the
  protocol of ``RetrievalConfig`` (``retrieval.duplicates``: how a sentence identical to the
  true one counts; coarse-grained over all candidates: R@1/5/10 in percent, median and mean
  rank; fine-grained over each query's ``retrieval.fine_k`` TF-IDF-closest different sentences:
  ``fine_*`` R@1/5, median rank). The settings go with the figures as ``retrieval_protocol``.
* the Sign Density Ratio (``density.sign_density_ratio``, lower is better) of the sign-embedding
  output, when every record of the split carries a frame->gloss ``alignment`` (the synthetic
  data does; the released datasets do not, and then no SDR is reported). The sign embedding
  downsamples time by ``SIGN_FEATURE_STRIDE`` (two ceil-mode max-pools of 2,
  ``sign_embedding.downsampled_lengths``), which maps alignment frames to feature rows.

``encode_split`` runs the model over a loader (under torch.distributed each rank encodes its
share; the shares are gathered and repeats of the sampler's padding dropped), and
``alignment_metrics`` scores what it returns. Both are used by stage 1 (``stage.retrieval_every``)
and by ``python -m scl_slt.evaluate`` for checkpoints that still hold the text branch. The
metrics are computed on rank 0 and broadcast, so every rank returns the same numbers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import RetrievalConfig, SimilarityMethod
from ..distributed import all_gather_object, broadcast_object, get_rank
from ..models.all_pairs import TokenSet
from .density import density_stats, gloss_instances
from .inference import EvalBatches, encode_batch
from .retrieval import retrieval_from_features

log = logging.getLogger(__name__)

SIGN_FEATURE_STRIDE = 4  # the sign embedding's temporal block: frames per sign-feature row
RETRIEVAL_KEYS = (
    "v2t_r1", "v2t_r5", "v2t_r10", "v2t_medr", "v2t_meanr",
    "t2v_r1", "t2v_r5", "t2v_r10", "t2v_medr", "t2v_meanr",
)  # fmt: skip
# fine-grained: r5 only when the protocol's fine_k_used >= 5
FINE_RETRIEVAL_KEYS = (
    "fine_v2t_r1", "fine_v2t_r5", "fine_v2t_medr", "fine_t2v_r1", "fine_t2v_r5", "fine_t2v_medr",
)  # fmt: skip


@dataclass
class EncodedSplit:
    """Per-sample features of a split, sorted by sample index (identical on every rank)."""

    indices: list[int]
    names: list[str]
    texts: list[str]
    video: TokenSet  # projected, L2-normalised visual tokens, packed (sum Tv_i, d) fp32
    text: TokenSet  # projected text tokens, packed (sum Lt_i, d) fp32
    sign_features: list[np.ndarray] | None  # (T'_i, D) fp32 valid rows, when requested

    def __len__(self) -> int:
        return len(self.indices)


def _valid(tokens: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    return tokens[mask.bool()].float().cpu().numpy()  # (n_valid, d)


def encode_split(
    model: torch.nn.Module,
    loader: Iterable[dict[str, Any] | None],
    device: torch.device | str,
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    with_sign_features: bool = False,
) -> EncodedSplit:
    """Encode every sample of ``loader`` (``with_text=True, with_decoder=False``), all ranks.

    The model is put in eval mode under no_grad and back in its previous mode afterwards. Batches
    that collated to None (every sample failed to load, ``data.on_bad_sample=skip``) are skipped
    and the samples missing from the result are logged. Raises ValueError when the model has no
    text branch (a stage-2 model).
    """
    batches = EvalBatches(model, loader, device)
    net = batches.net
    if getattr(net, "similarity", None) is None or getattr(net, "text_encoder", None) is None:
        raise ValueError("encode_split: the model has no text branch (stage 2 drops it)")
    local: dict[int, tuple] = {}
    for batch in batches:
        out = encode_batch(net, batch, autocast)
        names, texts = batch.host["names"], batch.host["texts"]
        for b, index in enumerate(batch.host["indices"].tolist()):
            sign = None
            if with_sign_features:
                sign = _valid(out.sign_features[b], out.sign_mask[b])  # (T'_i, D)
            local[int(index)] = (
                names[b],
                texts[b],
                _valid(out.video_proj[b], out.video_proj_mask[b]),  # (Tv_i, d)
                _valid(out.text_proj[b], out.text_proj_mask[b]),  # (Lt_i, d)
                sign,
            )
    merged: dict[int, tuple] = {}
    for part in all_gather_object(local):  # rank order; a padding repeat keeps its first copy
        for index, entry in part.items():
            merged.setdefault(index, entry)
    if not merged:
        raise RuntimeError("encode_split: the loader yielded no sample")
    batches.report_coverage(len(merged), "encoded")
    order = sorted(merged)
    entries = [merged[i] for i in order]

    def packed(column: int) -> TokenSet:
        rows = [e[column] for e in entries]
        return TokenSet(
            torch.from_numpy(np.concatenate(rows)), np.array([len(r) for r in rows], np.int64)
        )

    return EncodedSplit(
        indices=order,
        names=[e[0] for e in entries],
        texts=[e[1] for e in entries],
        video=packed(2),
        text=packed(3),
        sign_features=[e[4] for e in entries] if with_sign_features else None,
    )


def split_alignments(dataset: Any) -> list[list[list[int]]] | None:
    """The records' frame->gloss spans, or None when the split has none or they cannot be used.

    They cannot be used when a clip is longer than the dataset's ``max_frames``: it is then
    subsampled in time and the spans no longer index its frames.
    """
    records = getattr(dataset, "records", None)
    if not records or any("alignment" not in r for r in records):
        return None
    max_frames = getattr(dataset, "max_frames", None)
    if max_frames is not None and any(int(r.get("length") or 0) > max_frames for r in records):
        log.warning(
            "no sign density ratio: some clips exceed data.max_frames=%d and are subsampled, so "
            "their gloss alignments no longer match the frames",
            max_frames,
        )
        return None
    return [r["alignment"] for r in records]


def alignment_metrics(
    encoded: EncodedSplit,
    method: SimilarityMethod | str,
    tau: float,
    protocol: RetrievalConfig,
    language: str,
    alignments: Sequence[Sequence[Sequence[int]]] | None = None,
    stride: int = SIGN_FEATURE_STRIDE,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Coarse- and fine-grained retrieval (both directions, ``RETRIEVAL_KEYS`` and
    ``FINE_RETRIEVAL_KEYS``) under ``protocol`` with its ``retrieval_protocol`` entry
    (``language``: the TF-IDF terms of the fine-grained rule) and, given ``alignments`` (one list
    of ``[gloss, start, end)`` per sample of the *split*, indexed like the dataset) and sign
    features, ``sdr`` with the number of glosses it averages (``sdr_glosses``).

    Computed on rank 0 and broadcast. ``sdr`` is left out (with a warning) when no gloss occurs
    twice, e.g. on a very small split.
    """
    metrics: dict[str, Any] | None = None
    if get_rank() == 0:
        found = retrieval_from_features(
            encoded.video, encoded.text, method, tau, encoded.texts, protocol, language, device
        )
        keys = [k for k in (*RETRIEVAL_KEYS, *FINE_RETRIEVAL_KEYS) if k in found]
        metrics = {key: float(found[key]) for key in keys}
        metrics["retrieval_protocol"] = found["retrieval_protocol"]
        metrics["retrieval_samples"] = len(encoded)
        if alignments is not None and encoded.sign_features is not None:
            metrics.update(_density(encoded, alignments, stride))
    return broadcast_object(metrics)


def _density(
    encoded: EncodedSplit, alignments: Sequence[Sequence[Sequence[int]]], stride: int
) -> dict[str, float]:
    spans = [alignments[i] for i in encoded.indices]
    embeddings, gloss_ids = gloss_instances(encoded.sign_features, spans, stride)
    try:
        stats = density_stats(embeddings, gloss_ids)
        return {"sdr": stats.sdr, "sdr_glosses": int((~np.isnan(stats.sdr_per_gloss)).sum())}
    except ValueError as e:  # fewer than two glosses, or none with two instances
        log.warning("no sign density ratio on %d samples: %s", len(encoded), e)
        return {}


def evaluate_alignment(
    model: torch.nn.Module,
    loader: Iterable[dict[str, Any] | None],
    method: SimilarityMethod | str,
    tau: float,
    device: torch.device | str,
    protocol: RetrievalConfig,
    language: str,
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, Any]:
    """``encode_split`` + ``alignment_metrics`` over a loader's dataset (SDR when it has spans)."""
    alignments = split_alignments(getattr(loader, "dataset", None))
    encoded = encode_split(model, loader, device, autocast, with_sign_features=bool(alignments))
    return alignment_metrics(encoded, method, tau, protocol, language, alignments, device=device)
