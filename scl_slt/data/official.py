"""PHOENIX-2014-T and CSL-Daily as released -> records ``{name, text, gloss, length, frames_dir}``.

PHOENIX-2014-T (``data.root`` = the ``PHOENIX-2014-T`` folder, or the release folder holding it):
  ``annotations/manual/PHOENIX-2014-T.{train,dev,test}.corpus.csv`` (pipe-separated, header
  ``name|video|start|end|speaker|orth|translation``), frames
  ``features/fullFrame-210x260px/{split}/{name}/images0001.png ...``. Record names are
  ``{split}/{name}``, as in the GFSLT-style label files, so feature files and frame caches are
  shared between the two layouts. The CSVs end every translation with a separate ``.`` token; it is
  removed, giving exactly the reference strings of the label files and of published scores (which
  have no final period). ``length`` is not in the CSVs: it is the number of frames found.

CSL-Daily (``data.root`` = the folder holding ``sentence_label/``):
  ``sentence_label/csl2020ct_v2.pkl`` (pickle; key ``info`` = list of dicts with ``name``,
  ``length``, ``label_gloss``, ``label_char``, ``label_word``), ``sentence_label/split_1.txt``
  (pipe-separated, header ``name|split``), frames ``sentence/frames_512x512/{name}/*.jpg`` or, in
  some copies, ``sentence_frames-512x512/frames_512x512/{name}/*.jpg``. The target is the
  character sequence (``label_char`` joined, punctuation included).

  Known broken: clip ``S000005_P0004_T00`` (train) is listed in the annotations but its frames are
  missing from released copies; the GFSLT-style label files leave it out (18,400 train clips
  instead of 18,401). It is kept here with a ``known_issue`` note: the validator reports it under
  ``known_broken``, ``data.on_bad_sample=skip`` skips it in training, and with ``error`` the split
  refuses to build while its frame folder is missing. It is never renamed or relabelled.

``data.frame_root`` replaces the default frame folder of either release. All paths come from the
config; nothing here knows where a dataset lives.

Security: ``csl2020ct_v2.pkl`` is a pickle, and unpickling runs code. It is loaded only from the
``data.root`` the user points at; do not point it at files you do not trust.
"""

from __future__ import annotations

import csv
import logging
import os
import pickle
from pathlib import Path
from typing import Any

from .labels import SPLITS, DataError

log = logging.getLogger(__name__)

PHOENIX14T = "phoenix14t"
CSL_DAILY = "csl_daily"

PHOENIX_ANNOTATIONS = Path("annotations", "manual")
PHOENIX_FRAMES = Path("features", "fullFrame-210x260px")
PHOENIX_COLUMNS = ("name", "speaker", "orth", "translation")

CSL_LABELS = Path("sentence_label")
CSL_ANNOTATION_FILE = "csl2020ct_v2.pkl"
CSL_SPLIT_FILE = "split_1.txt"
CSL_FRAME_DIRS = (
    Path("sentence", "frames_512x512"),
    Path("sentence_frames-512x512", "frames_512x512"),
)

KNOWN_BROKEN = {
    "S000005_P0004_T00": (
        "CSL-Daily clip S000005_P0004_T00 is known broken: annotated but its frames are missing "
        "from released copies; use data.on_bad_sample=skip"
    ),
}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")


# --------------------------------------------------------------------------- PHOENIX-2014-T
def phoenix_root(root: str | os.PathLike) -> Path:
    """The folder holding ``annotations/manual`` (``root`` itself or ``root/PHOENIX-2014-T``)."""
    root = Path(root).expanduser()
    for candidate in (root, root / "PHOENIX-2014-T"):
        if (candidate / PHOENIX_ANNOTATIONS).is_dir():
            return candidate
    raise DataError(
        f"data.root={root}: not a PHOENIX-2014-T release (no {PHOENIX_ANNOTATIONS} in it or in "
        f"{root / 'PHOENIX-2014-T'})"
    )


def phoenix_corpus_path(root: Path, split: str) -> Path:
    _check_split(split)
    return root / PHOENIX_ANNOTATIONS / f"PHOENIX-2014-T.{split}.corpus.csv"


def clean_translation(text: str) -> str:
    """Drop the CSVs' final ``.`` token (and surrounding blanks); nothing else changes."""
    text = text.strip()
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text


