"""Question-based SLT through the ordinary commands' stages: stage 1 with the video-question
InfoNCE and MLM terms, stage 2 from it keeping the question branch, evaluation translating with
the questions; gloss assistance; a hand-off between question and video-only runs is refused
naming the keys; a resumed MLM run ends where an uninterrupted one does."""

from __future__ import annotations

import json
from pathlib import Path

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

from scl_slt.config_checks import validate_train
from scl_slt.data.datasets import build_split
from scl_slt.eval.evaluator import evaluate_run
from scl_slt.models.handoff import HandOffError
from scl_slt.rundir.checkpoint import load_weights
from scl_slt.rundir.layout import read_metrics
from scl_slt.stages import run_stage, translate

QBSLT = ["data.assist=question", "model.fusion=ssaw", "loss.mlm_weight=0.5", "model.dropout=0.0",
         "stage.eval_every=0"]  # fmt: skip


def test_stage_1_stage_2_and_evaluation_with_questions(tiny_train_cfg, tmp_path):
    s1 = run_stage(tiny_train_cfg(*QBSLT, "loss.question_contrastive_weight=0.5",
                                  f"run_dir={tmp_path / 's1'}"))  # fmt: skip
    records = read_metrics(s1["run_dir"], "train")
    assert records and all(r["mlm"] > 0 and r["question_contrastive"] > 0 for r in records)
    weights = load_weights(s1["last_checkpoint"])
    assert any(k.startswith("question.encoder.") for k in weights)
    assert any(k.startswith("question.fusion.") for k in weights)

    s2 = run_stage(tiny_train_cfg(*QBSLT, "stage=translate", f"stage.init_from={s1['run_dir']}",
                                  f"run_dir={tmp_path / 's2'}"))  # fmt: skip
    records = read_metrics(s2["run_dir"], "train")
    assert all("mlm" in r and "question_contrastive" not in r for r in records)
    metrics = evaluate_run(Path(s2["run_dir"]), checkpoint="last", split="test")
    assert 0 <= metrics["bleu4"] <= 100
    rows = (Path(s2["run_dir"]) / "eval" / "last" / "test" / "predictions.tsv").read_text()
    assert len(rows.strip().splitlines()) == 1 + 6  # header + the 6 test clips

    # A video-only stage 2 cannot start from the question run, and the other way round.
    with pytest.raises(HandOffError, match="data.assist and model.fusion"):
        run_stage(tiny_train_cfg("stage=translate", f"stage.init_from={s1['run_dir']}",
                                 f"run_dir={tmp_path / 'video-only'}"))  # fmt: skip


def test_gloss_assistance_reads_the_gloss_sequence(tiny_train_cfg, tmp_path, monkeypatch):
    seen = []
    original = translate.compute_losses

    def record(model, batch, cfg, runtime):
        seen.append(batch["questions"])
        return original(model, batch, cfg, runtime)

    monkeypatch.setattr(translate, "compute_losses", record)
    cfg = tiny_train_cfg("data.assist=gloss", "model.fusion=concat", "stage=translate",
                         "stage.max_steps=1", "stage.eval_every=0")  # fmt: skip
    run_stage(cfg)
    assert seen and all(q and q == q.upper() for q in seen[0])  # glosses are upper case


def test_a_resumed_mlm_run_ends_where_an_uninterrupted_one_does(tiny_train_cfg, tmp_path, monkeypatch):  # fmt: skip
    extra = [*QBSLT, "stage=translate", "model.dropout=0.3"]
    straight, resumed = interrupted_and_resumed(
        lambda *o: tiny_train_cfg(*extra, *o), tmp_path, monkeypatch, translate, 5
    )
    assert_same_final_weights(straight, resumed)
    mlm = [[r["mlm"] for r in read_metrics(x["run_dir"], "train")] for x in (straight, resumed)]
    assert mlm[0] == mlm[1] and len(mlm[0]) == 6


# ------------------------------------------------------------------------ two gloo ranks
def _ddp_worker(rank: int, port: int, root: str, cache: str) -> None:
    join_gloo(rank, port)
    overrides = [*TINY_OVERRIDES, *QBSLT, "loss.question_contrastive_weight=0.5", "stage.epochs=1",
                 f"data.synthetic.cache_dir={cache}", f"run_dir={root}/run"]  # fmt: skip
    result = run_stage(compose_train(overrides))
    weights = load_weights(result["last_checkpoint"])
    digest = {k: float(v.double().sum()) for k, v in weights.items() if k.startswith("question.")}
    (Path(root) / f"rank{rank}.json").write_text(json.dumps(digest))
    torch.distributed.destroy_process_group()


def test_two_ranks_train_the_question_terms_in_step(tmp_path, synthetic_cache):
    """The video-question InfoNCE gathers across ranks and the MLM head may go unused by a
    rank's share: two gloo ranks finish stage 1 together with identical question branches."""
    data = validate_train(compose_train([*TINY_OVERRIDES, f"data.synthetic.cache_dir={synthetic_cache}"])).data  # fmt: skip
    build_split(data, "train")  # generate the synthetic data once, before the processes start
    port = free_port()
    mp.spawn(_ddp_worker, args=(port, str(tmp_path), str(synthetic_cache)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] and ranks[0] == ranks[1]
    records = read_metrics(tmp_path / "run", "train")
    assert records and all(r["question_contrastive"] > 0 and r["mlm"] > 0 for r in records)
