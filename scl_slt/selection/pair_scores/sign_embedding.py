"""The sign embeddings SAN mines hard negatives with (``selection=san``, ``hard_negatives.py``).

One vector per training clip: the chosen checkpoint's sign-embedding output (``ModelOutput
.sign_features``, (B, T', D), the ResNet / identity features after the x4 temporal block, before
the visual encoder), averaged over the valid time steps (``sign_mask``) and L2-normalised, so the
dot product of two rows is the cosine of two clips. SAN measures visual confusability in this space
(not in the contrastive projection): what the signs look like to the model, before the encoder
mixes in context.

``selection.checkpoint`` is a stage-1 run folder (its best checkpoint, else its last) or a
checkpoint folder; the model is built from that run's config and loaded through the stage
hand-off (``models/handoff.load_trained_model``), then encodes the *current* run's train split
(dataset order, no augmentation, every clip required) in one eval pass (``eval/inference
.EvalBatches``). The result is cached under the run as ``selection/san_embeddings.npy`` (N x D
float32) with a ``.json`` record (checkpoint, its weights' SHA-256, the split's names, the data
config, the embeddings' SHA-256); a run that resumes, or restarts with the same inputs, reuses it.
Under torch.distributed rank 0 encodes and writes, the other ranks wait and read the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import distributed
from ...config import BadSample, ConfigError, DataConfig, to_container
from ...data.batching import BatchLoader, Collator
from ...data.datasets import build_split
from ...eval.inference import EmptyBatch, EvalBatches
from ...models.handoff import load_trained_model, locate_checkpoint
from ...rundir.atomic import atomic_path, write_json_atomic
from ...rundir.checkpoint import MODEL_FILE, read_marker, run_dir_of
from ...rundir.layout import load_run_config
from ...training.runtime import observer_generator
from ..tracker import names_hash
from .score_file import record_matches, record_path

log = logging.getLogger(__name__)

EMBEDDINGS_FILE = "san_embeddings.npy"  # under <run_dir>/selection/


def pool_sign_features(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T', D) features, (B, T') bool mask -> (B, D) float32: the mean over valid steps,
    L2-normalised. A clip without a valid step is an error (its mean is undefined)."""
    mask = mask.bool()
    counts = mask.sum(dim=1)
    if (counts == 0).any():
        raise ValueError(f"sign features: clip(s) {torch.nonzero(counts == 0).flatten().tolist()} "
                         "of the batch have no valid time step")  # fmt: skip
    summed = (features.float() * mask[..., None]).sum(dim=1)
    return torch.nn.functional.normalize(summed / counts[:, None], dim=-1)


