"""Dataset validator: every problem a training run would trip over, found before it starts.

    python -m scl_slt.data.validate data=phoenix14t data.root=/data/PHOENIX-2014-T \\
        [splits=train,dev,test] [decode=true] [workers=8] [report=problems.json]

Checks each sample of each split and prints one line per problem, then counts per category;
the exit code is 1 when anything was found (2 for a bad command line or config). Categories:

=====================  ====================================================================
missing_folder         a clip's frame folder does not exist
empty_folder           a clip's frame folder holds no *.png / *.jpg / *.jpeg
missing_frame          a frame listed in ``imgs_path`` does not exist
unreadable_frame       a frame that does not decode (``decode=true``, the default)
frame_size_mismatch    a frame whose size differs from the clip's first frame
missing_feature        ``<feature_root>/<name>.npy`` does not exist
unreadable_feature     a feature file that does not load or is not (T > 0, D)
missing_cache_clip     with ``data.frame_cache``: a clip absent from the cache (or its file)
empty_text             an empty target sentence
length_mismatch        the label's ``length`` differs from the frames / feature rows / cached T
duplicate_name         a sample name seen twice in one split
known_broken           a documented broken clip (CSL-Daily ``S000005_P0004_T00``) whose data is
                       bad; with ``ignore_known_broken=true`` it is listed but not counted
=====================  ====================================================================

``decode=false`` checks existence and counts only (fast); ``decode=true`` decodes every frame,
in ``workers`` processes.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError, DataConfig, Modality
from .datasets import data_config_from_args, feature_root_of, frame_root_of, split_records
from .frame_files import clip_folder, decode_frame, list_frames
from .frame_store import FrameCache, clip_relpath
from .labels import SPLITS, DataError

log = logging.getLogger(__name__)

CATEGORIES = (
    "missing_folder",
    "empty_folder",
    "missing_frame",
    "unreadable_frame",
    "frame_size_mismatch",
    "missing_feature",
    "unreadable_feature",
    "missing_cache_clip",
    "empty_text",
    "length_mismatch",
    "duplicate_name",
    "known_broken",
)


@dataclass
class Problem:
    category: str
    split: str
    name: str
    path: str
    detail: str = ""

    def line(self) -> str:
        return (
            f"{self.category:20s} {self.split:5s} {self.name}  {self.path}  {self.detail}".rstrip()
        )


@dataclass
class ValidationReport:
    samples: dict[str, int] = field(default_factory=dict)  # split -> samples checked
    problems: list[Problem] = field(default_factory=list)
    ignore_known_broken: bool = False

    def counts(self) -> Counter:
        return Counter(p.category for p in self.problems)

    @property
    def ok(self) -> bool:
        counted = [
            p
            for p in self.problems
            if not (self.ignore_known_broken and p.category == "known_broken")
        ]
        return not counted


# ---------------------------------------------------------------------------- per-sample checks
@dataclass(frozen=True)
class _Checker:
    """Everything a worker process needs to check one record."""

    split: str
    modality: Modality
    frame_root: str | None
    feature_root: str | None
    decode: bool

    def __call__(self, record: dict[str, Any]) -> list[Problem]:
        problems = self._text(record)
        if self.modality is Modality.features:
            problems += self._features(record)
        else:
            problems += self._frames(record)
        if record.get("known_issue"):
            data_problems = [p for p in problems if p.category != "empty_text"]
            if data_problems:
                detail = "; ".join(sorted({p.category for p in data_problems}))
                known = Problem(
                    "known_broken",
                    self.split,
                    record["name"],
                    data_problems[0].path,
                    f"{detail} -- {record['known_issue']}",
                )
                problems = [p for p in problems if p.category == "empty_text"] + [known]
        return problems

    def _problem(self, category: str, record: dict, path: Any, detail: str = "") -> Problem:
        return Problem(category, self.split, record["name"], str(path), detail)

    def _text(self, record: dict) -> list[Problem]:
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            return [self._problem("empty_text", record, "", f"text={text!r}")]
        return []

    def _length(self, record: dict, found: int, path: Any, what: str) -> list[Problem]:
        length = record.get("length")
        if length is not None and int(length) != found:
            return [
                self._problem(
                    "length_mismatch", record, path, f"label length {length}, {what} {found}"
                )
            ]
        return []

    def _features(self, record: dict) -> list[Problem]:
        path = Path(self.feature_root) / f"{record['name']}.npy"
        if not path.is_file():
            return [self._problem("missing_feature", record, path)]
        try:
            arr = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as e:
            return [self._problem("unreadable_feature", record, path, str(e))]
        if arr.ndim != 2 or arr.shape[0] == 0:
            return [
                self._problem(
                    "unreadable_feature", record, path, f"shape {arr.shape}, expected (T>0, D)"
                )
            ]
        return self._length(record, arr.shape[0], path, "feature rows")

    def _frames(self, record: dict) -> list[Problem]:
        root = Path(self.frame_root)
        problems: list[Problem] = []
        if record.get("imgs_path"):
            paths = [root / p for p in record["imgs_path"]]
            folders = {p.parent for p in paths}
            missing_folders = sorted(f for f in folders if not f.is_dir())
            for folder in missing_folders:
                problems.append(self._problem("missing_folder", record, folder))
            for path in paths:
                if path.parent not in missing_folders and not path.is_file():
                    problems.append(self._problem("missing_frame", record, path))
            present = [p for p in paths if p.parent not in missing_folders and p.is_file()]
        else:
            folder = clip_folder(record, root)
            if not folder.is_dir():
                return [self._problem("missing_folder", record, folder)]
            present = list_frames(folder)
            if not present:
                return [self._problem("empty_folder", record, folder)]
        listed = len(record["imgs_path"]) if record.get("imgs_path") else len(present)
        problems += self._length(record, listed, present[0].parent if present else root, "frames")
        if self.decode:
            problems += self._decode(record, present)
        return problems

    def _decode(self, record: dict, paths: list[Path]) -> list[Problem]:
        problems, size = [], None
        for path in paths:
            try:
                frame = decode_frame(path)
            except DataError as e:
                problems.append(
                    self._problem("unreadable_frame", record, path, str(e).split(": ")[-1])
                )
                continue
            if size is None:
                size = tuple(frame.shape)
            elif tuple(frame.shape) != size:
                problems.append(
                    self._problem(
                        "frame_size_mismatch", record, path, f"{tuple(frame.shape)} vs {size}"
                    )
                )
        return problems


def _check_chunk(args: tuple[_Checker, list[dict[str, Any]]]) -> list[Problem]:
    checker, records = args
    return [p for record in records for p in checker(record)]


def _cache_problems(cfg: DataConfig, split: str, records: list[dict]) -> list[Problem]:
    cache = FrameCache(Path(cfg.frame_cache).expanduser())
    cache.check_matches(cfg)
    problems = []
    for record in records:
        name = record["name"]
        path = cache.root / clip_relpath(name)
        if name not in cache or not path.is_file():
            detail = cache.failed.get(name, "")
            problems.append(Problem("missing_cache_clip", split, name, str(path), detail))
        elif record.get("length") is not None and cache.clips[name][0] != int(record["length"]):
            problems.append(
                Problem(
                    "length_mismatch",
                    split,
                    name,
                    str(path),
                    f"label length {record['length']}, cached frames {cache.clips[name][0]}",
                )
            )
    return problems


# ------------------------------------------------------------------------------------ driver
def validate_dataset(
    cfg: DataConfig,
    splits: Sequence[str] = SPLITS,
    decode: bool = True,
    workers: int = 0,
    ignore_known_broken: bool = False,
) -> ValidationReport:
    """Check every sample of ``splits``; problems in the order found, per split."""
    report = ValidationReport(ignore_known_broken=ignore_known_broken)
    frames = cfg.modality is Modality.frames
    feature_root = None if frames else str(feature_root_of(cfg))
    frame_root = str(frame_root_of(cfg)) if frames else None
    pool = ProcessPoolExecutor(workers) if workers > 0 else None
    try:
        for split in splits:
            records = split_records(cfg, split)
            report.samples[split] = len(records)
            seen: Counter = Counter(r["name"] for r in records)
            for name, n in sorted(seen.items()):
                if n > 1:
                    report.problems.append(Problem("duplicate_name", split, name, "", f"{n} times"))
            checker = _Checker(split, cfg.modality, frame_root, feature_root, decode)
            chunks = [records[i : i + 16] for i in range(0, len(records), 16)]
            results = (
                pool.map(_check_chunk, [(checker, c) for c in chunks])
                if pool
                else map(_check_chunk, [(checker, c) for c in chunks])
            )
            for problems in results:
                report.problems.extend(problems)
            if frames and cfg.frame_cache:
                report.problems.extend(_cache_problems(cfg, split, records))
    finally:
        if pool is not None:
            pool.shutdown()
    return report


def _flag(value: str, key: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise ConfigError(f"{key}={value!r}: expected true or false")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    keys = ("splits", "decode", "workers", "report", "ignore_known_broken")
    try:
        cfg, extra = data_config_from_args(sys.argv[1:] if argv is None else argv, keys)
        splits = tuple(s for s in extra.get("splits", ",".join(SPLITS)).split(",") if s)
        report = validate_dataset(
            cfg,
            splits,
            decode=_flag(extra.get("decode", "true"), "decode"),
            workers=int(extra.get("workers", 0)),
            ignore_known_broken=_flag(
                extra.get("ignore_known_broken", "false"), "ignore_known_broken"
            ),
        )
    except (ConfigError, DataError) as e:
        print(f"validate: {e}", file=sys.stderr)
        return 2
    for problem in report.problems:
        print(problem.line())
    counts = report.counts()
    print(
        f"checked {cfg.name} ({cfg.layout.value}, {cfg.modality.value}): "
        + ", ".join(f"{s} {n}" for s, n in report.samples.items())
        + " samples"
    )
    for category in CATEGORIES:
        if counts[category]:
            print(f"  {category:20s} {counts[category]}")
    print("OK: no problems found" if report.ok else f"FAILED: {sum(counts.values())} problems")
    if "report" in extra:
        Path(extra["report"]).write_text(
            json.dumps(
                {
                    "samples": report.samples,
                    "counts": dict(counts),
                    "problems": [asdict(p) for p in report.problems],
                },
                ensure_ascii=False,
                indent=1,
            )
        )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
