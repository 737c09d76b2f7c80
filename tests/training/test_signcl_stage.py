"""SignCL inside the stages: the batch carries each clip's video frames (before subsampling) and
both stages log a finite SignCL term computed in the paper's units."""

from __future__ import annotations

import math

import torch

from scl_slt.data.batching import Collator
from scl_slt.data.datasets import build_split
from scl_slt.rundir.layout import read_metrics
from scl_slt.stages import run_stage


def test_video_frames_are_counted_before_subsampling(tiny_train_cfg):
    cfg = tiny_train_cfg("data.max_frames=8")
    dataset = build_split(cfg.data, "train")
    sample = dataset[0]
    assert sample["inputs"].shape[0] == 8
    assert sample["video_frames"] > 8  # synthetic clips have >= 12 frames

    class Tokens:  # the collator only needs encode_targets
        def encode_targets(self, texts):
            return torch.ones(len(texts), 2, dtype=torch.long), torch.ones(len(texts), 2).bool()

    batch = Collator(Tokens())([dataset[0], dataset[1]])
    expected = [dataset[i]["video_frames"] for i in (0, 1)]
    assert batch["video_frames"].tolist() == expected
    assert batch["input_lengths"].tolist() == [8, 8]


def test_both_stages_log_a_finite_signcl_term(tiny_train_cfg, tmp_path):
    for stage in ("contrastive", "translate"):
        run_dir = tmp_path / stage
        cfg = tiny_train_cfg(
            f"stage={stage}", "loss.signcl_weight=0.01", "stage.max_steps=2",
            "stage.eval_every=0", f"run_dir={run_dir}",
        )  # fmt: skip
        run_stage(cfg)
        values = [r["signcl"] for r in read_metrics(run_dir) if "signcl" in r]
        assert values, f"{stage}: no SignCL term in metrics.jsonl"
        assert all(math.isfinite(v) and v > 0 for v in values)