def read_phoenix_corpus(path: Path, split: str) -> list[dict[str, Any]]:
    """Records of one ``PHOENIX-2014-T.{split}.corpus.csv`` (frames not attached)."""
    if not path.is_file():
        raise DataError(f"PHOENIX-2014-T corpus file not found: {path}")
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter="|", quoting=csv.QUOTE_NONE)
        missing = [c for c in PHOENIX_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: header {reader.fieldnames} lacks column(s) {missing}")
        records = []
        for line, row in enumerate(reader, start=2):
            if not row["name"]:
                raise DataError(f"{path}:{line}: empty name")
            if row["translation"] is None:
                raise DataError(f"{path}:{line}: too few columns")
            records.append(
                {
                    "name": f"{split}/{row['name']}",
                    "text": clean_translation(row["translation"]),
                    "gloss": row["orth"].strip(),
                    "signer": row["speaker"],
                    "length": None,
                }
            )
    return records


# --------------------------------------------------------------------------------- CSL-Daily
def load_csl_annotations(path: Path) -> dict[str, dict[str, Any]]:
    """``name -> entry`` from ``csl2020ct_v2.pkl``. Unpickling runs code: trusted files only."""
    if not path.is_file():
        raise DataError(f"CSL-Daily annotation file not found: {path}")
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError) as e:
        raise DataError(f"cannot read CSL-Daily annotation file {path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("info"), list):
        raise DataError(f"{path}: expected a dict with an 'info' list")
    entries = {}
    for i, entry in enumerate(data["info"]):
        missing = [
            k
            for k in ("name", "length", "label_char")
            if not isinstance(entry, dict) or k not in entry
        ]
        if missing:
            raise DataError(f"{path}: info[{i}] lacks {missing}")
        entries[entry["name"]] = entry
    return entries


def read_csl_split(path: Path) -> dict[str, str]:
    """``name -> split`` from ``split_1.txt`` (in file order)."""
    if not path.is_file():
        raise DataError(f"CSL-Daily split file not found: {path}")
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter="|", quoting=csv.QUOTE_NONE)
        if not {"name", "split"} <= set(reader.fieldnames or []):
            raise DataError(f"{path}: expected header 'name|split', got {reader.fieldnames}")
        return {row["name"].strip(): row["split"].strip() for row in reader if row["name"]}


def _joined(value: Any, sep: str) -> str:
    return value if isinstance(value, str) else sep.join(str(v) for v in value)


def read_csl_daily(root: Path, split: str) -> list[dict[str, Any]]:
    """Records of one CSL-Daily split (frames not attached), in ``split_1.txt`` order."""
    _check_split(split)
    labels = Path(root).expanduser() / CSL_LABELS
    split_path = labels / CSL_SPLIT_FILE
    names = [n for n, s in read_csl_split(split_path).items() if s == split]
    annotations = load_csl_annotations(labels / CSL_ANNOTATION_FILE)
    records = []
    for name in names:
        entry = annotations.get(name)
        if entry is None:
            raise DataError(
                f"{split_path}: {name!r} has no entry in {labels / CSL_ANNOTATION_FILE}"
            )
        record = {
            "name": name,
            "text": _joined(entry["label_char"], "").strip(),
            "gloss": _joined(entry.get("label_gloss", ""), " "),
            "length": int(entry["length"]),
        }
        parts = name.split("_")
        if len(parts) == 3:
            record["signer"] = parts[1]
        if name in KNOWN_BROKEN:
            record["known_issue"] = KNOWN_BROKEN[name]
        records.append(record)
    return records


def csl_frame_root(root: Path) -> Path:
    """The first existing CSL-Daily frame folder (the usual one when none exists)."""
    root = Path(root).expanduser()
    for rel in CSL_FRAME_DIRS:
        if (root / rel).is_dir():
            return root / rel
    return root / CSL_FRAME_DIRS[0]


# ------------------------------------------------------------------------------------ either
def default_frame_root(dataset: str, root: str | os.PathLike) -> Path:
    if dataset == PHOENIX14T:
        return phoenix_root(root) / PHOENIX_FRAMES
    if dataset == CSL_DAILY:
        return csl_frame_root(Path(root))
    raise DataError(
        f"data.name={dataset!r} has no official layout (expected {PHOENIX14T} or {CSL_DAILY})"
    )


def official_records(
    dataset: str, root: str | os.PathLike, split: str, frame_root: str | os.PathLike | None = None
) -> list[dict[str, Any]]:
    """Records of one split of an official release, with ``frames_dir`` (absolute) attached."""
    frames = Path(frame_root).expanduser() if frame_root else default_frame_root(dataset, root)
    if dataset == PHOENIX14T:
        records = read_phoenix_corpus(phoenix_corpus_path(phoenix_root(root), split), split)
    elif dataset == CSL_DAILY:
        records = read_csl_daily(Path(root), split)
    else:
        raise DataError(
            f"data.name={dataset!r} has no official layout (expected {PHOENIX14T} or {CSL_DAILY})"
        )
    for record in records:
        record["frames_dir"] = str(frames / record["name"])
    return records
