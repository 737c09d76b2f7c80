"""Frame loading speed: PNG files versus the frame cache, through the training transform.

What is measured: frames/s delivered by the training DataLoader (train split, random temporal
offset, random crop + zoom + rotation + brightness/contrast, each of the four applied with chance
``data.augment_p`` (default 0.5; ``--augment-p 1`` gives every clip all four, so every clip's
geometry is a gather), ``num_workers`` workers, the project's Collator, batch ``--batch-size``)
to a main process that only counts the frames, as a training loop receives them before its
``.to(device)``. The two sources share every step after
reading (transform, collate, worker -> main hand-off): PNG decode + resize versus slicing the
memory-mapped cache is the only difference.

How: clips of PHOENIX-2014-T shape (210x260 PNG frames, lengths drawn from the real train length
distribution in ../shared/data/phoenix14t/labels.train) are generated into a temporary folder and
converted to a frame cache. One loader per source and batch format, with persistent workers; the
first epoch of each is an untimed warm-up (worker start-up, page cache: both paths read from
memory, so this is CPU cost, not disk), then timed epochs alternate between the loaders so CPU
contention hits all alike; medians are printed side by side with the ratio. Batch formats
(``data.frames_uint8``): ``uint8`` (default: pixels plus each clip's colour change; the model
applies that change with the ImageNet normalisation on its device, one multiply-add and clamp
per channel, so that step is not counted in the loader figures: its cost on this CPU is printed
separately) and ``float32`` (colour change and normalisation in the worker). No ``pin_memory``
(there is no accelerator to pin for); ``prefetch_factor`` is DataLoader's default.

Printed: frames/s (the target's figure); CPU milliseconds per frame of the workers and of the
main process over the same epochs (``/proc``; on a machine shared with other jobs this moves far
less than frames/s, whose ratio then also depends on how the scheduler shares the cores); and
``dataset[i]`` in one process (read + transform, no workers, no collate, no hand-off); and the
uint8 batches' device step (``normalise_frames`` with colour) run on this CPU, for reference.

    python scripts/bench_frames.py [--clips 32] [--rounds 3] [--workers 2] [--batch-size 2]
        [--formats uint8,float32] [--augment-p 0.5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from scl_slt.config import DataConfig, Layout, Modality
from scl_slt.data.batching import BatchLoader, Collator, loader_generator, worker_init_fn
from scl_slt.data.datasets import build_split
from scl_slt.data.frame_cache import build_frame_cache
from scl_slt.data.frames import ClipParams, ClipTransform, normalise_frames
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


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuClock:
    """CPU seconds of this process and of a loader's workers, which register their pid.

    Wall-clock frames/s on a shared machine depends on what else runs; CPU seconds per frame
    mostly does not, so the two are printed together."""

    def __init__(self, workers: int):
        self.pids = torch.zeros(max(workers, 1), dtype=torch.int64).share_memory_()

    def worker_init(self, worker_id: int) -> None:
        worker_init_fn(worker_id)
        self.pids[worker_id] = os.getpid()

    def read(self) -> tuple[float, float]:
        """(workers, main process) CPU seconds; workers 0 before they started or without /proc."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        workers = 0.0
        for pid in self.pids.tolist():
            if pid and Path(f"/proc/{pid}/stat").is_file():
                workers += process_cpu_seconds(pid)
        return workers, usage.ru_utime + usage.ru_stime


def make_loader(cfg: DataConfig, workers: int, batch_size: int, seed: int) -> DataLoader:
    """The training DataLoader of a split as the stages build it, with persistent workers."""
    clock = CpuClock(workers)
    loader = BatchLoader(
        build_split(cfg, "train"),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=Collator(LengthOnlyTokenizer()),
        worker_init_fn=clock.worker_init,
        generator=loader_generator(seed),
        persistent_workers=workers > 0,
    )
    loader.cpu_clock = clock  # type: ignore[attr-defined]
    return loader


@dataclass
class Epoch:
    frames_per_s: float
    worker_ms: float  # worker CPU per frame
    main_ms: float  # main-process CPU per frame


def run_epoch(loader: DataLoader) -> Epoch:
    """One epoch; the main process only counts frames."""
    clock: CpuClock = loader.cpu_clock  # type: ignore[attr-defined]
    workers0, main0 = clock.read()
    start, frames = time.perf_counter(), 0
    for batch in loader:
        frames += int(batch["input_lengths"].sum())
    wall = time.perf_counter() - start
    workers1, main1 = clock.read()
    return Epoch(
        frames / wall, 1e3 * (workers1 - workers0) / frames, 1e3 * (main1 - main0) / frames
    )


def load_rate(cfg: DataConfig, seed: int) -> float:
    """frames/s of ``dataset[i]`` in this process: read + train transform, no workers, no collate."""
    torch.manual_seed(seed)
    dataset = build_split(cfg, "train")
    start, frames = time.perf_counter(), 0
    for i in range(len(dataset)):
        frames += dataset[i]["inputs"].shape[0]
    return frames / (time.perf_counter() - start)


