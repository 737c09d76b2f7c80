"""Replay a batch sampler's epochs without training and print what its batches hold.

    python -m scl_slt.diagnose [--strategies random,text_semantic,...] [--out FILE.json]
        [--work-dir DIR] [training overrides: data=... selection.... stage.batch_size=...
        stage.epochs=... seed=...]

The training config is composed exactly as ``python -m scl_slt.train`` composes it (the same
Hydra overrides, validated the same way); for each strategy (``selection=<name>`` on top; default:
the composed ``selection.name``) the sampler is built as stage 1 builds it
(``selection/build.build_batch_sampler``) and every epoch's global batches are measured by
``selection/diagnostics.py``: shares of identical / near-identical targets (and, on the synthetic
data, of confusable gloss twins) among the in-batch negative pairs, and with
``selection.diagnostics_reference=<scored reference run>`` the δ and similarity quantiles and the
H/L category mix. Only the train split's labels are read (no clip). ``trajectory`` needs
``selection.pair_scores``, ``visual_curriculum`` ``selection.snapshot``, ``san`` ``selection.checkpoint``; ``online_trajectory``
cannot be replayed (its batches come from what training records) and is refused.

Prints one table per strategy (one row per epoch, then all negatives of the split for
comparison, and the seconds to build and to measure each epoch) and writes everything as JSON to
``--out`` (default ``diagnostics.json``). Score files (``text_semantic``) are cached under
``--work-dir`` (default ``runs/diagnose``). Exit codes as ``python -m scl_slt.train``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from .config import ConfigError, compose_config
from .config_checks import validate_train
from .data.datasets import split_records
from .rundir.atomic import write_json_atomic
from .selection.diagnostics import check_replayable, diagnostics_for, replay
from .training.run_context import exit_status

OPTIONS = {"strategies": None, "out": "diagnostics.json", "work_dir": "runs/diagnose"}
COLUMNS = (  # (header, key, scale, format)
    ("epoch", "epoch", 1, "{:.0f}"),
    ("ident %", "identical_share", 100, "{:.2f}"),
    ("near %", "near_identical_share", 100, "{:.2f}"),
    ("twin %", "confusable_share", 100, "{:.2f}"),
    ("text cos", "text_similarity_mean", 1, "{:.3f}"),
    ("δ mean", "delta_mean", 1, "{:+.4f}"),
    ("δ q10", "delta_q10", 1, "{:+.4f}"),
    ("δ q50", "delta_q50", 1, "{:+.4f}"),
    ("δ q90", "delta_q90", 1, "{:+.4f}"),
    ("S mean", "similarity_mean", 1, "{:.4f}"),
    ("H→L %", "share_HL", 100, "{:.1f}"),
    ("H→H %", "share_HH", 100, "{:.1f}"),
    ("L→H %", "share_LH", 100, "{:.1f}"),
    ("L→L %", "share_LL", 100, "{:.1f}"),
    ("build s", "build_seconds", 1, "{:.2f}"),
    ("diag s", "diagnostics_seconds", 1, "{:.2f}"),
)


def split_arguments(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """This command's options (``--key value``, ``--key=value`` or ``key=value``; ``-`` or
    ``_`` in the key) vs the Hydra overrides of the training config."""
    options, overrides = dict(OPTIONS), []
    args = list(argv)
    while args:
        arg = args.pop(0)
        key, sep, value = arg.lstrip("-").partition("=")
        key = key.replace("-", "_")
        if key in OPTIONS and (sep or arg.startswith("--")):
            if not sep:
                if not args:
                    raise ConfigError(f"{arg}: needs a value")
                value = args.pop(0)
            options[key] = value
        elif arg.startswith("--"):
            raise ConfigError(f"{arg}: unknown option (known: {', '.join(OPTIONS)})")
        else:
            overrides.append(arg)
    if options["strategies"] is not None:
        names = options["strategies"].strip().strip("[]").split(",")
        options["strategies"] = [n.strip().strip("'\"") for n in names if n.strip()]
        if not options["strategies"]:
            raise ConfigError("strategies: empty list")
    return options, overrides


def table(rows: list[dict[str, Any]], all_negatives: dict[str, Any]) -> str:
    """Rows of per-epoch figures as a fixed-width table; columns without values are left out."""
    rows = [*rows, {"epoch": None, **all_negatives}]
    columns = [c for c in COLUMNS if any(r.get(c[1]) is not None for r in rows[:-1])]
    cells = [[h for h, *_ in columns]]
    for r in rows:
        cells.append(
            [
                fmt.format(r[key] * scale) if r.get(key) is not None else "-"
                for _, key, scale, fmt in columns
            ]
        )
    cells[-1][0] = "all"
    widths = [max(len(row[k]) for row in cells) for k in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Replay, print and write the diagnostics; returns what is written."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    options, overrides = split_arguments(sys.argv[1:] if argv is None else argv)
    base = validate_train(compose_config("train", overrides))
    strategies = options["strategies"] or [base.selection.name.value]
    check_replayable(strategies)  # before any work
    configs = {}
    for name in strategies:  # every config checked before any replay
        picked = [o for o in overrides if not o.startswith("selection=")]
        configs[name] = validate_train(compose_config("train", [*picked, f"selection={name}"]))
    records = split_records(base.data, "train")
    diagnostics = diagnostics_for(configs[strategies[0]], records)
    if diagnostics is None:  # selection.diagnostics=false has no meaning here
        raise ConfigError("selection.diagnostics: this command measures; leave it true")
    s = base.stage
    print(f"{len(records)} train samples, global batch {s.batch_size}, {s.epochs} epochs, seed "
          f"{base.seed}, language {base.data.language}")  # fmt: skip
    result: dict[str, Any] = {
        "data": base.data.name,
        "num_samples": len(records),
        "batch_size": s.batch_size,
        "epochs": s.epochs,
        "seed": base.seed,
        "reference": base.selection.diagnostics_reference,
        "strategies": {},
    }
    for name, cfg in configs.items():
        started = time.perf_counter()
        rows = list(replay(cfg, Path(options["work_dir"]) / name, records, diagnostics))
        wall = time.perf_counter() - started
        figures = diagnostics.all_negatives()
        print(f"\n== {name} (schedule {cfg.selection.schedule.value}; {wall:.1f} s in all)")
        print(table(rows, figures))
        result["strategies"][name] = {"epochs": rows, "seconds": round(wall, 2)}
    result["all_negatives"] = diagnostics.all_negatives()
    out = Path(options["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result)
    print(f"\nwritten: {out}")
    return result


def cli() -> int:
    """``main`` under the exit-code rule of ``scl_slt/train.py``: 2 for a user's error (a bad
    option or override, missing data), 1 for anything else."""
    return exit_status(main)


if __name__ == "__main__":
    sys.exit(cli())
