"""The trajectory scorer on tiny tracked runs: scores equal the similarity recomputed from the
model, pair scores equal delta of those, resume after a crash, refusal of mismatched snapshots,
the CLI, and the confusable/duplicate pair sets on the synthetic data."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

import scl_slt.models.all_pairs as all_pairs
from scl_slt import score
from scl_slt.config import SyntheticConfig, TrainConfig, to_container
from scl_slt.models.similarity import pairwise_similarity
from scl_slt.selection.pair_scores.trajectory import score_run
from scl_slt.selection.tracker import SnapshotTracker, fingerprint_of, names_hash, snapshots_dir
from scl_slt.selection.trajectory import SnapshotMismatchError, confusable_pairs

FEATURE_DIM, PROJ_DIM, VOCAB = 6, 8, 40
TEXTS = ["rain in the north", "sun", "rain in the north", "snow later", "wind", "sun", "fog today"]


class FakeModel(nn.Module):
    """The model contract: per-frame and per-token projections, L2-normalised, with masks."""

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.video = nn.Parameter(torch.randn(FEATURE_DIM, PROJ_DIM, generator=g))
        self.text = nn.Parameter(torch.randn(VOCAB, PROJ_DIM, generator=g))

    def forward(
        self,
        inputs,
        input_lengths,
        text_ids=None,
        text_mask=None,
        with_text=True,
        with_decoder=True,
        colour=None,  # the model contract: a clip's colour change (None outside augmentation)
    ):
        video_mask = torch.arange(inputs.shape[1])[None] < input_lengths[:, None]  # (B, T)
        return SimpleNamespace(
            video_proj=F.normalize(inputs @ self.video, dim=-1),  # (B, T, d)
            video_proj_mask=video_mask,
            text_proj=F.normalize(self.text[text_ids], dim=-1),  # (B, L, d)
            text_proj_mask=text_mask,
        )


def collate(samples):
    lengths = torch.tensor([s["inputs"].shape[0] for s in samples])
    inputs = torch.zeros(len(samples), int(lengths.max()), samples[0]["inputs"].shape[1])
    for k, s in enumerate(samples):
        inputs[k, : lengths[k]] = s["inputs"]
    words = [[1 + sum(map(ord, w)) % (VOCAB - 1) for w in s["text"].split()] for s in samples]
    ids = torch.zeros(len(samples), max(map(len, words)), dtype=torch.long)
    for k, w in enumerate(words):
        ids[k, : len(w)] = torch.tensor(w)
    return {
        "indices": torch.tensor([s["index"] for s in samples]),
        "names": [s["name"] for s in samples],
        "texts": [s["text"] for s in samples],
        "inputs": inputs,
        "input_lengths": lengths,
        "text_ids": ids,
        "text_mask": ids != 0,
    }


def make_samples(texts=TEXTS, seed=0, prefix="train/clip"):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "index": i,
            "name": f"{prefix}-{i}",
            "text": text,
            "inputs": torch.randn(2 + i % 4, FEATURE_DIM, generator=g),
        }
        for i, text in enumerate(texts)
    ]


def train_config(tau=0.1, method="cico"):
    cfg = TrainConfig(run_dir="runs/test")
    cfg.model.similarity.tau = tau
    cfg.model.similarity.method = method
    return cfg


def make_run(run_dir, epochs=(0, 2, 4), tau=0.1, write_config=True, samples=None, cfg=None):
    """A tracked run: one snapshot per epoch, the model at epoch e seeded with e."""
    samples = samples or make_samples()
    cfg = cfg or train_config(tau)
    if write_config:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(to_container(cfg)), run_dir / "config.yaml")
    fp = fingerprint_of(to_container(cfg), [s["name"] for s in samples])
    tracker = SnapshotTracker(snapshots_dir(run_dir), 2, max(*epochs, 1), fp)
    loader = DataLoader(samples, batch_size=3, collate_fn=collate)
    for e in epochs:
        tracker.snapshot(FakeModel(seed=e), loader, e, "cpu")
    return samples


def similarity_from_model(seed, samples, tau):
    """pairwise_similarity on the fake model's outputs for the whole split in one batch."""
    batch = collate(samples)
    out = FakeModel(seed)(
        batch["inputs"], batch["input_lengths"], batch["text_ids"], batch["text_mask"]
    )
    with torch.no_grad():
        s = pairwise_similarity(
            out.video_proj.double(),
            out.video_proj_mask,
            out.text_proj.double(),
            out.text_proj_mask,
            "cico",
            tau,
        )
    return s.numpy()