def device_step_ms(crop: int, frames: int = 115, repeats: int = 5) -> float:
    """CPU ms per frame of the uint8 batches' last step, colour change + normalisation, on one
    thread (what the model does on its device before the ResNet)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pixels = torch.randint(0, 256, (frames, 3, crop, crop), dtype=torch.uint8)
        transform = ClipTransform(crop=crop)
        params = ClipParams(top=0, left=0, size=crop, brightness=1.1, contrast=0.9)
        colour = torch.from_numpy(transform.colour_affine(params, pixels.numpy()))  # (2, 3)
        colour = colour.expand(frames, 2, 3)  # one per frame, as the sign embedding passes it
        normalise_frames(pixels, colour)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            normalise_frames(pixels, colour)
        return 1e3 * (time.perf_counter() - start) / (repeats * frames)
    finally:
        torch.set_num_threads(threads)


def median_of(epochs: list[Epoch], field: str) -> float:
    return statistics.median(getattr(e, field) for e in epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--formats", default="uint8,float32",
        help="batch formats to measure (data.frames_uint8 true / false), comma-separated",
    )  # fmt: skip
    parser.add_argument(
        "--augment-p", type=float, default=DataConfig.augment_p,
        help="data.augment_p: chance of each of zoom, rotation, brightness, contrast per clip",
    )  # fmt: skip
    parser.add_argument(
        "--lengths-from", type=Path, default=SHARED / "phoenix14t" / "labels.train",
        help="label file whose clip lengths are sampled (default: the real PHOENIX14T train set)",
    )  # fmt: skip
    args = parser.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    if not formats or set(formats) - {"uint8", "float32"}:
        parser.error(f"--formats: uint8 and/or float32, got {args.formats!r}")
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
            augment_p=args.augment_p,
        )
        build_frame_cache(png, root / "cache", splits=("train",), workers=args.workers)
        configs = {
            (source, fmt): DataConfig(
                **{
                    **png.__dict__,
                    "frame_cache": str(root / "cache") if source == "cache" else None,
                    "frames_uint8": fmt == "uint8",
                }
            )
            for fmt in formats
            for source in ("png", "cache")
        }
        print(
            f"{args.clips} clips, {total} frames of {WIDTH}x{HEIGHT} PNG "
            f"(mean {png_bytes / 1024:.0f} KiB); resize {png.resize} ({png.resize_mode.value}), "
            f"train crop {png.crop} + augmentation (augment_p {png.augment_p}), "
            f"max_frames {png.max_frames}; "
            f"{args.workers} workers, batch {args.batch_size}; "
            f"median of {args.rounds} alternating rounds after a warm-up epoch"
        )
        loaders = {
            k: make_loader(c, args.workers, args.batch_size, args.seed) for k, c in configs.items()
        }
        for loader in loaders.values():  # warm-up: worker start-up, page cache
            run_epoch(loader)
        epochs: dict[tuple[str, str], list[Epoch]] = {k: [] for k in configs}
        in_process: dict[tuple[str, str], list[float]] = {k: [] for k in configs}
        for r in range(args.rounds):
            for key, loader in loaders.items():
                epochs[key].append(run_epoch(loader))
            for key, cfg in configs.items():
                in_process[key].append(load_rate(cfg, args.seed + r))
            print(
                f"round {r}: loader "
                + ", ".join(f"{' '.join(k)} {v[-1].frames_per_s:.1f}" for k, v in epochs.items())
                + "; in-process "
                + ", ".join(f"{' '.join(k)} {v[-1]:.1f}" for k, v in in_process.items())
                + " frames/s"
            )
        del loaders  # stop the persistent workers

        print(f"\nDataLoader, {args.workers} workers, frames/s (target: cache >= 5x png)")
        for fmt in formats:
            png_rate = median_of(epochs["png", fmt], "frames_per_s")
            cache_rate = median_of(epochs["cache", fmt], "frames_per_s")
            print(
                f"  {fmt:<8} png {png_rate:7.1f} | cache {cache_rate:7.1f} | "
                f"cache/png {cache_rate / png_rate:.2f}x"
            )
        print("DataLoader CPU ms per frame, workers + main process (less sensitive to contention)")
        for fmt in formats:
            cpu = {}
            for source in ("png", "cache"):
                worker = median_of(epochs[source, fmt], "worker_ms")
                main_ms = median_of(epochs[source, fmt], "main_ms")
                cpu[source] = (worker + main_ms, worker, main_ms)
            print(
                f"  {fmt:<8} "
                + " | ".join(f"{s} {t:.3f} ({w:.3f} + {m:.3f})" for s, (t, w, m) in cpu.items())
                + f" | png/cache {cpu['png'][0] / cpu['cache'][0]:.2f}x"
            )
        print("dataset[i] in one process (read + transform; no collate, no hand-off), frames/s")
        for fmt in formats:
            png_rate = statistics.median(in_process["png", fmt])
            cache_rate = statistics.median(in_process["cache", fmt])
            print(
                f"  {fmt:<8} png {png_rate:7.1f} | cache {cache_rate:7.1f} | "
                f"cache/png {cache_rate / png_rate:.2f}x"
            )
        if "uint8" in formats:
            print(
                "uint8 batches' device step (colour change + normalisation, not in the loader "
                f"figures), run on this CPU, 1 thread: {device_step_ms(png.crop):.3f} ms/frame"
            )


if __name__ == "__main__":
    main()
