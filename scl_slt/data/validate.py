"""Dataset validator: every problem a training run would trip over, found before it starts.

    python -m scl_slt.data.validate data=phoenix14t data.root=/data/PHOENIX-2014-T \\
        [splits=train,dev,test] [decode=true] [workers=8] [report=problems.json] [feature_dim=N]

Checks each sample of each split and prints one line per problem, then counts per category;
the exit code is 1 when anything was found (2 for a bad command line or config). Categories:

=====================  ====================================================================
missing_folder         a clip's frame folder does not exist
empty_folder           a clip's frame folder holds no *.png / *.jpg / *.jpeg
missing_frame          a frame listed in ``imgs_path`` does not exist
unreadable_frame       a frame that does not decode (``decode=true``, the default)
frame_size_mismatch    a frame whose size differs from the clip's first frame
missing_feature        ``<feature_root>/<name>.npy`` does not exist
unreadable_feature     a feature file whose header does not read, that is truncated, or that is
                       not floating point (T > 0, D) at the expected width D (``feature_dim=N``,
                       else the synthetic width or the first good file: ``datasets.feature_width``)
missing_cache_clip     with ``data.frame_cache``: a clip absent from the cache (or its file)
bad_cache_clip         with ``data.frame_cache``: a clip whose index entry or file is not uint8
                       (T > 0, 3, H, W) at the cache's size, or whose file is unreadable
empty_text             an empty target sentence
length_mismatch        the label's ``length`` differs from the frames / feature rows / cached T
duplicate_name         a sample name seen twice in one split
known_broken           a documented broken clip (CSL-Daily ``S000005_P0004_T00``) whose data is
                       bad; with ``ignore_known_broken=true`` it is listed but not counted
missing_question       with ``data.assist=question`` or ``data.questions_dir``: a clip with no
                       entry in ``<questions_dir>/<split>.json`` (format: ``questions.py``)
empty_question         a clip whose question is blank (``data.assist=gloss``: no gloss sequence)
unknown_question       a name in the question file that is no clip of the split
duplicate_question     a clip written in the question file both with and without ``<split>/``
bad_question_file      a question file that is missing, not JSON, not an object of strings
=====================  ====================================================================

``decode=false`` checks existence and counts only (fast); ``decode=true`` decodes every frame,
in ``workers`` processes. Feature files and frame-cache clips are checked by the start-up scan
(``scan.py``, headers only), the same one training runs, so the two never disagree.
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

from ..config import Assist, ConfigError, DataConfig, Modality
from .datasets import data_config_from_args, frame_root_of, split_records
from .frame_files import clip_folder, decode_frame, list_frames
from .labels import SPLITS, DataError
from .questions import match_questions, questions_path, split_questions
from .scan import MISSING, ScanReport, scan_feature_files, scan_frame_cache

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
    "bad_cache_clip",
    "empty_text",
    "length_mismatch",
    "duplicate_name",
    "known_broken",
    "missing_question",
    "empty_question",
    "unknown_question",
    "duplicate_question",
    "bad_question_file",
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
    decode: bool

    def __call__(self, record: dict[str, Any], scanned: Sequence[Problem] = ()) -> list[Problem]:
        """The record's problems; ``scanned``: its feature file's, found by the scan."""
        problems = self._text(record)
        if self.modality is Modality.features:
            problems += scanned
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


def _scanned_problems(
    scan: ScanReport, what: str, missing: str, bad: str, records_by_split: dict[str, list[dict]]
) -> dict[tuple[str, str], list[Problem]]:
    """The scan's bad files as validator problems (``missing`` or ``bad`` category), and a
    ``length_mismatch`` for each good file whose rows differ from its label's ``length``."""
    found: dict[tuple[str, str], list[Problem]] = {}
    for b in scan.bad:
        category = missing if b.kind == MISSING else bad
        found.setdefault((b.split, b.name), []).append(
            Problem(category, b.split, b.name, b.path, b.detail)
        )
    for split, records in records_by_split.items():
        for record in records:
            key = (split, record["name"])
            length = record.get("length")
            if key not in scan.good or length is None:
                continue
            rows, path = scan.good[key]
            if int(length) != rows:
                detail = f"label length {length}, {what} {rows}"
                found.setdefault(key, []).append(
                    Problem("length_mismatch", split, record["name"], path, detail)
                )
    return found