def pooled_sign_embeddings(
    model: torch.nn.Module,
    loader: Any,
    device: torch.device | str,
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> np.ndarray:
    """(N, D) float32 pooled, normalised sign embeddings of every sample of ``loader.dataset``,
    in dataset order (each index exactly once, else ValueError)."""
    batches = EvalBatches(
        model, loader, device, require_all=True,
        empty_message="a SAN embedding batch had no loadable sample: every train clip is needed",
    )  # fmt: skip
    rows: dict[int, np.ndarray] = {}
    try:
        for batch in batches:
            with autocast():
                out = batches.net(
                    batch.inputs, batch.input_lengths, with_text=False, with_decoder=False,
                    colour=batch.colour,
                )  # fmt: skip
            pooled = pool_sign_features(out.sign_features, out.sign_mask).cpu().numpy()
            for b, index in enumerate(batch.host["indices"].tolist()):
                if index in rows:
                    raise ValueError(f"san embeddings: sample index {index} encoded twice")
                rows[index] = pooled[b]
    except EmptyBatch as e:
        raise ValueError(str(e)) from None
    n = len(loader.dataset)
    missing = [i for i in range(n) if i not in rows]
    if missing or len(rows) != n:
        raise ValueError(
            f"san embeddings: {len(missing)} of {n} samples not encoded: {missing[:10]}"
        )
    return np.stack([rows[i] for i in range(n)]).astype(np.float32)


def _sha256(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def embeddings_key(checkpoint_dir: Path, names: Sequence[str], data: DataConfig) -> dict[str, Any]:
    """What the cached embeddings depend on: the checkpoint (folder and weights digest), the
    train split's sample order, and the data config (loader workers and bad-sample rule aside)."""
    weights = read_marker(checkpoint_dir)["files"][MODEL_FILE]["sha256"]
    data_dict = {
        k: v for k, v in to_container(data).items() if k not in ("num_workers", "on_bad_sample")
    }
    return {
        "strategy": "san",
        "method": "sign_features mean-pooled over valid steps, L2-normalised",
        "checkpoint": str(checkpoint_dir.resolve()),
        "weights_sha256": weights,
        "names_sha256": names_hash(names),
        "data_sha256": _sha256(data_dict),
    }


@dataclasses.dataclass
class SignEmbeddings:
    """The run's SAN embeddings (N, D) and their record (``embeddings_key`` plus the digest)."""

    vectors: np.ndarray
    record: dict[str, Any]
    path: Path


def encode_train_split(
    checkpoint_dir: Path, data: DataConfig, names: Sequence[str], device: torch.device | str
) -> np.ndarray:
    """Load the checkpoint (its run's config and tokenizer) and embed the train split of ``data``
    in dataset order; ``names`` must be that split's sample names."""
    ckpt_run = run_dir_of(checkpoint_dir)
    train_cfg = load_run_config(ckpt_run)
    tokenizer, model, _ = load_trained_model(train_cfg, ckpt_run, str(checkpoint_dir), device)
    width = train_cfg.model.sign_embedding.feature_dim
    every_clip = dataclasses.replace(data, on_bad_sample=BadSample.error)
    dataset = build_split(every_clip, "train", train=False, feature_dim=width)
    if dataset.names != list(names):
        raise ValueError("selection=san: the split encoded is not the training split (names)")
    loader = BatchLoader(
        dataset, batch_size=train_cfg.stage.eval_batch_size, shuffle=False,
        collate_fn=Collator(tokenizer), num_workers=data.num_workers,
        generator=observer_generator(),
    )  # fmt: skip
    return pooled_sign_embeddings(model, loader, device)


def prepare_sign_embeddings(
    checkpoint: str | os.PathLike | None,
    data: DataConfig | None,
    names: Sequence[str] | None,
    device: torch.device | str | None,
    run_dir: str | os.PathLike | None,
) -> SignEmbeddings:
    """The run's SAN embeddings: computed once into ``<run_dir>/selection/san_embeddings.npy``
    and reused while the record beside it matches (module docstring)."""
    if not checkpoint:
        raise ConfigError(
            "selection.checkpoint: selection.name=san needs a stage-1 run folder or checkpoint"
        )
    if data is None or names is None or run_dir is None:
        raise ConfigError(
            "selection.name: san needs the run's data config, train names and run_dir "
            "(build_batch_sampler(..., data=..., names=..., run_dir=...))"
        )
    checkpoint_dir, _ = locate_checkpoint(checkpoint, "best")
    key = embeddings_key(checkpoint_dir, names, data)
    path = Path(run_dir) / "selection" / EMBEDDINGS_FILE

    def prepare() -> None:  # rank 0; the others wait and get its failure, if any
        if record_matches(path, key):
            log.info("san: reusing the sign embeddings in %s", path)
            return
        started = time.time()
        vectors = encode_train_split(checkpoint_dir, data, names, device or "cpu")
        path.parent.mkdir(parents=True, exist_ok=True)
        record_path(path).unlink(missing_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, vectors)
        record = {
            **key,
            "embeddings_sha256": hashlib.sha256(vectors.tobytes()).hexdigest(),
            "shape": list(vectors.shape),
            "seconds": round(time.time() - started, 2),
        }
        write_json_atomic(record_path(path), record)
        log.info("san: %d sign embeddings (D=%d) from %s in %.1fs -> %s",
                 *vectors.shape, checkpoint_dir, record["seconds"], path)  # fmt: skip

    distributed.on_main_process(prepare)
    vectors = np.load(path)
    record = json.loads(record_path(path).read_text())
    if vectors.shape[0] != len(names) or not np.isfinite(vectors).all():
        raise ValueError(f"{path}: {vectors.shape} embeddings (non-finite?) for {len(names)} clips")
    return SignEmbeddings(vectors, record, path)
