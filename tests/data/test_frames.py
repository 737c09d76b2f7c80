"""Frame decoding, temporal sampling, the clip transform and the file frame source."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from scl_slt.config import ConfigError, DataConfig, Layout, Modality, ResizeMode
from scl_slt.data.batching import loader_generator, worker_init_fn
from scl_slt.data.dataset import SignDataset, subsample_indices
from scl_slt.data.datasets import build_frame_source
from scl_slt.data.frame_files import (
    FolderFrameSource,
    decode_frame,
    list_frames,
    resize_clip,
    resized_size,
)
from scl_slt.data.frames import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipParams,
    ClipTransform,
    source_index_map,
    temporal_indices,
)
from scl_slt.data.labels import DataError
from scl_slt.selection.samplers import RandomBatchSampler, SeededBatches

MEAN = np.asarray(IMAGENET_MEAN).reshape(1, 3, 1, 1)
STD = np.asarray(IMAGENET_STD).reshape(1, 3, 1, 1)


def write_frames(folder, frames: np.ndarray, suffix: str = ".png") -> None:
    """frames: uint8 (T, H, W, 3) -> images0001.png ... (JPEG at quality 95 for .jpg)."""
    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"images{t + 1:04d}{suffix}", quality=95)


def numbered_clip(length: int, height: int = 20, width: int = 16) -> np.ndarray:
    """uint8 (T, H, W, 3); channel 2 holds 10 * t so each frame is identifiable."""
    rng = np.random.default_rng(length)
    frames = rng.integers(0, 200, size=(length, height, width, 3), dtype=np.uint8)
    frames[..., 2] = (10 * np.arange(length) % 250)[:, None, None]
    return frames


def naive_normalise(pixels: np.ndarray) -> np.ndarray:
    return (pixels.astype(np.float64) / 255.0 - MEAN) / STD


# --------------------------------------------------------------------------- files, decoding
def test_list_frames_natural_order_and_suffixes(tmp_path):
    for i in (10, 2, 1):
        (tmp_path / f"f{i}.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_frames(tmp_path)] == ["f1.jpg", "f2.jpg", "f10.jpg"]
    with pytest.raises(DataError, match="frame folder missing"):
        list_frames(tmp_path / "absent")


def test_decode_frame_png_jpeg_and_errors(tmp_path):
    frame = numbered_clip(1)[0]
    write_frames(tmp_path / "png", frame[None])
    write_frames(tmp_path / "jpg", frame[None], ".jpg")
    png = decode_frame(tmp_path / "png" / "images0001.png")
    assert png.dtype == np.uint8 and png.shape == (20, 16, 3)
    assert np.array_equal(png, frame)  # lossless
    jpg = decode_frame(tmp_path / "jpg" / "images0001.jpg")
    assert (
        np.abs(jpg.astype(int) - np.asarray(Image.open(tmp_path / "jpg" / "images0001.jpg"))).max()
        <= 2
    )
    with pytest.raises(DataError, match="frame missing: .*nope.png"):
        decode_frame(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes((tmp_path / "png" / "images0001.png").read_bytes()[:60])
    with pytest.raises(DataError, match="bad.png"):
        decode_frame(bad)


def test_resized_size_modes():
    assert resized_size(260, 210, 256, ResizeMode.square) == (256, 256)
    assert resized_size(260, 210, 256, ResizeMode.short_side) == (317, 256)
    assert resized_size(512, 512, 256, ResizeMode.short_side) == (256, 256)
    clip = torch.randint(0, 255, (2, 3, 26, 21), dtype=torch.uint8)
    assert resize_clip(clip, 32, ResizeMode.square).shape == (2, 3, 32, 32)
    assert resize_clip(clip, 21, ResizeMode.short_side) is clip  # already there: untouched


# ------------------------------------------------------------------------------ time sampling
def test_temporal_indices_eval_even_and_train_random_offset():
    assert np.array_equal(temporal_indices(7, 10, None), np.arange(7))
    assert np.array_equal(temporal_indices(100, 30, None), subsample_indices(100, 30))
    seen_first = set()
    for seed in range(20):
        idx = temporal_indices(100, 30, np.random.default_rng(seed))
        assert len(idx) == 30 and idx[0] >= 0 and idx[-1] <= 99
        gaps = np.diff(idx)
        assert set(gaps.tolist()) <= {math.floor(100 / 30), math.ceil(100 / 30)}  # evenly strided
        seen_first.add(int(idx[0]))
    assert len(seen_first) > 1  # the offset is random
    a = temporal_indices(475, 300, np.random.default_rng(3))
    assert np.array_equal(a, temporal_indices(475, 300, np.random.default_rng(3)))
    assert len(np.unique(a)) == 300


# ---------------------------------------------------------------------------------- transform
def test_eval_transform_is_centre_crop_and_imagenet_normalisation():
    clip = np.random.default_rng(0).integers(0, 256, size=(3, 3, 40, 36), dtype=np.uint8)
    transform = ClipTransform(crop=32)
    out, colour = transform(clip)
    assert out.dtype == torch.float32 and out.shape == (3, 3, 32, 32) and colour is None
    expected = naive_normalise(clip[:, :, 4:36, 2:34])
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    assert torch.equal(out, transform(clip).inputs)  # deterministic


def naive_index_map(params: ClipParams, crop: int, height: int, width: int) -> np.ndarray:
    """Per-pixel loop over the documented mapping (reference for the vectorised one)."""
    out = np.empty(crop * crop, dtype=np.int64)
    theta = math.radians(params.angle)
    cy = params.top + (params.size - 1) / 2
    cx = params.left + (params.size - 1) / 2
    for i in range(crop):
        for j in range(crop):
            u = (i - (crop - 1) / 2) * (params.size / crop)
            v = (j - (crop - 1) / 2) * (params.size / crop)
            y = round(cy + math.cos(theta) * u + math.sin(theta) * v)
            x = round(cx - math.sin(theta) * u + math.cos(theta) * v)
            out[i * crop + j] = min(max(y, 0), height - 1) * width + min(max(x, 0), width - 1)
    return out


@pytest.mark.parametrize(
    "params",
    [
        ClipParams(top=3.3, left=1.7, size=11.0, angle=7.0),
        ClipParams(top=0.0, left=4.0, size=14.5, angle=-12.5),
        ClipParams(top=5.0, left=2.0, size=9.0, angle=0.0),
    ],
)
def test_source_index_map_matches_naive_loop(params):
    assert np.array_equal(source_index_map(params, 10, 20, 18), naive_index_map(params, 10, 20, 18))


def test_geometry_identity_rot90_and_zoom():
    rng = np.random.default_rng(1)
    clip = rng.integers(0, 256, size=(2, 3, 12, 12), dtype=np.uint8)
    transform = ClipTransform(crop=8)
    flat = clip.reshape(2, 3, -1)

    def gather(params):
        return flat[:, :, source_index_map(params, 8, 12, 12)].reshape(2, 3, 8, 8)

    crop = clip[:, :, 2:10, 3:11]
    assert np.array_equal(gather(ClipParams(top=2, left=3, size=8, angle=0.0)), crop)
    assert np.array_equal(
        gather(ClipParams(top=2, left=3, size=8, angle=90.0)), np.rot90(crop, 1, axes=(2, 3))
    )
    zoomed = gather(ClipParams(top=2, left=3, size=4, angle=0.0))  # 2x zoom: 2x2 blocks
    assert np.array_equal(zoomed, np.repeat(np.repeat(clip[:, :, 2:6, 3:7], 2, axis=2), 2, axis=3))
    # the transform's gather path gives the same pixels as the plain-crop path
    np.testing.assert_allclose(
        transform.apply(clip, ClipParams(top=2, left=3, size=8, angle=1e-9)).inputs.numpy(),
        transform.apply(clip, ClipParams(top=2, left=3, size=8)).inputs.numpy(),
    )


def test_train_transform_same_crop_box_for_every_frame():
    """Frames code their own pixel coordinates, so the output reveals each frame's crop box."""
    t, height, width = 6, 40, 48
    yy, xx = np.mgrid[0:height, 0:width]
    clip = np.empty((t, 3, height, width), dtype=np.uint8)
    clip[:, 0], clip[:, 1] = yy, xx
    clip[:, 2] = (20 * np.arange(t))[:, None, None]
    transform = ClipTransform(
        crop=32, augment_p=1.0, rotate_degrees=15, scale_jitter=0.2, brightness=0, contrast=0
    )
    boxes = set()
    for seed in range(5):
        out = transform(clip, np.random.default_rng(seed)).inputs.numpy().astype(np.float64)
        pixels = np.rint((out * STD + MEAN) * 255).astype(int)  # undo the normalisation
        for frame in range(1, t):
            assert np.array_equal(pixels[frame, :2], pixels[0, :2])  # same source pixel everywhere
        assert np.array_equal(pixels[:, 2, 0, 0], 20 * np.arange(t))  # frames kept, in order
        boxes.add(pixels[0, :2].tobytes())
    assert len(boxes) == 5  # and the box differs between clips


