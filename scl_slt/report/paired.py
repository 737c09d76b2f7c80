"""Any two rows against each other: ``python -m scl_slt.report.paired A_RUNS... --against B_RUNS...``.

The report tests every row against its table's reference row (CL-SLT or random); this command
answers the other question a comparison raises, "is row A different from row B", with the same
test: each side's evaluated translation runs (run directories, or folders searched for them like
the report's arguments), seed k of A paired with seed k of B on the same sentences, the pairs
concatenated into one sacrebleu paired bootstrap on BLEU-4 (``significance.compare_samples``).
It prints each side's BLEU-4 mean ± std [95 % interval] and the p-value; exit status 2 on bad
arguments (no run, runs without predictions are named).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .runs import ReportError, find_run_dirs, load_run
from .significance import Sample, compare_samples, summarise
from .tables import SIGNIFICANCE_LEVEL


def _side(arguments: Sequence[str], split: str, checkpoint: str) -> tuple[list[Sample], list[float]]:  # fmt: skip
    runs = [load_run(p, split, checkpoint) for p in find_run_dirs(arguments)]
    scored = [r for r in runs if r.problem is None and r.metrics]
    if not scored:
        problems = "; ".join(f"{r.path}: {r.problem}" for r in runs if r.problem)
        raise ReportError(f"no evaluated run in {list(arguments)}" + (f" ({problems})" if problems else ""))  # fmt: skip
    samples = [Sample(r.seed, r.path / "eval" / checkpoint / split, r.config) for r in scored]
    return samples, [r.metrics["bleu4"] for r in scored]


def _summary(values: list[float]) -> str:
    s = summarise(values)
    spread = f" ± {s.std:.2f} [{s.ci[0]:.2f}, {s.ci[1]:.2f}]" if s.ci else " (1 run)"
    return f"{s.mean:.2f}{spread}, n = {s.n}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scl_slt.report.paired", description=__doc__.split("\n\n")[1])  # fmt: skip
    parser.add_argument("runs", nargs="+", help="row A: run directories or folders holding them")
    parser.add_argument("--against", nargs="+", required=True, help="row B, the same way")
    parser.add_argument("--split", default="test")
    parser.add_argument("--checkpoint", default="best")
    args = parser.parse_args(argv)
    try:
        a, a_bleu = _side(args.runs, args.split, args.checkpoint)
        b, b_bleu = _side(args.against, args.split, args.checkpoint)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = compare_samples(a, b, "B")
    print(f"A BLEU-4: {_summary(a_bleu)}")
    print(f"B BLEU-4: {_summary(b_bleu)}")
    if result.p_value is None:
        print(f"paired test: {result.note}")
        return 2
    verdict = "significant" if result.significant else "not significant"
    seeds = " ".join(str(s) for s in result.seeds)
    print(f"paired bootstrap on BLEU-4 (seeds {seeds}, {result.sentences} sentence pairs): "
          f"p = {result.p_value:.3f} ({verdict} at {SIGNIFICANCE_LEVEL})")  # fmt: skip
    if result.note:
        print(f"note: {result.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
