"""Batch samplers: random batches, and the mechanics both samplers share (rank shares, drop
rules, resuming mid-epoch, state), plus build_batch_sampler()."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from scl_slt.config import ConfigError, SelectionConfig, SelectionName
from scl_slt.selection.build import build_batch_sampler
from scl_slt.selection.curriculum import CurriculumBatchSampler
from scl_slt.selection.samplers import RandomBatchSampler, SeededBatches


def scores(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, n)).astype(np.float16)


def make_sampler(kind, n, batch_size, seed=0, rank=0, world_size=1, drop_last=False):
    if kind == "random":
        return RandomBatchSampler(n, batch_size, seed, rank, world_size, drop_last)
    return CurriculumBatchSampler(
        scores(n), batch_size, 3, "log", seed, rank, world_size, drop_last
    )


KINDS = ["random", "trajectory"]


# ------------------------------------------------------------------------- random batches
def test_random_batches_cover_every_sample_once():
    sampler = RandomBatchSampler(50, 8, seed=0)
    for epoch in range(3):
        batches = sampler.global_batches(epoch)
        assert [len(b) for b in batches] == [8] * 6 + [2]
        assert sorted(i for b in batches for i in b) == list(range(50))


def test_random_batches_deterministic_and_shuffled_per_epoch():
    a = RandomBatchSampler(40, 8, seed=1).global_batches(0)
    assert a == RandomBatchSampler(40, 8, seed=1).global_batches(0)
    assert a != RandomBatchSampler(40, 8, seed=1).global_batches(1)
    assert a != RandomBatchSampler(40, 8, seed=2).global_batches(0)
    assert a != [list(range(i, min(i + 8, 40))) for i in range(0, 40, 8)]


# ----------------------------------------------------------------------- shared mechanics
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_shares_partition_global_batches(kind, world_size):
    n, batch_size = 61, 8  # last global batch has 5 samples, enough for every rank
    ranks = [make_sampler(kind, n, batch_size, 4, r, world_size) for r in range(world_size)]
    for sampler in ranks:
        sampler.set_epoch(1)
    shares = [list(sampler) for sampler in ranks]
    global_batches = ranks[0].global_batches(1)
    assert all(len(s) == len(global_batches) == len(sampler) for s, sampler in zip(shares, ranks))
    for b, batch in enumerate(global_batches):
        parts = [shares[r][b] for r in range(world_size)]
        assert [i for part in parts for i in part] == batch  # contiguous, in rank order
        sizes = [len(part) for part in parts]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    union = [i for share in shares for batch in share for i in batch]
    assert sorted(union) == list(range(n))  # disjoint and complete


@pytest.mark.parametrize("kind", KINDS)
def test_partial_batch_smaller_than_world_is_dropped(kind):
    # 50 = 6 * 8 + 2: two samples cannot feed three ranks, so that batch is dropped everywhere
    ranks = [make_sampler(kind, 50, 8, rank=r, world_size=3) for r in range(3)]
    assert [len(s) for s in ranks] == [6, 6, 6]
    assert all(len(list(s)) == 6 for s in ranks)
    assert len(make_sampler(kind, 50, 8, world_size=2)) == 7  # two ranks: one sample each


@pytest.mark.parametrize("kind", KINDS)
def test_drop_last(kind):
    sampler = make_sampler(kind, 50, 8, drop_last=True)
    batches = list(sampler)
    assert len(sampler) == len(batches) == 6
    assert all(len(b) == 8 for b in batches)
    full = make_sampler(kind, 50, 8)
    assert batches == full.global_batches(0)[:6]
    assert len(make_sampler(kind, 48, 8, drop_last=True)) == 6  # nothing partial to drop


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("world_size", [1, 2])
def test_resume_mid_epoch_yields_the_tail(kind, world_size):
    sampler = make_sampler(kind, 45, 6, seed=3, rank=world_size - 1, world_size=world_size)
    sampler.set_epoch(2)
    full = list(sampler)
    for k in (0, 1, 4, len(full)):
        sampler.set_epoch(2, start_batch=k)
        assert list(sampler) == full[k:]
        assert len(sampler) == len(full)  # __len__ counts the whole epoch

    sampler.set_epoch(2, start_batch=3)
    state = sampler.state_dict()
    assert state["epoch"] == 2 and state["start_batch"] == 3 and state["seed"] == 3
    resumed = make_sampler(kind, 45, 6, seed=3, rank=world_size - 1, world_size=world_size)
    resumed.load_state_dict(state)
    assert list(resumed) == full[3:]


@pytest.mark.parametrize("kind", KINDS)
def test_state_from_another_run_is_refused(kind):
    state = make_sampler(kind, 30, 6, seed=1).state_dict()
    with pytest.raises(ValueError, match="'seed'"):
        make_sampler(kind, 30, 6, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="start_batch"):
        make_sampler(kind, 30, 6).set_epoch(0, start_batch=6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="world_size"):
        RandomBatchSampler(20, 2, seed=0, rank=0, world_size=3)
    with pytest.raises(ValueError, match="rank"):
        RandomBatchSampler(20, 4, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        RandomBatchSampler(20, 0, seed=0)


class IndexDataset(Dataset):
    def __len__(self) -> int:
        return 26

    def __getitem__(self, index: int) -> int:
        return index


@pytest.mark.parametrize("kind", KINDS)
def test_used_as_dataloader_batch_sampler(kind):
    sampler = make_sampler(kind, 26, 4, rank=1, world_size=2)
    sampler.set_epoch(1)
    loader = DataLoader(IndexDataset(), batch_sampler=sampler)
    got = [batch.tolist() for batch in loader]
    assert len(loader) == len(got) == 7
    assert got == [sampler.shard(b) for b in sampler.global_batches(1)]
    assert all(isinstance(batch, list) for batch in sampler)
    assert all(isinstance(batch, torch.Tensor) for batch in loader)


# ------------------------------------------------------------------- build_batch_sampler
def test_build_random():
    cfg = SelectionConfig(name=SelectionName.random)
    sampler = build_batch_sampler(cfg, 20, 4, epochs=3, seed=0, rank=1, world_size=2)
    assert isinstance(sampler, RandomBatchSampler)
    assert (sampler.rank, sampler.world_size, len(sampler)) == (1, 2, 5)


def test_build_trajectory_from_file(tmp_path):
    path = tmp_path / "pair_scores.npy"
    np.save(path, scores(20))
    cfg = SelectionConfig(name="trajectory", schedule="linear", pair_scores=str(path))
    sampler = build_batch_sampler(cfg, 20, 4, epochs=4, seed=0)
    assert isinstance(sampler, CurriculumBatchSampler)
    assert isinstance(sampler.pair_scores, np.memmap)
    assert sampler.alpha(3) == 1.0
    assert sorted(i for b in sampler.global_batches(0) for i in b) == list(range(20))


def test_build_trajectory_errors_name_the_file_or_key(tmp_path):
    missing = tmp_path / "missing.npy"
    cfg = SelectionConfig(name="trajectory", pair_scores=str(missing))
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        build_batch_sampler(cfg, 20, 4, epochs=2, seed=0)
    path = tmp_path / "pair_scores.npy"
    np.save(path, scores(20))
    cfg = SelectionConfig(name="trajectory", pair_scores=str(path))
    with pytest.raises(ValueError, match="pair_scores.npy.*N=20.*21"):
        build_batch_sampler(cfg, 21, 4, epochs=2, seed=0)
    cfg = SelectionConfig(name="trajectory", pair_scores=None)
    with pytest.raises(ConfigError, match="selection.pair_scores"):
        build_batch_sampler(cfg, 20, 4, epochs=2, seed=0)
    cfg = SelectionConfig(name="trajectory", pair_scores=str(path), pool_size=0)
    with pytest.raises(ConfigError, match="selection.pool_size"):
        build_batch_sampler(cfg, 20, 4, epochs=2, seed=0)


@pytest.mark.parametrize("name", ["text_semantic", "visual_curriculum", "san", "online_trajectory"])
def test_build_later_selections_raise_config_error(name):
    with pytest.raises(ConfigError, match=f"selection.name.*{name}"):
        build_batch_sampler(SelectionConfig(name=name), 20, 4, epochs=2, seed=0)


def test_seeded_batches_key_every_sample_by_its_place_in_the_epoch():
    sampler = RandomBatchSampler(10, batch_size=4, seed=5, rank=1, world_size=2)
    sampler.set_epoch(3, start_batch=1)
    seeded = list(SeededBatches(sampler, seed=11))
    assert [[i for i, _ in batch] for batch in seeded] == list(sampler)  # the same indices
    assert len(SeededBatches(sampler, seed=11)) == len(sampler)
    globals_ = sampler.global_batches(3)
    for number, batch in enumerate(seeded, start=1):
        for index, key in batch:
            seed, epoch, global_batch, position = key
            assert (seed, epoch, global_batch) == (11, 3, number)
            assert globals_[global_batch][position] == index  # where the sample sits
    with pytest.raises(ValueError, match="seed"):
        SeededBatches(sampler, seed=-1)