def test_train_colour_augmentation_consistent_and_clamped():
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, size=(1, 3, 36, 36), dtype=np.uint8)
    clip = np.repeat(frame, 4, axis=0)  # identical frames
    transform = ClipTransform(
        crop=32, augment_p=1.0, rotate_degrees=5, scale_jitter=0.1, brightness=0.4, contrast=0.4
    )
    out = transform(clip, np.random.default_rng(5)).inputs.numpy()
    for t in range(1, 4):
        assert np.array_equal(out[t], out[0])  # same geometry and colour for every frame
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    assert (out >= low.astype(np.float32) - 1e-6).all() and (
        out <= high.astype(np.float32) + 1e-6
    ).all()
    plain = ClipTransform(
        crop=32, augment_p=1.0, rotate_degrees=5, scale_jitter=0.1, brightness=0, contrast=0
    )
    changed = not np.allclose(out, plain(clip, np.random.default_rng(5)).inputs.numpy())
    assert changed  # the colour did change


def test_colour_fold_matches_naive_brightness_contrast():
    clip = np.random.default_rng(4).integers(0, 256, size=(2, 3, 16, 16), dtype=np.uint8)
    transform = ClipTransform(crop=16)
    params = ClipParams(top=0, left=0, size=16, brightness=1.3, contrast=0.7)
    out = transform.apply(clip, params, recolour=True).inputs.numpy()
    x = clip.astype(np.float64)
    rgb = x[:, :, ::4, ::4].mean(axis=(0, 2, 3))
    grey = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    expected = np.clip(0.7 * (1.3 * x) + 0.3 * 1.3 * grey, 0, 255)
    np.testing.assert_allclose(out, naive_normalise(expected), atol=1e-4)


