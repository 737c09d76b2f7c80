"""The frame cache: conversion (atomic, resumable), reading, and equality with the file path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from scl_slt.config import BadSample, DataConfig, Layout, Modality, ResizeMode
from scl_slt.data.datasets import build_split
from scl_slt.data.frame_cache import build_frame_cache, main
from scl_slt.data.frame_store import FrameCache, clip_relpath
from scl_slt.data.labels import DataError, write_labels
from scl_slt.rundir.atomic import is_temporary

NAMES = ("train/clip-a", "train/clip-b", "train/clip-c")


def make_dataset(tmp_path, lengths=(9, 5, 7), suffix=".png"):
    """GFSLT-style labels + 26x21 frame folders (PHOENIX aspect), names with a '/'."""
    rng = np.random.default_rng(0)
    records = {}
    for name, length in zip(NAMES, lengths):
        folder = tmp_path / "frames" / name
        folder.mkdir(parents=True)
        for t in range(length):
            frame = rng.integers(0, 256, size=(26, 21, 3), dtype=np.uint8)
            Image.fromarray(frame).save(folder / f"images{t + 1:04d}{suffix}", quality=95)
        records[name] = {"name": name, "text": f"text of {name}", "gloss": "G", "length": length}
    write_labels(tmp_path / "labels" / "labels.train", records)
    return DataConfig(
        name="phoenix14t",
        layout=Layout.gfslt,
        modality=Modality.frames,
        labels_dir=str(tmp_path / "labels"),
        frame_root=str(tmp_path / "frames"),
        resize=24,
        crop=20,
        max_frames=6,
    )


def with_cache(cfg: DataConfig, cache) -> DataConfig:
    return DataConfig(**{**cfg.__dict__, "frame_cache": str(cache)})


@pytest.mark.parametrize("suffix, frames_uint8", [(".png", True), (".jpg", True), (".png", False)])
def test_cache_gives_the_same_frames_as_files(tmp_path, suffix, frames_uint8):
    cfg = make_dataset(tmp_path, suffix=suffix)
    cfg.frames_uint8 = frames_uint8
    index = build_frame_cache(cfg, tmp_path / "cache", splits=("train",))
    assert sorted(index["clips"]) == sorted(NAMES) and not index["failed"]
    assert index["clips"]["train/clip-a"] == [9, 24, 24]
    stored = np.load(tmp_path / "cache" / "clips" / "train" / "clip-a.npy")
    assert stored.dtype == np.uint8 and stored.shape == (9, 3, 24, 24)
    files, cached = (
        build_split(cfg, "train", train=False),
        build_split(with_cache(cfg, tmp_path / "cache"), "train", train=False),
    )
    assert [r["length"] for r in cached.records] == [9, 5, 7]
    for i in range(3):
        assert torch.equal(files[i]["inputs"], cached[i]["inputs"])  # evaluation: exactly equal
    assert files[0]["inputs"].dtype == (torch.uint8 if frames_uint8 else torch.float32)
    files, cached = (
        build_split(cfg, "train"),
        build_split(with_cache(cfg, tmp_path / "cache"), "train"),
    )
    for i in range(3):  # training: same torch seed -> same temporal offset and augmentation
        torch.manual_seed(i)
        a = files[i]["inputs"]
        torch.manual_seed(i)
        assert torch.equal(a, cached[i]["inputs"])
    assert files[0]["inputs"].shape == (6, 3, 20, 20)  # 9 frames subsampled to max_frames


def test_conversion_resumes_and_adopts_finished_clips(tmp_path):
    cfg = make_dataset(tmp_path)
    root = tmp_path / "cache"
    build_frame_cache(cfg, root, splits=("train",))
    paths = {n: root / clip_relpath(n) for n in NAMES}
    stamps = {n: p.stat().st_mtime_ns for n, p in paths.items()}
    paths["train/clip-b"].unlink()  # lost clip
    index = json.loads((root / "index.json").read_text())
    del index["clips"]["train/clip-c"]  # clip written but the run died before the index flush
    (root / "index.json").write_text(json.dumps(index))
    index = build_frame_cache(cfg, root, splits=("train",))
    assert sorted(index["clips"]) == sorted(NAMES)
    assert paths["train/clip-a"].stat().st_mtime_ns == stamps["train/clip-a"]  # not redone
    assert paths["train/clip-c"].stat().st_mtime_ns == stamps["train/clip-c"]  # adopted
    assert paths["train/clip-b"].is_file()  # redone
    assert not [p for p in root.rglob("*") if is_temporary(p.name)]  # nothing half-written


def test_failed_clips_are_listed_and_become_bad_samples(tmp_path):
    cfg = make_dataset(tmp_path)
    for frame in (tmp_path / "frames" / "train" / "clip-b").iterdir():
        frame.unlink()
    index = build_frame_cache(cfg, tmp_path / "cache", splits=("train",))
    assert (
        list(index["failed"]) == ["train/clip-b"] and "no frames" in index["failed"]["train/clip-b"]
    )
    cached = with_cache(cfg, tmp_path / "cache")
    with pytest.raises(
        DataError, match="'train/clip-b'.*not in the frame cache.*conversion failed"
    ):
        build_split(cached, "train", train=False)[1]
    cached.on_bad_sample = BadSample.skip
    dataset = build_split(DataConfig(**{**cached.__dict__}), "train", train=False)
    assert dataset[1] is None and dataset.bad_sample_count == 1


def test_cache_built_for_other_sizes_is_refused(tmp_path):
    cfg = make_dataset(tmp_path)
    build_frame_cache(cfg, tmp_path / "cache", splits=("train",))
    other = with_cache(cfg, tmp_path / "cache")
    other.resize, other.resize_mode = 32, ResizeMode.short_side
    with pytest.raises(DataError, match="resized to 24 \\(square\\).*data.resize=32"):
        build_split(other, "train")
    with pytest.raises(DataError, match="resized to 24"):
        build_frame_cache(other, tmp_path / "cache", splits=("train",))


def _replace_clip(root, name: str, clip: np.ndarray) -> None:
    """Store ``clip`` as the cached clip ``name`` and list its shape in the index, consistently."""
    np.save(root / clip_relpath(name), clip)
    index = json.loads((root / "index.json").read_text())
    index["clips"][name] = [clip.shape[0], clip.shape[2], clip.shape[3]]
    (root / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    "clip, says",
    [  # frames of another resize (a stale clip); no frames at all
        (np.zeros((5, 3, 16, 16), np.uint8), "frames of 16x16, but the cache holds frames resized "
         "to 24 (square); rebuild the clip"),
        (np.zeros((0, 3, 24, 24), np.uint8), "no frames (index entry [0, 24, 24])"),
    ],
)  # fmt: skip
def test_cached_clips_of_the_wrong_shape_are_bad_samples_naming_the_file(tmp_path, clip, says):
    """Before: the 16x16 clip raised ConfigError("data.crop=20 is larger than the resized frames
    (16x16)"), naming no file and not skipped in skip mode; the empty one loaded as a clip of
    no frames. Now both are bad samples whose error names the clip file and its shape."""
    cfg = make_dataset(tmp_path)
    build_frame_cache(cfg, tmp_path / "cache", splits=("train",))
    _replace_clip(tmp_path / "cache", "train/clip-b", clip)
    cached = with_cache(cfg, tmp_path / "cache")
    path = tmp_path / "cache" / clip_relpath("train/clip-b")
    with pytest.raises(DataError) as err:
        build_split(cached, "train", train=False)[1]
    assert f"'train/clip-b': frame cache file {path}: {says}" in str(err.value)
    cached.on_bad_sample = BadSample.skip
    dataset = build_split(cached, "train")
    assert dataset[0] is not None and dataset[1] is None and dataset.bad_sample_count == 1


def test_a_rebuild_at_another_size_does_not_adopt_the_old_clips(tmp_path):
    """With the index deleted, clip files of a 24 px build must not be adopted by a 16 px one
    (before: adopted as [T, 24, 24], frames silently at the wrong scale)."""
    cfg = make_dataset(tmp_path)
    build_frame_cache(cfg, tmp_path / "cache", splits=("train",))
    (tmp_path / "cache" / "index.json").unlink()
    cfg.resize, cfg.crop = 16, 12
    index = build_frame_cache(cfg, tmp_path / "cache", splits=("train",))
    assert index["clips"] == {"train/clip-a": [9, 16, 16], "train/clip-b": [5, 16, 16],
                              "train/clip-c": [7, 16, 16]}  # fmt: skip
    stored = np.load(tmp_path / "cache" / clip_relpath("train/clip-a"))
    assert stored.shape == (9, 3, 16, 16)


def test_clip_names_cannot_escape_the_cache():
    assert clip_relpath("train/x") == clip_relpath("train/x")
    for bad in ("../x", "/abs/x", ""):
        with pytest.raises(DataError):
            clip_relpath(bad)


def test_command_line(tmp_path):
    cfg = make_dataset(tmp_path)
    config = tmp_path / "data.yaml"
    config.write_text(
        f"name: phoenix14t\nlayout: gfslt\nmodality: frames\nlabels_dir: {cfg.labels_dir}\n"
        f"frame_root: {cfg.frame_root}\nresize: 24\ncrop: 20\n"
    )
    out = tmp_path / "cli-cache"
    assert main([f"data={config}", f"out={out}", "splits=train"]) == 0
    assert len(FrameCache(out).clips) == 3
    (tmp_path / "frames" / "train" / "clip-a" / "images0001.png").write_bytes(b"not a png")
    assert main([f"data={config}", f"out={tmp_path / 'second'}", "splits=train", "workers=2"]) == 1
    assert list(FrameCache(tmp_path / "second").failed) == ["train/clip-a"]
