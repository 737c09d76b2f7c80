"""Every ``configs/experiment/*.yaml`` composes, validates and trains a few steps on the tiny
model and the synthetic data (paths it expects from earlier runs are made here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import compose_train

from scl_slt.checkpoint import find_latest_checkpoint
from scl_slt.config import SelectionName, StageName, validate_train
from scl_slt.train import run_stage

EXPERIMENTS = sorted(
    p.stem for p in (Path(__file__).resolve().parents[1] / "configs" / "experiment").glob("*.yaml")
)
SMOKE = ("data=synthetic", "model=tiny", "stage.max_steps=2", "stage.eval_every=0")


def test_experiments_exist():
    assert "tiny" in EXPERIMENTS and len(EXPERIMENTS) >= 2


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory, synthetic_cache) -> Path:
    """A tiny finished stage-1 run for experiments that start from one."""
    from conftest import TINY_OVERRIDES

    run_dir = tmp_path_factory.mktemp("stage1") / "run"
    overrides = [*TINY_OVERRIDES, f"data.synthetic.cache_dir={synthetic_cache}", *SMOKE]
    run_stage(compose_train([*overrides, f"run_dir={run_dir}", "stage.max_steps=1"]))
    return run_dir


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_smoke_runs(name, tiny_overrides, stage1_run, tmp_path):
    as_written = compose_train([f"experiment={name}"])  # the file itself composes
    overrides = [f"experiment={name}", *SMOKE, *tiny_overrides]
    if as_written.selection.name == SelectionName.trajectory.value:
        scores = tmp_path / "pair_scores.npy"
        np.save(scores, np.random.default_rng(0).normal(size=(24, 24)).astype(np.float16))
        overrides.append(f"selection.pair_scores={scores}")
    if as_written.stage.init_from is not None:
        overrides.append(f"stage.init_from={stage1_run}")
    composed = compose_train(overrides)
    cfg = validate_train(composed)
    result = run_stage(composed)
    assert result["steps"] == 2
    assert find_latest_checkpoint(Path(result["run_dir"]) / "checkpoints") is not None
    if cfg.stage.name is StageName.translate and cfg.stage.init_from:
        assert result["init_from"] is not None
    if cfg.tracker.enabled:
        assert (Path(result["run_dir"]) / "snapshots" / "epoch-0000" / "COMPLETE").is_file()
