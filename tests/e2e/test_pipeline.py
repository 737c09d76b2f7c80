"""The whole method end to end on the synthetic data: reference run -> scoring -> selective stage
-> translation stage -> test evaluation. The fast test uses a shortened schedule; the full default
pipeline (the README's figure) is marked slow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_OVERRIDES

from scl_slt.pipeline import main
from scl_slt.rundir.checkpoint import load_weights, resolve_checkpoint
from scl_slt.stages.pipeline import Pipeline, split_arguments, strategy_runs

# An untrained (or collapsed) model on the synthetic test split scores BLEU-4 well under 5: it
# emits one generic sentence for every clip. The floors below are far above that.
FAST_BLEU4_FLOOR = 20.0
FULL_BLEU4_FLOOR = 60.0


def test_split_arguments_separates_pipeline_options_from_overrides():
    cfg, overrides = split_arguments(["translate_epochs=3", "stage.lr=0.001", "data=synthetic"])
    assert cfg.translate_epochs == 3
    assert overrides == ["stage.lr=0.001", "data=synthetic"]
    with pytest.raises(ValueError, match="delta"):
        split_arguments(["delta=median"])
    with pytest.raises(ValueError, match="interval"):
        split_arguments(["interval=0"])


def test_strategies_option_names_selections_and_run_dirs():
    cfg, _ = split_arguments(["strategies=[random,text_semantic,online_trajectory]"])
    assert cfg.strategies == ["random", "text_semantic", "online_trajectory"]
    assert split_arguments([])[0].strategies == ["trajectory"]  # the method alone by default
    with pytest.raises(ValueError, match="unknown selection 'hardest'"):
        split_arguments(["strategies=[trajectory,hardest]"])
    with pytest.raises(ValueError, match="listed twice"):
        split_arguments(["strategies=[random,random]"])
    # The two paper rows keep their run-dir names; other strategies are named after themselves.
    assert strategy_runs("trajectory") == ("SCL-SLT", "2-selective", "3-translate")
    assert strategy_runs("random") == ("CL-SLT", "2-random", "3-translate-random")
    assert strategy_runs("visual_confusable")[1:] == (
        "2-visual_confusable",
        "3-translate-visual_confusable",
    )


def _run(tmp_path, monkeypatch, argv):
    monkeypatch.setenv("SCL_SLT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "pipe"
    rows = main([f"out_dir={out}", *argv])
    return out, rows


def test_pipeline_learns_and_writes_every_artifact(tmp_path, monkeypatch):
    out, rows = _run(
        tmp_path,
        monkeypatch,
        [
            "reference_epochs=4",
            "contrastive_epochs=4",
            "translate_epochs=12",
            "interval=2",
            "stage.eval_every=4",
        ],
    )
    metrics = rows["SCL-SLT"]
    assert metrics["bleu4"] > FAST_BLEU4_FLOOR, metrics
    assert 0 < metrics["rouge_l"] <= 100
    ref = out / "1-reference"
    assert (ref / "pair_scores.npy").is_file() and (ref / "pair_scores.json").is_file()
    assert (ref / "trajectory" / "summary.json").is_file()
    snapshots = sorted(p.name for p in (ref / "snapshots").iterdir())
    assert snapshots[0].endswith("0000") and len(snapshots) == 3  # epochs 0, 2, 4
    for step in ("2-selective", "3-translate"):
        assert (out / step / "config.yaml").is_file()
        assert (out / step / "metrics.jsonl").is_file()
    state = json.loads((out / "pipeline.json").read_text())
    assert {"reference", "score", "2-selective", "3-translate", "test-SCL-SLT"} <= set(state)

    # A second invocation finds every step done and returns the same figures without training.
    _, again = _run(tmp_path, monkeypatch, ["reference_epochs=4"])
    assert again["SCL-SLT"] == metrics


@pytest.mark.slow
def test_default_pipeline_reaches_readme_floor(tmp_path, monkeypatch):
    _, rows = _run(tmp_path, monkeypatch, [])
    assert rows["SCL-SLT"]["bleu4"] > FULL_BLEU4_FLOOR, rows


def test_cl_slt_stage_1_is_the_reference_run_when_the_budgets_match(tmp_path, monkeypatch):
    """With reference_epochs = contrastive_epochs the reference run serves as the random stage 1
    (no 2-random run), and a random stage 1 trained on its own with the same budget ends with the
    very same weights: the snapshots do not change training (docs/determinism.md)."""
    argv = ["strategies=[random]", "reference_epochs=2", "contrastive_epochs=2",
            "translate_epochs=1", "interval=1", "stage.eval_every=0", *TINY_OVERRIDES]  # fmt: skip
    out, rows = _run(tmp_path, monkeypatch, argv)
    assert set(rows) == {"CL-SLT"} and not (out / "2-random").exists()
    stage2 = yaml.safe_load((out / "3-translate-random" / "config.yaml").read_text())
    assert Path(stage2["stage"]["init_from"]).resolve() == (out / "1-reference").resolve()

    cfg, overrides = split_arguments([f"out_dir={out}", *argv])
    separate = Pipeline(cfg, overrides).train(
        "random-stage-1", ["stage=contrastive", "selection=random", "stage.epochs=2"]
    )
    reference = load_weights(resolve_checkpoint(out / "1-reference", "last"))
    alone = load_weights(separate["last_checkpoint"])
    assert reference.keys() == alone.keys()
    assert all(torch.equal(reference[k], alone[k]) for k in reference)


def test_self_referenced_chain_needs_no_reference_run_and_each_chain_is_timed(
    tmp_path, monkeypatch
):
    """self_trajectory alone trains no reference run; with share_reference=false CL-SLT trains
    its own stage 1; every row's chain of steps and its wall / CPU sums are in pipeline.json."""
    argv = ["strategies=[self_trajectory,random]", "share_reference=false", "contrastive_epochs=2",
            "reference_epochs=2", "translate_epochs=1", "interval=1", "stage.eval_every=0",
            *TINY_OVERRIDES]  # fmt: skip
    out, rows = _run(tmp_path, monkeypatch, argv)
    assert set(rows) == {"SCL-SLT (self-referenced)", "CL-SLT"}
    assert not (out / "1-reference").exists()
    own = out / "2-self_trajectory"
    assert (own / "self_scores" / "delta-epoch-0001.npy").is_file()
    state = json.loads((out / "pipeline.json").read_text())
    chains = state["_chains"]
    assert chains["CL-SLT"]["steps"] == ["2-random", "3-translate-random", "test-CL-SLT"]
    label = "SCL-SLT (self-referenced)"
    assert chains[label]["steps"] == ["2-self_trajectory", "3-translate-self_trajectory",
                                      f"test-{label}"]  # fmt: skip
    for chain in chains.values():
        assert chain["wall_s"] == pytest.approx(sum(state["_timings"][s] for s in chain["steps"]), abs=0.2)  # fmt: skip
        assert chain["cpu_s"] == pytest.approx(sum(state["_cpu"][s] for s in chain["steps"]), abs=0.2)  # fmt: skip
        assert chain["cpu_s"] > 0
    stage1 = yaml.safe_load((own / "config.yaml").read_text())
    assert (
        stage1["tracker"]["interval"] == 1 and stage1["selection"]["diagnostics_reference"] is None
    )


def test_self_interval_option():
    assert split_arguments(["interval=2"])[0].self_interval is None  # the reference's interval
    assert split_arguments(["self_interval=4"])[0].self_interval == 4
    with pytest.raises(ValueError, match="self_interval"):
        split_arguments(["self_interval=0"])