@pytest.mark.parametrize("write_config, tau", [(True, 0.1), (False, 0.07)])
def test_scores_equal_similarity_recomputed_from_the_model(tmp_path, write_config, tau):
    samples = make_run(tmp_path, tau=0.1, write_config=write_config)  # no config: default 0.07
    path = score_run(tmp_path, device="cpu")
    assert path == tmp_path / "pair_scores.npy"
    S = {}
    for e in (0, 2, 4):
        S[e] = np.load(tmp_path / "scores" / f"S-epoch-{e:04d}.npy")
        assert S[e].dtype == np.float16 and S[e].shape == (7, 7)
        np.testing.assert_allclose(S[e], similarity_from_model(e, samples, tau), atol=3e-3)
    pair = np.load(path, mmap_mode="r")
    assert pair.dtype == np.float16 and pair.shape == (7, 7)
    expected = (S[4].astype(np.float32) - S[0].astype(np.float32)).astype(np.float16)
    np.testing.assert_array_equal(pair, expected)

    meta = json.loads((tmp_path / "pair_scores.json").read_text())
    assert meta["num_samples"] == 7
    assert meta["names_sha256"] == names_hash([s["name"] for s in samples])
    assert [s["epoch"] for s in meta["snapshots"]] == [0, 2, 4]
    assert meta["delta"] == "endpoints" and meta["threshold"] == "last_median"
    assert meta["similarity"] == {"method": "cico", "tau": tau}

    summary = json.loads((tmp_path / "trajectory" / "summary.json").read_text())
    assert sum(summary["shares"].values()) == pytest.approx(1.0)
    assert summary["num_negative_pairs"] == 42
    # Duplicate targets in TEXTS: samples 0 & 2 and 1 & 5, both orders.
    assert summary["enrichment"]["duplicate_target"]["pairs"] == 4
    assert (tmp_path / "trajectory" / "categories.png").stat().st_size > 0


def test_slope_option_equals_polyfit(tmp_path):
    make_run(tmp_path, epochs=(0, 1, 3, 6))
    score_run(tmp_path, delta="slope", threshold="per_snapshot", device="cpu")
    S = np.stack([np.load(tmp_path / "scores" / f"S-epoch-{e:04d}.npy") for e in (0, 1, 3, 6)])
    S = S.astype(np.float64)
    slope = np.polyfit([0.0, 1.0, 3.0, 6.0], S.reshape(4, -1), 1)[0].reshape(7, 7)
    np.testing.assert_allclose(np.load(tmp_path / "pair_scores.npy"), slope, atol=2e-4)
    summary = json.loads((tmp_path / "trajectory" / "summary.json").read_text())
    assert summary["delta"] == "slope" and summary["threshold"]["mode"] == "per_snapshot"


def test_resume_after_a_crash_reuses_finished_snapshots(tmp_path, monkeypatch):
    run = tmp_path / "run"
    make_run(run)
    reference_run = tmp_path / "uninterrupted"
    shutil.copytree(run, reference_run)
    real = all_pairs.score_all_pairs
    calls = []

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(all_pairs, "score_all_pairs", crash_on_second)
    with pytest.raises(RuntimeError, match="killed"):
        score_run(run, device="cpu")
    first = run / "scores" / "S-epoch-0000.npy"
    assert first.is_file() and (run / "scores" / "S-epoch-0000.json").is_file()
    assert not (run / "scores" / "S-epoch-0002.json").exists()
    assert not (run / "pair_scores.npy").exists()
    stamp = first.stat().st_mtime_ns

    calls.clear()
    monkeypatch.setattr(
        all_pairs, "score_all_pairs", lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    )
    score_run(run, device="cpu")
    assert len(calls) == 2, "only the two unfinished snapshots are scored"
    assert first.stat().st_mtime_ns == stamp

    calls.clear()
    score_run(reference_run, device="cpu")
    assert len(calls) == 3
    for name in ("pair_scores.npy", "scores/S-epoch-0000.npy", "scores/S-epoch-0004.npy"):
        np.testing.assert_array_equal(np.load(run / name), np.load(reference_run / name))

    # A different similarity setting makes every finished score stale.
    calls.clear()
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.model.similarity.tau = 0.2
    OmegaConf.save(cfg, run / "config.yaml")
    score_run(run, device="cpu")
    assert len(calls) == 3


