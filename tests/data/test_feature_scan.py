"""The start-up scan (``data/scan.py``): every bad feature file, frame-cache clip and frame folder
of every split listed at once, from headers only, agreeing with what the loaders skip and with
the validator; and the pre-flight call a stage makes with its training config.

Timing is not asserted here: ``scripts/bench_feature_scan.py`` measures the scan at
PHOENIX-2014-T scale against a plain ``np.load(mmap_mode="r")`` loop."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_OVERRIDES, compose_train
from PIL import Image

from scl_slt.config import BadSample, DataConfig, Layout, Modality
from scl_slt.config_checks import validate_train
from scl_slt.data.datasets import build_split
from scl_slt.data.frame_cache import build_frame_cache
from scl_slt.data.frame_store import clip_relpath
from scl_slt.data.labels import DataError, write_labels
from scl_slt.data.scan import (
    BAD,
    MISSING,
    UNREADABLE,
    scan_data,
    scan_feature_files,
    scan_frame_cache,
    scan_frame_folders,
)
from scl_slt.data.synthetic.generate import ensure_synthetic
from scl_slt.data.validate import main as validate_main
from scl_slt.data.validate import validate_dataset
from scl_slt.stages import run_stage

WIDTH = 64
SIZES = {"train": 400, "dev": 50, "test": 50}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-40])


# (split, index) -> (how the file is spoiled, the scan's kind, what its detail says)
PLANTED: dict[tuple[str, int], tuple[Callable[[Path], None], str, str]] = {
    ("train", 3): (Path.unlink, MISSING, ""),
    ("train", 17): (lambda p: p.write_bytes(b"\x93NUMPY garbage"), UNREADABLE, "header: "),
    ("train", 50): (lambda p: np.save(p, np.ones((26, 32), np.float32)), BAD,
                    "shape (26, 32), expected (T, 64): width 64 from "
                    "model.sign_embedding.feature_dim"),
    ("train", 120): (lambda p: np.save(p, np.ones((9, WIDTH), np.int64)), BAD,
                     "dtype int64, expected floating point"),
    ("train", 200): (lambda p: np.save(p, np.ones((0, WIDTH), np.float32)), BAD,
                     "shape (0, 64): no rows"),
    ("train", 333): (lambda p: np.save(p, np.ones(WIDTH, np.float32)), BAD,
                     "shape (64,), expected 2-D (T, 64)"),
    ("train", 399): (_truncate, UNREADABLE, "truncated: "),
    ("dev", 7): (lambda p: np.save(p, np.ones((26, 32), np.float32)), BAD, "shape (26, 32)"),
}  # fmt: skip


def features_dataset(root: Path, planted=PLANTED) -> DataConfig:
    """GFSLT-style labels for 400/50/50 clips and their (T, 64) float32 features, ``planted``
    spoiled; names ``<split>/clip0000`` in label order."""
    rng = np.random.default_rng(0)
    for split, n in SIZES.items():
        records = {}
        for i in range(n):
            name = f"{split}/clip{i:04d}"
            length = int(rng.integers(4, 12))
            path = root / "feats" / f"{name}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, rng.standard_normal((length, WIDTH), dtype=np.float32))
            if (split, i) in planted:
                planted[split, i][0](path)
            records[name] = {"name": name, "text": f"satz {i}", "length": length}
        write_labels(root / "labels" / f"labels.{split}", records)
    return DataConfig(name="phoenix14t", layout=Layout.gfslt, modality=Modality.features,
                      labels_dir=str(root / "labels"), feature_root=str(root / "feats"))  # fmt: skip


def planted_names(split: str | None = None) -> list[str]:
    return [f"{s}/clip{i:04d}" for s, i in PLANTED if split in (None, s)]


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[DataConfig, Path]:
    root = tmp_path_factory.mktemp("planted")
    return features_dataset(root), root


# ------------------------------------------------------------------------------- features
def test_every_bad_feature_file_is_listed_at_once(planted, caplog):
    cfg, root = planted
    report = scan_feature_files(cfg, feature_dim=WIDTH)
    assert report.checked == SIZES
    assert [(b.split, b.name, b.kind) for b in report.bad] == [
        (s, f"{s}/clip{i:04d}", kind) for (s, i), (_, kind, _) in PLANTED.items()
    ]
    for b, (_, _, says) in zip(report.bad, PLANTED.values()):
        assert b.path == str(root / "feats" / f"{b.name}.npy") and b.detail.startswith(says)
    assert len(report.good) == sum(SIZES.values()) - len(PLANTED)

    with pytest.raises(DataError) as err:
        report.enforce(BadSample.error)
    message = str(err.value)
    assert message.startswith(
        "data scan: 8 of 500 feature files bad (train 7 of 400, dev 1 of 50, test 0 of 50; "
        "5 bad, 1 missing, 2 unreadable) [expected width 64 from model.sign_embedding.feature_dim]"
        "; data.on_bad_sample=error would stop at the first of them"
    )
    assert all(b.line() in message for b in report.bad)

    caplog.set_level(logging.INFO, logger="scl_slt")
    report.enforce("skip")
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "skipped whenever loaded" in warning.message
    assert all(b.line() in warning.message for b in report.bad)


@pytest.mark.parametrize("feature_dim", [WIDTH, None])
def test_the_scan_lists_exactly_the_samples_the_loader_skips(planted, feature_dim):
    """Without ``feature_dim`` both take the width of the first good file (train/clip0000)."""
    cfg, root = planted
    report = scan_feature_files(cfg, feature_dim=feature_dim)
    if feature_dim is None:
        assert report.note == (
            f"expected width 64 from the first good feature file {root}/feats/train/clip0000.npy"
        )
    skipping = DataConfig(**{**cfg.__dict__, "on_bad_sample": BadSample.skip})
    for split in SIZES:
        dataset = build_split(skipping, split, train=False, feature_dim=feature_dim)
        skipped = [dataset.names[i] for i in range(len(dataset)) if dataset[i] is None]
        assert skipped == [b.name for b in report.bad if b.split == split] == planted_names(split)


def test_the_scan_reads_headers_only(planted, monkeypatch):
    cfg, _ = planted

    def no_data(*args, **kwargs):
        raise AssertionError("the scan must not load arrays")

    monkeypatch.setattr(np, "load", no_data)
    monkeypatch.setattr(np, "memmap", no_data)
    assert [b.name for b in scan_feature_files(cfg, feature_dim=WIDTH).bad] == planted_names()


def test_the_validator_reports_what_the_scan_finds(planted, capsys):
    cfg, _ = planted
    report = validate_dataset(cfg, feature_dim=WIDTH)
    assert dict(report.counts()) == {"missing_feature": 1, "unreadable_feature": 7}
    assert [p.name for p in report.problems] == planted_names()
    config = Path(cfg.labels_dir).parent / "data.yaml"
    config.write_text(
        f"name: phoenix14t\nlayout: gfslt\nmodality: features\nlabels_dir: {cfg.labels_dir}\n"
        f"feature_root: {cfg.feature_root}\n"
    )
    assert validate_main([f"data={config}", "splits=dev", "feature_dim=64"]) == 1
    assert "unreadable_feature   dev   dev/clip0007" in capsys.readouterr().out
    assert validate_main([f"data={config}", "splits=test", "feature_dim=64"]) == 0
    assert validate_main([f"data={config}", "feature_dim=wide"]) == 2


def test_length_mismatch_comes_from_the_scanned_header(tmp_path):
    cfg = features_dataset(tmp_path, planted={})
    np.save(Path(cfg.feature_root) / "dev/clip0004.npy", np.ones((40, WIDTH), np.float32))
    report = validate_dataset(cfg, splits=("dev",))
    assert [(p.category, p.name) for p in report.problems] == [("length_mismatch", "dev/clip0004")]
    assert report.problems[0].detail.endswith("feature rows 40")


def test_a_split_with_no_usable_sample_fails_even_in_skip_mode(tmp_path):
    cfg = features_dataset(tmp_path, planted={})
    shutil.rmtree(Path(cfg.feature_root) / "dev")
    report = scan_data(cfg, splits=("train", "dev"), feature_dim=WIDTH)
    assert [b.kind for b in report.bad] == [MISSING] * SIZES["dev"]
    with pytest.raises(DataError, match=r"no usable sample in split\(s\) dev: check the data"):
        report.enforce(BadSample.skip)


# ------------------------------------------------------------ the stage's pre-flight call
def test_the_pre_flight_call_finds_a_bad_dev_file_before_training(synthetic_cache, tmp_path):
    """Without the scan, error mode meets this dev file at the end of the first epoch's
    evaluation (the epoch's training lost); the call below, made before training, names it."""
    shared = validate_train(
        compose_train([*TINY_OVERRIDES, f"data.synthetic.cache_dir={synthetic_cache}"])
    )
    data = ensure_synthetic(shared.data.synthetic, shared.data.modality)
    shutil.copytree(data, tmp_path / data.name)
    cfg = validate_train(compose_train([*TINY_OVERRIDES, f"data.synthetic.cache_dir={tmp_path}"]))
    feature_dim = cfg.model.sign_embedding.feature_dim
    scan_data(cfg.data, feature_dim=feature_dim).enforce(cfg.data.on_bad_sample)  # all good
    dev = build_split(cfg.data, "dev")
    bad = dev.source.path(dev.names[2])
    np.save(bad, np.ones((26, 32), np.float32))
    with pytest.raises(DataError) as err:
        scan_data(cfg.data, feature_dim=feature_dim).enforce(cfg.data.on_bad_sample)
    assert f"{bad}  bad: shape (26, 32), expected (T, 16)" in str(err.value)
    assert "of 36 feature files bad (train 0 of 24, dev 1 of 6, test 0 of 6" in str(err.value)

    # Training runs that scan before anything else: the run directory is never created.
    run_dir = tmp_path / "run"
    train_cfg = compose_train([*TINY_OVERRIDES, f"data.synthetic.cache_dir={tmp_path}",
                               "stage.eval_every=1", f"run_dir={run_dir}"])  # fmt: skip
    with pytest.raises(DataError, match="dev 1 of 6"):
        run_stage(train_cfg)
    assert not run_dir.exists()


# ------------------------------------------------------------------------- the frame cache
NAMES = [f"train/clip{i}" for i in range(6)]


def frames_dataset(root: Path, names=NAMES) -> DataConfig:
    """Clip folders of 3 PNG frames (12x10) and their labels; resize 12, crop 8."""
    records = {}
    for name in names:
        (root / "frames" / name).mkdir(parents=True)
        for t in range(3):
            frame = np.full((12, 10, 3), 20 * t, dtype=np.uint8)
            Image.fromarray(frame).save(root / "frames" / name / f"images{t + 1:04d}.png")
        records[name] = {"name": name, "text": "ein satz", "length": 3}
    write_labels(root / "labels" / "labels.train", records)
    return DataConfig(name="phoenix14t", layout=Layout.gfslt, modality=Modality.frames,
                      labels_dir=str(root / "labels"), frame_root=str(root / "frames"),
                      resize=12, crop=8)  # fmt: skip


def test_every_bad_frame_cache_clip_is_listed_at_once(tmp_path):
    cfg = frames_dataset(tmp_path)
    cache = tmp_path / "cache"
    build_frame_cache(cfg, cache, splits=("train",))
    cfg.frame_cache = str(cache)
    clip = {n: cache / clip_relpath(n) for n in NAMES}
    index = json.loads((cache / "index.json").read_text())
    clip["train/clip1"].unlink()
    del index["clips"]["train/clip2"]
    index["failed"]["train/clip2"] = "cannot decode frame x.png"
    np.save(clip["train/clip3"], np.zeros((3, 3, 12, 10), np.uint8))  # index: (3, 3, 12, 12)
    np.save(clip["train/clip4"], np.zeros((3, 3, 20, 20), np.uint8))
    index["clips"]["train/clip4"] = [3, 20, 20]  # a stale clip of another resize
    _truncate(clip["train/clip5"])
    (cache / "index.json").write_text(json.dumps(index))

    report = scan_frame_cache(cfg, splits=("train",))
    assert [(b.name, b.kind) for b in report.bad] == [
        ("train/clip1", MISSING), ("train/clip2", MISSING), ("train/clip3", BAD),
        ("train/clip4", BAD), ("train/clip5", UNREADABLE),
    ]  # fmt: skip
    details = [b.detail for b in report.bad]
    assert details[1] == "conversion failed: cannot decode frame x.png"
    assert details[2] == "uint8 (3, 3, 12, 10), index says uint8 (3, 3, 12, 12)"
    assert details[3].startswith("frames of 20x20, but the cache holds frames resized to 12")
    assert details[4].startswith("truncated: ")
    assert scan_data(cfg, splits=("train",)).bad == report.bad

    cfg.on_bad_sample = BadSample.skip
    dataset = build_split(cfg, "train", train=False)
    skipped = [dataset.names[i] for i in range(len(dataset)) if dataset[i] is None]
    assert skipped == [b.name for b in report.bad]
    counts = validate_dataset(cfg, splits=("train",), decode=False).counts()
    assert dict(counts) == {"missing_cache_clip": 2, "bad_cache_clip": 3}


# ----------------------------------------------------------------------- PNG/JPEG folders
def test_frame_folders_exist_and_hold_frames_nothing_decoded(tmp_path):
    cfg = frames_dataset(tmp_path)
    frames = tmp_path / "frames"
    shutil.rmtree(frames / "train/clip1")
    for png in (frames / "train/clip2").iterdir():
        png.unlink()
    (frames / "train/clip3" / "images0001.png").rename(frames / "train/clip3" / "notes.txt")
    for png in (frames / "train/clip3").glob("*.png"):
        png.unlink()
    (frames / "train/clip4" / "images0002.png").write_bytes(b"not a png")  # not decoded
    report = scan_data(cfg, splits=("train",))
    assert [(b.name, b.kind, b.detail) for b in report.bad] == [
        ("train/clip1", MISSING, "frame folder"),
        ("train/clip2", BAD, "no frames (.png, .jpg, .jpeg) in the folder"),
        ("train/clip3", BAD, "no frames (.png, .jpg, .jpeg) in the folder"),
    ]
    assert report.bad[0].path == str(frames / "train/clip1")

    records = {  # PHOENIX label files list each frame: their folders are checked
        "train/clip0": {"name": "train/clip0", "text": "x", "imgs_path": ["train/clip0/images0001.png"]},
        "train/clip9": {"name": "train/clip9", "text": "x", "imgs_path": ["train/clip9/images0001.png"]},
    }  # fmt: skip
    write_labels(tmp_path / "labels" / "labels.dev", records)
    report = scan_frame_folders(cfg, splits=("dev",))
    assert [(b.name, b.path) for b in report.bad] == [("train/clip9", str(frames / "train/clip9"))]
