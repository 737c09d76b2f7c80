"""The start-up scan: every clip file of every split checked from its header, before training.

Why: a bad file otherwise surfaces only when a batch first reads it. A bad dev file stops an
error-mode run at the end of the first epoch's evaluation, with that epoch's training lost; in
skip mode it is skipped epoch after epoch with one WARNING each time it is read. The scan lists
every bad file at once, in seconds (header reads only: ``scripts/bench_feature_scan.py`` measures
it at PHOENIX-2014-T scale).

What is read, per modality:

* features: each ``<feature_root>/<name>.npy`` header (shape, dtype, size; ``npy_header.py``),
  judged by the loader's own ``dataset.feature_problem`` at the loader's width
  (``datasets.feature_width``), so the scan and the loader agree on which files are bad.
* frame cache (``data.frame_cache``): each clip's index entry and ``.npy`` header, judged by
  ``FrameCache.entry_problem`` / ``file_problem``, which the cache's loader uses too.
* PNG/JPEG frame folders: only that each clip's folder exists and holds a frame file. Nothing is
  decoded and listed frames are not looked up one by one (a million files); ``python -m
  scl_slt.data.validate`` does both.

``scan_data(cfg.data, feature_dim=...)`` runs the scan the config needs;
``ScanReport.enforce(cfg.data.on_bad_sample)`` then raises one DataError listing every bad file
(``error``) or logs one WARNING listing them (``skip``: the loader skips exactly those samples).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import BadSample, DataConfig, Modality
from .dataset import FeatureSource, feature_problem
from .datasets import feature_root_of, feature_width, frame_root_of, split_records
from .frame_files import FRAME_SUFFIXES, clip_folder, with_known_issue
from .frame_store import FrameCache, clip_relpath
from .labels import SPLITS, DataError
from .npy_header import NpyHeader, read_npy_header

log = logging.getLogger(__name__)

MISSING, UNREADABLE, BAD = "missing", "unreadable", "bad"  # BadFile.kind


@dataclass(frozen=True)
class BadFile:
    split: str
    name: str
    path: str
    kind: str  # missing | unreadable (header or size) | bad (shape, dtype, frames)
    detail: str = ""

    def line(self) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.split:5s} {self.name}  {self.path}  {self.kind}{detail}"


@dataclass
class ScanReport:
    """Bad files of the scanned splits, in split and record order."""

    what: str  # "feature files" | "frame cache clips" | "frame folders"
    checked: dict[str, int] = field(default_factory=dict)  # split -> samples checked
    bad: list[BadFile] = field(default_factory=list)
    # (split, name) -> (T, path) of each good file: the validator compares T with ``length``
    good: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    note: str = ""  # what the files were checked against (e.g. the feature width's source)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.bad

    def add(self, split: str, record: dict, path: Any, kind: str, detail: str = "") -> None:
        detail = with_known_issue(record, detail) if detail else record.get("known_issue", "")
        self.bad.append(BadFile(split, record["name"], str(path), kind, detail))

    def summary(self) -> str:
        per_split = Counter(b.split for b in self.bad)
        splits = ", ".join(f"{s} {per_split[s]} of {n}" for s, n in self.checked.items())
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(Counter(b.kind for b in self.bad).items()))
        return (
            f"data scan: {len(self.bad)} of {sum(self.checked.values())} {self.what} bad "
            f"({splits}; {kinds}) [{self.note}]"
        )

    def empty_splits(self) -> list[str]:
        """Splits none of whose samples is usable."""
        per_split = Counter(b.split for b in self.bad)
        return [s for s, n in self.checked.items() if n and per_split[s] >= n]

    def enforce(self, on_bad_sample: BadSample | str) -> None:
        """Raise one DataError listing every bad file (``error``, or ``skip`` when a split would
        be left with nothing), or log one WARNING listing them (``skip``); INFO when all good."""
        if self.ok:
            total, splits = sum(self.checked.values()), "/".join(self.checked)
            what = f"{total} {self.what} of {splits} good ({self.seconds:.1f} s; {self.note})"
            log.info("data scan: %s", what)
            return
        listing = "\n  " + "\n  ".join(b.line() for b in self.bad)
        empty = self.empty_splits()
        if BadSample(on_bad_sample) is BadSample.skip and not empty:
            log.warning(
                "%s; data.on_bad_sample=skip: these samples are skipped whenever loaded:%s",
                self.summary(),
                listing,
            )
            return
        advice = (
            f"no usable sample in split(s) {', '.join(empty)}: check the data paths"
            if empty
            else "data.on_bad_sample=error would stop at the first of them; fix or remove them, "
            "or set data.on_bad_sample=skip to train without them"
        )
        raise DataError(f"{self.summary()}; {advice}:{listing}")


# ----------------------------------------------------------------------------------- scans
def _header(report: ScanReport, split: str, record: dict, path: Path) -> NpyHeader | None:
    """The file's header, or None with the file reported missing or unreadable."""
    try:
        return read_npy_header(path)
    except FileNotFoundError:
        report.add(split, record, path, MISSING)
    except (OSError, ValueError) as e:
        report.add(split, record, path, UNREADABLE, f"header: {e}")
    return None


