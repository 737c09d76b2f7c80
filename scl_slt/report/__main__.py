"""Paper-style results tables and figures from finished run directories.

    python -m scl_slt.report <run dirs or globs...> [--out reports] [--split test] [--checkpoint best]

Each argument is a run directory (it holds ``config.yaml``), a folder searched for run
directories (a pipeline ``out_dir``, a sweep folder), or a glob of either. For every run the
report reads ``config.yaml``, ``eval/<checkpoint>/<split>/metrics.json`` (written by
``python -m scl_slt.evaluate`` and the pipeline's test step), ``metrics.jsonl`` (curves) and
``trajectory/summary.json`` (reference runs). A run whose metrics are missing or unreadable is
listed, with the reason, under "Skipped runs" and left out of the tables; the report goes on.
The paired significance test reads ``predictions.tsv`` beside ``metrics.json``; a run without
it stays in the tables and is named in the table's notes (``significance.py``).


The tables are ``tables.py`` and ``strategies.py``; the files written are ``build.py``'s.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .build import build_report
from .runs import ReportError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scl_slt.report",
        description="Paper-style tables (Markdown, CSV) and curves from run directories.",
    )
    parser.add_argument("runs", nargs="+", help="run directories, folders of runs, or globs")
    parser.add_argument("--out", default="reports", help="output folder (default: reports/)")
    parser.add_argument("--split", default="test", help="evaluated split to tabulate")
    parser.add_argument("--checkpoint", default="best", help="eval/<checkpoint>/ tag to read")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        report = build_report(args.runs, args.out, args.split, args.checkpoint)
    except ReportError as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    print(report.files["tables.md"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in report.files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
