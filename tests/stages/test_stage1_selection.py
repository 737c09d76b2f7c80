"""Stage 1 with every pair-selection strategy, and the alignment metrics it logs.

The engine must hand each strategy its inputs (train texts and language, a snapshot, an online
trajectory it updates after every step): the batches it trains on are compared with the ones an
independently built sampler gives, and with shuffled ones. Retrieval and SDR in ``metrics.jsonl``
are checked against a naive computation, and ``python -m scl_slt.evaluate`` prints them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, assert_same_final_weights, interrupted_and_resumed

from scl_slt.config import ConfigError
from scl_slt.config_checks import validate_train
from scl_slt.data.batching import Collator
from scl_slt.data.datasets import build_split
from scl_slt.eval.density import sign_density_ratio
from scl_slt.models import builder
from scl_slt.models.handoff import has_text_branch, load_trained_model
from scl_slt.models.similarity import pairwise_similarity
from scl_slt.models.tokenizer import SLTTokenizer
from scl_slt.rundir.checkpoint import load_train_state, load_weights
from scl_slt.rundir.layout import read_metrics
from scl_slt.selection.build import build_batch_sampler
from scl_slt.selection.online import OnlineCurriculumSampler, OnlineTrajectory
from scl_slt.selection.samplers import RandomBatchSampler
from scl_slt.stages import contrastive, run_stage
from scl_slt.training.runtime import seed_everything

N_TRAIN, BATCH, SEED = 24, 8, 0
# A larger dev split than the tiny default, so that glosses repeat (SDR) and R@10 < 100 %.
DATA = ["data.synthetic.num_dev=16", "model.dropout=0.0", "stage.eval_every=0"]


@pytest.fixture
def make_cfg(tiny_train_cfg):
    return lambda *extra: tiny_train_cfg(*DATA, *extra)


def _epochs(batches: list[list[int]], per_epoch: int = 3) -> list[list[list[int]]]:
    return [batches[i : i + per_epoch] for i in range(0, len(batches), per_epoch)]


def _random(epoch: int) -> list[list[int]]:
    return RandomBatchSampler(N_TRAIN, BATCH, SEED).global_batches(epoch)


def _write_snapshot(folder: Path, names: list[str], texts: list[str]) -> Path:
    """A snapshot in the tracker's format: one visual token per sample, in four tight clusters
    (visually confusable groups), one text token each."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(4, 6))
    video = centres[np.arange(len(names)) % 4] + 0.05 * rng.normal(size=(len(names), 6))
    path = folder / "snapshots" / "epoch-0002"
    path.mkdir(parents=True)
    ones = np.ones(len(names), dtype=np.int64)
    for side, features in (("video", video), ("text", rng.normal(size=(len(names), 6)))):
        np.save(path / f"{side}_features.npy", features.astype(np.float16))
        np.save(path / f"{side}_lengths.npy", ones)
    (path / "samples.json").write_text(json.dumps({"names": names, "texts": texts}))
    meta = {"epoch": 2, "num_samples": len(names), "fingerprint": {}, "created": "test"}
    (path / "meta.json").write_text(json.dumps(meta))
    (path / "COMPLETE").write_text("ok\n")
    return path


# ------------------------------------------------------------------- curriculum strategies
@pytest.mark.parametrize("strategy", ["text_semantic", "visual_curriculum"])
def test_strategy_batches_are_the_strategys_curriculum(strategy, make_cfg, recorded, tmp_path):
    train = build_split(validate_train(make_cfg()).data, "train")
    extra = [f"selection={strategy}"]
    if strategy == "visual_curriculum":
        snapshot = _write_snapshot(tmp_path / "reference", train.names, train.texts)
        extra.append(f"selection.snapshot={snapshot}")
    cfg = validate_train(make_cfg(*extra))
    result = run_stage(cfg)
    assert (Path(result["run_dir"]) / "selection" / f"{strategy}.npy").is_file()

    expected = build_batch_sampler(
        cfg.selection, N_TRAIN, BATCH, 2, SEED, texts=train.texts, names=train.names,
        language="de", run_dir=tmp_path / "independent",
    )  # fmt: skip
    trained = _epochs(recorded)
    assert trained == [expected.global_batches(e) for e in (0, 1)]
    assert all(trained[e] != _random(e) for e in (0, 1))


