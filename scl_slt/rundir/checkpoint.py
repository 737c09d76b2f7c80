"""Checkpoints that survive crashes: atomic writes, integrity checks, discovery, best-k ranking.

Layout inside a run directory::

    checkpoints/step-000001234/   model.safetensors, state.pt, COMPLETE   (resumable, keep-last-k)
    checkpoints/best-000001234/   model.safetensors, COMPLETE             (top-k on dev BLEU-4)
    checkpoints/best-avg/         model.safetensors, COMPLETE             (optional average of them)
    checkpoints/best.json         ranking of the kept best checkpoints and which one is "best"

A checkpoint is written into a hidden temporary directory, every file is fsynced, the
``COMPLETE`` marker (file sizes and SHA-256 digests) is written last, and the directory is
renamed into place. A directory without a valid marker, or whose files do not match it, is
reported by path and never loaded. Old checkpoints are pruned only after the new one is complete.

``state.pt`` is a pickle written by this engine (optimizer, scheduler, sampler and RNG states);
it is loaded with ``weights_only=False`` only after its digest matched the marker.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save_file

from .. import __version__
from ..distributed import on_main_process
from .atomic import atomic_directory, fsync_file, is_temporary, write_json_atomic

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
MARKER = "COMPLETE"
BEST_INDEX = "best.json"
CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_ALIASES_KEY = "scl_slt.aliases"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the path."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint directory is incomplete, truncated or does not match its marker."""


# ----------------------------------------------------------------------------- low-level files
def _digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def write_index(path: Path, data: Any) -> None:
    """Write a checkpoint index (JSON) atomically; a failure is a CheckpointError naming it."""
    try:
        write_json_atomic(path, data)
    except OSError as e:
        raise CheckpointError(f"could not write {path}: {e}") from e


def _split_shared(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """Safetensors refuses tensors that share memory (tied embeddings). Keep one copy of each
    identical view and record the other names as aliases; copy partial overlaps. Sharing is
    detected on the tensors as given (before any copy to the CPU)."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen_views: dict[tuple, str] = {}
    seen_storage: set[tuple[str, int]] = set()
    for name, t in state.items():
        t = t.detach()
        storage = (str(t.device), t.untyped_storage().data_ptr())
        view = (storage, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and view in seen_views:
            aliases[name] = seen_views[view]
            continue
        if (t.numel() and storage in seen_storage) or not t.is_contiguous():
            t = t.contiguous().clone()
        else:
            seen_views[view] = name
            seen_storage.add(storage)
        tensors[name] = t.cpu()
    return tensors, aliases


# --------------------------------------------------------------------------------- write / read
def save_checkpoint(
    directory: str | os.PathLike,
    model_state: Mapping[str, torch.Tensor],
    train_state: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Atomically write a checkpoint directory (replacing an existing one of the same name).

    Raises CheckpointError (with the path) on any failure; nothing is left under the final name
    unless the whole checkpoint, marker included, was written.
    """
    directory = Path(directory)
    try:
        with atomic_directory(directory) as tmp:
            tensors, aliases = _split_shared(model_state)
            save_file(tensors, tmp / MODEL_FILE, metadata={_ALIASES_KEY: json.dumps(aliases)})
            fsync_file(tmp / MODEL_FILE)
            files = {MODEL_FILE: _digest(tmp / MODEL_FILE)}
            if train_state is not None:
                torch.save(train_state, tmp / STATE_FILE)
                fsync_file(tmp / STATE_FILE)
                files[STATE_FILE] = _digest(tmp / STATE_FILE)
            marker = {"files": files, "meta": meta or {}, "version": __version__}
            (tmp / MARKER).write_text(json.dumps(marker, indent=2))
            fsync_file(tmp / MARKER)
    except Exception as e:
        raise CheckpointError(f"could not write checkpoint {directory}: {e}") from e
    return directory


def read_marker(directory: str | os.PathLike) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / MARKER
    if not path.is_file():
        raise CorruptCheckpointError(f"{directory}: no {MARKER} marker (incomplete write)")
    try:
        marker = json.loads(path.read_text())
        files = marker["files"]
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise CorruptCheckpointError(f"{path}: unreadable marker ({e})") from e
    return marker | {"files": files}


def verify_checkpoint(directory: str | os.PathLike, check_digest: bool = True) -> dict[str, Any]:
    """Return the marker if every file matches it; raise CorruptCheckpointError naming the path."""
    directory = Path(directory)
    marker = read_marker(directory)
    for name, expected in marker["files"].items():
        path = directory / name
        if not path.is_file():
            raise CorruptCheckpointError(f"{path}: missing")
        size = path.stat().st_size
        if size != expected["size"]:
            raise CorruptCheckpointError(
                f"{path}: truncated or modified ({size} bytes, expected {expected['size']})"
            )
        if check_digest and _digest(path)["sha256"] != expected["sha256"]:
            raise CorruptCheckpointError(f"{path}: contents do not match the SHA-256 in {MARKER}")
    return marker


def load_weights(directory: str | os.PathLike, verify: bool = True) -> dict[str, torch.Tensor]:
    """The model state dict of a checkpoint (tied weights restored as shared tensors).

    The file is read into memory once and its digest checked on those very bytes; tensors are
    never backed by a memory map of the file, so a later prune, overwrite or truncation of the
    checkpoint cannot pull the rug from under a running model.
    """
    directory = Path(directory)
    path = directory / MODEL_FILE
    expected = verify_checkpoint(directory, check_digest=False)["files"] if verify else {}
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorruptCheckpointError(f"{path}: cannot read weights ({e})") from e
    if (
        MODEL_FILE in expected
        and hashlib.sha256(data).hexdigest() != expected[MODEL_FILE]["sha256"]
    ):
        raise CorruptCheckpointError(f"{path}: contents do not match the SHA-256 in {MARKER}")
    try:
        header_size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_size])
        aliases = json.loads(header.get("__metadata__", {}).get(_ALIASES_KEY, "{}"))
        state = safetensors_load(data)
    except Exception as e:
        raise CorruptCheckpointError(f"{path}: cannot read weights ({e})") from e
    for alias, name in aliases.items():
        state[alias] = state[name]
    return state


