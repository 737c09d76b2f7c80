"""Frame loading speed: PNG files versus the frame cache, through the training transform.

Generates clips of PHOENIX-2014-T shape (210x260 PNG frames; lengths drawn from the real train
length distribution in ../shared/data/phoenix14t/labels.train) into a temporary folder, builds a
frame cache of them, then runs the same training DataLoader (train transform, 2 workers, the
project's Collator) over both sources, alternating rounds so CPU contention hits both alike, and
prints frames/s side by side with the ratio. Files are read once before timing, so both paths are
measured from the page cache (CPU cost, not disk).

    python scripts/bench_frames.py [--clips 32] [--rounds 3] [--workers 2] [--batch-size 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from scl_slt.config import DataConfig, Layout, Modality
from scl_slt.data.dataset import Collator
from scl_slt.data.datasets import build_split
from scl_slt.data.frame_cache import build_frame_cache
from scl_slt.data.frames import loader_generator, worker_init_fn
from scl_slt.data.labels import read_labels, write_labels

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HEIGHT, WIDTH = 260, 210  # PHOENIX fullFrame-210x260px


class LengthOnlyTokenizer:
    """Target tokenisation is not what this benchmark measures: one id per character."""

    def encode_targets(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(t) for t in texts) + 2
        ids = torch.zeros((len(texts), width), dtype=torch.long)
        mask = torch.zeros((len(texts), width), dtype=torch.bool)
        for i, text in enumerate(texts):
            mask[i, : len(text) + 2] = True
        return ids, mask


def render_clip(rng: np.random.Generator, length: int) -> np.ndarray:
    """uint8 (T, H, W, 3): a lit backdrop, a body and two moving hands, with sensor noise.

    Roughly the content of a news-studio signing video, so PNG compression (and so decoding
    cost) is in the range of the real frames rather than that of flat or pure-noise images."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    backdrop = 90 + 60 * (xx / WIDTH) + 25 * np.sin(yy / 37.0)
    body = ((xx - WIDTH / 2) / 55) ** 2 + ((yy - HEIGHT * 0.75) / 90) ** 2 < 1
    base = np.repeat(backdrop[..., None], 3, axis=2)
    base[body] = (40, 45, 70)
    frames = np.empty((length, HEIGHT, WIDTH, 3), dtype=np.uint8)
    phase = rng.uniform(0, 2 * np.pi, size=4)
    for t in range(length):
        img = base.copy()
        for hand in range(2):
            cx = WIDTH / 2 + 50 * np.sin(0.15 * t + phase[hand]) * (1 if hand else -1)
            cy = HEIGHT * 0.5 + 40 * np.cos(0.11 * t + phase[2 + hand])
            img[((xx - cx) / 14) ** 2 + ((yy - cy) / 18) ** 2 < 1] = (200, 160, 140)
        img += rng.normal(0, 4, size=img.shape).astype(np.float32)
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def make_dataset(root: Path, clips: int, seed: int, lengths_from: Path) -> tuple[int, float]:
    """Clips + GFSLT-style labels under ``root``; returns (total frames, mean PNG bytes)."""
    labels = read_labels(lengths_from)
    lengths = np.array([r["length"] for r in labels.values()])
    rng = np.random.default_rng(seed)
    records, sizes = {}, []
    for i, length in enumerate(rng.choice(lengths, size=clips)):
        name = f"train/clip{i:04d}"
        folder = root / "frames" / name
        folder.mkdir(parents=True)
        paths = []
        for t, frame in enumerate(render_clip(rng, int(length))):
            path = folder / f"images{t + 1:04d}.png"
            Image.fromarray(frame).save(path)
            sizes.append(path.stat().st_size)
            paths.append(f"{name}/images{t + 1:04d}.png")
        records[name] = {
            "name": name,
            "text": "x",
            "gloss": "X",
            "length": int(length),
            "imgs_path": paths,
        }
    write_labels(root / "labels" / "labels.train", records)
    return int(sum(r["length"] for r in records.values())), float(np.mean(sizes))


def loader_rate(cfg: DataConfig, workers: int, batch_size: int, seed: int) -> float:
    """frames/s out of the training DataLoader (workers, train transform, Collator)."""
    dataset = build_split(cfg, "train")
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=Collator(LengthOnlyTokenizer()),
        worker_init_fn=worker_init_fn,
        generator=loader_generator(seed),
    )
    start, frames = time.perf_counter(), 0
    for batch in loader:
        frames += int(batch["input_lengths"].sum())
    return frames / (time.perf_counter() - start)


def load_rate(cfg: DataConfig, seed: int) -> float:
    """frames/s of ``dataset[i]`` in this process: read + train transform, no workers, no collate."""
    torch.manual_seed(seed)
    dataset = build_split(cfg, "train")
    start, frames = time.perf_counter(), 0
    for i in range(len(dataset)):
        frames += dataset[i]["inputs"].shape[0]
    return frames / (time.perf_counter() - start)


def report(label: str, png_rates: list[float], cache_rates: list[float]) -> None:
    png, cache = statistics.median(png_rates), statistics.median(cache_rates)
    print(
        f"{label}: png {png:7.1f} frames/s | cache {cache:7.1f} frames/s | cache/png {cache / png:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--lengths-from", type=Path, default=SHARED / "phoenix14t" / "labels.train",
        help="label file whose clip lengths are sampled (default: the real PHOENIX14T train set)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench_frames_") as tmp:
        root = Path(tmp)
        total, png_bytes = make_dataset(root, args.clips, args.seed, args.lengths_from)
        png = DataConfig(
            name="phoenix14t",
            layout=Layout.gfslt,
            modality=Modality.frames,
            labels_dir=str(root / "labels"),
            frame_root=str(root / "frames"),
        )
        build_frame_cache(png, root / "cache", splits=("train",), workers=args.workers)
        cached = DataConfig(**{**png.__dict__, "frame_cache": str(root / "cache")})
        print(
            f"{args.clips} clips, {total} frames of {WIDTH}x{HEIGHT} PNG (mean {png_bytes / 1024:.0f} KiB); "
            f"resize {png.resize} ({png.resize_mode.value}), train crop {png.crop} + augmentation, "
            f"max_frames {png.max_frames}; {args.workers} workers, batch {args.batch_size}; "
            f"median of {args.rounds} alternating rounds"
        )
        for cfg in (png, cached):  # warm-up: page cache, worker start-up code paths
            loader_rate(cfg, args.workers, args.batch_size, args.seed)
        rates: dict[str, list[float]] = {
            "loader png": [],
            "loader cache": [],
            "load png": [],
            "load cache": [],
        }
        for r in range(args.rounds):
            seed = args.seed + r
            rates["loader png"].append(loader_rate(png, args.workers, args.batch_size, seed))
            rates["loader cache"].append(loader_rate(cached, args.workers, args.batch_size, seed))
            rates["load png"].append(load_rate(png, seed))
            rates["load cache"].append(load_rate(cached, seed))
            print(
                f"round {r}: "
                + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items())
                + " frames/s"
            )
        report(
            f"DataLoader, {args.workers} workers (target cache >= 5x png)",
            rates["loader png"],
            rates["loader cache"],
        )
        report(
            "dataset[i] in one process, no worker transfer", rates["load png"], rates["load cache"]
        )


if __name__ == "__main__":
    main()
