"""online_trajectory: the per-pair EMA against a plain loop, state round-trip, and the sampler
(random first epoch, curriculum from the recorded deltas, exact resume, identical ranks)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from scl_slt.config import ConfigError, SelectionConfig
from scl_slt.selection.build import build_batch_sampler
from scl_slt.selection.curriculum import build_curriculum_batches
from scl_slt.selection.online import OnlineCurriculumSampler, OnlineTrajectory
from scl_slt.selection.samplers import RandomBatchSampler, epoch_generator


class LoopEMA:
    """The definition, one pair at a time, in plain Python."""

    def __init__(self, decay: float):
        self.decay, self.ema, self.first = decay, {}, {}

    def update(self, indices, sim):
        for a, i in enumerate(indices):
            for b, j in enumerate(indices):
                s = float(sim[a][b])
                if (i, j) in self.first:
                    self.ema[i, j] = self.decay * self.ema[i, j] + (1 - self.decay) * s
                else:
                    self.first[i, j] = s
                    self.ema[i, j] = s

    def scores(self, n):
        out = np.zeros((n, n))
        for (i, j), first in self.first.items():
            out[i, j] = self.ema[i, j] - first
        return out


def random_updates(n, batch, steps, seed):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.choice(n, size=batch, replace=False)
        yield idx, rng.uniform(-1, 1, size=(batch, batch))


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9])
def test_ema_matches_plain_loop(decay):
    n = 10
    online, loop = OnlineTrajectory(n, decay), LoopEMA(decay)
    for idx, sim in random_updates(n, 4, 30, seed=1):
        online.update(idx, sim)
        loop.update(idx.tolist(), sim)
    np.testing.assert_allclose(online.scores(), loop.scores(n), atol=1e-6)
    assert online.num_seen() == len(loop.first) < n * n  # some pairs never met: delta 0
    assert online.num_updates == 30


def test_float16_state_is_close_to_the_loop():
    n = 8
    online, loop = OnlineTrajectory(n, 0.5, "float16"), LoopEMA(0.5)
    for idx, sim in random_updates(n, 3, 20, seed=2):
        online.update(idx, sim)
        loop.update(idx.tolist(), sim)
    assert online.ema.dtype == np.float16 and online.scores().dtype == np.float16
    np.testing.assert_allclose(online.scores().astype(np.float64), loop.scores(n), atol=3e-3)


def test_first_value_kept_and_unseen_pairs_zero():
    t = OnlineTrajectory(4, decay=0.5)
    t.update([0, 1], [[1.0, 0.2], [0.4, 1.0]])
    t.update([1, 0], [[1.0, 0.8], [0.0, 1.0]])  # (1, 0) = 0.8, (0, 1) = 0.0
    delta = t.scores()
    assert delta[1, 0] == pytest.approx(0.5 * 0.4 + 0.5 * 0.8 - 0.4)
    assert delta[0, 1] == pytest.approx(0.5 * 0.2 + 0.5 * 0.0 - 0.2)
    assert (delta[2:] == 0).all() and (delta[:, 2:] == 0).all()
    assert t.first[0, 1] == pytest.approx(0.2)


def test_scores_in_permuted_order():
    t = OnlineTrajectory(9, 0.3)
    for idx, sim in random_updates(9, 4, 10, seed=3):
        t.update(idx, sim)
    perm = np.random.default_rng(0).permutation(9)
    np.testing.assert_array_equal(t.scores(order=perm), t.scores()[perm][:, perm])
    with pytest.raises(ValueError, match="permutation"):
        t.scores(order=np.zeros(9, dtype=int))


def test_accepts_torch_tensors():
    a, b = OnlineTrajectory(6), OnlineTrajectory(6)
    sim = torch.rand(3, 3, dtype=torch.bfloat16)
    a.update(torch.tensor([4, 0, 2]), sim)
    b.update(np.array([4, 0, 2]), sim.float().numpy())
    np.testing.assert_array_equal(a.ema, b.ema)


def test_update_errors():
    t = OnlineTrajectory(5)
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        t.update([0, 1], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="twice"):
        t.update([1, 1], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="outside"):
        t.update([0, 5], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        t.update([0, 1], np.array([[0.0, np.nan], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="online_decay"):
        OnlineTrajectory(5, decay=1.0)
    with pytest.raises(ValueError, match="online_dtype"):
        OnlineTrajectory(5, dtype="int8")


def test_state_round_trip_continues_identically():
    updates = list(random_updates(7, 3, 12, seed=4))
    a = OnlineTrajectory(7, 0.7)
    for idx, sim in updates[:6]:
        a.update(idx, sim)
    state = a.state_dict()
    b = OnlineTrajectory(7, 0.7)
    b.load_state_dict(state)
    a.update(*updates[6])  # the saved state is a copy: later updates do not leak into it
    assert not np.array_equal(state["ema"], a.ema)
    b.update(*updates[6])
    for idx, sim in updates[7:]:
        a.update(idx, sim)
        b.update(idx, sim)
    np.testing.assert_array_equal(a.ema, b.ema)
    np.testing.assert_array_equal(a.first, b.first)  # NaN positions included
    assert a.num_updates == b.num_updates == 12
    with pytest.raises(ValueError, match="decay"):
        OnlineTrajectory(7, 0.5).load_state_dict(state)


# --------------------------------------------------------------------------------- sampler
def two_group_trajectory(n=8):
    """Samples 0..3 and 4..7: pulled together within a group (delta > 0), apart across."""
    t = OnlineTrajectory(n, decay=0.0)  # decay 0: ema = the latest value
    group = np.arange(n) // (n // 2)
    same = group[:, None] == group[None, :]
    everyone = np.arange(n)
    t.update(everyone, np.zeros((n, n)))
    t.update(everyone, np.where(same, 0.5, -0.5))
    return t


def test_first_epoch_is_random_then_curriculum():
    t = two_group_trajectory()
    sampler = OnlineCurriculumSampler(t, 4, epochs=3, schedule="hard_only", seed=5)
    assert sampler.global_batches(0) == RandomBatchSampler(8, 4, seed=5).global_batches(0)
    for epoch in (1, 2):  # hard: each batch is one group
        assert sorted(map(set, sampler.global_batches(epoch)), key=min) == [
            {0, 1, 2, 3},
            {4, 5, 6, 7},
        ]
    easy = OnlineCurriculumSampler(t, 2, epochs=3, schedule="easy_only", seed=5)
    for batch in easy.global_batches(1):  # easy: every pair crosses the groups
        assert (batch[0] < 4) != (batch[1] < 4)


def test_curriculum_runs_on_randomly_relabelled_scores():
    t = OnlineTrajectory(12, 0.5)
    for idx, sim in random_updates(12, 4, 9, seed=6):
        t.update(idx, sim)
    sampler = OnlineCurriculumSampler(t, 4, epochs=4, schedule="linear", seed=3)
    rng = epoch_generator(3, 2)
    perm = rng.permutation(12)
    delta = t.scores()[perm][:, perm]
    expected = build_curriculum_batches(delta, 4, sampler.alpha(2), rng)
    assert sampler.global_batches(2) == [[int(perm[i]) for i in b] for b in expected]


def test_nothing_recorded_gives_random_batches_and_warns(caplog):
    sampler = OnlineCurriculumSampler(OnlineTrajectory(10), 3, epochs=3, schedule="log", seed=1)
    with caplog.at_level(logging.WARNING):
        batches = sampler.global_batches(2)
    assert batches == RandomBatchSampler(10, 3, seed=1).global_batches(2)
    assert "nothing recorded" in caplog.text


def simulate(sampler, trajectory, epochs, stop_at=None):
    """A training loop's use of the sampler: update after every global batch. With ``stop_at``
    = (epoch, batch) it returns the sampler state saved just before that batch."""
    seen = []
    epoch, start = sampler.epoch, sampler.start_batch
    while epoch < epochs:
        sampler.set_epoch(epoch, start)
        for k, batch in enumerate(sampler.global_batches(epoch)[start:], start=start):
            if (epoch, k) == stop_at:
                sampler.set_epoch(epoch, k)  # the engine's position at the checkpoint
                return seen, sampler.state_dict()
            seen.append(list(batch))
            idx = np.asarray(batch)
            sim = np.random.default_rng([epoch, k]).uniform(-1, 1, (len(idx), len(idx)))
            trajectory.update(idx, sim)
        epoch, start = epoch + 1, 0
    return seen, None


def test_resume_mid_epoch_reproduces_batches_and_state():
    n, batch, epochs = 14, 4, 4

    def fresh():
        t = OnlineTrajectory(n, 0.5)
        return t, OnlineCurriculumSampler(t, batch, epochs, "linear", seed=2)

    t_full, s_full = fresh()
    full, _ = simulate(s_full, t_full, epochs)
    t_a, s_a = fresh()
    before, state = simulate(s_a, t_a, epochs, stop_at=(2, 2))
    t_b, s_b = fresh()
    s_b.load_state_dict(state)
    after, _ = simulate(s_b, t_b, epochs)
    assert before + after == full
    np.testing.assert_array_equal(t_b.ema, t_full.ema)
    np.testing.assert_array_equal(t_b.first, t_full.first)


def test_ranks_with_the_same_updates_share_batches():
    ranks = []
    for rank in range(2):
        t = two_group_trajectory(10)
        ranks.append(OnlineCurriculumSampler(t, 4, 3, "sqrt", seed=0, rank=rank, world_size=2))
    for sampler in ranks:
        sampler.set_epoch(1)
    assert ranks[0].global_batches(1) == ranks[1].global_batches(1)
    shares = [list(s) for s in ranks]
    assert [a + b for a, b in zip(*shares)] == ranks[0].global_batches(1)


def test_build_batch_sampler_online(tmp_path):
    cfg = SelectionConfig(name="online_trajectory", schedule="sqrt", online_decay=0.8)
    with pytest.raises(ConfigError, match="selection.name.*online_trajectory"):
        build_batch_sampler(cfg, 20, 4, epochs=2, seed=0)
    t = OnlineTrajectory.from_config(cfg, 20)
    assert t.decay == 0.8 and t.ema.dtype == np.float32
    sampler = build_batch_sampler(cfg, 20, 4, epochs=2, seed=0, trajectory=t)
    assert isinstance(sampler, OnlineCurriculumSampler) and sampler.trajectory is t
    with pytest.raises(ValueError, match="20 samples.*21"):
        build_batch_sampler(cfg, 21, 4, epochs=2, seed=0, trajectory=t)