def test_augment_p_is_the_chance_of_each_augmentation():
    """Each of zoom, angle, brightness, contrast applies with chance ``augment_p``, independently;
    a clip with neither zoom nor angle is a plain crop on whole pixels (returned as a slice)."""
    height, width, draws = 40, 48, 2000
    transform = ClipTransform(crop=32, augment_p=0.5)
    params = [
        transform.sample_params(np.random.default_rng(s), height, width) for s in range(draws)
    ]
    zoomed = np.array([p.size != 32 for p in params])
    rotated = np.array([p.angle != 0 for p in params])
    brighter = np.array([p.brightness != 1 for p in params])
    contrasted = np.array([p.contrast != 1 for p in params])
    for applied in (zoomed, rotated, brighter, contrasted):
        assert 0.45 < applied.mean() < 0.55  # binomial(2000, 0.5): sd 0.011
    assert 0.2 < (zoomed & rotated).mean() < 0.3  # independent: about 0.25
    assert 0.2 < (brighter & ~contrasted).mean() < 0.3
    plain = [p for p, z, r in zip(params, zoomed, rotated) if not (z or r)]
    assert plain and all(transform.is_view(p) for p in plain)
    assert all(0 <= p.top <= height - 32 and 0 <= p.left <= width - 32 for p in plain)
    assert len({(p.top, p.left) for p in plain}) > 50  # the crop position is still random

    never = ClipTransform(crop=32, augment_p=0.0)
    for seed in range(50):
        p = never.sample_params(np.random.default_rng(seed), height, width)
        assert never.is_view(p) and (p.brightness, p.contrast) == (1.0, 1.0)
    assert not never.changes_colour  # no colour key in its batches
    always = ClipTransform(crop=32, augment_p=1.0)
    for seed in range(50):
        p = always.sample_params(np.random.default_rng(seed), height, width)
        assert p.angle != 0 and p.size != 32 and p.brightness != 1 and p.contrast != 1


def test_transform_rejects_bad_values():
    with pytest.raises(ConfigError, match="data.rotate_degrees"):
        ClipTransform(rotate_degrees=-1)
    with pytest.raises(ConfigError, match="data.augment_p"):
        ClipTransform(augment_p=1.5)
    with pytest.raises(ConfigError, match="data.crop=32 is larger"):
        ClipTransform(crop=32)(np.zeros((1, 3, 20, 40), dtype=np.uint8))


# ------------------------------------------------------------------------------- frame source
def test_folder_source_eval_subsamples_evenly_and_matches_reference(tmp_path):
    frames = numbered_clip(12)
    write_frames(tmp_path / "train" / "clip", frames)
    transform = ClipTransform(crop=14, augment=False)
    source = FolderFrameSource(
        tmp_path, transform, max_frames=5, resize=16, resize_mode=ResizeMode.short_side
    )
    out = source.load({"name": "train/clip"}, train=False).inputs
    assert out.shape == (5, 3, 14, 14)
    chosen = subsample_indices(12, 5)
    resized = resize_clip(
        torch.from_numpy(frames[chosen]).permute(0, 3, 1, 2).contiguous(), 16, "short_side"
    )
    top, left = (resized.shape[2] - 14) // 2, (resized.shape[3] - 14) // 2
    expected = naive_normalise(resized.numpy()[:, :, top : top + 14, left : left + 14])
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    assert source.frame_count({"name": "train/clip"}) == 12