def test_online_trajectory_records_every_step_and_feeds_the_next_epoch(make_cfg, recorded):
    result = run_stage(make_cfg("selection=online_trajectory", "stage.keep_last=2"))
    trained = _epochs(recorded)
    assert trained[0] == _random(0)  # nothing recorded yet: shuffled
    assert trained[1] != _random(1)

    run_dir = Path(result["run_dir"])
    after_epoch1 = load_train_state(run_dir / "checkpoints" / "step-000000003")["sampler"]
    trajectory = OnlineTrajectory(N_TRAIN, 0.5)
    trajectory.load_state_dict(after_epoch1["trajectory"])
    assert trajectory.num_updates == 3
    seen = np.zeros((N_TRAIN, N_TRAIN), dtype=bool)
    for batch in trained[0]:
        seen[np.ix_(batch, batch)] = True
    assert np.array_equal(~np.isnan(trajectory.first), seen)  # exactly the batches' pairs
    sampler = OnlineCurriculumSampler(trajectory, BATCH, 2, "log", SEED)
    assert sampler.global_batches(1) == trained[1]  # the curriculum from the recorded state

    # The first batch's recorded similarities are those of the initial model (naive recompute).
    cfg = validate_train(make_cfg("selection=online_trajectory"))
    tokenizer = SLTTokenizer.load(run_dir / "tokenizer")
    seed_everything(cfg.seed)
    model = builder.build_model(cfg.model, cfg.data, tokenizer).train()
    train = build_split(cfg.data, "train")
    batch = Collator(tokenizer)([train[i] for i in trained[0][0]])
    with torch.no_grad():
        out = model(batch["inputs"], batch["input_lengths"], batch["text_ids"], batch["text_mask"])
    first = trained[0][0]
    for a in range(BATCH):
        for b in range(BATCH):
            s = pairwise_similarity(
                out.video_proj[a : a + 1], out.video_proj_mask[a : a + 1],
                out.text_proj[b : b + 1], out.text_proj_mask[b : b + 1],
                cfg.model.similarity.method, cfg.model.similarity.tau,
            )  # fmt: skip
            assert trajectory.first[first[a], first[b]] == pytest.approx(float(s), abs=1e-5)


def test_online_trajectory_resumes_exactly(make_cfg, tmp_path, monkeypatch):
    extra = ["selection=online_trajectory", "model.dropout=0.3"]
    # stopped during forward 5: epoch 2, its second batch: mid-epoch, curriculum batches
    straight, resumed = interrupted_and_resumed(
        lambda *o: make_cfg(*extra, *o), tmp_path, monkeypatch, contrastive, 5
    )
    assert_same_final_weights(straight, resumed)
    losses = [[r["loss"] for r in read_metrics(x["run_dir"], "train")] for x in (straight, resumed)]
    assert losses[0] == losses[1]
    states = [load_train_state(x["last_checkpoint"])["sampler"]["trajectory"] for x in (straight, resumed)]  # fmt: skip
    assert states[0]["num_updates"] == states[1]["num_updates"] == 6
    for key in ("ema", "first"):
        np.testing.assert_array_equal(states[0][key], states[1][key])


# ---------------------------------------------------------------------- retrieval and SDR
def _naive_ranks(sim: list[list[float]], texts: list[str]) -> list[int]:
    """Rank of each row query's true pair under the default ``retrieval.duplicates=exclude``
    (other candidates with the query's sentence are not candidates); ties count against it."""
    ranks = []
    for i, row in enumerate(sim):
        others = [j for j in range(len(row)) if j != i and texts[j] != texts[i]]
        ranks.append(1 + sum(1 for j in others if row[j] >= row[i]))
    return ranks


