"""Building a proxy dataset folder from real label files: ``build_proxy(labels_dir, out, options)``.

The folder is what ``data.layout=gfslt`` with ``modality=features`` reads:
``labels.{train,dev,test}`` and ``features/<name>.npy`` (float32, (T, D)), plus ``meta.json``
(vocabulary, twins, signers, counts, achieved rates and the exact options). Records keep their
fields except ``imgs_path`` (the frames are not there); ``length`` becomes the rendered frame count
(the real one is kept as ``source_length``), and ``signer`` and ``alignment`` (``[gloss_id, start,
end)`` feature rows, ids into ``meta.json``'s ``glosses``) are added, as in the synthetic data.

Every record of the three label files is checked before anything is written. The folder is built
beside its final name and renamed into place under a file lock (``synthetic.generate``'s helpers):
a half-built folder is never taken for a finished one; ``meta.json`` marks a finished one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..labels import SPLITS, DataError, labels_path, read_labels, write_labels
from ..synthetic.generate import build_atomically, locked_file
from ..synthetic.language import stream_rng
from ..synthetic.plan import duplicate_share
from .language import (
    STREAM_CLIP,
    STREAM_SUBSET,
    build_language,
    clip_length,
    confusable_share,
    name_key,
    pairwise_distances,
    render_clip,
    signer_ids,
    signer_styles,
)
from .options import ProxyOptions

log = logging.getLogger(__name__)

META = "meta.json"
FORMAT = "scl-slt proxy dataset"
SUBSET_RULE = {
    "clip": "the first max-<split> clips of a seeded permutation, kept in file order",
    "sentence": "whole groups of clips sharing a target text, in a seeded permutation of the "
    "texts, while they fit in max-<split>; kept in file order",
}


@dataclass
class ProxyBuild:
    root: Path
    meta: dict[str, Any]
    reused: bool


# -------------------------------------------------------------------------------------- source
def read_source(labels_dir: str | Path) -> tuple[dict[str, dict[str, dict]], dict[str, str]]:
    """The records of ``labels_dir/labels.{train,dev,test}`` and each file's SHA-256, checked:
    every record needs a string ``gloss`` and a positive integer ``length`` (DataError naming the
    file and the record otherwise)."""
    records, digests = {}, {}
    for split in SPLITS:
        path = labels_path(Path(labels_dir).expanduser(), split)
        records[split] = read_labels(path)  # DataError naming a missing or unreadable file
        digests[split] = hashlib.sha256(path.read_bytes()).hexdigest()
        for name, rec in records[split].items():
            if not isinstance(rec.get("gloss"), str):
                raise DataError(f"label file {path}: record {name!r} has no 'gloss' string")
            length = rec.get("length")
            if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
                raise DataError(
                    f"label file {path}: record {name!r} needs a positive integer 'length' "
                    f"(its frame count), got {length!r}"
                )
    return records, digests


def choose_subset(
    records: dict[str, dict], limit: int | None, seed: int, split_id: int, by: str
) -> list[str]:
    """At most ``limit`` clip names, kept in file order; all when ``limit`` is None or not smaller.

    ``by="clip"``: the first ``limit`` clips of a seeded permutation. ``by="sentence"``: whole
    groups of clips with the same target text, in a seeded permutation of the texts, while they
    fit (so up to the largest group minus one short of ``limit``): the duplicated sentences stay
    duplicated. Either way a smaller limit gives a subset of a larger one."""
    names = list(records)
    if limit is None or limit >= len(names):
        return names
    rng = stream_rng(seed, STREAM_SUBSET, split_id)
    if by == "clip":
        keep = set(rng.permutation(len(names))[:limit].tolist())
        return [name for i, name in enumerate(names) if i in keep]
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(records[name]["text"], []).append(name)
    texts = list(groups)
    chosen: set[str] = set()
    for k in rng.permutation(len(texts)):
        if len(chosen) + len(groups[texts[k]]) > limit:
            break
        chosen.update(groups[texts[k]])
    return [name for name in names if name in chosen]


# --------------------------------------------------------------------------------------- build
def _identity(options: ProxyOptions, digests: dict[str, str]) -> dict[str, Any]:
    """What makes two builds the same: the options and the label files' contents."""
    return {"options": options.as_dict(), "source_sha256": digests}