def _question_problems(cfg: DataConfig, split: str, records: list[dict]) -> list[Problem]:
    """What ``data.assist`` would trip over when the split is built (``questions.py``): the
    question file (or the synthetic dialogue) against the clips, or the clips' glosses."""
    if cfg.assist is Assist.gloss:
        return [
            Problem("empty_question", split, r["name"], "", "no gloss sequence (data.assist=gloss)")
            for r in records
            if not str(r.get("gloss") or "").strip()
        ]
    if cfg.assist is not Assist.question and not cfg.questions_dir:
        return []
    try:  # real data without data.questions_dir raises: a config error, not a data problem
        questions, where = split_questions(cfg, split, records)
    except DataError as e:
        if not cfg.questions_dir:
            raise
        return [
            Problem(
                "bad_question_file",
                split,
                "",
                str(questions_path(cfg.questions_dir, split)),
                str(e),
            )
        ]
    match = match_questions([r["name"] for r in records], questions, split)
    found = (
        ("missing_question", match.missing),
        ("empty_question", match.empty),
        ("unknown_question", match.unknown),
        ("duplicate_question", match.twice),
    )
    return [Problem(category, split, name, where) for category, names in found for name in names]


# ------------------------------------------------------------------------------------ driver
def validate_dataset(
    cfg: DataConfig,
    splits: Sequence[str] = SPLITS,
    decode: bool = True,
    workers: int = 0,
    ignore_known_broken: bool = False,
    feature_dim: int | None = None,
) -> ValidationReport:
    """Check every sample of ``splits``; problems in the order found, per split."""
    report = ValidationReport(ignore_known_broken=ignore_known_broken)
    frames = cfg.modality is Modality.frames
    frame_root = str(frame_root_of(cfg)) if frames else None
    records = {split: split_records(cfg, split) for split in splits}
    scanned: dict[tuple[str, str], list[Problem]] = {}  # (split, name) -> the scan's problems
    if not frames:
        scan = scan_feature_files(cfg, splits, feature_dim)
        scanned = _scanned_problems(
            scan, "feature rows", "missing_feature", "unreadable_feature", records
        )
    elif cfg.frame_cache:
        scan = scan_frame_cache(cfg, splits)
        scanned = _scanned_problems(
            scan, "cached frames", "missing_cache_clip", "bad_cache_clip", records
        )
    pool = ProcessPoolExecutor(workers) if workers > 0 and frames else None
    try:
        for split in splits:
            report.samples[split] = len(records[split])
            seen: Counter = Counter(r["name"] for r in records[split])
            for name, n in sorted(seen.items()):
                if n > 1:
                    report.problems.append(Problem("duplicate_name", split, name, "", f"{n} times"))
            checker = _Checker(split, cfg.modality, frame_root, decode)
            if frames:
                chunks = [records[split][i : i + 16] for i in range(0, len(records[split]), 16)]
                tasks = [(checker, c) for c in chunks]
                for problems in pool.map(_check_chunk, tasks) if pool else map(_check_chunk, tasks):
                    report.problems.extend(problems)
                for record in records[split]:  # the frame cache's, after the frame files'
                    report.problems.extend(scanned.pop((split, record["name"]), []))
            else:
                for record in records[split]:
                    report.problems.extend(
                        checker(record, scanned.get((split, record["name"]), []))
                    )
            report.problems.extend(_question_problems(cfg, split, records[split]))
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


def _int(value: str, key: str) -> int:
    try:
        return int(value)
    except ValueError as e:
        raise ConfigError(f"{key}={value!r}: expected an integer") from e


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    keys = ("splits", "decode", "workers", "report", "ignore_known_broken", "feature_dim")
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
            feature_dim=_int(extra["feature_dim"], "feature_dim")
            if "feature_dim" in extra
            else None,
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
