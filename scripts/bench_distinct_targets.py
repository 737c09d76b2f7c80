"""Benchmark: seconds per epoch of random batches with and without selection.distinct_targets.

Reads the target texts of a label file (default: CSL-Daily's train split, 18,400 clips in 6,581
sentences), builds ``--epochs`` epochs of random global batches of ``--batch-size`` with and
without the option, and prints the mean seconds per epoch, and, per epoch, the in-batch pairs
with identical targets without the option (which the option brings to 0, checked). With
``--curriculum-samples N`` it also times one curriculum epoch (random float16 scores in memory,
the first N texts) with and without the option.

Usage: python scripts/bench_distinct_targets.py [--labels ../shared/data/csl_daily/labels.train]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from scl_slt.data.labels import read_labels
from scl_slt.selection.curriculum import CurriculumBatchSampler
from scl_slt.selection.samplers import RandomBatchSampler, target_groups

REPO = Path(__file__).resolve().parents[1]


def duplicate_pairs(batches: list[list[int]], groups: np.ndarray) -> int:
    """In-batch pairs (unordered) whose targets are identical."""
    total = 0
    for batch in batches:
        counts = np.bincount(groups[batch])
        total += int((counts * (counts - 1) // 2).sum())
    return total


def time_epochs(make, epochs: int) -> tuple[float, list[list[list[int]]]]:
    """Mean seconds per epoch (a fresh sampler per epoch: nothing cached) and the batches."""
    built, seconds = [], []
    for epoch in range(epochs):
        sampler = make()
        started = time.perf_counter()
        built.append(sampler.global_batches(epoch))
        seconds.append(time.perf_counter() - started)
    return float(np.mean(seconds)), built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = REPO.parent / "shared" / "data" / "csl_daily" / "labels.train"
    parser.add_argument("--labels", type=Path, default=default)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--curriculum-samples", type=int, default=0)
    args = parser.parse_args()

    texts = [record["text"] for record in read_labels(args.labels).values()]
    groups = target_groups(texts)
    n, b = len(texts), args.batch_size
    print(
        f"{args.labels}: {n} clips, {groups.max() + 1} distinct sentences, at most "
        f"{np.bincount(groups).max()} clips of one; batch {b}: {-(-n // b)} batches per epoch"
    )
    plain_s, plain = time_epochs(lambda: RandomBatchSampler(n, b, args.seed), args.epochs)
    distinct_s, distinct = time_epochs(
        lambda: RandomBatchSampler(n, b, args.seed, target_groups=groups), args.epochs
    )
    for batches in distinct:
        if duplicate_pairs(batches, groups) or sorted(i for x in batches for i in x) != list(
            range(n)
        ):
            raise SystemExit("distinct_targets gave a repeated target or lost a sample")
    repeats = [duplicate_pairs(batches, groups) for batches in plain]
    print(f"random, without the option: {plain_s:.4f} s per epoch (mean of {args.epochs})")
    print(f"random, distinct_targets:   {distinct_s:.4f} s per epoch (mean of {args.epochs})")
    print(f"in-batch pairs with identical targets without the option, per epoch: {repeats}")

    if args.curriculum_samples:
        m = min(args.curriculum_samples, n)
        scores = np.random.default_rng(args.seed).standard_normal((m, m), np.float32)
        scores = (0.1 * scores).astype(np.float16)
        for label, option in (("without the option", None), ("distinct_targets", groups[:m])):
            sampler = CurriculumBatchSampler(scores, b, 2, "log", args.seed, target_groups=option)
            started = time.perf_counter()
            sampler.global_batches(0)
            elapsed = time.perf_counter() - started
            print(f"curriculum, {m} samples, {label}: {elapsed:.2f} s per epoch")


if __name__ == "__main__":
    main()
