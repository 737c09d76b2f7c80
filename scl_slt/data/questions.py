"""Question assistance (question-based SLT): what each record's ``question`` carries.

``data.assist`` decides it when a split is built (``assist_records``, called by
``datasets.build_split``):

* ``none``: records are left as they are (no ``question`` key; batches exactly as without QB-SLT);
* ``question``: the question the clip answers, from the QA sidecar in ``data.questions_dir``
  (below), or, for ``data.layout=synthetic`` without a sidecar, the synthetic dialogue
  (``synthetic/dialogue.py``);
* ``gloss``: the record's own gloss sequence (the ``gloss`` field of label files and official
  annotations) in the question's place: the paper's gloss-assistance comparison.

The QA sidecar format, one JSON file per split::

    <questions_dir>/train.json   {"<clip name>": "<question>", ...}
    <questions_dir>/dev.json
    <questions_dir>/test.json

A JSON object from clip name to question string (UTF-8). Clip names are the records' ``name``s:
PHOENIX-2014-T names carry their split, ``dev/11August_2010_Wednesday_tagesschau-2``, in both the
GFSLT-style and the official layout; CSL-Daily names do not, ``S000020_P0000_T00``. Either
spelling is accepted for any name, with or without the ``<split>/`` prefix (QA releases key
PHOENIX clips by the bare id); one clip written both ways is an error.

Every clip of the split needs a non-blank question, and every name in the file must be a clip of
the split: missing, empty, unknown and doubly-written names are each named (the first few) and
counted in one ``DataError``; nothing is dropped silently. ``python -m scl_slt.data.validate``
reports the same problems one per line (``match_questions``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Assist, DataConfig, Layout
from ..rundir.atomic import write_text_atomic
from .labels import DataError
from .synthetic.dialogue import dialogue_questions

SHOWN = 5  # names an error message lists per problem


def questions_path(questions_dir: str | os.PathLike, split: str) -> Path:
    """``<questions_dir>/<split>.json``."""
    return Path(questions_dir).expanduser() / f"{split}.json"


def read_questions(path: str | os.PathLike) -> dict[str, str]:
    """A sidecar file: ``{clip name: question}``; DataError naming the file when it is missing,
    not JSON, not an object, or holds a value that is not a string."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"question file not found: {path} (expected {{clip name: question}})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"question file {path}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise DataError(
            f"question file {path}: expected a JSON object {{clip name: question}}, "
            f"got {type(data).__name__}"
        )
    bad = [name for name, question in data.items() if not isinstance(question, str)]
    if bad:
        raise DataError(
            f"question file {path}: {len(bad)} value(s) are not strings, e.g. "
            + ", ".join(f"{n!r}: {data[n]!r}" for n in bad[:SHOWN])
        )
    return data


def write_questions(path: str | os.PathLike, mapping: Mapping[str, str]) -> None:
    """Write a sidecar file atomically: sorted names, non-ASCII characters kept as they are."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dict(mapping), ensure_ascii=False, sort_keys=True, indent=1)
    write_text_atomic(path, text + "\n")


# ------------------------------------------------------------------------------------ matching
@dataclass
class QuestionMatch:
    """A sidecar matched against a split's clip names."""

    found: dict[str, str] = field(default_factory=dict)  # record name -> its (non-blank) question
    missing: list[str] = field(default_factory=list)  # record names with no entry
    empty: list[str] = field(default_factory=list)  # record names whose question is blank
    unknown: list[str] = field(default_factory=list)  # file names that are no clip of the split
    twice: list[str] = field(default_factory=list)  # record names written with and without prefix

    def problems(self) -> dict[str, list[str]]:
        """Problem kind -> names, for the kinds that occur."""
        kinds = {
            "missing": self.missing,
            "empty": self.empty,
            "unknown": self.unknown,
            "written twice": self.twice,
        }
        return {kind: names for kind, names in kinds.items() if names}

    def describe(self) -> str:
        """``3 missing (a, b, c); 1 unknown (x)``: each kind counted, its first names listed."""
        return "; ".join(
            f"{len(names)} {kind} ({_shown(names)})" for kind, names in self.problems().items()
        )


def _shown(names: Sequence[str]) -> str:
    """The first ``SHOWN`` names, comma-separated, with ``...`` when there are more."""
    return ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")


def _spellings(name: str, split: str) -> tuple[str, str]:
    """A clip name as written with and without the ``<split>/`` prefix."""
    prefix = f"{split}/"
    bare = name[len(prefix) :] if name.startswith(prefix) else name
    return prefix + bare, bare


def match_questions(
    names: Sequence[str], questions: Mapping[str, str], split: str
) -> QuestionMatch:
    """Look every clip name of ``split`` up in ``questions`` (either spelling, see the module
    docstring) and collect what is missing, empty, unknown or written twice."""
    match = QuestionMatch()
    used: set[str] = set()
    for name in names:
        keys = [key for key in dict.fromkeys(_spellings(name, split)) if key in questions]
        used.update(keys)
        if not keys:
            match.missing.append(name)
        elif len(keys) > 1:
            match.twice.append(name)
        elif not questions[keys[0]].strip():
            match.empty.append(name)
        else:
            match.found[name] = questions[keys[0]]
    match.unknown = [key for key in questions if key not in used]
    return match


def attach_questions(
    records: Sequence[dict[str, Any]], questions: Mapping[str, str], split: str, path: Any
) -> list[dict[str, Any]]:
    """New records with ``question`` set from ``questions`` (read from ``path``, named in the
    error); any missing, empty, unknown or doubly-written name fails, all of them counted."""
    match = match_questions([r["name"] for r in records], questions, split)
    if match.problems():
        raise DataError(f"questions for split {split!r} in {path}: {match.describe()}")
    return [{**r, "question": match.found[r["name"]]} for r in records]


def attach_glosses(records: Sequence[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """New records whose ``question`` is their own gloss sequence (gloss assistance); a record
    without a non-blank ``gloss`` fails, named and counted."""
    bare = [r["name"] for r in records if not str(r.get("gloss") or "").strip()]
    if bare:
        raise DataError(
            f"data.assist=gloss: {len(bare)} clip(s) of split {split!r} have no gloss sequence "
            f"({_shown(bare)})"
        )
    return [{**r, "question": str(r["gloss"])} for r in records]


# --------------------------------------------------------------------------------- the config
def split_questions(
    cfg: DataConfig, split: str, records: Sequence[dict[str, Any]]
) -> tuple[dict[str, str], str]:
    """(``{name: question}``, where it came from) for ``data.assist=question``: the sidecar in
    ``data.questions_dir`` when set, else the synthetic dialogue; DataError naming
    ``data.questions_dir`` for real data without one."""
    if cfg.questions_dir:
        path = questions_path(cfg.questions_dir, split)
        return read_questions(path), str(path)
    if cfg.layout is Layout.synthetic:
        return dialogue_questions(cfg.synthetic, records), "the synthetic dialogue"
    raise DataError(
        f"data.questions_dir is not set: data.assist=question on {cfg.name} ({cfg.layout.value} "
        "layout) needs the QA sidecar folder, <dir>/<split>.json = {clip name: question}"
    )


def assist_records(
    cfg: DataConfig, split: str, records: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The records with the ``question`` that ``data.assist`` asks for (see the module
    docstring); ``none`` returns them unchanged."""
    assist = Assist(cfg.assist)
    if assist is Assist.none:
        return list(records)
    if assist is Assist.gloss:
        return attach_glosses(records, split)
    questions, where = split_questions(cfg, split, records)
    return attach_questions(records, questions, split, where)
