"""selection.distinct_targets: no two samples with the same target text in one global batch.

Every sampler kind (random, the curriculum strategies, online_trajectory) is checked with a plain
recount on small and adversarial cases (each sample exactly once, no batch with a repeated
group, shards of two ranks), the feasibility rule against an independent max-flow, the random
and curriculum constructions against plain reimplementations of their documented rules, the
infeasible case's message, and that the option off gives exactly the batches of a sampler built
without it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from scl_slt.config import ConfigError, SelectionConfig
from scl_slt.config_checks import validate_train
from scl_slt.data.datasets import build_split
from scl_slt.data.labels import read_labels
from scl_slt.selection.build import build_batch_sampler
from scl_slt.selection.curriculum import CurriculumBatchSampler, build_curriculum_batches
from scl_slt.selection.online import OnlineCurriculumSampler, OnlineTrajectory
from scl_slt.selection.samplers import (
    RandomBatchSampler,
    check_distinct_targets,
    epoch_generator,
    target_groups,
)
from scl_slt.stages import contrastive, run_stage

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


# ----------------------------------------------------------------------- plain references
def recount(batches, groups, n, kept=None):
    """Each sample at most once overall and exactly once when nothing is dropped (``kept``: the
    number of samples the kept batches hold); no batch with a repeated group."""
    seen = Counter(i for batch in batches for i in batch)
    assert all(count == 1 for count in seen.values())
    assert len(seen) == (n if kept is None else kept)
    assert set(seen) <= set(range(n))
    for batch in batches:
        labels = [int(groups[i]) for i in batch]
        assert len(labels) == len(set(labels)), f"batch {batch} repeats a target: {labels}"


def max_flow_feasible(groups, batch_size):
    """Whether samples can be put into ceil(N/B) batches (the last one partial) with no group
    twice in a batch: a group -> batch flow, every edge of capacity 1, found by augmenting paths.
    """
    n = len(groups)
    counts = Counter(int(g) for g in groups)
    sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    used = {}  # (group, batch) -> 1 when a unit flows along the edge
    load = [0] * len(sizes)

    def augment(group, visited):
        for b in range(len(sizes)):
            if (group, b) in used or (group, b) in visited:
                continue
            visited.add((group, b))
            if load[b] < sizes[b]:
                used[group, b] = 1
                load[b] += 1
                return True
            for other in counts:  # move another group's unit out of batch b
                if (other, b) in used and other != group:
                    del used[other, b]
                    if augment(other, visited):
                        used[group, b] = 1
                        return True
                    used[other, b] = 1
        return False

    for group, count in counts.items():
        for _ in range(count):
            if not augment(group, set()):
                return False
    return True


class PlainRule:
    """The allowed / must-take rule of DistinctTargets, restated from its docstring, recounting
    the unused samples of every group at each batch start."""

    def __init__(self, groups, batch_size, unused_samples, batch_number):
        n = len(groups)
        n_batches = -(-n // batch_size)
        self.last = n - (n_batches - 1) * batch_size
        self.left = n_batches - batch_number
        self.size = batch_size if self.left > 1 else self.last
        self.count = Counter(int(groups[i]) for i in unused_samples)
        hist = Counter(self.count.values())
        self.full = {g for g, c in self.count.items() if c == self.left}
        self.next = (
            {g for g, c in self.count.items() if c == self.left - 1} if self.left > 1 else set()
        )
        self.q = max(0, hist[self.left] + hist[self.left - 1] - self.last) if self.left > 1 else 0
        self.groups, self.taken = groups, []

    def allowed(self, sample):
        group = int(self.groups[sample])
        if group in self.taken:
            return False
        missing_full = self.full - set(self.taken)
        missing_next = max(0, self.q - len(self.next & set(self.taken)))
        if self.size - len(self.taken) > len(missing_full) + missing_next:
            return True
        return group in missing_full or (missing_next > 0 and group in self.next)


def plain_random(order, batch_size, groups):
    """Read the permutation front to back; a sample joins the current batch when the rule
    allows it, otherwise it stays in the queue (in its place) for the next batch."""
    queue, batches = list(order), []
    while queue:
        rule = PlainRule(groups, batch_size, queue, len(batches))
        batch = []
        for sample in list(queue):
            if len(batch) < rule.size and rule.allowed(sample):
                batch.append(sample)
                rule.taken.append(int(groups[sample]))
        queue = [s for s in queue if s not in batch]
        batches.append(batch)
    return batches


def plain_curriculum(scores, batch_size, alpha, rng, groups):
    """The documented curriculum, recomputing Δ from scratch, among the allowed candidates only:
    seed uniform among the allowed (ascending index), then the (Δ, index) quantile pick."""
    scores = np.asarray(scores, dtype=np.float64)
    unused, batches = list(range(len(scores))), []
    while unused:
        rule = PlainRule(groups, batch_size, unused, len(batches))
        ok = [u for u in unused if rule.allowed(u)]
        batch = [ok[int(rng.integers(len(ok)))]]
        while True:
            rule.taken.append(int(groups[batch[-1]]))
            unused.remove(batch[-1])
            if len(batch) == rule.size:
                break
            ok = [u for u in unused if rule.allowed(u)]
            delta = {u: sum(scores[u, c] + scores[c, u] for c in batch) for u in ok}
            ranked = sorted(ok, key=lambda u: (delta[u], u))
            batch.append(ranked[int(alpha * (len(ranked) - 1))])
        batches.append(batch)
    return batches


# ------------------------------------------------------------------------------- cases
def groups_of(counts):
    """Group ids with the given sizes, interleaved by a fixed shuffle."""
    ids = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(len(ids)).permutation(ids)


CASES = {  # name -> (group sizes, batch size)
    "one_sentence_in_every_batch": ([5] + [1] * 15, 4),  # 20 samples, 5 batches
    "many_duplicates": ([3] * 10 + [2] * 6 + [1] * 3, 5),  # 45 samples, 9 batches
    "partial_last_batch_full": ([4, 4, 1, 1, 1, 1, 1], 4),  # 13: 2 groups need the last of 1
    "partial_last_batch": ([4, 3, 3, 1, 1, 1], 4),  # 13 samples: 4 batches, the last of 1
    "tight_last_two": ([2, 2, 1, 1, 1, 1, 1], 4),  # 9 samples: 3 batches, the last of 1
    "all_distinct": ([1] * 23, 4),
}
FEASIBLE = [name for name in CASES if name != "partial_last_batch_full"]


def scores_for(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, n)).astype(np.float16)


def make(kind, groups, batch_size, seed=0, rank=0, world_size=1, drop_last=False, **kw):
    n = len(groups)
    common = dict(rank=rank, world_size=world_size, drop_last=drop_last, target_groups=groups)
    if kind == "random":
        return RandomBatchSampler(n, batch_size, seed, **common)
    if kind == "online_trajectory":
        trajectory = OnlineTrajectory(n)
        for step in range(3):  # something recorded, so epochs >= 1 are curricula
            rng = np.random.default_rng(step)
            idx = rng.choice(n, size=min(n, 4), replace=False)
            trajectory.update(idx, rng.uniform(-1, 1, (idx.size, idx.size)))
        return OnlineCurriculumSampler(trajectory, batch_size, 3, "log", seed, **common)
    return CurriculumBatchSampler(scores_for(n), batch_size, 3, kind, seed, **common, **kw)


KINDS = ["random", "linear", "easy_only", "hard_only", "online_trajectory"]


# ------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("case", FEASIBLE)
@pytest.mark.parametrize("kind", KINDS)
def test_every_sample_once_and_no_repeated_target(kind, case):
    sizes, batch_size = CASES[case]
    groups = groups_of(sizes)
    sampler = make(kind, groups, batch_size, seed=3)
    for epoch in range(3):
        batches = sampler.global_batches(epoch)
        assert len(batches) == -(-len(groups) // batch_size)
        recount(batches, groups, len(groups))
        again = make(kind, groups, batch_size, seed=3).global_batches(epoch)
        assert batches == again  # deterministic from (seed, epoch)


@pytest.mark.parametrize("kind", ["random", "linear", "online_trajectory"])
def test_pool_and_two_rank_shares(kind):
    groups = groups_of(CASES["many_duplicates"][0])
    ranks = [make(kind, groups, 5, seed=1, rank=r, world_size=2) for r in range(2)]
    for epoch in range(3):
        for sampler in ranks:
            sampler.set_epoch(epoch)
        shares = [list(sampler) for sampler in ranks]
        global_batches = ranks[0].global_batches(epoch)
        assert global_batches == ranks[1].global_batches(epoch)
        assert [a + b for a, b in zip(*shares)] == global_batches
        recount(global_batches, groups, len(groups))
    pooled = CurriculumBatchSampler(
        scores_for(len(groups)), 5, 3, "log", 1, pool_size=3, target_groups=groups
    )
    for epoch in range(3):
        recount(pooled.global_batches(epoch), groups, len(groups))


@pytest.mark.parametrize("kind", ["random", "hard_only"])
def test_drop_rules_drop_the_distinct_final_batch(kind):
    sizes, batch_size = CASES["partial_last_batch"]  # 13 samples: 3 full batches and 1
    groups = groups_of(sizes)
    kept = make(kind, groups, batch_size, seed=2, drop_last=True).global_batches(0)
    whole = make(kind, groups, batch_size, seed=2).global_batches(0)
    assert kept == whole[:3] and len(whole[3]) == 1
    recount(kept, groups, len(groups), kept=12)
    # 2 ranks: the final batch of 1 sample is dropped for the ranks, like without the option
    ranked = make(kind, groups, batch_size, seed=2, world_size=2).global_batches(0)
    assert ranked == whole[:3]


def test_random_matches_plain_reading_of_the_permutation():
    for case in FEASIBLE:
        sizes, batch_size = CASES[case]
        groups = groups_of(sizes)
        for seed in range(4):
            order = epoch_generator(seed, 1).permutation(len(groups))
            got = RandomBatchSampler(len(groups), batch_size, seed, target_groups=groups)
            assert got.global_batches(1) == plain_random(order.tolist(), batch_size, groups), case


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_curriculum_matches_plain_constrained_greedy(alpha):
    for case in FEASIBLE:
        sizes, batch_size = CASES[case]
        groups = groups_of(sizes)
        scores = scores_for(len(groups), seed=5)
        got = build_curriculum_batches(
            scores, batch_size, alpha, epoch_generator(7, 0), None, groups
        )
        want = plain_curriculum(scores, batch_size, alpha, epoch_generator(7, 0), groups)
        assert got == want, case


def test_feasibility_rule_matches_max_flow_and_samplers_never_dead_end():
    rng = np.random.default_rng(0)
    feasible_seen = infeasible_seen = 0
    for trial in range(150):
        n, batch_size = int(rng.integers(2, 16)), int(rng.integers(1, 5))
        groups = rng.integers(0, int(rng.integers(1, n + 1)), n)
        expected = max_flow_feasible(groups, batch_size)
        try:
            check_distinct_targets(groups, batch_size)
            ok = True
        except ConfigError:
            ok = False
        assert ok == expected, (groups.tolist(), batch_size)
        if not ok:
            infeasible_seen += 1
            continue
        feasible_seen += 1
        for kind in ("random", "linear", "online_trajectory"):
            sampler = make(kind, groups, batch_size, seed=trial)
            for epoch in range(2):
                recount(sampler.global_batches(epoch), groups, n)
    assert feasible_seen > 30 and infeasible_seen > 10  # both branches exercised


def texts_for(counts, long=False):
    stem = "und nun die wettervorhersage für morgen, den zweiten dezember " if long else "satz "
    return [f"{stem}{g}" for g in groups_of(counts)]


@pytest.mark.parametrize("name", ["random", "trajectory", "online_trajectory"])
def test_infeasible_raises_naming_the_sentence(tmp_path, name):
    texts = texts_for([6] + [1] * 14, long=True)  # 20 samples in 5 batches of 4: 6 > 5
    path = tmp_path / "s.npy"
    np.save(path, scores_for(len(texts)))
    extra = {"trajectory": OnlineTrajectory(len(texts))} if name == "online_trajectory" else {}
    cfg = SelectionConfig(name=name, distinct_targets=True, pair_scores=str(path))
    with pytest.raises(ConfigError, match=r"selection\.distinct_targets") as info:
        build_batch_sampler(cfg, len(texts), 4, epochs=2, seed=0, texts=texts, **extra)
    message = str(info.value)
    assert "'und nun die wettervorhersage für morgen, den zweiten deze..." in message
    assert "6 samples" in message and "only 5 batches" in message
    # the partial final batch: two sentences need every one of 4 batches, the last holds 1
    texts = [f"s{g}" for g in groups_of(CASES["partial_last_batch_full"][0])]
    with pytest.raises(ConfigError, match=r"2 target sentences have 4 samples.*'s[01]'.*only 1"):
        build_batch_sampler(SelectionConfig(distinct_targets=True), 13, 4, 1, 0, texts=texts)
    with pytest.raises(ConfigError, match="needs the train texts"):
        build_batch_sampler(SelectionConfig(distinct_targets=True), 13, 4, 1, 0)


def test_option_off_gives_todays_batches(tmp_path):
    texts = texts_for(CASES["many_duplicates"][0])
    n = len(texts)
    for distinct in (False, True):
        cfg = SelectionConfig(name="random", distinct_targets=distinct)
        sampler = build_batch_sampler(cfg, n, 5, epochs=2, seed=4, texts=texts)
        plain = RandomBatchSampler(n, 5, 4)
        same = [sampler.global_batches(e) == plain.global_batches(e) for e in range(2)]
        assert same == [not distinct] * 2  # the duplicates make the option change batches
    path = tmp_path / "s.npy"
    np.save(path, scores_for(n))
    cfg = SelectionConfig(name="trajectory", pair_scores=str(path), schedule="linear")
    sampler = build_batch_sampler(cfg, n, 5, epochs=3, seed=4, texts=texts)
    plain = CurriculumBatchSampler(np.load(path), 5, 3, "linear", 4)
    assert all(sampler.global_batches(e) == plain.global_batches(e) for e in range(3))
    trajectory = OnlineTrajectory(n)
    trajectory.update(np.arange(4), np.eye(4))
    cfg = SelectionConfig(name="online_trajectory")
    sampler = build_batch_sampler(cfg, n, 5, 3, 4, texts=texts, trajectory=trajectory)
    plain = OnlineCurriculumSampler(trajectory, 5, 3, "log", 4)
    assert all(sampler.global_batches(e) == plain.global_batches(e) for e in range(3))


@pytest.mark.parametrize("kind", KINDS)
def test_distinct_texts_leave_batches_unchanged(kind):
    groups = np.arange(23)  # no duplicates: the option changes nothing
    with_option = make(kind, groups, 4, seed=6)
    without = make(kind, groups, 4, seed=6)
    without.target_groups = None  # as if built without the option (same scores, trajectory)
    for epoch in range(3):
        assert with_option.global_batches(epoch) == without.global_batches(epoch)


def test_text_semantic_with_distinct_targets(tmp_path):
    texts = texts_for([3, 3, 2, 2, 1, 1])  # 12 samples, 3 batches of 4
    cfg = SelectionConfig(name="text_semantic", schedule="hard_only", distinct_targets=True)
    sampler = build_batch_sampler(cfg, 12, 4, 2, 0, texts=texts, language="de", run_dir=tmp_path)
    groups = target_groups(texts)
    for epoch in range(2):
        recount(sampler.global_batches(epoch), groups, 12)


def test_resume_refuses_another_distinct_setting_and_resumes_mid_epoch():
    groups = groups_of(CASES["many_duplicates"][0])
    sampler = make("random", groups, 5, seed=1)
    sampler.set_epoch(2, start_batch=3)
    state = sampler.state_dict()
    assert state["distinct_targets"] is True
    with pytest.raises(ValueError, match="distinct_targets"):
        RandomBatchSampler(len(groups), 5, 1).load_state_dict(state)
    resumed = make("random", groups, 5, seed=1)
    resumed.load_state_dict(state)
    assert list(resumed) == sampler.global_batches(2)[3:]


def test_target_groups_are_exact_string_equality():
    assert target_groups(["a b", "a b", "A b", "a  b", "a b "]).tolist() == [0, 0, 1, 2, 3]
    with pytest.raises(ValueError, match="target_groups"):
        RandomBatchSampler(4, 2, 0, target_groups=np.zeros(3, dtype=np.int64))


@pytest.mark.parametrize("dataset", ["csl_daily", "phoenix14t"])
def test_real_texts_batch_16(dataset):
    path = SHARED / dataset / "labels.train"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    texts = [record["text"] for record in read_labels(path).values()]
    groups = target_groups(texts)
    assert np.bincount(groups).max() > 1  # the real data has duplicate sentences
    sampler = build_batch_sampler(
        SelectionConfig(distinct_targets=True), len(texts), 16, 1, 0, texts=texts
    )
    recount(sampler.global_batches(0), groups, len(texts))


# ------------------------------------------------------------------------------ the engine
def test_stages_train_on_distinct_target_batches(tiny_train_cfg, monkeypatch):
    """Stage 1 trains on exactly the batches of an independently built sampler, none with a
    repeated text; stage 2 (random batches, texts passed too) builds with the option."""
    data = [
        "data.synthetic.duplicate_rate=0.6",
        "stage.eval_every=0",
        "selection.distinct_targets=true",
    ]
    cfg = validate_train(tiny_train_cfg(*data))
    train = build_split(cfg.data, "train")
    assert np.bincount(target_groups(train.texts)).max() > 1  # duplicates to keep apart
    recorded: list[list[int]] = []
    original = contrastive.compute_losses

    def record(model, batch, cfg, runtime):
        recorded.append(batch["indices"].tolist())
        assert len(set(batch["texts"])) == len(batch["texts"])
        return original(model, batch, cfg, runtime)

    monkeypatch.setattr(contrastive, "compute_losses", record)
    run_stage(cfg)
    sampler = build_batch_sampler(cfg.selection, len(train), 8, 2, cfg.seed, texts=train.texts)
    assert recorded == sampler.global_batches(0) + sampler.global_batches(1)
    assert sampler.global_batches(0) != RandomBatchSampler(len(train), 8, cfg.seed).global_batches(
        0
    )
    stage2 = tiny_train_cfg(
        *data,
        "stage=translate",
        "stage.max_steps=1",
        "run_dir=" + str(Path(cfg.run_dir).parent / "stage2"),
    )
    assert Path(run_stage(validate_train(stage2))["run_dir"]).is_dir()
