"""Translate a split, gather the translations of all ranks, score them once, write them out.

Used by training (dev evaluation each ``eval_every`` epochs, which picks the best checkpoint)
and by ``python -m scl_slt.evaluate`` (any checkpoint on any split). Two rules hold here:

* References are the raw strings of the batch (``batch["texts"]``), never text decoded from
  token ids: decoding ids would score the tokenizer's round trip, not the dataset's sentence.
* Under torch.distributed every rank translates its share, the rows of all ranks are gathered
  (``DistributedSampler`` pads the last round with repeated samples, which are dropped by index),
  and the corpus metrics are computed once on the whole split. Corpus BLEU is not the mean of
  per-rank BLEU; the gathered result equals the single-process one.

Samples that fail to load (``data.on_bad_sample=skip``) are dropped by the collate function; a
batch of which none loaded arrives as None and is skipped (no collective runs per batch here,
so ranks need not agree). The samples missing from the gathered rows are counted and logged,
and the metrics cover the translated ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from ..config import GenerationConfig
from ..data.batching import BatchLoader
from ..distributed import all_gather_object, get_rank, get_world_size, is_initialized
from ..rundir.atomic import write_json_atomic, write_text_atomic
from ..training.runtime import observer_generator
from .inference import EvalBatches
from .metrics import TOKEN_LEVEL, compute_metrics

log = logging.getLogger(__name__)

SPLIT_PURPOSE = {
    "dev": "model selection: training chooses the best checkpoint on this split",
    "test": (
        "final evaluation only: the checkpoint was chosen on dev during training; "
        "test scores must never be used to choose a checkpoint or a setting"
    ),
    "train": "diagnostic only: scores on the training data",
}
ROW_FIELDS = ("index", "name", "hypothesis", "reference")


def override_generation(
    base: GenerationConfig,
    num_beams: int | None = None,
    max_length: int | None = None,
    length_penalty: float | None = None,
) -> GenerationConfig:
    """``base`` with the given (non-None) decoding settings replaced; values are checked."""
    changes = {
        k: v
        for k, v in (
            ("num_beams", num_beams),
            ("max_length", max_length),
            ("length_penalty", length_penalty),
        )
        if v is not None
    }
    generation = dataclasses.replace(base, **changes)
    if generation.num_beams < 1:
        raise ValueError(f"num_beams: must be >= 1, got {generation.num_beams}")
    if generation.max_length < 1:
        raise ValueError(f"max_length: must be >= 1, got {generation.max_length}")
    return generation


def build_eval_loader(
    dataset: Dataset,
    collate_fn: Callable,
    batch_size: int,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader over the whole split in order; under torch.distributed each rank gets a share.
    ``pin_memory`` for a CUDA device (page-locked batches, asynchronous copies).

    ``DistributedSampler`` (no shuffle, no drop) repeats the first samples so every rank has the
    same number of batches; ``gather_rows`` drops the repeats again.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    sampler = None
    if is_initialized():
        sampler = DistributedSampler(
            dataset, num_replicas=get_world_size(), rank=get_rank(), shuffle=False, drop_last=False
        )
    # In order (no shuffle), workers not kept between evaluations (the defaults); a generator of
    # its own, so evaluating never draws from the training's random stream.
    return BatchLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        generator=observer_generator(),
    )


def _one_line(text: str) -> str:
    """Whitespace runs (line breaks, tabs) collapsed to one space.

    Score-neutral: both tokenizations split on whitespace (de) or drop it (zh); it keeps every
    hypothesis on one line of the text files.
    """
    return " ".join(text.split())


def _length(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def gather_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of every rank, one per sample index, sorted by index (identical on all ranks).

    A repeated index (sampler padding) keeps its first occurrence in rank order; a repeat whose
    name or reference disagrees means ranks see different datasets and raises RuntimeError.
    """
    by_index: dict[int, dict[str, Any]] = {}
    for rank, rank_rows in enumerate(all_gather_object(rows)):
        for row in rank_rows:
            seen = by_index.get(row["index"])
            if seen is None:
                by_index[row["index"]] = row
            elif (seen["name"], seen["reference"]) != (row["name"], row["reference"]):
                raise RuntimeError(
                    f"sample index {row['index']} is {seen['name']!r} on one rank and "
                    f"{row['name']!r} on rank {rank}: ranks must evaluate the same split"
                )
    return [by_index[i] for i in sorted(by_index)]


