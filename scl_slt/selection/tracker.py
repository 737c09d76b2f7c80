"""Snapshots of a reference run (method §4.1): what is needed to score every train pair later.

A tracked contrastive run stores, before the first update, every ``interval`` epochs and at the
final epoch, the projected and L2-normalised visual and text token features of every training
sample. The trajectory scorer (``python -m scl_slt.score``) turns each snapshot into an N x N
similarity matrix with the same function the loss uses, so no model has to be reloaded.

On-disk format, one folder per snapshot ``<run_dir>/snapshots/epoch-NNNN/``::

    video_features.npy   (sum Tv_i, d) float16   valid visual tokens of all samples, packed
    video_lengths.npy    (N,) int64              Tv_i, in dataset order
    text_features.npy    (sum Lt_i, d) float16   valid text tokens, packed
    text_lengths.npy     (N,) int64
    samples.json         {"names": [...], "texts": [...]} in dataset order
    meta.json            epoch, fingerprint, N, d, token counts, bytes, created time
    COMPLETE             written last; a folder without it is not a snapshot

A snapshot is written into ``snapshots/.tmp-epoch-NNNN-<pid>/`` (each file fsynced, the marker
last), then renamed into place (``rundir.atomic.replace_directory``), so a crash never leaves a
half snapshot under a final name.

Disk: rows x d x 2 bytes. PHOENIX14T train (7,096 samples, ~28 visual tokens after the x4
temporal block and ~15 text tokens on average, d = 256, fp16): 7,096 x 43 x 256 x 2 B = 156 MB
per snapshot (``estimate_snapshot_bytes``), i.e. 2.7 GB for the 17 snapshots of an 80-epoch run
at interval 5, 1.4 GB at interval 10 and 12.7 GB at interval 1. Pooled similarity methods
(``cls``/``mean``) store one token per side: 7 MB per snapshot.

Multi-process (torch.distributed): every rank encodes its own strided shard of the split (a
DataLoader over a ``Subset`` with the same collate function and batch size), the shards are
gathered to rank 0 with ``gather_object``, rank 0 checks coverage and writes, and all ranks meet
at a barrier before returning the same path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset

from .. import distributed
from ..data.batching import BatchLoader
from ..eval.inference import EmptyBatch, EvalBatches, encode_batch
from ..rundir.atomic import replace_directory

log = logging.getLogger(__name__)

SNAPSHOTS_DIRNAME = "snapshots"
COMPLETE_MARKER = "COMPLETE"
FORMAT_VERSION = 1
_FILES = ("video_features", "video_lengths", "text_features", "text_lengths")

# Config sections whose values change the stored features; everything else (optimiser, logging,
# generation, loader workers) does not, and must not make two snapshots look incompatible.
_FINGERPRINT_IGNORED = {
    "model": ("generation",),
    "data": ("num_workers", "on_bad_sample"),
}


class SnapshotError(RuntimeError):
    """A snapshot is missing, incomplete or malformed; the message names its folder."""


def snapshots_dir(run_dir: str | os.PathLike) -> Path:
    """The folder a run's snapshots live in (pass it as ``SnapshotTracker(out_dir=...)``)."""
    return Path(run_dir) / SNAPSHOTS_DIRNAME


def snapshot_dirname(epoch: int) -> str:
    return f"epoch-{epoch:04d}"


def estimate_snapshot_bytes(
    num_samples: int, video_tokens: float, text_tokens: float, dim: int
) -> int:
    """Bytes of the feature arrays of one fp16 snapshot (average tokens per sample per side)."""
    return int(round(num_samples * (video_tokens + text_tokens) * dim * 2))


