"""Where a run resumes from, and which config changes a resume accepts (training/resume.py)."""

from __future__ import annotations

import pytest
import torch

from scl_slt.config import ConfigError
from scl_slt.rundir import checkpoint as ck
from scl_slt.training.resume import locate_resume, resume_config_differences


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), value), "n": torch.tensor(int(value))}


def test_resume_config_differences_names_keys_and_ignores_free_ones():
    saved = {"stage": {"lr": 1e-4, "log_every": 10}, "run_dir": "a", "data": {"num_workers": 0}}
    same = {"stage": {"lr": 1e-4, "log_every": 1}, "run_dir": "b", "data": {"num_workers": 4}}
    assert resume_config_differences(saved, same) == []
    other = {"stage": {"lr": 2e-4, "log_every": 10}, "run_dir": "a", "data": {"num_workers": 0}}
    assert resume_config_differences(saved, other) == ["stage.lr: 0.0001 -> 0.0002"]


def test_a_key_added_after_the_checkpoint_is_no_difference_at_its_default():
    """A checkpoint saved before data.assist / loss.mlm_weight existed resumes while the run
    keeps their defaults (the behaviour it trained with), and refuses when one is changed."""
    saved = {"stage": {"lr": 1e-4}, "loss": {"label_smoothing": 0.2}}
    default = {"stage": {"lr": 1e-4}, "loss": {"label_smoothing": 0.2, "mlm_weight": 0.0},
               "data": {"assist": "none"}}  # fmt: skip
    assert resume_config_differences(saved, default) == []
    changed = {**default, "data": {"assist": "question"}}
    assert resume_config_differences(saved, changed) == ["data.assist: '<absent>' -> 'question'"]
    # A key the schema does not know is a difference whatever its value.
    unknown = {**default, "extra": {"key": 0.0}}
    assert resume_config_differences(saved, unknown) == ["extra.key: '<absent>' -> 0.0"]
    # A key the current config lacks but the saved one has still differs.
    assert resume_config_differences(default, saved) == [
        "data.assist: 'none' -> '<absent>'",
        "loss.mlm_weight: 0.0 -> '<absent>'",
    ]


def test_locate_resume(tmp_path):
    assert locate_resume("none", tmp_path) is None
    assert locate_resume("auto", tmp_path) is None
    manager = ck.CheckpointManager(tmp_path, keep_last=3, keep_best=1)
    manager.save(1, _state(1.0), {"step": 1}, {})
    second = manager.save(2, _state(2.0), {"step": 2}, {})
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        locate_resume("none", tmp_path)
    assert locate_resume("auto", tmp_path) == second
    assert locate_resume(str(tmp_path), tmp_path / "elsewhere") == second
    weights_only = ck.save_checkpoint(tmp_path / "w", _state(1.0))
    with pytest.raises(ck.CheckpointError, match="weights-only"):
        locate_resume(str(weights_only), tmp_path)