def test_mismatched_snapshots_are_refused(tmp_path):
    samples = make_run(tmp_path, epochs=(0, 2))
    other = SnapshotTracker(
        snapshots_dir(tmp_path),
        2,
        4,
        fingerprint_of(to_container(train_config(0.3)), [s["name"] for s in samples]),
    )
    bad = other.snapshot(
        FakeModel(4), DataLoader(samples, batch_size=3, collate_fn=collate), 4, "cpu"
    )
    with pytest.raises(SnapshotMismatchError) as err:
        score_run(tmp_path, device="cpu")
    message = str(err.value)
    assert str(snapshots_dir(tmp_path) / "epoch-0000") in message and str(bad) in message
    assert "model" in message and "similarity" in message
    assert not (tmp_path / "pair_scores.npy").exists()

    other_names = tmp_path / "names"
    make_run(other_names, epochs=(0,))
    make_run(other_names, epochs=(2,), samples=make_samples(prefix="train/other"))
    with pytest.raises(SnapshotMismatchError, match="sample names differ"):
        score_run(other_names, device="cpu")


def test_one_snapshot_is_not_a_trajectory(tmp_path):
    make_run(tmp_path, epochs=(0,))
    with pytest.raises(ValueError, match="at least two"):
        score_run(tmp_path, device="cpu")


def test_bf16_precision_on_cpu_scores_close_to_fp32_and_is_its_own_result(tmp_path, monkeypatch):
    """precision=bf16 runs the all-pairs products in bf16 on the CPU too (auto: fp32 there):
    scores within bf16 rounding of the fp32 ones, and a change of precision rescores."""
    samples = make_run(tmp_path, tau=0.1)
    dtypes = []
    real = all_pairs.score_all_pairs
    monkeypatch.setattr(
        all_pairs, "score_all_pairs", lambda *a, **k: (dtypes.append(k["dtype"]), real(*a, **k))[1]
    )
    assert score.main([f"run_dir={tmp_path}", "device=cpu", "precision=bf16"]) == 0
    assert dtypes == [torch.bfloat16] * 3
    bf16 = {e: np.load(tmp_path / "scores" / f"S-epoch-{e:04d}.npy") for e in (0, 2, 4)}
    for e, s in bf16.items():
        np.testing.assert_allclose(s, similarity_from_model(e, samples, 0.1), atol=2e-2)
    dtypes.clear()
    score_run(tmp_path, device="cpu")  # auto on CPU: fp32, so every snapshot again
    assert dtypes == [torch.float32] * 3
    fp32 = np.load(tmp_path / "scores" / "S-epoch-0004.npy")
    assert not np.array_equal(fp32, bf16[4])
    dtypes.clear()
    score_run(tmp_path, device="cpu", precision="fp32")  # the same as auto here: reused
    assert dtypes == []
    assert score.main([f"run_dir={tmp_path}", "precision=fp16"]) == 2


