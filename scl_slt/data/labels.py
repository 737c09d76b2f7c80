"""GFSLT-style label files: a gzip-compressed pickle of ``name -> {name, gloss, text, length, ...}``.

Pickle executes code while loading: only load label files you trust (the ones you point the
framework at). Writing is atomic (``rundir.atomic``): an interrupted write never leaves a half file
under the final name.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path
from typing import Any

from ..rundir.atomic import atomic_path

SPLITS = ("train", "dev", "test")


class DataError(RuntimeError):
    """Missing or malformed dataset files; the message names the file."""


def read_labels(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file not found: {path}")
    try:
        with gzip.open(path, "rb") as f:
            data = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError) as e:
        raise DataError(f"cannot read label file {path}: {e}") from e
    if not isinstance(data, dict):
        raise DataError(f"label file {path}: expected a dict name -> record, got {type(data)}")
    for name, rec in data.items():
        if not isinstance(rec, dict) or "text" not in rec:
            raise DataError(f"label file {path}: record {name!r} has no 'text'")
    return data


def write_labels(path: str | os.PathLike, records: dict[str, dict[str, Any]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # no name or time in the gzip header: the same records give the same bytes (reproducible data)
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
            pickle.dump(records, f, protocol=pickle.HIGHEST_PROTOCOL)


def labels_path(labels_dir: str | os.PathLike, split: str) -> Path:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    return Path(labels_dir) / f"labels.{split}"
