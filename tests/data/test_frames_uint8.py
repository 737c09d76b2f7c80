"""uint8 frame batches (``data.frames_uint8``): the loader hands over pixels after crop, zoom and
rotation, plus each training clip's colour change as a per-channel gain and bias; the sign
embedding applies it and the ImageNet normalisation on its device.

Checked against plain references: the uint8 path's network input equals the float path's bit
for bit, in evaluation and in training; the geometry equals a per-pixel loop and the colour
change a float64 formula; padding never reaches the model; a clip's colour change stays with
that clip; batches cross DataLoader workers intact (written through the shared-memory file
there); a short ``data=synthetic_frames`` training run works."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from conftest import TINY_OVERRIDES, compose_train
from PIL import Image
from torch.utils.data import DataLoader

import scl_slt.data.batching as batching_module
from scl_slt.config import DataConfig, Layout, Modality, SignEmbeddingConfig
from scl_slt.data.batching import Collator, loader_generator, worker_init_fn
from scl_slt.data.dataset import SignDataset
from scl_slt.data.datasets import build_frame_source
from scl_slt.data.frames import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipParams,
    ClipTransform,
    normalise_frames,
)
from scl_slt.models.sign_embedding import SignEmbedding
from scl_slt.rundir.layout import read_metrics

_GAIN_F32 = (1.0 / (255.0 * np.asarray(IMAGENET_STD))).astype(np.float32)
_BIAS_F32 = (-np.asarray(IMAGENET_MEAN) / np.asarray(IMAGENET_STD)).astype(np.float32)
MEAN = np.asarray(IMAGENET_MEAN).reshape(1, 3, 1, 1)
STD = np.asarray(IMAGENET_STD).reshape(1, 3, 1, 1)


def naive_normalise(pixels: np.ndarray) -> np.ndarray:
    return (pixels.astype(np.float64) / 255.0 - MEAN) / STD


def naive_geometry(clip: np.ndarray, params: ClipParams, crop: int) -> np.ndarray:
    """Per-pixel nearest-neighbour resampling of the documented crop box."""
    t, _, height, width = clip.shape
    out = np.empty((t, 3, crop, crop), dtype=np.uint8)
    theta = math.radians(params.angle)
    cy = params.top + (params.size - 1) / 2
    cx = params.left + (params.size - 1) / 2
    for i in range(crop):
        for j in range(crop):
            u = (i - (crop - 1) / 2) * params.size / crop
            v = (j - (crop - 1) / 2) * params.size / crop
            y = min(max(round(cy + math.cos(theta) * u + math.sin(theta) * v), 0), height - 1)
            x = min(max(round(cx - math.sin(theta) * u + math.cos(theta) * v), 0), width - 1)
            out[:, :, i, j] = clip[:, :, y, x]
    return out


def naive_colour(pixels: np.ndarray, params: ClipParams) -> np.ndarray:
    """The colour change ``clamp(b * k * x + (1 - k) * b * mean_grey, 0, 255)`` in float64."""
    rgb = pixels[:, :, ::4, ::4].astype(np.float64).mean(axis=(0, 2, 3))
    grey = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    b, k = params.brightness, params.contrast
    return np.clip(b * k * pixels.astype(np.float64) + (1 - k) * b * grey, 0, 255)


# ------------------------------------------------------------------------------ normalisation
def test_normalise_frames_matches_naive_and_rejects_floats():
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 4, 3, 5, 7), dtype=np.uint8)
    out = normalise_frames(torch.from_numpy(pixels))
    assert out.dtype == torch.float32 and out.shape == pixels.shape
    expected = naive_normalise(pixels.reshape(-1, 3, 5, 7)).reshape(pixels.shape)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        normalise_frames(out)
    with pytest.raises(ValueError, match="colour"):
        normalise_frames(torch.from_numpy(pixels), torch.zeros(2, 3, 2))


def test_normalise_frames_applies_each_frames_colour_and_clamps():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(3, 3, 4, 4), dtype=np.uint8)
    pixels[0, :, 0, 0], pixels[1, :, 0, 0] = 255, 0  # driven past 255 and below 0 below
    a = np.array([1.5, 0.5, 1.0])  # per frame: x -> a * x + d on pixel values
    d = np.array([40.0, -60.0, 0.0])
    gain = a[:, None] / (255.0 * np.asarray(IMAGENET_STD))  # (3 frames, 3 channels)
    bias = (d[:, None] / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    colour = torch.from_numpy(np.stack([gain, bias], axis=1).astype(np.float32))  # (3, 2, 3)
    out = normalise_frames(torch.from_numpy(pixels), colour).numpy()
    changed = np.clip(a[:, None, None, None] * pixels + d[:, None, None, None], 0, 255)
    np.testing.assert_allclose(out, naive_normalise(changed), atol=2e-5)
    unclamped = a[:, None, None, None] * pixels + d[:, None, None, None]
    assert not np.allclose(out, naive_normalise(unclamped), atol=1e-3)  # the clamp did act


# ------------------------------------------------------------------------------ the transform
def test_eval_uint8_is_the_centre_crop_and_normalises_to_the_float_path():
    clip = np.random.default_rng(1).integers(0, 256, size=(3, 3, 40, 36), dtype=np.uint8)
    pixels, colour = ClipTransform(crop=32, uint8_output=True)(clip)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 3, 32, 32) and colour is None
    assert np.array_equal(pixels.numpy(), clip[:, :, 4:36, 2:34])
    floats = ClipTransform(crop=32)(clip).inputs
    assert torch.equal(normalise_frames(pixels), floats)  # same float32 arithmetic: exact


@pytest.mark.parametrize("seed", range(4))
def test_train_uint8_equals_the_float_path_exactly_and_the_naive_transform(seed):
    clip = np.random.default_rng(10 + seed).integers(0, 256, size=(2, 3, 16, 18), dtype=np.uint8)
    settings = dict(
        crop=12, augment_p=1.0, rotate_degrees=10, scale_jitter=0.2, brightness=0.3, contrast=0.3
    )
    as_uint8 = ClipTransform(**settings, uint8_output=True)
    pixels, colour = as_uint8(clip, np.random.default_rng(seed))
    floats, no_colour = ClipTransform(**settings)(clip, np.random.default_rng(seed))  # same draws
    params = as_uint8.sample_params(np.random.default_rng(seed), 16, 18)
    assert params.angle != 0 and params.contrast != 1  # the gather and the colour path ran
    assert pixels.dtype == torch.uint8 and colour.shape == (2, 3) and no_colour is None
    assert np.array_equal(pixels.numpy(), naive_geometry(clip, params, 12))  # no colour yet
    network_input = normalise_frames(pixels, colour)
    assert torch.equal(network_input, floats)  # bit for bit
    expected = naive_normalise(naive_colour(naive_geometry(clip, params, 12), params))
    np.testing.assert_allclose(network_input.numpy(), expected, atol=2e-5)
    assert not np.allclose(network_input.numpy(), naive_normalise(pixels.numpy()), atol=1e-2)


def test_uint8_train_clips_without_colour_jitter_carry_no_colour():
    clip = np.random.default_rng(3).integers(0, 256, size=(2, 3, 16, 16), dtype=np.uint8)
    for settings in (dict(brightness=0.0, contrast=0.0), dict(augment=False)):
        transform = ClipTransform(crop=12, uint8_output=True, **settings)
        assert transform(clip, np.random.default_rng(0)).colour is None


def test_uint8_transform_never_writes_or_returns_its_input():
    clip = np.random.default_rng(2).integers(0, 256, size=(2, 3, 12, 12), dtype=np.uint8)
    before = clip.copy()
    clip.setflags(write=False)  # as a read-only memory-mapped cache clip
    transform = ClipTransform(crop=12, uint8_output=True)
    out = transform(clip).inputs  # the evaluation crop is the whole clip: a plain view of it
    assert np.array_equal(out.numpy(), before) and not np.shares_memory(out.numpy(), clip)
    out[0, 0, 0, 0] += 1  # writable, and a copy
    assert np.array_equal(clip, before)


# -------------------------------------------------------------------------- the sign embedding
def _embedding() -> SignEmbedding:
    torch.manual_seed(0)
    return SignEmbedding(SignEmbeddingConfig(hidden=8, kernel=3), Modality.frames, 6)


def _uint8_batch(lengths: list[int], total: int, padding: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    x = torch.zeros(len(lengths), total, 3, 16, 16, dtype=torch.uint8)
    if padding == "junk":
        x = torch.randint(0, 256, x.shape, generator=torch.Generator().manual_seed(9)).byte()
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randint(0, 256, (n, 3, 16, 16), generator=gen).byte()
    return x, torch.tensor(lengths)


@pytest.mark.parametrize("training", [False, True])
def test_padding_frames_never_change_the_sign_embedding(training):
    """Any values in padded frames (zeros, noise) give the same outputs, in eval and train mode
    (the ResNet and its batch norm see valid frames only)."""
    base = _embedding().train(training)
    zeros, lengths = _uint8_batch([5, 3], 7, "zeros")
    junk, _ = _uint8_batch([5, 3], 7, "junk")
    assert not torch.equal(zeros, junk)
    with torch.no_grad():
        a = copy.deepcopy(base)(zeros, lengths)
        b = copy.deepcopy(base)(junk, lengths)
    for got, want in zip(a, b):
        assert torch.equal(got, want)


def test_uint8_input_equals_float_input_and_clips_alone():
    emb = _embedding().eval()
    pixels, lengths = _uint8_batch([5, 3], 7, "zeros")
    floats = torch.from_numpy(
        naive_normalise(pixels.flatten(0, 1).numpy()).astype(np.float32)
    ).view(pixels.shape)
    with torch.no_grad():
        feats, out_lengths, mask = emb(pixels, lengths)
        ref_feats, ref_lengths, ref_mask = emb(floats, lengths)
        torch.testing.assert_close(feats, ref_feats, atol=1e-5, rtol=1e-4)
        assert torch.equal(out_lengths, ref_lengths) and torch.equal(mask, ref_mask)
        alone, _, _ = emb(pixels[1:, :3], lengths[1:])  # the short clip without its padding
        torch.testing.assert_close(feats[1, : alone.shape[1]], alone[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="uint8 pixels or normalised floats"):
        emb(pixels.long(), lengths)


def test_each_clips_colour_change_reaches_its_own_frames_in_the_sign_embedding():
    """(B, 2, 3) colour in the sign embedding == float inputs normalised clip by clip with it;
    swapping the clips' colours changes the output; colour with float inputs is refused."""
    emb = _embedding().eval()
    pixels, lengths = _uint8_batch([5, 3], 7, "junk")
    gen = torch.Generator().manual_seed(6)
    colour = torch.stack(  # two different changes of the plain normalisation's gain and bias
        [
            torch.stack([torch.tensor(_GAIN_F32) * s, torch.tensor(_BIAS_F32) + o])
            for s, o in ((1.2, 0.1), (0.8, -0.2))
        ]
    ).float() + 0.01 * torch.rand(2, 2, 3, generator=gen)
    floats = torch.zeros(pixels.shape)
    for i, n in enumerate(lengths.tolist()):
        floats[i, :n] = normalise_frames(pixels[i, :n], colour[i])
    with torch.no_grad():
        got, _, _ = emb(pixels, lengths, colour)
        want, _, _ = emb(floats, lengths)
        swapped, _, _ = emb(pixels, lengths, colour.flip(0))
    assert torch.equal(got, want)  # same ResNet input, bit for bit
    assert not torch.allclose(got, swapped)
    with pytest.raises(ValueError, match="colour"):
        emb(floats, lengths, colour)
    with pytest.raises(ValueError, match="colour"):
        emb(pixels, lengths, colour[:1])