def _truncated(header: NpyHeader) -> str:
    if not header.truncated:
        return ""
    return (
        f"truncated: {header.file_size} bytes, the header's {header.dtype} {header.shape} "
        f"needs {header.data_offset + header.data_bytes}"
    )


def scan_feature_files(
    cfg: DataConfig, splits: Sequence[str] = SPLITS, feature_dim: int | None = None
) -> ScanReport:
    """Every split's feature files from their headers: missing, unreadable or truncated, not
    floating point, not 2-D, no rows, or another width than ``feature_width`` gives (pass
    ``model.sign_embedding.feature_dim``; else the synthetic width or the first good file)."""
    started = time.perf_counter()
    source = FeatureSource(feature_root_of(cfg))
    records = {split: split_records(cfg, split) for split in splits}
    width = feature_width(cfg, [r for split in splits for r in records[split]], feature_dim)
    note = f"expected {width}" if width else "no good file to take the width from"
    report = ScanReport("feature files", note=note)
    for split in splits:
        report.checked[split] = len(records[split])
        for record in records[split]:
            path = source.path(record["name"])
            header = _header(report, split, record, path)
            if header is None:
                continue
            problem = feature_problem(header.shape, header.dtype, width)
            if problem:
                report.add(split, record, path, BAD, problem)
            elif _truncated(header):
                report.add(split, record, path, UNREADABLE, _truncated(header))
            else:
                report.good[split, record["name"]] = header.shape[0], str(path)
    report.seconds = time.perf_counter() - started
    return report


def scan_frame_cache(cfg: DataConfig, splits: Sequence[str] = SPLITS) -> ScanReport:
    """Every split's clips in the frame cache (``data.frame_cache``): listed in its index with a
    good entry, the clip file present and its header the entry's uint8 (T, 3, H, W)."""
    started = time.perf_counter()
    cache = FrameCache(Path(cfg.frame_cache).expanduser())
    cache.check_matches(cfg)
    report = ScanReport(
        "frame cache clips", note=f"cache {cache.root}, frames at {cache.resize} px"
    )
    for split in splits:
        records = split_records(cfg, split)
        report.checked[split] = len(records)
        for record in records:
            name = record["name"]
            try:
                path = cache.root / clip_relpath(name)
            except DataError as e:
                report.add(split, record, cache.root, BAD, str(e))
                continue
            if name not in cache:
                failed = cache.failed.get(name)
                detail = f"conversion failed: {failed}" if failed else "not in the cache index"
                report.add(split, record, path, MISSING, detail)
                continue
            problem = cache.entry_problem(name)
            if problem:
                report.add(split, record, path, BAD, problem)
                continue
            header = _header(report, split, record, path)
            if header is None:
                continue
            problem = cache.file_problem(name, header.shape, header.dtype)
            if problem:
                report.add(split, record, path, BAD, problem)
            elif _truncated(header):
                report.add(split, record, path, UNREADABLE, _truncated(header))
            else:
                report.good[split, name] = header.shape[0], str(path)
    report.seconds = time.perf_counter() - started
    return report


def _folder_problem(folder: Path) -> tuple[str, str]:
    """("", "") when ``folder`` holds a frame file, else (kind, detail); stops at the first."""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.lower().endswith(FRAME_SUFFIXES) and entry.is_file():
                    return "", ""
    except FileNotFoundError:
        return MISSING, "frame folder"
    except NotADirectoryError:
        return BAD, "not a directory"
    except OSError as e:
        return UNREADABLE, str(e)
    return BAD, f"no frames ({', '.join(FRAME_SUFFIXES)}) in the folder"


def scan_frame_folders(cfg: DataConfig, splits: Sequence[str] = SPLITS) -> ScanReport:
    """Every split's frame folders exist and hold a frame file (the folders of a label file's
    ``imgs_path``, else ``<frame root>/<name>`` or an official record's ``frames_dir``)."""
    started = time.perf_counter()
    root = frame_root_of(cfg)
    report = ScanReport("frame folders", note=f"frames under {root}, not decoded")
    for split in splits:
        records = split_records(cfg, split)
        report.checked[split] = len(records)
        for record in records:
            if record.get("imgs_path"):
                folders = [
                    root / d for d in sorted({os.path.dirname(p) for p in record["imgs_path"]})
                ]
            else:
                folders = [clip_folder(record, root)]
            for folder in folders:
                kind, detail = _folder_problem(folder)
                if kind:
                    report.add(split, record, folder, kind, detail)
                    break
    report.seconds = time.perf_counter() - started
    return report


def scan_data(
    cfg: DataConfig, splits: Sequence[str] = SPLITS, feature_dim: int | None = None
) -> ScanReport:
    """The scan the config reads through: feature files, the frame cache, or frame folders."""
    if cfg.modality is Modality.features:
        return scan_feature_files(cfg, splits, feature_dim)
    if cfg.frame_cache:
        return scan_frame_cache(cfg, splits)
    return scan_frame_folders(cfg, splits)