def test_folder_source_imgs_path_and_errors(tmp_path):
    write_frames(tmp_path / "a", numbered_clip(3))
    source = FolderFrameSource(tmp_path, ClipTransform(crop=16), resize=16)
    record = {"name": "x", "imgs_path": ["a/images0003.png", "a/images0001.png"]}
    out = source.load(record, train=False).inputs
    pixels = np.rint((out.numpy().astype(np.float64) * STD + MEAN) * 255)
    assert out.shape == (2, 3, 16, 16) and pixels[0, 2, 0, 0] == 20 and pixels[1, 2, 0, 0] == 0
    with pytest.raises(DataError, match="frame folder missing: .*missing_clip"):
        source.load({"name": "missing_clip"}, train=False)
    with pytest.raises(DataError, match="known issue: broken on purpose"):
        source.load({"name": "missing_clip", "known_issue": "broken on purpose"}, train=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no frames"):
        source.load({"name": "empty"}, train=False)


def test_build_frame_source_checks_config(tmp_path):
    cfg = DataConfig(layout=Layout.gfslt, modality=Modality.frames, resize=0)
    with pytest.raises(ConfigError, match="data.resize"):
        build_frame_source(cfg, tmp_path, train=True)
    cfg = DataConfig(
        layout=Layout.gfslt, modality=Modality.frames, frame_cache=str(tmp_path / "none")
    )
    with pytest.raises(DataError, match="no index.json"):
        build_frame_source(cfg, tmp_path, train=True)


def _epoch(dataset, seed, workers):
    loader = DataLoader(
        dataset,
        batch_size=2,
        shuffle=True,
        num_workers=workers,
        collate_fn=lambda samples: torch.stack([s["inputs"] for s in samples]),
        worker_init_fn=worker_init_fn,
        generator=loader_generator(seed),
    )
    return torch.cat(list(loader))


def test_augmentation_reproducible_with_workers(tmp_path):
    records = []
    for i in range(4):
        write_frames(tmp_path / f"c{i}", numbered_clip(6 + i, 18, 18))
        records.append({"name": f"c{i}", "text": "t"})
    cfg = DataConfig(
        layout=Layout.gfslt, modality=Modality.frames, resize=18, crop=16, max_frames=4
    )
    dataset = SignDataset(records, build_frame_source(cfg, tmp_path, train=True), 4, train=True)
    first = _epoch(dataset, seed=0, workers=2)
    assert torch.equal(first, _epoch(dataset, seed=0, workers=2))
    assert not torch.equal(first, _epoch(dataset, seed=1, workers=2))


def _seeded_epoch(dataset, sampler, workers: int) -> list[torch.Tensor]:
    """The epoch's batches as the training loader builds them: (B, T, 3, H, W) per batch."""
    loader = DataLoader(
        dataset,
        batch_sampler=SeededBatches(sampler, seed=7),
        num_workers=workers,
        collate_fn=lambda samples: torch.stack([s["inputs"] for s in samples]),
        worker_init_fn=worker_init_fn,
        generator=loader_generator(0),
    )
    return list(loader)


def test_seeded_augmentation_ignores_workers_ranks_and_resume(tmp_path):
    """Training batches (SeededBatches): a sample's augmentation depends on where it sits in the
    epoch only, not on the worker that loads it, the number of workers or ranks, or a resume."""
    records = []
    for i in range(8):
        write_frames(tmp_path / f"c{i}", numbered_clip(6, 18, 18))  # equal lengths: stackable
        records.append({"name": f"c{i}", "text": "t"})
    cfg = DataConfig(
        layout=Layout.gfslt, modality=Modality.frames, resize=18, crop=16, max_frames=4
    )
    dataset = SignDataset(records, build_frame_source(cfg, tmp_path, train=True), 4, train=True)
    sampler = RandomBatchSampler(8, batch_size=4, seed=3)
    sampler.set_epoch(1)
    base = _seeded_epoch(dataset, sampler, workers=0)
    assert len(base) == 2 and not torch.equal(base[0], base[1])
    for got, want in zip(_seeded_epoch(dataset, sampler, workers=2), base, strict=True):
        assert torch.equal(got, want)  # other workers, same augmentation
    sampler.set_epoch(1, start_batch=1)  # resumed mid-epoch
    (resumed,) = _seeded_epoch(dataset, sampler, workers=2)
    assert torch.equal(resumed, base[1])
    ranks = [RandomBatchSampler(8, batch_size=4, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for rank in ranks:
        rank.set_epoch(1)
    shares = [_seeded_epoch(dataset, rank, workers=1) for rank in ranks]
    for b, want in enumerate(base):  # the two ranks' shares make up the one-process batch
        assert torch.equal(torch.cat([shares[0][b], shares[1][b]]), want)
    sampler.set_epoch(2)
    assert not torch.equal(_seeded_epoch(dataset, sampler, workers=0)[0], base[0])