# --------------------------------------------------------------------------- through workers
class CharTokenizer:
    def encode_targets(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(t) for t in texts) + 2
        ids, mask = (
            torch.zeros(len(texts), width, dtype=torch.long),
            torch.zeros(len(texts), width, dtype=torch.bool),
        )
        for i, text in enumerate(texts):
            ids[i, 1 : len(text) + 1] = torch.tensor([ord(c) for c in text])
            mask[i, : len(text) + 2] = True
        return ids, mask


def _frame_folders(root, lengths) -> list[dict]:
    rng = np.random.default_rng(5)
    records = []
    for i, length in enumerate(lengths):
        folder = root / f"c{i}"
        folder.mkdir(parents=True)
        for t in range(length):
            frame = rng.integers(0, 256, size=(20, 18, 3), dtype=np.uint8)
            Image.fromarray(frame).save(folder / f"images{t + 1:04d}.png")
        records.append({"name": f"c{i}", "text": f"text {i}"})
    return records


def _batches(tmp_path, records, frames_uint8: bool, train: bool, workers: int) -> list[dict]:
    cfg = DataConfig(
        layout=Layout.gfslt,
        modality=Modality.frames,
        resize=18,
        crop=16,
        max_frames=5,
        frames_uint8=frames_uint8,
    )
    source = build_frame_source(cfg, tmp_path, train=train)
    loader = DataLoader(
        SignDataset(records, source, cfg.max_frames, train=train),
        batch_size=2,
        shuffle=train,
        num_workers=workers,
        collate_fn=Collator(CharTokenizer()),
        worker_init_fn=worker_init_fn,
        generator=loader_generator(0),
    )
    return list(loader)


