"""Benchmark all-pairs CiCo scoring at PHOENIX14T train scale against its two baselines.

Token lengths come from the real annotations: visual tokens = frames / 4 (the sign embedding's
temporal downsampling) from the `length` field of labels.train, text tokens = words x 1.3
(subword factor) + 2 (language code and </s>). Features are random unit vectors (the cost does
not depend on their values). Printed side by side, from the same run:

- useful GFLOP/s of `score_all_pairs` (2 d flops per valid frame-token product) and the rate of
  a plain fp32 GEMM with the same inner dimension, measured before and after the scoring (the
  CPU is shared, so the ratio is the meaningful figure);
- the time of the full N x N, and of the naive per-pair loop timed on random pairs and scaled
  to N x N, with the speed-up (also for a loop calling `pairwise_similarity` on 1 x 1 batches);
- the ceiling of that speed-up for any exact fp32 implementation: the naive loop's time over the
  time the useful flops alone take at the measured matmul rate (a scorer cannot beat the GEMM
  that its frame-token products are);
- peak memory.

Each figure is given in wall-clock time and in process CPU time (`time.process_time`, all
threads). On a CPU shared with other jobs the wall-clock figures vary with the load; with
`--threads 1` the CPU-time figures do not count the time the process waited for a core, so their
ratios are the stable ones.

    python scripts/bench_all_pairs.py                 # N = 7,096 (the full train split)
    python scripts/bench_all_pairs.py --n 1000        # a quick check
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scl_slt.data.labels import read_labels
from scl_slt.models.all_pairs import (
    TokenSet,
    default_block_elements,
    padded_products,
    score_all_pairs,
)
from scl_slt.models.similarity import pairwise_similarity

DEFAULT_LABELS = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "phoenix14t" / "labels.train"
)


def real_lengths(labels: Path, n: int, subword: float, rng: np.random.Generator):
    """(visual tokens, text tokens) of n samples drawn from the split without replacement."""
    records = list(read_labels(labels).values())
    if n > len(records):
        raise SystemExit(f"--n {n} exceeds the {len(records)} samples in {labels}")
    picked = [records[i] for i in rng.permutation(len(records))[:n]]
    frames = np.array([int(r["length"]) for r in picked])
    words = np.array([len(r["text"].split()) for r in picked])
    return np.maximum(1, frames // 4), np.round(words * subword).astype(np.int64) + 2


def random_tokens(lengths: np.ndarray, dim: int, generator: torch.Generator) -> TokenSet:
    feats = torch.randn(int(lengths.sum()), dim, generator=generator)
    return TokenSet(F.normalize(feats, dim=1), lengths)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall-clock and process CPU seconds of a `with` block."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self) -> Timer:
        sync(self.device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def gemm_rate(dim: int, device: torch.device, dtype: torch.dtype, reps: int = 40):
    """(wall, CPU) GFLOP/s of a plain (2048 x dim) @ (dim x 2048) matmul."""
    a = torch.randn(2048, dim, device=device).to(dtype)
    b = torch.randn(2048, dim, device=device).to(dtype)
    out = a @ b.T
    with Timer(device) as timer:
        for _ in range(reps):
            torch.mm(a, b.T, out=out)
    flops = 2 * 2048 * 2048 * dim * reps / 1e9
    return flops / timer.wall, flops / timer.cpu


def naive_pair(v: torch.Tensor, t: torch.Tensor, tau: float) -> float:
    """Method §2 for one pair of unpadded token matrices: the plain per-pair loop body."""
    e = v @ t.T  # (T, L)
    v2t = (torch.softmax(e / tau, dim=1) * e).sum(dim=1).mean()
    t2v = (torch.softmax(e / tau, dim=0) * e).sum(dim=0).mean()
    return float((v2t + t2v) / 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=7096, help="samples (videos = texts)")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--tau", type=float, default=0.07)
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS)
    parser.add_argument("--subword", type=float, default=1.3, help="subword tokens per word")
    parser.add_argument("--naive-pairs", type=int, default=20000, help="pairs timed naively")
    parser.add_argument("--block-elements", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None)
    parser.add_argument("--out", type=Path, default=None, help="write a memory-mapped .npy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, None: None}[args.dtype]
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    block_elements = args.block_elements or default_block_elements(device)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    video_len, text_len = real_lengths(args.labels, args.n, args.subword, rng)
    video, text = random_tokens(video_len, args.dim, gen), random_tokens(text_len, args.dim, gen)
    valid = int(video_len.sum()) * int(text_len.sum())
    computed = padded_products(video_len, text_len, block_elements)
    print(
        f"N = {args.n}, d = {args.dim}, {dtype}, device {device}, threads {torch.get_num_threads()}"
    )
    print(
        f"visual tokens/sample mean {video_len.mean():.1f} (max {video_len.max()}), text "
        f"tokens/sample mean {text_len.mean():.1f} (max {text_len.max()})"
    )
    print(
        f"valid frame-token products {valid:.3e}; computed incl. padding {computed:.3e} "
        f"(+{100 * (computed / valid - 1):.1f} %), block_elements {block_elements}"
    )

    rss_before_mb = _rss_mb()
    gemm_before = gemm_rate(args.dim, device, dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with Timer(device) as scoring:
        scores = score_all_pairs(
            video, text, "cico", args.tau, device=device, dtype=dtype,
            block_elements=block_elements, out=args.out,
        )  # fmt: skip
    gemm_after = gemm_rate(args.dim, device, dtype)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # Naive per-pair loop on random pairs, scaled to all N x N pairs.
    v_off, t_off = video.offsets, text.offsets
    pairs = rng.integers(0, args.n, size=(args.naive_pairs, 2))
    v_feats, t_feats = video.features.to(device), text.features.to(device)
    naive = []
    with Timer(device) as loop:
        for i, j in pairs:
            v = v_feats[v_off[i] : v_off[i] + video_len[i]]
            t = t_feats[t_off[j] : t_off[j] + text_len[j]]
            naive.append(naive_pair(v, t, args.tau))
    # The same loop calling the library's batch function on 1 x 1 batches.
    library = []
    with Timer(device) as library_loop:
        for i, j in pairs:
            v = v_feats[v_off[i] : v_off[i] + video_len[i]][None]
            t = t_feats[t_off[j] : t_off[j] + text_len[j]][None]
            vm = torch.ones(v.shape[:2], dtype=torch.bool, device=device)
            tm = torch.ones(t.shape[:2], dtype=torch.bool, device=device)
            library.append(float(pairwise_similarity(v, vm, t, tm, "cico", args.tau)))
    expected = scores[pairs[:, 0], pairs[:, 1]]
    max_diff = float(np.abs(np.concatenate([naive, library]) - np.tile(expected, 2)).max())
    scale_to_all = args.n * args.n / len(pairs)

    flops = 2 * args.dim * valid / 1e9
    gemm = [(before + after) / 2 for before, after in zip(gemm_before, gemm_after)]
    score_s = [scoring.wall, scoring.cpu]
    useful = [flops / t for t in score_s]
    naive_s = [loop.wall * scale_to_all, loop.cpu * scale_to_all]
    library_s = [library_loop.wall * scale_to_all, library_loop.cpu * scale_to_all]
    print(f"{'':36s}{'wall clock':>12s}{'CPU time':>12s}")
    precision = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    rows = [
        ("all-pairs time (N x N)", score_s, "s"),
        ("useful rate", useful, "GFLOP/s"),
        (f"plain {precision} matmul rate, before", gemm_before, "GFLOP/s"),
        (f"plain {precision} matmul rate, after", gemm_after, "GFLOP/s"),
        ("useful / matmul (mean of both)", [100 * u / g for u, g in zip(useful, gemm)], "%"),
        (f"naive per-pair loop ({len(pairs)} pairs)", naive_s, "s scaled to N x N"),
        ("speed-up over the naive loop", [n / t for n, t in zip(naive_s, score_s)], "x"),
        (
            "ceiling (useful flops at GEMM rate)",
            [n * g / flops for n, g in zip(naive_s, gemm)],
            "x",
        ),
        ("loop of 1x1 pairwise_similarity", library_s, "s scaled to N x N"),
        ("speed-up over that loop", [n / t for n, t in zip(library_s, score_s)], "x"),
    ]
    for label, (wall, cpu), unit in rows:
        print(f"{label:36s}{wall:12.1f}{cpu:12.1f}  {unit}")
    print("targets: useful / matmul >= 25 %, speed-up over the naive loop >= 50 x")
    print(f"max |naive - all-pairs| on the timed pairs: {max_diff:.2e}")
    print(
        f"peak RSS {peak_mb:.0f} MB during scoring (inputs loaded: {rss_before_mb:.0f} MB; "
        f"the N x N fp32 result is {scores.size * scores.itemsize / 2**20:.0f} MB"
        + (", memory-mapped to " + str(args.out) if args.out else "")
        + ")"
    )
    if device.type == "cuda":
        print(f"peak CUDA memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


if __name__ == "__main__":
    main()
