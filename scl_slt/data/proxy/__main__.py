"""``python -m scl_slt.data.proxy --labels DIR --out DIR [options]``: build (or reuse) a proxy
dataset from real label files and print what it holds (see the package docstring).

    python -m scl_slt.data.proxy --labels ../shared/data/phoenix14t --out work/phoenix14t-proxy \\
        --max-train 600 --max-dev 100 --max-test 100 --frame-stride 3
    python -m scl_slt.train data=phoenix14t_proxy data.root=work/phoenix14t-proxy model=tiny
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence

from ...config import ConfigError
from ..labels import DataError
from .build import build_proxy
from .options import ProxyOptions


def _frames_per_gloss(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer, got {value!r}") from None


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, ProxyOptions]:
    parser = argparse.ArgumentParser(
        prog="python -m scl_slt.data.proxy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--labels", required=True, help="folder of labels.{train,dev,test}")
    parser.add_argument("--out", required=True, help="folder to build (reused if the same)")
    defaults = ProxyOptions()
    for field in dataclasses.fields(ProxyOptions):
        option = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        if field.name == "frames_per_gloss":
            kind, shown = _frames_per_gloss, "auto"
        elif field.name.startswith("max_"):
            kind, shown = int, "all"
        else:
            kind, shown = type(default), default
        choices = ("sentence", "clip") if field.name == "subset_by" else None
        parser.add_argument(
            option, type=kind, default=default, choices=choices, help=f"default: {shown}"
        )
    args = parser.parse_args(list(argv))
    names = [f.name for f in dataclasses.fields(ProxyOptions)]
    return args, ProxyOptions(**{name: getattr(args, name) for name in names})


def main(argv: Sequence[str]) -> int:
    args, options = parse_args(argv)
    start = time.perf_counter()
    try:
        result = build_proxy(args.labels, args.out, options)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    meta = result.meta
    print(f"proxy dataset: {result.root}")
    print(f"{'reused' if result.reused else 'built'} in {seconds:.1f}s")
    print(f"splits: {meta['splits']} (of {meta['source']['records']})")
    print(f"frames/clip: {meta['frames_per_clip']}  feature dim: {meta['feature_dim']}")
    print(f"vocabulary: {len(meta['glosses'])} glosses, {len(meta['twins'])} twin pairs")
    print(f"signers: {meta['signers']['count']} ({meta['signers']['source']})")
    print(f"distinct train texts: {meta['distinct_train_texts']}  rates: {meta['rates']}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main(sys.argv[1:]))