def question_of(host: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's question for ``generate`` (ids and mask on ``device``); none without one."""
    if "question_ids" not in host:
        return {}
    return {k: host[k].to(device) for k in ("question_ids", "question_mask")}


def translate_loader(
    model: torch.nn.Module,
    loader: Iterable[dict[str, Any]],
    tokenizer: Any,
    generation: GenerationConfig,
    device: torch.device | str,
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Generate a translation for every sample of ``loader``; rows of all ranks, by index.

    Each row is ``{index, name, hypothesis, reference}``; ``reference`` is the batch's raw text.
    ``autocast`` is a factory of the precision context (the caller decides precision). The model
    is put in eval mode for the pass and back in its previous mode afterwards. ``progress``
    shows a progress bar on rank 0. None batches (no sample loaded) are skipped and counted.
    """
    batches = EvalBatches(model, loader, device)
    show = progress and get_rank() == 0
    rows: list[dict[str, Any]] = []
    for batch in tqdm(batches, desc="translate", disable=not show, total=_length(loader)):
        with autocast():
            ids = batches.net.generate(
                batch.inputs,
                batch.input_lengths,
                num_beams=generation.num_beams,
                max_length=generation.max_length,
                length_penalty=generation.length_penalty,
                **question_of(batch.host, batch.inputs.device),  # question-based SLT
            )  # (B, L)
        hypotheses = tokenizer.decode(ids.cpu())
        texts, names = batch.host["texts"], batch.host["names"]
        indices = batch.host["indices"].tolist()
        if not (len(hypotheses) == len(texts) == len(names) == len(indices)):
            raise RuntimeError(
                f"batch of {len(texts)} samples gave {len(hypotheses)} decoded hypotheses"
            )
        for index, name, hypothesis, reference in zip(indices, names, hypotheses, texts):
            rows.append(
                {
                    "index": int(index),
                    "name": name,
                    "hypothesis": _one_line(hypothesis),
                    "reference": reference,
                }
            )
    gathered = gather_rows(rows)
    batches.report_coverage(len(gathered), "translated")
    return gathered


def score_rows(rows: list[dict[str, Any]], language: str) -> dict[str, Any]:
    """BLEU-1..4 and ROUGE-L of gathered rows (``translate_loader``), the same on every rank."""
    if not rows:
        raise RuntimeError("the evaluation loader yielded no samples")
    hypotheses = [r["hypothesis"] for r in rows]
    return compute_metrics(hypotheses, [r["reference"] for r in rows], language)


def evaluation_meta(
    split: str,
    checkpoint: str,
    generation: GenerationConfig,
    language: str,
    **extra: Any,
) -> dict[str, Any]:
    """What ``metrics.json`` records about how the numbers were obtained."""
    return {
        "split": split,
        "split_purpose": SPLIT_PURPOSE.get(split, "custom split"),
        "checkpoint": checkpoint,
        "language": language,
        "token_level": TOKEN_LEVEL[language],
        "generation": dataclasses.asdict(generation),
        **extra,
    }


def _check_rows(rows: list[dict[str, Any]]) -> None:
    if not rows:
        raise ValueError("no prediction rows to write")
    for row in rows:
        missing = [k for k in ROW_FIELDS if k not in row]
        if missing:
            raise ValueError(f"prediction row {row!r} lacks {missing}")
        for key in ("name", "hypothesis", "reference"):
            if any(c in row[key] for c in "\t\n\r"):
                raise ValueError(
                    f"sample {row['name']!r}: {key} contains a tab or line break, which the "
                    "one-line-per-sample files cannot hold"
                )


def write_predictions(
    out_dir: str | os.PathLike,
    rows: list[dict[str, Any]],
    metrics: dict[str, Any],
    meta: dict[str, Any],
    alignment: dict[str, Any] | None = None,
) -> Path:
    """Write ``predictions.tsv``, ``hypotheses.txt``, ``references.txt`` and ``metrics.json``.

    Each file is written to a temporary name and renamed, ``metrics.json`` last, so a present
    ``metrics.json`` means the other three are complete. ``alignment`` (retrieval and SDR of a
    checkpoint with a text branch, ``alignment_metrics.py``) goes into ``metrics.json`` as its
    own section. Call it on one rank (rank 0).
    """
    _check_rows(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tsv = ["name\thypothesis\treference"]
    tsv += [f"{r['name']}\t{r['hypothesis']}\t{r['reference']}" for r in rows]
    write_text_atomic(out / "predictions.tsv", "\n".join(tsv) + "\n")
    write_text_atomic(out / "hypotheses.txt", "".join(r["hypothesis"] + "\n" for r in rows))
    write_text_atomic(out / "references.txt", "".join(r["reference"] + "\n" for r in rows))
    scores = {k: v for k, v in metrics.items() if k != "bleu_signature"}
    record = {
        "metrics": scores,
        "bleu_signature": metrics.get("bleu_signature"),
        "num_samples": len(rows),
        "meta": meta,
    }
    if alignment is not None:
        record["alignment"] = alignment
    write_json_atomic(out / "metrics.json", record)
    log.info("wrote %d predictions and metrics to %s", len(rows), out)
    return out
