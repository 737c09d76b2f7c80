"""The one atomic write: a file (or a directory) appears under its final name whole, or not at all.

Everything a run leaves behind that another process may read while it is being written, or that
a crash could leave half-written (configs, metrics files, indices, score matrices, label files,
checkpoints, generated datasets), goes through here. The content is written under a hidden
temporary name in the same folder, flushed and fsynced, then renamed into place, and the folder
itself is fsynced so the rename survives a power cut. A failure removes the temporary and leaves
any previous version untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEMP_MARK = ".tmp-"  # temporaries are ".<name>.tmp-<unique>"; stale ones can be recognised


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: str | os.PathLike) -> Path:
    """A hidden sibling of ``path``, unique to this process and call."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write the file into; on success it replaces ``path``.

    The writer may create the file any way it likes (``np.save``, ``torch.save``, ...); it is
    fsynced here before the rename.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 2) -> None:
    """JSON (UTF-8, non-ASCII kept) that readers never see half written."""
    write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def replace_directory(tmp: Path, final: Path) -> None:
    """Rename the finished directory ``tmp`` to ``final``, replacing an existing one.

    The old directory is first renamed aside, so at every moment ``final`` is either the whole
    old version or the whole new one.
    """
    fsync_dir(tmp)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it becomes ``final``.

    An existing ``final`` is replaced, or with ``replace=False`` kept (another process built the
    same thing first: its version wins and this one is discarded).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(final)
    tmp.mkdir()
    try:
        yield tmp
        if replace or not final.exists():
            replace_directory(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_temporary(name: str) -> bool:
    """Whether a file name is one of this module's temporaries (left behind by a crash)."""
    return name.startswith(".") and (TEMP_MARK in name or ".old-" in name)
