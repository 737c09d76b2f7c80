"""Start-up scan speed at PHOENIX-2014-T scale: header reads versus a plain ``np.load`` loop.

What is measured: ``scl_slt.data.scan.scan_feature_files`` over train/dev/test (7,096 + 519 + 642
feature files), as a stage's pre-flight check runs it, next to the baseline a validator would
otherwise use: ``np.load(path, mmap_mode="r")`` per file plus the same shape check. The scan's
time is printed with and without reading the three label files (it reads them; the baseline is
given the paths).

How: the real names and lengths come from ../shared/data/phoenix14t/labels.* when present (else
random lengths 50-300 and made-up names); each feature file is a float32 (T, 1024) ``.npy`` with
a real header, its data left as a hole (a sparse file of the full size: realistic headers and
sizes, no disk use). ``--bad`` files get the wrong width (26, 512), so the scan also lists them.
Both loops run ``--rounds`` times, alternating, on a warm page cache (the files were just
written): this is the CPU cost of the check, not disk; medians are printed.

    python scripts/bench_feature_scan.py [--rounds 3] [--width 1024] [--bad 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from scl_slt.config import DataConfig, Layout, Modality
from scl_slt.data.datasets import split_records
from scl_slt.data.labels import SPLITS, write_labels
from scl_slt.data.scan import scan_feature_files

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "phoenix14t"
SIZES = {"train": 7096, "dev": 519, "test": 642}


def phoenix_records(labels_dir: Path) -> str:
    """Label files of PHOENIX-2014-T size in ``labels_dir``: the real ones, or made up."""
    if all((SHARED / f"labels.{s}").is_file() for s in SPLITS):
        for split in SPLITS:
            shutil.copy(SHARED / f"labels.{split}", labels_dir / f"labels.{split}")
        return f"real names and lengths from {SHARED}"
    rng = np.random.default_rng(0)
    for split, n in SIZES.items():
        names = [f"{split}/clip{i:05d}" for i in range(n)]
        lengths = rng.integers(50, 301, size=n)
        records = {m: {"name": m, "text": "satz", "length": int(t)} for m, t in zip(names, lengths)}
        write_labels(labels_dir / f"labels.{split}", records)
    return f"{SHARED} not found: random lengths 50-300"


def write_sparse_npy(path: Path, shape: tuple[int, ...]) -> None:
    """A float32 ``.npy`` of ``shape`` with a real header and a hole for its data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        header = {"descr": "<f4", "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(f, header)
        f.truncate(f.tell() + int(np.prod(shape)) * 4)


def np_load_loop(paths: list[Path], width: int) -> int:
    """The baseline: memory-map every file with np.load, then the same shape check."""
    bad = 0
    for path in paths:
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            bad += 1
            continue
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != width:
            bad += 1
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--bad", type=int, default=3, help="files of the wrong width planted")
    parser.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-feature-scan-"))
    try:
        (work / "labels").mkdir(parents=True, exist_ok=True)
        source = phoenix_records(work / "labels")
        cfg = DataConfig(name="phoenix14t", layout=Layout.gfslt, modality=Modality.features,
                         labels_dir=str(work / "labels"), feature_root=str(work / "feats"))  # fmt: skip
        started = time.perf_counter()
        records = [r for split in SPLITS for r in split_records(cfg, split)]
        label_seconds = time.perf_counter() - started
        paths = [work / "feats" / f"{r['name']}.npy" for r in records]
        step = max(1, len(paths) // max(args.bad, 1))
        planted = set(range(step // 2, len(paths), step)[: args.bad])
        for i, (path, record) in enumerate(zip(paths, records)):
            shape = (26, args.width // 2) if i in planted else (int(record["length"]), args.width)
            write_sparse_npy(path, shape)
        n = len(paths)
        print(f"{n} feature files (train/dev/test {', '.join(map(str, SIZES.values()))}), "
              f"float32 (T, {args.width}); {source}; {len(planted)} planted bad; in {work}")  # fmt: skip
        scans, loads = [], []
        for _ in range(args.rounds):
            started = time.perf_counter()
            report = scan_feature_files(cfg, feature_dim=args.width)
            scans.append(time.perf_counter() - started)
            started = time.perf_counter()
            baseline_bad = np_load_loop(paths, args.width)
            loads.append(time.perf_counter() - started)
        assert len(report.bad) == baseline_bad == len(planted), (report.bad, baseline_bad)
        scan, load = statistics.median(scans), statistics.median(loads)
        headers = scan - label_seconds
        print(f"reading the 3 label files:          {label_seconds:6.3f} s")
        print(f"scan_feature_files (labels + scan): {scan:6.3f} s  {n / scan:9.0f} files/s")
        print(f"  of which header scan (about):     {headers:6.3f} s  {n / headers:9.0f} files/s")
        print(f"np.load(mmap_mode='r') loop:        {load:6.3f} s  {n / load:9.0f} files/s")
        print(f"median of {args.rounds} rounds; header scan vs np.load: {load / headers:.1f}x")
        print(report.summary())
        for bad in report.bad:
            print("  " + bad.line())
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