def test_retrieval_and_sdr_are_logged_and_printed_by_evaluate(make_cfg):
    result = run_stage(make_cfg("stage.retrieval_every=1"))
    dev = read_metrics(result["run_dir"], "dev")
    assert [r["epoch"] for r in dev] == [1, 2] and all("bleu4" not in r for r in dev)
    for record in dev:
        for side in ("v2t", "t2v"):
            r1, r5, r10 = (record[f"{side}_r{k}"] for k in (1, 5, 10))
            assert 0 <= r1 <= r5 <= r10 <= 100
            assert 1 <= record[f"{side}_medr"] <= 16
        assert 0 < record["sdr"] < 5 and record["sdr_glosses"] > 0
        assert record["retrieval_samples"] == 16 and record["skipped_samples"] == 0

    # Naive reference for the last record: encode the dev split, score pair by pair, rank.
    run_dir = Path(result["run_dir"])
    train_cfg = validate_train(make_cfg("stage.retrieval_every=1"))
    tokenizer, model, _ = load_trained_model(
        train_cfg, run_dir, "last", "cpu", keep_text_branch=True
    )
    model.eval()
    dev_set = build_split(train_cfg.data, "dev", train=False)
    batch = Collator(tokenizer)([dev_set[i] for i in range(len(dev_set))])
    with torch.no_grad():
        out = model(batch["inputs"], batch["input_lengths"], batch["text_ids"], batch["text_mask"])
    sim = [[float(pairwise_similarity(
                out.video_proj[i : i + 1], out.video_proj_mask[i : i + 1],
                out.text_proj[j : j + 1], out.text_proj_mask[j : j + 1],
                train_cfg.model.similarity.method, train_cfg.model.similarity.tau))
            for j in range(16)] for i in range(16)]  # fmt: skip
    texts = batch["texts"]
    for side, ranks in (("v2t", _naive_ranks(sim, texts)),
                        ("t2v", _naive_ranks([list(c) for c in zip(*sim)], texts))):  # fmt: skip
        for k in (1, 5, 10):
            assert dev[-1][f"{side}_r{k}"] == pytest.approx(100 * np.mean(np.array(ranks) <= k))
        assert dev[-1][f"{side}_medr"] == pytest.approx(float(np.median(ranks)))
    sign = [out.sign_features[i][out.sign_mask[i]] for i in range(16)]
    alignments = [r["alignment"] for r in dev_set.records]
    assert dev[-1]["sdr"] == pytest.approx(sign_density_ratio(sign, alignments, stride=4), rel=1e-4)

    # The evaluate entry point reports the same numbers for this stage-1 checkpoint.
    command = [sys.executable, "-m", "scl_slt.evaluate", f"run_dir={run_dir}", "checkpoint=last",
               "split=dev", "device=cpu", "batch_size=8"]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("retrieval: "))
    assert f"v2t_r1={dev[-1]['v2t_r1']:.2f}" in line and f"SDR {dev[-1]['sdr']:.4f}" in line
    assert dev[-1]["retrieval_protocol"]["duplicates"] == "exclude"  # the protocol, per record
    assert "retrieval protocol: duplicates=exclude" in proc.stdout
    fine = next(x for x in proc.stdout.splitlines() if x.startswith("fine-grained retrieval: "))
    assert f"fine_t2v_r1={dev[-1]['fine_t2v_r1']:.2f}" in fine
    written = json.loads((run_dir / "eval" / "last" / "dev" / "metrics.json").read_text())
    for key in ("v2t_r1", "v2t_r10", "t2v_r5", "t2v_medr", "sdr"):
        assert written["alignment"][key] == pytest.approx(dev[-1][key], rel=1e-6)
    assert has_text_branch(load_weights(result["last_checkpoint"]))
    assert not has_text_branch({"sign_embedding.w": 0, "decoder.w": 0})


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["selection=visual_curriculum"], "selection.snapshot"),
        (
            ["selection=visual_curriculum", "selection.snapshot=/no/such/folder"],
            "selection.snapshot",
        ),
        (["selection=online_trajectory", "selection.online_decay=1.0"], "selection.online_decay"),
        (["selection.online_decay=-0.1"], "selection.online_decay"),
        (["stage.retrieval_every=-1"], "stage.retrieval_every"),
        (["stage=translate", "stage.retrieval_every=1"], "stage.retrieval_every"),
    ],
)
def test_selection_and_retrieval_settings_are_validated(overrides, key, tiny_train_cfg):
    with pytest.raises(ConfigError, match=key):
        validate_train(tiny_train_cfg(*overrides))
