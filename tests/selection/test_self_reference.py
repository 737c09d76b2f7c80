"""Self-referenced selection (``selection=self_trajectory``), without training: which snapshot
each epoch uses, the δ file against a pair-by-pair recomputation from the snapshot features, and
the sampler against the plain samplers it must reduce to."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scl_slt.models.similarity import pairwise_similarity
from scl_slt.selection.build import build_batch_sampler
from scl_slt.selection.curriculum import CurriculumBatchSampler
from scl_slt.selection.samplers import RandomBatchSampler
from scl_slt.selection.self_reference import SelfCurriculumSampler, SelfReference
from scl_slt.selection.tracker import COMPLETE_MARKER

N, BATCH, SEED, TAU = 12, 4, 3, 0.07


def _write_snapshot(run_dir: Path, epoch: int, seed: int) -> tuple[list, list]:
    """A snapshot in the tracker's format with 1-3 unit-length tokens per sample (projections
    are normalised); returns the per-sample (video tokens, text tokens) as float32 arrays (the
    float16 values stored)."""
    rng = np.random.default_rng(seed)

    def tokens() -> np.ndarray:
        x = rng.normal(size=(int(rng.integers(1, 4)), 5))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)

    video = [tokens() for _ in range(N)]
    text = [tokens() for _ in range(N)]
    path = run_dir / "snapshots" / f"epoch-{epoch:04d}"
    path.mkdir(parents=True)
    for side, tokens in (("video", video), ("text", text)):
        np.save(path / f"{side}_features.npy", np.concatenate(tokens))
        np.save(path / f"{side}_lengths.npy", np.array([len(t) for t in tokens], dtype=np.int64))
    names = [f"clip{i}" for i in range(N)]
    (path / "samples.json").write_text(json.dumps({"names": names, "texts": names}))
    meta = {"epoch": epoch, "num_samples": N, "fingerprint": {}, "created": f"test {seed}"}
    (path / "meta.json").write_text(json.dumps(meta))
    (path / COMPLETE_MARKER).write_text("ok\n")
    return [v.astype(np.float32) for v in video], [t.astype(np.float32) for t in text]


def _naive_similarity(video: list, text: list) -> np.ndarray:
    """S[i, j] one pair at a time with the loss's similarity (cico)."""
    S = np.zeros((N, N))
    for i in range(N):
        for j in range(N):
            v, t = torch.from_numpy(video[i])[None], torch.from_numpy(text[j])[None]
            vm, tm = torch.ones(v.shape[:2], dtype=torch.bool), torch.ones(t.shape[:2], dtype=torch.bool)  # fmt: skip
            S[i, j] = float(pairwise_similarity(v, vm, t, tm, "cico", TAU))
    return S


def _reference(run_dir: Path, interval: int = 2, epochs: int = 7) -> SelfReference:
    return SelfReference(run_dir, N, interval, epochs, "cico", TAU, "cpu")


def test_which_snapshot_each_epoch_uses(tmp_path):
    ref = _reference(tmp_path, interval=2, epochs=7)
    # Snapshots after 0, 2, 4, 6 completed epochs serve a later epoch; none after the last (7).
    assert [k for k in range(8) if ref.due(k)] == [0, 2, 4, 6]
    # 0-based epoch e starts after e completed epochs: the latest snapshot k in (0, e].
    assert [ref.source_epoch(e) for e in range(7)] == [None, None, 2, 2, 4, 4, 6]
    with pytest.raises(ValueError, match="tracker.interval"):
        _reference(tmp_path, interval=3, epochs=3)


def test_delta_is_the_difference_of_the_snapshots_pair_similarities(tmp_path):
    first = _write_snapshot(tmp_path, 0, seed=1)
    later = _write_snapshot(tmp_path, 2, seed=2)
    ref = _reference(tmp_path)
    record = ref.update(2)
    assert record["epoch"] == 2 and record["score_s"] >= 0 and record["delta_s"] >= 0
    expected = _naive_similarity(*later) - _naive_similarity(*first)
    delta = ref.delta(2)
    assert delta.shape == (N, N) and delta.dtype == np.float16
    np.testing.assert_allclose(np.asarray(delta, dtype=np.float64), expected, atol=3e-3)
    assert np.abs(expected).max() > 0.05  # the check has something to compare

    with pytest.raises(FileNotFoundError, match="delta-epoch-0004"):
        ref.delta(4)  # never written
    # A missing δ is rescored from its snapshot at a resume (ensure), to the same values.
    saved = np.array(delta)
    ref.delta_path(2).unlink()
    ref.ensure(3)
    np.testing.assert_array_equal(np.asarray(ref.delta(2)), saved)


def test_sampler_is_shuffled_until_the_first_interval_then_the_curriculum_over_delta(tmp_path):
    _write_snapshot(tmp_path, 0, seed=1)
    _write_snapshot(tmp_path, 2, seed=2)
    _write_snapshot(tmp_path, 4, seed=4)
    ref = _reference(tmp_path, interval=2, epochs=6)
    sampler = SelfCurriculumSampler(ref, BATCH, 6, "log", SEED)
    plain = RandomBatchSampler(N, BATCH, SEED)
    for epoch in (0, 1):
        assert sampler.global_batches(epoch) == plain.global_batches(epoch)
    for k in (2, 4):  # as in training: δ^k is written after epoch k - 1, before epoch k starts
        ref.update(k)
        curriculum = CurriculumBatchSampler(np.load(ref.delta_path(k)), BATCH, 6, "log", SEED)
        for epoch in (k, k + 1):
            batches = sampler.global_batches(epoch)
            assert batches == curriculum.global_batches(epoch), epoch
            assert batches != plain.global_batches(epoch), epoch
            assert sorted(i for b in batches for i in b) == list(range(N))
    # Only S^0 and the newest δ stay on disk; the snapshots stay, so older ones can be rescored.
    assert sorted(p.name for p in ref.scores_dir.iterdir()) == [
        "S-epoch-0000.json", "S-epoch-0000.npy", "delta-epoch-0004.json", "delta-epoch-0004.npy",
    ]  # fmt: skip


def test_build_batch_sampler_needs_the_reference_and_the_split_size(tmp_path):
    from scl_slt.config import ConfigError, SelectionConfig, SelectionName

    cfg = SelectionConfig(name=SelectionName.self_trajectory)
    with pytest.raises(ConfigError, match="SelfReference"):
        build_batch_sampler(cfg, N, BATCH, 6, SEED)
    with pytest.raises(ValueError, match="covers 12 samples"):
        build_batch_sampler(cfg, N + 1, BATCH, 6, SEED, trajectory=_reference(tmp_path, 2, 6))
    sampler = build_batch_sampler(cfg, N, BATCH, 6, SEED, trajectory=_reference(tmp_path, 2, 6))
    assert isinstance(sampler, SelfCurriculumSampler) and sampler.kind == "self_trajectory"