def _sha256(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()


def names_hash(names: Sequence[str]) -> str:
    """Hash of a split's sample order (names joined by newlines)."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def fingerprint_of(train_cfg: Any, names: Sequence[str]) -> dict[str, Any]:
    """What must agree between snapshots that are compared: model, similarity, data, sample order.

    ``train_cfg`` is a plain dict of the resolved training config (``config.to_container``); a
    typed ``TrainConfig`` or a DictConfig is converted. Each part is hashed separately so that a
    mismatch can say which part differs.
    """
    if not isinstance(train_cfg, dict):
        from ..config import to_container

        train_cfg = to_container(train_cfg)
    for key in ("model", "data"):
        if key not in train_cfg:
            raise KeyError(f"fingerprint_of: the training config has no {key!r} section")
    model = {k: v for k, v in train_cfg["model"].items() if k not in _FINGERPRINT_IGNORED["model"]}
    data = {k: v for k, v in train_cfg["data"].items() if k not in _FINGERPRINT_IGNORED["data"]}
    return {
        "model": _sha256(model),
        "similarity": _sha256(model.get("similarity")),
        "data": _sha256(data),
        "names": names_hash(names),
        "num_samples": len(names),
    }


def _write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, obj: Any) -> None:
    _write_bytes(path, lambda f: f.write(json.dumps(obj, indent=1, ensure_ascii=False).encode()))


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass
class Snapshot:
    """One stored snapshot; feature arrays are memory-mapped (read-only)."""

    path: Path
    epoch: int
    names: list[str]
    texts: list[str]
    fingerprint: dict[str, Any]
    created: str
    video_features: np.ndarray  # (sum Tv_i, d) float16
    video_lengths: np.ndarray  # (N,) int64
    text_features: np.ndarray  # (sum Lt_i, d) float16
    text_lengths: np.ndarray  # (N,) int64

    @property
    def num_samples(self) -> int:
        return len(self.names)


def is_complete_snapshot(path: Path) -> bool:
    """A final-named snapshot folder (``epoch-NNNN``) holding its completion marker."""
    return (
        path.is_dir()
        and path.name.startswith("epoch-")
        and path.name[6:].isdigit()
        and (path / COMPLETE_MARKER).is_file()
    )


def read_snapshot(path: str | os.PathLike) -> Snapshot:
    """Load and check one snapshot folder. Raises SnapshotError naming the folder."""
    path = Path(path)
    if not path.is_dir():
        raise SnapshotError(f"snapshot folder not found: {path}")
    if not is_complete_snapshot(path):
        raise SnapshotError(
            f"{path} is not a complete snapshot (expected an epoch-NNNN folder with a "
            f"{COMPLETE_MARKER} marker; temporary or interrupted writes are not snapshots)"
        )
    try:
        meta = json.loads((path / "meta.json").read_text())
        samples = json.loads((path / "samples.json").read_text())
        arrays = {k: np.load(path / f"{k}.npy", mmap_mode="r") for k in _FILES}
    except (OSError, ValueError) as e:
        raise SnapshotError(f"snapshot {path} is unreadable: {e}") from e
    names, texts = samples.get("names"), samples.get("texts")
    n = meta.get("num_samples")
    if not isinstance(names, list) or not isinstance(texts, list) or len(names) != len(texts):
        raise SnapshotError(f"snapshot {path}: samples.json needs equal-length names and texts")
    for side in ("video", "text"):
        feats, lengths = arrays[f"{side}_features"], arrays[f"{side}_lengths"]
        if lengths.shape != (len(names),) or n != len(names):
            raise SnapshotError(
                f"snapshot {path}: {side}_lengths has shape {lengths.shape}, meta says "
                f"{n} samples, samples.json lists {len(names)}"
            )
        if feats.ndim != 2 or feats.shape[0] != int(lengths.sum()) or (lengths < 1).any():
            raise SnapshotError(
                f"snapshot {path}: {side}_features shape {feats.shape} does not match its "
                f"lengths (sum {int(lengths.sum())}, every length >= 1)"
            )
    if arrays["video_features"].shape[1] != arrays["text_features"].shape[1]:
        raise SnapshotError(f"snapshot {path}: video and text feature widths differ")
    return Snapshot(
        path=path,
        epoch=int(meta["epoch"]),
        names=names,
        texts=texts,
        fingerprint=dict(meta.get("fingerprint", {})),
        created=str(meta.get("created", "")),
        **arrays,
    )


def _shard_loader(loader: DataLoader, rank: int, world: int) -> DataLoader:
    """This rank's strided share of the loader's dataset, batched the same way."""
    dataset = loader.dataset
    batch_size = loader.batch_size or getattr(loader.batch_sampler, "batch_size", 1)
    return BatchLoader(
        Subset(dataset, range(rank, len(dataset), world)),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        generator=loader.generator,  # the observer's own (training's RNG stays untouched)
    )


def _valid_rows(tokens: torch.Tensor, mask: torch.Tensor, side: str, name: str) -> np.ndarray:
    rows = tokens[mask]  # (n_valid, d)
    if rows.shape[0] == 0:
        raise SnapshotError(f"sample {name!r}: the model returned no valid {side} token")
    return rows.to(torch.float16).cpu().numpy()


def _encode(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device | str,
    autocast: Callable[[], AbstractContextManager],
) -> dict[int, tuple[str, str, np.ndarray, np.ndarray]]:
    """index -> (name, text, video tokens (Tv, d) fp16, text tokens (Lt, d) fp16), through the
    library's one eval pass (eval mode, no gradients, the model's previous mode restored)."""
    batches = EvalBatches(model, loader, device, require_all=True, empty_message=_EMPTY_BATCH)
    encoded: dict[int, tuple[str, str, np.ndarray, np.ndarray]] = {}
    try:
        for batch in batches:
            out = encode_batch(batches.net, batch, autocast)
            v, vm = out.video_proj, out.video_proj_mask.bool()  # (B, Tv, d), (B, Tv)
            t, tm = out.text_proj, out.text_proj_mask.bool()  # (B, Lt, d), (B, Lt)
            names, texts = batch.host["names"], batch.host["texts"]
            for b, index in enumerate(batch.host["indices"].tolist()):
                if index in encoded:
                    raise SnapshotError(
                        f"sample index {index} ({names[b]!r}) appears twice in the snapshot loader"
                    )
                encoded[index] = (
                    names[b],
                    texts[b],
                    _valid_rows(v[b], vm[b], "video", names[b]),
                    _valid_rows(t[b], tm[b], "text", names[b]),
                )
    except EmptyBatch as e:
        raise SnapshotError(str(e)) from None
    return encoded


_EMPTY_BATCH = (
    "a snapshot batch had no loadable sample (data.on_bad_sample=skip dropped them), but a "
    "snapshot needs every train sample: read the split with on_bad_sample=error to stop at the "
    "first bad one, named with its path"
)


def _merge_shards(parts: list[dict[int, Any]]) -> dict[int, Any]:
    """The per-rank encodings (dataset index -> features) as one; each index exactly once."""
    encoded: dict[int, Any] = {}
    for part in parts:
        overlap = encoded.keys() & part.keys()
        if overlap:
            raise SnapshotError(f"sample indices encoded by two ranks: {sorted(overlap)[:5]}")
        encoded.update(part)
    return encoded


class SnapshotTracker:
    """Decides when to snapshot and writes snapshots (the training loop calls both).

    ``out_dir`` is the run's snapshot folder (``snapshots_dir(run_dir)``); ``total_epochs`` is the
    run's last epoch; ``fingerprint`` comes from ``fingerprint_of(config, train_names)``.
    ``final=False`` skips the snapshot after the last epoch (the self-referenced selection has no
    later epoch to use it for).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        interval: int,
        total_epochs: int,
        fingerprint: dict[str, Any],
        final: bool = True,
    ):
        if interval < 1:
            raise ValueError(f"tracker.interval must be >= 1, got {interval}")
        if total_epochs < 1:
            raise ValueError(f"total_epochs must be >= 1, got {total_epochs}")
        self.out_dir = Path(out_dir)
        self.interval = int(interval)
        self.total_epochs = int(total_epochs)
        self.fingerprint = dict(fingerprint)
        self.final = final

    def due(self, completed_epochs: int) -> bool:
        """Snapshot now? Before the first update (0), every ``interval`` epochs, and at the end
        (unless ``final`` is off: then only the interval's snapshots before the last epoch)."""
        if not 0 <= completed_epochs <= self.total_epochs:
            raise ValueError(
                f"completed_epochs must be in [0, {self.total_epochs}], got {completed_epochs}"
            )
        if completed_epochs == self.total_epochs:
            return self.final
        return completed_epochs % self.interval == 0

    def path_for(self, completed_epochs: int) -> Path:
        return self.out_dir / snapshot_dirname(completed_epochs)

    def snapshot(
        self,
        model: nn.Module,
        loader: DataLoader,
        completed_epochs: int,
        device: torch.device | str,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
    ) -> Path:
        """Encode the whole train split (loader in dataset order, no augmentation) and store it.

        The model is put in eval mode under no_grad and restored to its previous mode after.
        Every sample index must appear exactly once. Returns the snapshot folder on every rank.
        """
        rank, world = distributed.get_rank(), distributed.get_world_size()
        start = time.time()
        shard = loader if world == 1 else _shard_loader(loader, rank, world)
        encoded = _encode(model, shard, device, autocast)  # the bare model: no DDP collective
        parts: list[Any] | None = None
        if world > 1:
            parts = [None] * world if rank == 0 else None
            dist.gather_object(encoded, parts, dst=0)

        path = self.path_for(completed_epochs)

        def write() -> None:  # rank 0; a failure (also a bad merge) is raised on every rank
            merged = encoded if parts is None else _merge_shards(parts)
            self._write(merged, len(loader.dataset), completed_epochs, path, time.time() - start)

        distributed.on_main_process(write)
        return path

    def _write(
        self,
        encoded: dict[int, tuple[str, str, np.ndarray, np.ndarray]],
        num_samples: int,
        epoch: int,
        path: Path,
        encode_seconds: float,
    ) -> None:
        missing = [i for i in range(num_samples) if i not in encoded]
        extra = sorted(set(encoded) - set(range(num_samples)))
        if missing or extra:
            raise SnapshotError(
                f"snapshot epoch {epoch}: the loader must cover the {num_samples} train samples "
                f"exactly once; missing indices {missing[:10]} ({len(missing)} in all), "
                f"out of range {extra[:10]}"
            )
        names = [encoded[i][0] for i in range(num_samples)]
        expected = self.fingerprint.get("names")
        if expected is not None and names_hash(names) != expected:
            raise SnapshotError(
                f"snapshot epoch {epoch}: the loader's sample names do not match the fingerprint's "
                "split (was the loader built from another split or order?)"
            )
        texts = [encoded[i][1] for i in range(num_samples)]
        video = [encoded[i][2] for i in range(num_samples)]
        text = [encoded[i][3] for i in range(num_samples)]
        arrays = {
            "video_features": np.concatenate(video),
            "video_lengths": np.array([len(x) for x in video], dtype=np.int64),
            "text_features": np.concatenate(text),
            "text_lengths": np.array([len(x) for x in text], dtype=np.int64),
        }
        meta = {
            "format_version": FORMAT_VERSION,
            "epoch": epoch,
            "fingerprint": self.fingerprint,
            "num_samples": num_samples,
            "dim": int(arrays["video_features"].shape[1]),
            "video_tokens": int(arrays["video_features"].shape[0]),
            "text_tokens": int(arrays["text_features"].shape[0]),
            "dtype": "float16",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.out_dir / f".tmp-{path.name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for key, arr in arrays.items():
            _write_bytes(tmp / f"{key}.npy", lambda f, arr=arr: np.save(f, arr))
        _write_json(tmp / "samples.json", {"names": names, "texts": texts})
        _write_json(tmp / "meta.json", meta)
        _write_bytes(tmp / COMPLETE_MARKER, lambda f: f.write(b"ok\n"))
        replace_directory(tmp, path)  # a snapshot re-taken after a resume replaces the old one
        size = _dir_bytes(path)
        total = sum(_dir_bytes(p) for p in self.out_dir.iterdir() if is_complete_snapshot(p))
        free = shutil.disk_usage(self.out_dir).free
        log.info(
            "snapshot epoch %d -> %s: %d samples, %d+%d tokens, %.1f MB (all snapshots %.1f MB, "
            "%.1f GB free), encoded in %.1fs",
            epoch,
            path,
            num_samples,
            meta["video_tokens"],
            meta["text_tokens"],
            size / 1e6,
            total / 1e6,
            free / 1e9,
            encode_seconds,
        )
