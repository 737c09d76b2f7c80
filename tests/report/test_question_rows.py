"""Question-based runs get rows of their own in the report (never averaged with video-only
CL-SLT), named by what the clip came with, the fusion and whether a question term trained."""

from __future__ import annotations

from pathlib import Path

import yaml

from scl_slt.config import TrainConfig, to_container
from scl_slt.report.runs import assistance_label, load_run


def _config(assist: str = "none", fusion: str = "none", mlm: float = 0.0, vq: float = 0.0):
    config = to_container(TrainConfig(run_dir="run"))
    config["data"]["assist"] = assist
    config["model"]["fusion"] = fusion
    config["loss"].update(mlm_weight=mlm, question_contrastive_weight=vq)
    return config


def test_labels():
    assert assistance_label(_config()) == ""
    assert assistance_label({}) == ""  # a run from before question-based SLT
    assert assistance_label(_config("question", "concat")) == " + question (concat)"
    assert assistance_label(_config("question", "ssaw", mlm=0.5)) == " + question (ssaw, SSL)"
    assert assistance_label(_config("gloss", "ssaw", vq=1.0)) == " + gloss (ssaw, SSL)"
    assert assistance_label(_config("question", "none")) == " + question (none)"


def _run(path: Path, config: dict, init_from: Path | None = None) -> Path:
    path.mkdir(parents=True)
    config["stage"].update(name="translate" if init_from else "contrastive",
                           init_from=str(init_from) if init_from else None)  # fmt: skip
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_two_stage_question_run_row(tmp_path):
    stage1 = _run(tmp_path / "2-random", _config("question", "ssaw", mlm=0.5))
    stage2 = _run(tmp_path / "3-translate-random", _config("question", "ssaw", mlm=0.5), stage1)
    plain1 = _run(tmp_path / "plain" / "2-random", _config())
    plain2 = _run(tmp_path / "plain" / "3-translate-random", _config(), plain1)
    assert load_run(stage2).row == "CL-SLT + question (ssaw, SSL)"
    assert load_run(stage1).row == "w/ CL + question (ssaw, SSL)"
    assert load_run(plain2).row == "CL-SLT"


def test_self_referenced_rows_name_their_interval(tmp_path):
    config = _config()
    config["selection"]["name"] = "self_trajectory"
    config["tracker"]["interval"] = 4
    stage1 = _run(tmp_path / "2-self_trajectory", config)
    stage2 = _run(tmp_path / "3-translate-self_trajectory", _config(), stage1)
    assert load_run(stage1).row == "w/ SCL (self-referenced, interval 4)"
    assert load_run(stage2).row == "SCL-SLT (self-referenced, interval 4)"
