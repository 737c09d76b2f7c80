"""``data.on_bad_sample`` through the training loops: skip mode trains and counts per epoch,
error mode stops naming the sample and its path, a batch that collated to None is skipped on
every rank together (also under DDP with gradient accumulation), and the tracker refuses to
snapshot without every sample. Every test corrupts a private copy of the synthetic data."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TINY_OVERRIDES, compose_train, free_port
from torch import nn

from scl_slt.config import BadSample
from scl_slt.config_checks import validate_train
from scl_slt.data.datasets import build_split
from scl_slt.data.labels import DataError
from scl_slt.data.synthetic.generate import ensure_synthetic
from scl_slt.rundir.checkpoint import load_weights
from scl_slt.rundir.layout import read_metrics
from scl_slt.selection.samplers import RandomBatchSampler
from scl_slt.stages import contrastive, run_stage
from scl_slt.training import loop as training_loop
from scl_slt.training.runtime import Runtime
from scl_slt.training.windows import BadBatchRule, complete_window

SEED = 0  # configs/train.yaml's seed: the random sampler's batches follow from it


def _private_data(shared_cache: Path, target: Path) -> list[str]:
    """Copy the shared synthetic data under ``target``; tiny overrides that read the copy."""
    shared = validate_train(
        compose_train([*TINY_OVERRIDES, f"data.synthetic.cache_dir={shared_cache}"])
    )
    root = ensure_synthetic(shared.data.synthetic, shared.data.modality)
    shutil.copytree(root, target / root.name)
    return [*TINY_OVERRIDES, f"data.synthetic.cache_dir={target}"]


@pytest.fixture
def private(synthetic_cache, tmp_path):
    """(overrides, data config, feature file of a split's sample) on a private data copy."""
    overrides = _private_data(synthetic_cache, tmp_path / "data")
    data = validate_train(compose_train(overrides)).data

    def feature_file(split: str, index: int) -> tuple[str, Path]:
        dataset = build_split(data, split)
        name = dataset.records[index]["name"]
        return name, dataset.source.path(name)

    return overrides, feature_file


def _run(overrides: list[str], tmp_path: Path, *extra: str) -> dict:
    return run_stage(compose_train([*overrides, f"run_dir={tmp_path / 'run'}", *extra]))


# ---------------------------------------------------------------------- skip and error modes
@pytest.mark.parametrize("stage", ["contrastive", "translate"])
def test_skip_mode_trains_and_counts_one_bad_sample_per_epoch(stage, private, tmp_path, caplog):
    overrides, feature_file = private
    _, missing = feature_file("train", 5)
    missing.unlink()
    _, corrupt = feature_file("dev", 2)
    corrupt.write_bytes(b"not a numpy file")
    caplog.set_level(logging.INFO, logger="scl_slt")
    result = _run(overrides, tmp_path, f"stage={stage}", "data.on_bad_sample=skip")

    assert result["steps"] == 6  # 2 epochs x 3 batches: the bad sample only shrinks a batch
    epochs = read_metrics(result["run_dir"], "train_epoch")
    assert [r["bad_samples"] for r in epochs] == [1, 1]
    assert [r["skipped_batches"] for r in epochs] == [0, 0]
    assert caplog.text.count("1 bad sample(s) skipped") == 2
    dev = read_metrics(result["run_dir"], "dev")
    assert [r["skipped_samples"] for r in dev] == [1, 1]  # 5 of 6 dev samples translated
    assert all(0 <= r["bleu4"] <= 100 for r in dev)
    if stage == "contrastive":  # retrieval runs with each dev evaluation by default
        assert [r["retrieval_samples"] for r in dev] == [5, 5]
    weights = load_weights(result["last_checkpoint"])
    assert all(bool(torch.isfinite(t).all()) for t in weights.values() if t.is_floating_point())


def test_error_mode_stops_naming_the_sample_and_its_path(private, tmp_path):
    overrides, feature_file = private
    name, path = feature_file("train", 7)
    path.unlink()
    with pytest.raises(DataError) as err:
        _run(overrides, tmp_path, "stage.eval_every=0")  # data.on_bad_sample=error by default
    message = str(err.value)  # the start-up scan's, before the run directory exists
    assert f"{name}  {path}  missing" in message and not (tmp_path / "run").exists()


def test_a_feature_file_of_the_wrong_width_is_skipped_or_named(private, tmp_path):
    """A valid .npy of the wrong width (26, 32) where 16 is expected. Before: in both modes the
    first epoch died in the collator with "could not broadcast input array from shape (26,32)
    into shape (26,16)", naming no file. Now skip mode trains without it, error mode names it."""
    overrides, feature_file = private
    name, path = feature_file("train", 5)
    np.save(path, np.zeros((26, 32), dtype=np.float32))
    result = _run(overrides, tmp_path, "data.on_bad_sample=skip", "stage.eval_every=0")
    assert result["steps"] == 6
    epochs = read_metrics(result["run_dir"], "train_epoch")
    assert [r["bad_samples"] for r in epochs] == [1, 1]
    with pytest.raises(DataError) as err:  # named by the start-up scan, before any training
        _run(overrides, tmp_path / "error", "stage.eval_every=0")
    assert f"{name}  {path}  bad: shape (26, 32), expected (T, 16)" in str(err.value)
    assert not (tmp_path / "error" / "run").exists()


def test_tracker_needs_every_sample_even_in_skip_mode(private, tmp_path):
    overrides, feature_file = private
    name, path = feature_file("train", 3)
    path.write_bytes(b"\x93NUMPY broken")
    with pytest.raises(DataError) as err:
        _run(overrides, tmp_path, "data.on_bad_sample=skip", "tracker.enabled=true")
    assert repr(name) in str(err.value) and str(path) in str(err.value)


def test_a_batch_with_no_loadable_sample_is_skipped_without_an_update(
    private, tmp_path, monkeypatch
):
    """Global batch 1 of epoch 0 loses every sample: with grad_accum=2 the window [0, 1] trains
    on batch 0 alone (the missing backward would have been the window's last)."""
    overrides, feature_file = private
    lost = RandomBatchSampler(24, 8, SEED).global_batches(0)[1]
    for index in lost:
        feature_file("train", index)[1].unlink()
    forwards: list[list[int]] = []
    original = contrastive.compute_losses

    def record(model, batch, cfg, runtime):
        forwards.append(batch["indices"].tolist())
        return original(model, batch, cfg, runtime)

    monkeypatch.setattr(contrastive, "compute_losses", record)
    result = _run(
        overrides, tmp_path, "data.on_bad_sample=skip", "stage.grad_accum=2", "stage.eval_every=0"
    )
    assert result["steps"] == 4  # windows [0, 1] and [2] in each of 2 epochs
    assert len(forwards) == 5  # 6 batches, one of which had nothing to train on
    assert not set(lost) & {i for batch in forwards for i in batch}
    epochs = read_metrics(result["run_dir"], "train_epoch")
    assert [r["bad_samples"] for r in epochs] == [8, 8]
    assert [r["skipped_batches"] for r in epochs] == [1, 0]


# ------------------------------------------------------------- windows.py against references
def _runtime(world: int = 1, rank: int = 0) -> Runtime:
    return Runtime(device=torch.device("cpu"), dtype=None, rank=rank, world_size=world)


def test_window_gradient_is_the_mean_over_trained_micro_batches():
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    x = [torch.randn(4, 3) for _ in range(3)]
    window_size = 3
    for trained in ([0], [0, 2], [0, 1, 2]):
        net.zero_grad()
        for k in trained:  # the engine scales every backward by 1 / window_size
            (net(x[k]).pow(2).mean() / window_size).backward()
        complete_window(list(net.parameters()), len(trained), window_size, True, _runtime())
        expected = [torch.zeros_like(p) for p in net.parameters()]
        for k in trained:  # naive: the mean over the trained micro-batches' gradients
            grads = torch.autograd.grad(net(x[k]).pow(2).mean(), list(net.parameters()))
            expected = [e + g / len(trained) for e, g in zip(expected, grads)]
        for p, e in zip(net.parameters(), expected):
            torch.testing.assert_close(p.grad, e)
    with pytest.raises(ValueError, match="0 trained"):
        complete_window(list(net.parameters()), 0, 2, True, _runtime())


def test_bad_batch_rule_in_error_mode_needs_no_collective():
    rule = BadBatchRule(BadSample.error, _runtime(world=2))  # would hang if it all-reduced
    assert rule.skip({"names": ["a"]}) is False
    with pytest.raises(RuntimeError, match="on_bad_sample=error"):
        rule.skip(None)
    assert BadBatchRule("skip", _runtime()).skip(None) is True


# ------------------------------------------------------------------ the real loop under DDP
def _ddp_worker(rank: int, port: int, overrides: list[str], out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
        LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    forwards: list[list[int]] = []
    original_losses, original_save = contrastive.compute_losses, training_loop.save_resumable

    def record(model, batch, cfg, runtime):
        forwards.append(batch["indices"].tolist())
        return original_losses(model, batch, cfg, runtime)

    def dump(manager, step, model, state, meta):
        # Parameters only: BatchNorm running statistics are per rank by design.
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        trajectory = state["sampler"]["trajectory"]
        saved = {"params": params, **{k: torch.from_numpy(trajectory[k]) for k in ("ema", "first")}}
        torch.save(saved, Path(out, f"step{step}-rank{rank}.pt"))
        return original_save(manager, step, model, state, meta)

    contrastive.compute_losses, training_loop.save_resumable = record, dump
    result = run_stage(compose_train(overrides))
    Path(out, f"rank{rank}.json").write_text(json.dumps({"forwards": forwards, **result}))
    dist.destroy_process_group()


def test_ddp_ranks_skip_together_and_stay_identical(private, tmp_path):
    """Rank 1's share of global batch 1 is all bad, rank 0's is fine: both skip batch 1, the
    contrastive gather never waits for a missing rank, and the weights stay identical although
    the skipped batch was the last of its window (the one whose backward would have all-reduced
    the gradients accumulated under no_sync: ``complete_window`` averages them instead).

    With ``selection=online_trajectory`` both ranks also record the same similarities (batches
    that lost samples included), so they build the same curriculum for the second epoch."""
    overrides, feature_file = private
    global_batches = RandomBatchSampler(24, 8, SEED).global_batches(0)  # online: shuffled epoch 0

    def share_of(batch: list[int], rank: int) -> list[int]:
        return RandomBatchSampler(24, 8, SEED, rank=rank, world_size=2).shard(batch)

    share = share_of(global_batches[1], 1)
    for index in share:
        feature_file("train", index)[1].unlink()
    run_overrides = [
        *overrides,
        f"run_dir={tmp_path / 'run'}",
        "data.on_bad_sample=skip",
        "selection=online_trajectory",
        "stage.epochs=2",
        "stage.grad_accum=2",
        "stage.eval_every=0",
    ]
    mp.spawn(_ddp_worker, args=(free_port(), run_overrides, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 4
    first_epoch = [r["forwards"][:2] for r in ranks]  # batches 0 and 2; 1 skipped by both
    assert first_epoch[0] == [share_of(global_batches[k], 0) for k in (0, 2)]
    assert len(first_epoch[1]) == 2 and not set(share) & set(sum(ranks[1]["forwards"][:2], []))
    second = [r["forwards"][2:] for r in ranks]
    assert len(second[0]) == len(second[1])  # the same number of forwards: ranks in step
    for a, b in zip(*second):
        assert not set(a) & set(b)  # disjoint shares of one global batch
    for step in (2, 4):  # DDP never re-synchronises weights: a divergence would persist
        states = [torch.load(tmp_path / f"step{step}-rank{r}.pt") for r in range(2)]
        params = [s["params"] for s in states]
        assert all(torch.equal(params[0][k], params[1][k]) for k in params[0]), f"step {step}"
        for key in ("ema", "first"):
            torch.testing.assert_close(
                states[0][key], states[1][key], rtol=0, atol=0, equal_nan=True
            )
    assert int((~states[0]["first"].isnan()).sum()) > 0
    epochs = read_metrics(ranks[0]["run_dir"], "train_epoch")
    assert [r["bad_samples"] for r in epochs] == [len(share), len(share)]
    assert epochs[0]["skipped_batches"] == 1
