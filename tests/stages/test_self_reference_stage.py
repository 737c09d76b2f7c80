"""Stage 1 with ``selection=self_trajectory``: the run snapshots and scores itself, trains on the
curriculum over its own δ, logs the time it spent doing so, resumes exactly (also when a δ file
went missing), and two gloo ranks build the same batches from the δ one rank wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import (
    TINY_OVERRIDES,
    assert_same_final_weights,
    compose_train,
    free_port,
    interrupted_and_resumed,
    join_gloo,
)

from scl_slt.config import ConfigError
from scl_slt.config_checks import validate_train
from scl_slt.data.datasets import build_split
from scl_slt.rundir.layout import read_metrics
from scl_slt.selection import self_reference
from scl_slt.selection.curriculum import CurriculumBatchSampler
from scl_slt.selection.samplers import RandomBatchSampler
from scl_slt.selection.self_reference import SelfReference
from scl_slt.stages import contrastive, run_stage

N_TRAIN, BATCH, SEED, EPOCHS = 24, 8, 0, 3
SELF = ["selection=self_trajectory", "tracker.interval=1", f"stage.epochs={EPOCHS}",
        "stage.eval_every=0", "model.dropout=0.0"]  # fmt: skip


@pytest.fixture
def make_cfg(tiny_train_cfg):
    return lambda *extra: tiny_train_cfg(*SELF, *extra)


def _delta(run_dir: Path, k: int) -> np.ndarray:
    """δ of the run's snapshot k (rescored from the snapshot when a newer one replaced it)."""
    ref = SelfReference(run_dir, N_TRAIN, 1, EPOCHS, "cico", 0.07, "cpu")
    ref.ensure(k)
    return np.load(ref.delta_path(k))


def _expected_batches(run_dir: Path, epoch: int) -> list[list[int]]:
    """Epoch ``epoch``'s global batches from the plain samplers: shuffled for epoch 0, else the
    curriculum over the δ of the snapshot after ``epoch`` completed epochs."""
    if epoch == 0:
        return RandomBatchSampler(N_TRAIN, BATCH, SEED).global_batches(0)
    delta = _delta(run_dir, epoch)
    return CurriculumBatchSampler(delta, BATCH, EPOCHS, "log", SEED).global_batches(epoch)


def test_trains_on_the_curriculum_over_its_own_snapshots(make_cfg, recorded):
    result = run_stage(make_cfg())
    run_dir = Path(result["run_dir"])
    kept = sorted(p.name for p in (run_dir / "self_scores").glob("*.npy"))
    assert kept == ["S-epoch-0000.npy", "delta-epoch-0002.npy"]  # S^0 and the newest δ only
    trained = [recorded[i : i + 3] for i in range(0, len(recorded), 3)]
    assert len(trained) == EPOCHS
    for epoch in range(EPOCHS):
        assert trained[epoch] == _expected_batches(run_dir, epoch), epoch
    assert trained[1] != RandomBatchSampler(N_TRAIN, BATCH, SEED).global_batches(1)
    # Snapshots before epochs 0, 1, 2 only (none after the last: no epoch would use it).
    assert sorted(p.name for p in (run_dir / "snapshots").iterdir()) == [
        "epoch-0000", "epoch-0001", "epoch-0002",
    ]  # fmt: skip
    assert not np.array_equal(_delta(run_dir, 1), _delta(run_dir, 2))  # the newest trajectory
    records = read_metrics(run_dir, "self_reference")
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert all(r["snapshot_s"] >= 0 for r in records)
    assert "score_s" not in records[0] and all(r["score_s"] >= 0 for r in records[1:])
    assert not (run_dir.parent / "1-reference").exists()


def test_resumes_exactly_even_without_its_latest_delta(make_cfg, tmp_path, monkeypatch):
    def drop_delta(stopped: Path) -> None:  # the δ epoch 2 needs: rescored from its snapshot
        for suffix in (".npy", ".json"):
            (stopped / "self_scores" / f"delta-epoch-0002{suffix}").unlink()

    # stopped during forward 8: epoch 2 (0-based), its second batch, curriculum over δ^2
    straight, resumed = interrupted_and_resumed(
        make_cfg, tmp_path, monkeypatch, contrastive, 8, before_resume=drop_delta
    )
    assert_same_final_weights(straight, resumed)
    losses = [[r["loss"] for r in read_metrics(x["run_dir"], "train")] for x in (straight, resumed)]
    assert losses[0] == losses[1] and len(losses[0]) == 9


def test_an_interval_without_a_later_epoch_is_refused_naming_the_key(make_cfg):
    with pytest.raises(ConfigError, match=r"^tracker.interval: .*< stage.epochs=3, got 3"):
        validate_train(make_cfg("tracker.interval=3"))


# ------------------------------------------------------------------------ two gloo ranks
def _worker(rank: int, port: int, root: str, cache: str) -> None:
    join_gloo(rank, port)
    seen: dict[str, list] = {"batches": [], "scored": []}
    original_forward, original_write = contrastive.compute_losses, self_reference.SelfReference._write_delta  # fmt: skip

    def record(model, batch, cfg, runtime):
        seen["batches"].append(batch["indices"].tolist())
        return original_forward(model, batch, cfg, runtime)

    def write(self, k):
        seen["scored"].append(k)
        return original_write(self, k)

    contrastive.compute_losses = record
    self_reference.SelfReference._write_delta = write
    overrides = [*TINY_OVERRIDES, *SELF, f"data.synthetic.cache_dir={cache}", f"run_dir={root}/run"]
    run_stage(compose_train(overrides))
    (Path(root) / f"rank{rank}.json").write_text(json.dumps(seen))
    torch.distributed.destroy_process_group()


def test_two_ranks_share_the_delta_one_rank_wrote(tmp_path, synthetic_cache):
    data = validate_train(compose_train([*TINY_OVERRIDES, f"data.synthetic.cache_dir={synthetic_cache}"])).data  # fmt: skip
    build_split(data, "train")  # generate the synthetic data once, before the processes start
    port = free_port()
    mp.spawn(_worker, args=(port, str(tmp_path), str(synthetic_cache)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["scored"] == [1, 2] and ranks[1]["scored"] == []  # rank 0 scores alone
    shares = [r["batches"] for r in ranks]
    assert len(shares[0]) == len(shares[1]) == 3 * EPOCHS
    run_dir = tmp_path / "run"
    for epoch in range(EPOCHS):
        expected = _expected_batches(run_dir, epoch)
        for b in range(3):
            r0, r1 = shares[0][3 * epoch + b], shares[1][3 * epoch + b]
            assert set(r0).isdisjoint(r1) and r0 + r1 == expected[b], (epoch, b)