def test_uint8_batches_cross_workers_and_match_the_float_batches(tmp_path):
    records = _frame_folders(tmp_path, [3, 7, 4, 2])  # 7 frames: subsampled to 5
    plain = _batches(tmp_path, records, True, train=False, workers=0)
    crossed = _batches(tmp_path, records, True, train=False, workers=2)
    floats = _batches(tmp_path, records, False, train=False, workers=2)
    for a, b, f in zip(plain, crossed, floats, strict=True):
        assert b["inputs"].dtype == torch.uint8 and torch.equal(a["inputs"], b["inputs"])
        assert a["names"] == b["names"] and torch.equal(a["input_lengths"], b["input_lengths"])
        for i, n in enumerate(b["input_lengths"].tolist()):
            assert (b["inputs"][i, n:] == 0).all()  # zero padding, as the contract says
            assert torch.equal(normalise_frames(b["inputs"][i, :n]), f["inputs"][i, :n])
    assert [n for b in crossed for n in b["input_lengths"].tolist()] == [3, 5, 4, 2]

    assert all("colour" not in b for b in crossed + floats)  # evaluation: no colour change

    # training: same loader seed -> same clips, offsets and augmentation in both formats
    train_u8 = _batches(tmp_path, records, True, train=True, workers=2)
    train_f32 = _batches(tmp_path, records, False, train=True, workers=2)
    for b, f in zip(train_u8, train_f32, strict=True):
        assert b["names"] == f["names"] and torch.equal(b["input_lengths"], f["input_lengths"])
        assert b["colour"].shape == (len(b["names"]), 2, 3) and "colour" not in f
        for i, n in enumerate(b["input_lengths"].tolist()):
            network_input = normalise_frames(b["inputs"][i, :n], b["colour"][i])
            assert torch.equal(network_input, f["inputs"][i, :n])  # bit for bit
    again = _batches(tmp_path, records, True, True, 2)[0]
    assert torch.equal(train_u8[0]["inputs"], again["inputs"])
    assert torch.equal(train_u8[0]["colour"], again["colour"])


