"""``selection=san`` end to end on the tiny model: the sign embeddings of a stage-1 checkpoint
(``selection/pair_scores/sign_embedding.py``) against a direct computation, their cache, and a
stage-1 run that trains on exactly the batches of an independently built SAN sampler; the
strategy's settings are validated and the old ``visual_confusable`` name is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scl_slt.config import ConfigError
from scl_slt.config_checks import validate_train
from scl_slt.data.datasets import build_split
from scl_slt.models import builder
from scl_slt.models.tokenizer import SLTTokenizer
from scl_slt.rundir.checkpoint import load_weights
from scl_slt.selection.hard_negatives import HardNegativeBatchSampler
from scl_slt.selection.pair_scores import sign_embedding
from scl_slt.selection.pair_scores.sign_embedding import (
    pool_sign_features,
    prepare_sign_embeddings,
)
from scl_slt.stages import contrastive, run_stage

QUIET = ["stage.eval_every=0", "model.dropout=0.0"]


def test_pooling_is_the_masked_mean_normalised():
    features = torch.randn(3, 5, 4)
    lengths = [5, 2, 1]
    mask = torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]
    got = pool_sign_features(features, mask)
    for b, n in enumerate(lengths):
        mean = features[b, :n].double().mean(dim=0)
        assert torch.allclose(got[b].double(), mean / mean.norm(), atol=1e-6)
    with pytest.raises(ValueError, match="no valid time step"):
        pool_sign_features(features, mask & (torch.arange(3)[:, None] != 1))


def direct_embeddings(run_dir: Path, checkpoint: Path, cfg, dataset) -> np.ndarray:
    """Model from the run's config, weights loaded strictly, each clip alone through the sign
    embedding submodule, mean over its valid steps, divided by the norm."""
    model = builder.build_model(cfg.model, cfg.data, SLTTokenizer.load(run_dir / "tokenizer"))
    model.load_state_dict(load_weights(checkpoint))
    model.eval()
    rows = []
    with torch.no_grad():
        for i in range(len(dataset)):
            clip = dataset[i]["inputs"]  # (T, D) features
            sign, _, mask = model.sign_embedding(clip[None], torch.tensor([clip.shape[0]]))
            mean = sign[0][mask[0]].double().mean(dim=0)
            rows.append((mean / mean.norm()).numpy())
    return np.stack(rows)


def test_san_embeddings_then_a_san_stage(tiny_train_cfg, tmp_path, monkeypatch):
    # ---- a stage-1 run whose checkpoint SAN embeds with
    ref_cfg = validate_train(tiny_train_cfg(*QUIET, f"run_dir={tmp_path / 'reference'}"))
    reference = run_stage(ref_cfg)
    ref_dir, checkpoint = Path(reference["run_dir"]), Path(reference["last_checkpoint"])
    train = build_split(ref_cfg.data, "train", train=False)
    cache = tmp_path / "cache-run"
    got = prepare_sign_embeddings(str(ref_dir), ref_cfg.data, train.names, "cpu", cache)
    expected = direct_embeddings(ref_dir, checkpoint, ref_cfg, train)
    assert got.vectors.shape == expected.shape and got.vectors.dtype == np.float32
    np.testing.assert_allclose(got.vectors, expected, atol=2e-5)
    assert got.record["checkpoint"] == str(checkpoint.resolve())
    assert got.path == cache / "selection" / "san_embeddings.npy"

    # ---- cached: the same inputs are not encoded again; other inputs are
    def refuse(*args, **kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(sign_embedding, "encode_train_split", refuse)
    again = prepare_sign_embeddings(str(checkpoint), ref_cfg.data, train.names, "cpu", cache)
    assert np.array_equal(again.vectors, got.vectors)
    with pytest.raises(AssertionError, match="encoded again"):
        prepare_sign_embeddings(str(ref_dir), ref_cfg.data, train.names[::-1], "cpu", cache)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="selection.checkpoint"):
        prepare_sign_embeddings(None, ref_cfg.data, train.names, "cpu", cache)

    # ---- a SAN stage 1 trains on the batches of an independently built sampler
    batches: list[list[int]] = []
    original = contrastive.compute_losses

    def record(model, batch, cfg, runtime):
        batches.append(batch["indices"].tolist())
        return original(model, batch, cfg, runtime)

    monkeypatch.setattr(contrastive, "compute_losses", record)
    san_cfg = validate_train(
        tiny_train_cfg(*QUIET, "selection=san", f"selection.checkpoint={ref_dir}",
                       f"run_dir={tmp_path / 'san'}", "stage.batch_size=8")
    )  # fmt: skip
    result = run_stage(san_cfg)
    written = Path(result["run_dir"]) / "selection" / "san_embeddings.npy"
    assert np.array_equal(np.load(written), got.vectors)  # same checkpoint, same split
    record_file = json.loads(written.with_suffix(".json").read_text())
    assert record_file["weights_sha256"] == got.record["weights_sha256"]
    independent = HardNegativeBatchSampler(got.vectors, train.texts, 8, san_cfg.seed)
    assert batches == [b for e in (0, 1) for b in independent.global_batches(e)]
    assert len(batches) == 2 * len(independent) and independent.global_batches(0) != (
        HardNegativeBatchSampler(got.vectors, train.texts, 8, san_cfg.seed + 1).global_batches(0)
    )

    # ---- python -m scl_slt.diagnose replays the same SAN batches without training
    from scl_slt.selection.diagnostics import BatchDiagnostics, replay

    replayed = list(replay(san_cfg, tmp_path / "replay"))
    assert [r["epoch"] for r in replayed] == [1, 2]
    measure = BatchDiagnostics(train.texts, san_cfg.data.language)
    for epoch, row in enumerate(replayed):
        expected = measure(independent.global_batches(epoch))
        shared = [k for k in expected if k != "all_negatives"]  # (the replay adds twins there)
        assert {k: row[k] for k in shared} == {k: expected[k] for k in shared}
    sampler_file = tmp_path / "replay" / "selection" / "san_embeddings.npy"
    assert np.array_equal(np.load(sampler_file), got.vectors)


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        (["selection=san"], "selection.checkpoint", "stage-1 run folder"),
        (["selection=san", "selection.checkpoint=/no/such/run"], "selection.checkpoint", "exist"),
        (
            [
                "selection=san",
                "selection.checkpoint=.",
                "selection.hard_negatives_k=5",
                "selection.hard_negatives_candidates=4",
            ],
            "selection.hard_negatives_candidates",
            ">= selection.hard_negatives_k=5",
        ),  # fmt: skip
        (["selection=san", "selection.hard_negatives_k=0"], "selection.hard_negatives_k", ""),
        (["selection=visual_confusable"], "selection.name", "visual_curriculum.*san"),
        (
            ["selection=san", "selection.checkpoint=.", "selection.distinct_targets=true"],
            "selection.distinct_targets",
            "not available with selection=san",
        ),
    ],
)
def test_san_settings_are_validated(overrides, key, words, tiny_train_cfg):
    with pytest.raises(ConfigError, match=f"{key}.*{words}"):
        validate_train(tiny_train_cfg(*overrides))