def _differences(found: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    keys = sorted(set(found["options"]) | set(wanted["options"]))
    diffs = [
        f"{k}: {found['options'].get(k)!r} != {wanted['options'].get(k)!r}"
        for k in keys
        if found["options"].get(k) != wanted["options"].get(k)
    ]
    if found.get("source_sha256") != wanted["source_sha256"]:
        diffs.append("the label files differ")
    return diffs


def _check_existing(out: Path, identity: dict[str, Any]) -> bool:
    """True when ``out`` is a finished build of the same identity; raises for anything else
    already there; False when there is nothing."""
    meta_path = out / META
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            found = {"options": meta["options"], "source_sha256": meta["source"]["sha256"]}
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{meta_path}: not a proxy dataset's meta ({e})") from e
        diffs = _differences(found, identity)
        if diffs:
            raise DataError(
                f"{meta_path}: {out} was built with other options ({'; '.join(diffs)}); "
                "choose another --out or delete the folder"
            )
        return True
    if out.exists():
        raise DataError(
            f"{out} exists but has no {META}: not a finished proxy dataset "
            "(choose another --out or delete the folder)"
        )
    return False


def build_proxy(labels_dir: str | Path, out: str | Path, options: ProxyOptions) -> ProxyBuild:
    """Build (or reuse) the proxy dataset of ``labels_dir`` in ``out``; see the module doc."""
    options.check()
    records, digests = read_source(labels_dir)
    identity = _identity(options, digests)
    out = Path(out).expanduser()
    if _check_existing(out, identity):
        return ProxyBuild(out, json.loads((out / META).read_text()), reused=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with locked_file(out.parent / f".{out.name}.lock") as locked:
        if _check_existing(out, identity):  # another process finished it while we waited
            return ProxyBuild(out, json.loads((out / META).read_text()), reused=True)
        source = {"labels_dir": str(Path(labels_dir).expanduser().resolve()), "sha256": digests}
        build_atomically(out, lambda tmp: _write(tmp, records, options, source), locked)
    return ProxyBuild(out, json.loads((out / META).read_text()), reused=False)


def _write(folder: Path, source_records: dict, options: ProxyOptions, source: dict) -> None:
    """Labels, features and meta.json of the build into ``folder`` (the temporary one)."""
    records = [r for split in SPLITS for r in source_records[split].values()]
    vocabulary = sorted({g for r in records for g in r["gloss"].split()})
    index = {g: i for i, g in enumerate(vocabulary)}
    language = build_language(vocabulary, options)
    all_names = [name for split in SPLITS for name in source_records[split]]
    signers, signer_source = signer_ids(all_names, options.num_signers)
    styles = signer_styles(max(signers.values(), default=0) + 1, options)
    written: dict[str, dict[str, dict]] = {}
    lengthened = 0
    for split_id, split in enumerate(SPLITS):
        limit = options.max_clips(split)
        names = choose_subset(
            source_records[split], limit, options.seed, split_id, options.subset_by
        )
        written[split] = {}
        for name in names:
            record = {k: v for k, v in source_records[split][name].items() if k != "imgs_path"}
            ids = [index[g] for g in record["gloss"].split()]
            length = clip_length(int(record["length"]), len(ids), options)
            real = -(-int(record["length"]) // options.frame_stride)
            lengthened += options.frames_per_gloss is None and length > real  # < 1 frame/gloss
            rng = stream_rng(options.seed, STREAM_CLIP, name_key(name))
            signer = signers[name]
            features, alignment = render_clip(ids, length, language, styles[signer], options, rng)
            path = folder / "features" / f"{name}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, features)
            source_length = int(record["length"])
            record.update(name=name, length=length, source_length=source_length)
            record.update(signer=signer, alignment=alignment)
            written[split][name] = record
        write_labels(labels_path(folder, split), written[split])
    meta = _meta(options, source, source_records, written, language, signer_source, styles)
    meta["lengthened_clips"] = lengthened
    (folder / META).write_text(json.dumps(meta, indent=1, ensure_ascii=False))


def _meta(options, source, source_records, written, language, signer_source, styles) -> dict:
    """What was built, with the rates achieved (measured on the written data)."""
    train = list(written["train"].values())
    seen = {r["text"] for r in train}
    twin_ids = {g for pair in language.twins for g in pair}
    train_tokens = [g for r in train for g, _, _ in r["alignment"]]
    lengths = [r["length"] for split in SPLITS for r in written[split].values()]
    flat = language.motion.reshape(len(language.glosses), -1)
    rates: dict[str, Any] = {
        "confusable": {
            "requested": options.confusable_rate,
            "achieved": confusable_share(language.motion),
            "train_gloss_tokens_with_twin": float(np.mean([g in twin_ids for g in train_tokens]))
            if train_tokens
            else 0.0,
            "train_clips_with_twin": float(
                np.mean([any(g in twin_ids for g, _, _ in r["alignment"]) for r in train])
            )
            if train
            else 0.0,
        },
        "duplicate_train_texts": duplicate_share([r["text"] for r in train]),
    }
    if len(flat) >= 2:
        dist = pairwise_distances(flat)
        pairs = dist[np.triu_indices(len(flat), 1)]
        rates["confusable"]["twin_over_median_distance"] = (
            float(np.mean([dist[a, b] for a, b in language.twins]) / np.median(pairs))
            if language.twins
            else None
        )
    for split in ("dev", "test"):
        texts = [r["text"] for r in written[split].values()]
        rates[f"{split}_text_seen_in_train"] = float(np.mean([t in seen for t in texts]))
    signer_counts = Counter(r["signer"] for split in SPLITS for r in written[split].values())
    return {
        "format": FORMAT,
        "options": options.as_dict(),
        "source": {**source, "records": {s: len(source_records[s]) for s in SPLITS}},
        "splits": {s: len(written[s]) for s in SPLITS},
        "subset": SUBSET_RULE[options.subset_by],
        "feature_dim": options.feature_dim,
        "frames_per_clip": {
            "min": int(np.min(lengths)),
            "mean": float(np.mean(lengths)),
            "max": int(np.max(lengths)),
        },
        "no_gloss_clips": sum(not r["alignment"] for s in SPLITS for r in written[s].values()),
        "glosses": language.glosses,
        "durations": language.durations.tolist(),
        "twins": [list(pair) for pair in language.twins],
        "twin_glosses": [[language.glosses[a], language.glosses[b]] for a, b in language.twins],
        "signers": {
            "source": signer_source,
            "count": len(styles),
            "clips": {str(k): v for k, v in sorted(signer_counts.items())},
        },
        "distinct_train_texts": len(seen),
        "rates": rates,
    }