def test_cli(tmp_path, capsys):
    make_run(tmp_path)
    assert score.main([f"run_dir={tmp_path}", "delta=slope", "device=cpu"]) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "pair_scores.npy") in printed and "categories.png" in printed
    assert json.loads((tmp_path / "pair_scores.json").read_text())["delta"] == "slope"
    assert score.main([f"run_dir={tmp_path}", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert score.main([f"run_dir={tmp_path}", "delta=median"]) == 2
    assert "delta" in capsys.readouterr().err
    assert score.main(["delta=slope"]) == 2
    assert "run_dir" in capsys.readouterr().err


def test_bad_config_yaml_is_named(tmp_path):
    make_run(tmp_path, epochs=(0, 2))
    (tmp_path / "config.yaml").write_text(
        "model:\n  similarity:\n    method: cosine\n    tau: 0.1\n"
    )
    with pytest.raises(ValueError, match=r"config.yaml: model.similarity.method"):
        score_run(tmp_path, device="cpu")


def test_synthetic_run_gets_the_confusable_pair_set(tmp_path):
    """On the synthetic data the report compares confusable-gloss and duplicate-target pairs."""
    from scl_slt.data.datasets import build_split

    cfg = TrainConfig(run_dir="runs/test")
    cfg.data.synthetic = SyntheticConfig(
        cache_dir=str(tmp_path / "cache"),
        num_train=100,
        num_dev=4,
        num_test=4,
        feature_dim=FEATURE_DIM,
    )
    dataset = build_split(cfg.data, "train")
    glosses = [r["gloss"].split() for r in dataset.records]
    meta = json.loads((next((tmp_path / "cache").glob("*/meta.json"))).read_text())
    expected = confusable_pairs(glosses, dataset.texts, meta["confusable_pairs"])
    assert expected, "the tiny synthetic split should contain confusable pairs"
    samples = [
        {"index": i, "name": r["name"], "text": r["text"], "inputs": dataset[i]["inputs"]}
        for i, r in enumerate(dataset.records)
    ]
    make_run(tmp_path / "run", epochs=(0, 1), samples=samples, cfg=cfg)
    score_run(tmp_path / "run", device="cpu")
    enrichment = json.loads((tmp_path / "run" / "trajectory" / "summary.json").read_text())[
        "enrichment"
    ]
    assert enrichment["confusable_gloss"]["pairs"] == len(expected)
    duplicates = sum(len(g) * (len(g) - 1) for g in meta["duplicate_groups"])
    assert enrichment["duplicate_target"]["pairs"] == duplicates > 0


def test_tracked_contrastive_run_scores_equal_the_saved_model(tmp_path):
    """A tiny real reference run: the scorer's S^k equals the similarity recomputed from the
    checkpoint saved at epoch k (the real model, tokenizer and training loop)."""
    from scl_slt.data.batching import Collator
    from scl_slt.data.datasets import build_split
    from scl_slt.models.builder import build_model
    from scl_slt.models.tokenizer import SLTTokenizer
    from scl_slt.rundir.checkpoint import load_weights, read_marker, step_checkpoints
    from scl_slt.rundir.layout import load_run_config
    from scl_slt.stages import run_stage

    run = tmp_path / "reference"
    cfg = TrainConfig(run_dir=str(run), device="cpu")
    cfg.data.synthetic = SyntheticConfig(
        cache_dir=str(tmp_path / "cache"), num_train=16, num_dev=4, num_test=4
    )
    cfg.stage.epochs, cfg.stage.batch_size, cfg.stage.eval_every = 2, 8, 0
    cfg.stage.lr = 1e-3
    cfg.model.sign_embedding.hidden = 32  # small and fast on a contended CPU
    cfg.tracker.enabled, cfg.tracker.interval = True, 1
    run_stage(cfg)  # stage=contrastive by default
    assert sorted(p.name for p in snapshots_dir(run).iterdir()) == [
        "epoch-0000",
        "epoch-0001",
        "epoch-0002",
    ]
    score_run(run, device="cpu")

    train_cfg = load_run_config(run)
    sim = train_cfg.model.similarity
    checked = []
    tokenizer = SLTTokenizer.load(run / "tokenizer")
    dataset = build_split(train_cfg.data, "train", train=False)
    for ckpt in step_checkpoints(run / "checkpoints"):
        epoch = read_marker(ckpt)["meta"]["epoch"]
        model = build_model(train_cfg.model, train_cfg.data, tokenizer)
        model.load_state_dict(load_weights(ckpt), strict=True)
        model.eval()
        batch = Collator(tokenizer)([dataset[i] for i in range(len(dataset))])
        with torch.no_grad():
            out = model(
                batch["inputs"],
                batch["input_lengths"],
                text_ids=batch["text_ids"],
                text_mask=batch["text_mask"],
                with_text=True,
                with_decoder=False,
            )
            expected = pairwise_similarity(
                out.video_proj.double(),
                out.video_proj_mask,
                out.text_proj.double(),
                out.text_proj_mask,
                sim.method,
                sim.tau,
            ).numpy()
        stored = np.load(run / "scores" / f"S-epoch-{epoch:04d}.npy").astype(np.float64)
        np.testing.assert_allclose(stored, expected, atol=3e-3)
        checked.append(epoch)
    assert checked == [1, 2]  # keep_last=2: the checkpoints of both trained epochs
    s0 = np.load(run / "scores" / "S-epoch-0000.npy").astype(np.float32)
    s2 = np.load(run / "scores" / "S-epoch-0002.npy").astype(np.float32)
    assert np.abs(s2 - s0).max() > 1e-2, "training changed the similarities"
    np.testing.assert_allclose(np.load(run / "pair_scores.npy"), s2 - s0, atol=1e-3)
