"""The N x N float16 score file every pair-score producer writes, and the record beside it.

A score file is a plain ``.npy`` (``np.lib.format``, memory-mappable) filled in row blocks
straight into a memory map under a temporary name and renamed into place when whole
(``rundir.atomic``), so memory stays at one block and a reader never sees half a matrix. The
``<file>.json`` record says what the scores were computed from; a producer reuses a file whose
record matches its inputs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ...rundir.atomic import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

BLOCK_ELEMENTS = 1 << 24  # elements of one dense row block while computing scores


def block_rows(width: int) -> int:
    """Rows of a block of at most ``BLOCK_ELEMENTS`` elements ``width`` wide (at least one)."""
    return max(1, BLOCK_ELEMENTS // max(1, width))


def gram_blocks(vectors: np.ndarray) -> tuple[Callable[[int, int], np.ndarray], int]:
    """Row blocks of ``V V^T`` for dense (N, d) float32 vectors, and the rows per block."""
    return (lambda r0, r1: vectors[r0:r1] @ vectors.T), block_rows(vectors.shape[0])


@contextlib.contextmanager
def new_score_matrix(path: str | os.PathLike, n: int) -> Iterator[np.memmap]:
    """An (n, n) float16 memory map to fill; on success it replaces ``path`` whole, on failure
    it is removed and any previous ``path`` stays."""
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, n))
        yield out
        out.flush()


def record_path(path: str | os.PathLike) -> Path:
    """The JSON record beside a score file: ``x.npy`` -> ``x.json``."""
    return Path(path).with_suffix(".json")


def write_score_file(
    out_path: str | os.PathLike,
    n: int,
    row_block: Callable[[int, int], np.ndarray],
    rows: int,
    record: dict[str, Any],
) -> Path:
    """Fill an (n, n) fp16 .npy with ``row_block(r0, r1)`` blocks of ``rows`` rows, atomically,
    then its record (``record`` plus the file's layout, size and timing)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with new_score_matrix(out_path, n) as out:
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            block = row_block(r0, r1)
            if not np.isfinite(block).all():
                raise ValueError(f"{record.get('strategy')}: non-finite score in rows {r0}:{r1}")
            out[r0:r1] = block
        record_path(out_path).unlink(missing_ok=True)  # no stale record beside the new scores
    seconds = round(time.time() - started, 2)
    write_json_atomic(
        record_path(out_path),
        {
            **record,
            "file": out_path.name,
            "layout": "score[i, j] for video i and text j of the train split, dataset order; "
            "higher = harder (more similar) negative",
            "dtype": "float16",
            "num_samples": n,
            "seconds": seconds,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    log.info("%s scores: %d x %d in %.1fs -> %s", record.get("strategy"), n, n, seconds, out_path)
    return out_path


def record_matches(path: str | os.PathLike, key: dict[str, Any]) -> bool:
    """Whether ``path`` and its record exist and the record holds every entry of ``key``."""
    record = record_path(path)
    if not (Path(path).is_file() and record.is_file()):
        return False
    try:
        saved = json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    return all(saved.get(k) == v for k, v in key.items())
