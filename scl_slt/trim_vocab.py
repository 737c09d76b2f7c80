"""Build a trimmed mBART-50 (model + tokenizer) for one dataset and check it loses no text.

    python -m scl_slt.trim_vocab --mbart facebook/mbart-large-50 \\
        --labels-dir ../shared/data/phoenix14t --lang-code de_DE --out work/mbart50-phoenix14t

`--mbart` is a directory or a Hugging Face id already in the local cache (nothing is
downloaded). References come from GFSLT-style `labels.{train,dev,test}` (`--labels-dir`; these
are pickles: point it only at files you trust) or from plain text files, one reference per line
(`--texts`). Then train with `model.mbart_path=<out>`. Exits non-zero if any reference would
come back with `<unk>` or changed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .data.labels import SPLITS, labels_path, read_labels
from .models.vocab_trim import TrimError, trim_mbart


def read_label_texts(labels_dir: str) -> dict[str, list[str]]:
    return {
        s: [r["text"] for r in read_labels(labels_path(labels_dir, s)).values()] for s in SPLITS
    }


def read_text_files(paths: list[str]) -> dict[str, list[str]]:
    texts = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"--texts: file not found: {path}")
        texts[path.stem] = path.read_text(encoding="utf-8").splitlines()
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mbart", required=True, help="mBART-50 directory or cached HF id")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--labels-dir", help="folder with labels.{train,dev,test}")
    source.add_argument("--texts", nargs="+", help="text files, one reference per line")
    parser.add_argument("--lang-code", default="de_DE", help="target language code (checked)")
    parser.add_argument("--out", required=True, help="output directory (save_pretrained)")
    parser.add_argument(
        "--allow-normalization",
        action="store_true",
        help="accept references that the full tokenizer's own normaliser changes and decoding "
        "cannot restore (full-width punctuation it can, when the train texts prefer it); "
        "trimming-induced changes always fail",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    texts = read_label_texts(args.labels_dir) if args.labels_dir else read_text_files(args.texts)
    try:
        report = trim_mbart(
            args.mbart,
            texts,
            args.out,
            args.lang_code,
            allow_normalization=args.allow_normalization,
        )
    except TrimError as e:
        print(f"trim_vocab: FAILED: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    print(f"trimmed model + tokenizer written to {args.out}; use model.mbart_path={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