def load_train_state(directory: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    directory = Path(directory)
    if verify:
        verify_checkpoint(directory)
    path = directory / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: not a resumable checkpoint (weights only)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CorruptCheckpointError(f"{path}: cannot read training state ({e})") from e


def average_weights(directories: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors; other tensors come from the last checkpoint."""
    if not directories:
        raise CheckpointError("average_weights: no checkpoints given")
    states = [load_weights(d) for d in directories]
    names = set(states[0])
    for d, s in zip(directories[1:], states[1:]):
        if set(s) != names:
            raise CheckpointError(f"cannot average {d} with {directories[0]}: different tensors")
    out = {}
    for name in states[0]:
        if states[0][name].is_floating_point():
            out[name] = torch.stack([s[name].float() for s in states]).mean(0).to(states[0][name])
        else:
            out[name] = states[-1][name]
    return out


# ----------------------------------------------------------------------------------- discovery
def step_checkpoints(checkpoint_root: str | os.PathLike) -> list[Path]:
    """``step-*`` directories, oldest first (complete or not)."""
    root = Path(checkpoint_root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def find_latest_checkpoint(checkpoint_root: str | os.PathLike) -> Path | None:
    """The newest resumable checkpoint that passes verification; corrupt ones are reported by
    path and skipped in favour of the previous one."""
    for path in reversed(step_checkpoints(checkpoint_root)):
        try:
            verify_checkpoint(path)
        except CorruptCheckpointError as e:
            log.warning("skipping corrupt checkpoint: %s", e)
            continue
        return path
    return None


def resolve_checkpoint(path: str | os.PathLike, which: str = "best") -> Path:
    """A checkpoint directory from a run directory (``which`` = best | last) or a checkpoint dir.

    ``best`` falls back to ``last`` (with a warning) for runs trained without dev evaluation.
    """
    path = Path(path).expanduser()
    if (path / MARKER).exists() or (path / MODEL_FILE).exists():
        verify_checkpoint(path)
        return path
    root = path / CHECKPOINTS
    if not root.is_dir():
        raise CheckpointError(f"{path}: neither a checkpoint nor a run directory with checkpoints/")
    if which == "best":
        index = root / BEST_INDEX
        if index.is_file():
            best = root / json.loads(index.read_text())["best"]
            verify_checkpoint(best)
            return best
        log.warning("%s has no %s (no dev evaluation); using the last checkpoint", path, BEST_INDEX)
        which = "last"
    if which == "last":
        latest = find_latest_checkpoint(root)
        if latest is None:
            raise CheckpointError(f"{root}: no complete checkpoint")
        return latest
    raise CheckpointError(f"checkpoint selector {which!r}: expected best | last")


def run_dir_of(checkpoint_dir: str | os.PathLike) -> Path:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/<tag>``)."""
    return Path(checkpoint_dir).resolve().parent.parent


def clean_partial_writes(checkpoint_root: str | os.PathLike) -> None:
    """Remove temporary directories left by writes that were killed half-way."""
    root = Path(checkpoint_root)
    if root.is_dir():
        for p in root.iterdir():
            if is_temporary(p.name) or p.name.startswith((".tmp-", ".old-")):
                log.info("removing partial checkpoint write %s", p)
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------- manager
def _rank_key(entry: dict[str, Any]) -> tuple:
    # Higher BLEU-4 first, then ROUGE-L; on a tie the later (longer-trained) epoch wins.
    return (entry["bleu4"], entry.get("rouge_l", 0.0), entry["epoch"])


class CheckpointManager:
    """Resumable ``step-*`` checkpoints (keep-last-k) and the top-k best on dev BLEU-4.

    Write methods are meant for rank 0 (wrap calls in ``on_main_process``); ``best`` is part of
    the training state so a resumed run continues the same ranking.
    """

    def __init__(self, run_dir: str | os.PathLike, keep_last: int, keep_best: int):
        self.root = Path(run_dir) / CHECKPOINTS
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.best: list[dict[str, Any]] = []  # ranked, best first
        self.averaged: str | None = None

    # -- resumable
    def save(
        self,
        step: int,
        model_state: Mapping[str, torch.Tensor],
        train_state: dict[str, Any],
        meta: dict[str, Any],
    ) -> Path:
        path = save_checkpoint(self.root / f"step-{step:09d}", model_state, train_state, meta)
        log.info("saved checkpoint %s", path)
        self._prune_last(keep=path)
        return path

    def _prune_last(self, keep: Path) -> None:
        complete = [p for p in step_checkpoints(self.root) if (p / MARKER).is_file()]
        if keep not in complete:
            return
        for old in complete[: -self.keep_last]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)
                log.debug("pruned checkpoint %s", old)

    # -- best on dev
    def is_better(self, entry: dict[str, Any]) -> bool:
        """Would ``entry`` (epoch, step, bleu4, rouge_l) enter the kept top-k?"""
        if len(self.best) < self.keep_best:
            return True
        return _rank_key(entry) > _rank_key(self.best[-1])

    def save_best(self, entry: dict[str, Any], model_state: Mapping[str, torch.Tensor]) -> Path:
        """Write a best-on-dev checkpoint, then update the ranking and drop the one it displaced."""
        tag = f"best-{entry['step']:09d}"  # by step: a max_steps stop can re-evaluate an epoch
        path = save_checkpoint(self.root / tag, model_state, meta=entry)
        ranked = [e for e in self.best if e["tag"] != tag] + [entry | {"tag": tag}]
        ranked.sort(key=_rank_key, reverse=True)
        dropped, self.best = ranked[self.keep_best :], ranked[: self.keep_best]
        self.averaged = None
        self.write_index()
        for e in dropped:
            shutil.rmtree(self.root / e["tag"], ignore_errors=True)
        log.info("saved best checkpoint %s (dev BLEU-4 %.2f)", path, entry["bleu4"])
        return path

    def consider_best(self, entry: dict[str, Any], model: torch.nn.Module) -> bool:
        """Collective: keep ``model`` if ``entry`` enters the top-k (written by rank 0, ranking
        shared with every rank). Returns whether it did."""
        if not self.is_better(entry):
            return False

        def write() -> dict[str, Any]:
            self.save_best(entry, model.state_dict())
            return self.state_dict()

        self.load_state_dict(on_main_process(write))
        return True

    def average_best(self) -> Path | None:
        """Collective ``save_average``: the averaged checkpoint becomes "best" on every rank."""

        def write() -> dict[str, Any]:
            self.save_average()
            return self.state_dict()

        self.load_state_dict(on_main_process(write))
        return self.best_path()

    def save_average(self) -> Path | None:
        """Average the kept best checkpoints into ``best-avg`` and make it the "best"."""
        if len(self.best) < 2:
            return None
        state = average_weights([self.root / e["tag"] for e in self.best])
        meta = {"averaged": [e["tag"] for e in self.best]}
        path = save_checkpoint(self.root / "best-avg", state, meta=meta)
        self.averaged = "best-avg"
        self.write_index()
        log.info("saved averaged checkpoint %s of %s", path, meta["averaged"])
        return path

    def write_index(self) -> None:
        best = self.averaged or self.best[0]["tag"]
        write_index(self.root / BEST_INDEX, {"best": best, "ranked": self.best})

    def best_path(self) -> Path | None:
        if not self.best:
            return None
        return self.root / (self.averaged or self.best[0]["tag"])

    def state_dict(self) -> dict[str, Any]:
        return {"best": list(self.best), "averaged": self.averaged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = list(state["best"])
        self.averaged = state.get("averaged")
