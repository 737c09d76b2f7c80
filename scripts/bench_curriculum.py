"""Benchmark: one epoch of curriculum batches at CSL-Daily scale (N = 18,401, B = 16).

Builds an epoch from a float16 N x N ``.npy`` memory map (a random one in a temporary folder
unless ``--pair-scores`` is given) and prints, from the same run so CPU contention affects all
figures alike:

- the running-sum sampler's time for the whole epoch and its extra memory (peak anonymous RSS
  growth, sampled while it runs, excluding the mapped file's pages; and tracemalloc's peak of
  numpy allocations);
- a straightforward sampler that recomputes Δ from scratch for every pick, run on the first
  ``--naive-batches`` batches (its picks are checked equal to the fast sampler's) and scaled to a
  whole epoch by the number of (candidate, batch member) terms it evaluates;
- the optional candidate pool: time and mean batch score against the full candidate set.

Usage: python scripts/bench_curriculum.py [--num-samples 18401] [--pool-sizes 256 1024]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

from scl_slt.selection.curriculum import (
    CurriculumBatchSampler,
    batch_score,
    build_curriculum_batches,
    load_pair_scores,
)
from scl_slt.selection.samplers import RandomBatchSampler, epoch_generator


def write_random_scores(path: Path, n: int, seed: int) -> None:
    """A random float16 N x N score file, written in row blocks (bounded memory)."""
    scores = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, n))
    rng = np.random.default_rng(seed)
    block = max(1, (1 << 24) // n)
    for start in range(0, n, block):
        rows = min(block, n - start)
        scores[start : start + rows] = (0.1 * rng.standard_normal((rows, n), np.float32)).astype(
            np.float16
        )
    scores.flush()
    del scores


def rss_anon_bytes() -> int:
    """Anonymous resident memory of this process (file-backed pages of the map excluded)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no RssAnon line (Linux only)")


class PeakRssAnon:
    """Samples RssAnon in a background thread; ``peak`` is the largest value seen."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.peak = rss_anon_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon_bytes())
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakRssAnon:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon_bytes())


def naive_batches(
    scores: np.ndarray, batch_size: int, alpha: float, rng: np.random.Generator, max_batches: int
) -> tuple[list[list[int]], int]:
    """Recompute Δ over all unused candidates from the batch members at every pick; full sort.

    Returns the first ``max_batches`` batches and the (candidate, member) terms evaluated.
    """
    unused = np.arange(scores.shape[0])
    batches: list[list[int]] = []
    terms = 0
    while unused.size and len(batches) < max_batches:
        seed_pos = int(rng.integers(unused.size))
        batch = [int(unused[seed_pos])]
        unused = np.delete(unused, seed_pos)
        while len(batch) < batch_size and unused.size:
            members = np.asarray(batch)
            delta = scores[np.ix_(unused, members)].astype(np.float64).sum(axis=1)
            delta += scores[np.ix_(members, unused)].astype(np.float64).sum(axis=0)
            terms += unused.size * len(batch)
            order = np.lexsort((unused, delta))  # by Δ, ties by index
            pos = int(order[int(alpha * (unused.size - 1))])
            batch.append(int(unused[pos]))
            unused = np.delete(unused, pos)
        batches.append(batch)
    return batches, terms


def epoch_terms(n: int, batch_size: int) -> int:
    """(candidate, member) terms a from-scratch sampler evaluates over a whole epoch."""
    total, unused = 0, n
    while unused:
        unused -= 1  # the seed
        members = 1
        while members < batch_size and unused:
            total += unused * members
            unused -= 1
            members += 1
    return total


def mean_batch_score(scores: np.ndarray, batches: list[list[int]]) -> float:
    return float(np.mean([batch_score(scores, b) for b in batches]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-samples", type=int, default=18401)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--epoch", type=int, default=39, help="0-based epoch to build")
    parser.add_argument("--schedule", default="log")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--naive-batches", type=int, default=20)
    parser.add_argument("--pool-sizes", type=int, nargs="*", default=[256, 1024])
    parser.add_argument("--pair-scores", type=Path, help="an existing N x N .npy (else random)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_curriculum_") as tmp:
        path = args.pair_scores
        if path is None:
            path = Path(tmp) / "pair_scores.npy"
            started = time.perf_counter()
            write_random_scores(path, args.num_samples, args.seed)
            print(
                f"wrote random {args.num_samples}^2 float16 scores in {time.perf_counter() - started:.1f} s"
            )
        rss_start = rss_anon_bytes()
        scores = load_pair_scores(path, args.num_samples)
        size_mb = scores.size * scores.itemsize / 2**20
        print(f"pair scores: {path} ({size_mb:.0f} MB, memory-mapped)")

        started = time.perf_counter()
        sampler = CurriculumBatchSampler(
            scores, args.batch_size, args.epochs, args.schedule, args.seed
        )
        print(
            f"sampler construction (finite-value scan of the file): {time.perf_counter() - started:.2f} s"
        )
        alpha = sampler.alpha(args.epoch)

        with PeakRssAnon() as peak:
            started, cpu_started = time.perf_counter(), time.process_time()
            batches = sampler.global_batches(args.epoch)
            fast_s = time.perf_counter() - started
            fast_cpu = time.process_time() - cpu_started
        extra_mb = (peak.peak - rss_start) / 2**20
        print(
            f"fast: epoch {args.epoch} (alpha {alpha:.3f}): {len(batches)} batches in {fast_s:.2f} s "
            f"(process CPU {fast_cpu:.2f} s); peak RssAnon growth since before loading the file {extra_mb:.1f} MB"
        )

        tracemalloc.start()
        build_curriculum_batches(
            scores, args.batch_size, alpha, epoch_generator(args.seed, args.epoch + 1)
        )
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(
            f"fast: tracemalloc peak of allocations during an epoch: {traced_peak / 2**20:.1f} MB"
        )

        started, cpu_started = time.perf_counter(), time.process_time()
        naive, terms = naive_batches(
            scores,
            args.batch_size,
            alpha,
            epoch_generator(args.seed, args.epoch),
            args.naive_batches,
        )
        naive_s = time.perf_counter() - started
        naive_cpu = time.process_time() - cpu_started
        if naive != batches[: len(naive)]:
            raise SystemExit("naive and fast samplers disagree on the first batches")
        scale = epoch_terms(args.num_samples, args.batch_size) / terms
        print(
            f"naive: first {len(naive)} batches in {naive_s:.2f} s (process CPU {naive_cpu:.2f} s), "
            f"picks identical; scaled to the epoch: {naive_s * scale:.1f} s "
            f"(process CPU {naive_cpu * scale:.1f} s)"
        )
        print(
            f"speed-up fast vs naive (same run): {naive_s * scale / fast_s:.1f}x wall, "
            f"{naive_cpu * scale / fast_cpu:.1f}x CPU"
        )

        random_batches = RandomBatchSampler(args.num_samples, args.batch_size, args.seed)
        print(
            f"mean batch score: random {mean_batch_score(scores, random_batches.global_batches(0)):+.4f}, "
            f"all candidates {mean_batch_score(scores, batches):+.4f} ({fast_s:.2f} s)"
        )
        for pool_size in args.pool_sizes:
            started = time.perf_counter()
            pooled = build_curriculum_batches(
                scores,
                args.batch_size,
                alpha,
                epoch_generator(args.seed, args.epoch),
                pool_size,
            )
            pool_s = time.perf_counter() - started
            print(
                f"mean batch score: pool {pool_size} {mean_batch_score(scores, pooled):+.4f} "
                f"({pool_s:.2f} s)"
            )


if __name__ == "__main__":
    main()
