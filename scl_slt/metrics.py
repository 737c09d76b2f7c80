"""Score a hypothesis file against a reference file: ``python -m scl_slt.metrics HYP REF --language de|zh``.

The scoring itself is ``scl_slt.eval.metrics`` (the one place that decides how a hypothesis is
compared with its reference); this command reads the two files and prints its result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .eval.metrics import LANGUAGES, compute_metrics, read_lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scl_slt.metrics",
        description="BLEU-1..4 and ROUGE-L of a hypothesis file against a reference file "
        "(one sentence per line, same order).",
    )
    parser.add_argument("hypotheses", type=Path)
    parser.add_argument("references", type=Path)
    parser.add_argument("--language", choices=LANGUAGES, required=True)
    args = parser.parse_args(argv)
    try:
        hyps, refs = read_lines(args.hypotheses), read_lines(args.references)
        if len(hyps) != len(refs):
            raise ValueError(
                f"{args.hypotheses} has {len(hyps)} lines but {args.references} has {len(refs)}"
            )
        metrics = compute_metrics(hyps, refs, args.language)
    except (OSError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2, ensure_ascii=False))
    print(f"BLEU signature: {metrics['bleu_signature']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