def test_collator_refuses_a_batch_mixing_clips_with_and_without_colour():
    clip = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    samples = [
        {"index": 0, "name": "a", "inputs": clip, "text": "x", "colour": torch.zeros(2, 3)},
        {"index": 1, "name": "b", "inputs": clip, "text": "y"},
    ]
    with pytest.raises(ValueError, match="colour"):
        Collator(CharTokenizer())(samples)
    batch = Collator(CharTokenizer())(samples[:1])
    assert batch["colour"].shape == (1, 2, 3)


# ------------------------------------------------------------------- the synthetic frames run
def test_synthetic_frames_training_runs_on_uint8_batches(synthetic_cache, tmp_path):
    from scl_slt.train import run_stage

    overrides = [
        *TINY_OVERRIDES,
        "data=synthetic_frames",
        f"data.synthetic.cache_dir={synthetic_cache}",
        "data.synthetic.num_train=8",
        "data.synthetic.num_dev=2",
        "data.synthetic.num_test=2",
        "data.synthetic.image_size=16",
        "data.resize=18",
        "data.crop=16",
        "data.num_workers=2",
        "stage=translate",
        "stage.batch_size=4",
        "stage.eval_batch_size=4",
        "stage.epochs=1",
        f"run_dir={tmp_path / 'run'}",
    ]
    cfg = compose_train(overrides)
    assert cfg.data.modality == "frames" and cfg.data.frames_uint8 is True
    result = run_stage(cfg)
    assert result["steps"] == 2 and result["nonfinite_skipped"] == 0  # 8 clips, batches of 4
    losses = [r["loss"] for r in read_metrics(result["run_dir"], "train")]
    assert len(losses) == 2 and all(math.isfinite(x) and x > 0 for x in losses)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_worker_batches_are_written_through_the_shared_file(monkeypatch, dtype):
    monkeypatch.setattr(batching_module, "get_worker_info", lambda: object())  # as in a worker
    gen = torch.Generator().manual_seed(4)
    clips = [(torch.rand(n, 3, 4, 5, generator=gen) * 255).to(dtype) for n in (3, 6, 1)]
    batch = batching_module._empty_batch(clips[0], (3, 6, 3, 4, 5))
    assert batch.is_shared()
    assert batching_module._write_through_shared_file(batch, clips)  # the pwrite path ran
    expected = torch.zeros(3, 6, 3, 4, 5, dtype=dtype)
    for i, clip in enumerate(clips):
        expected[i, : len(clip)] = clip
    assert torch.equal(batch, expected)  # clips in place, padding zero
