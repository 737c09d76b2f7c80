"""Bad configs fail before any work, naming the key: unknown keys, wrong types, bad values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_train
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scl_slt.config import ConfigError, TrainConfig
from scl_slt.config_checks import validate_train
from scl_slt.stages import run_stage

REPO = Path(__file__).resolve().parents[1]


def test_defaults_compose_and_validate():
    cfg = validate_train(compose_train())
    assert isinstance(cfg, TrainConfig)
    assert (cfg.data.name, cfg.model.name, cfg.stage.name.value) == (
        "synthetic",
        "tiny",
        "contrastive",
    )
    translate = validate_train(compose_train(["stage=translate"]))
    assert (translate.stage.epochs, translate.stage.batch_size) == (200, 8)


@pytest.mark.parametrize(
    "override,key",
    [
        ("stage.lrr=0.1", "lrr"),  # unknown key
        ("stage.epochs=ten", "stage.epochs"),  # wrong type
        ("stage.nonfinite=ignore", "stage.nonfinite"),  # unknown enum value
        ("selection.schedule=cubic", "selection.schedule"),  # unknown schedule
        ("model.similarity.method=dot", "model.similarity.method"),
    ],
)
def test_composition_errors_name_the_key(override, key):
    with pytest.raises((ConfigCompositionException, OmegaConfBaseException)) as err:
        compose_train([override])
    text = str(err.value) + str(err.value.__cause__ or "")
    assert key in text


def test_unknown_key_added_with_plus_is_rejected_by_validation(tiny_overrides, tmp_path):
    cfg = compose_train(
        [
            *tiny_overrides,
            f"run_dir={tmp_path / 'r'}",
            "stage.max_steps=1",
            "+loss.contrastive_wieght=1",
        ]
    )
    with pytest.raises(ConfigError, match=r"^loss.contrastive_wieght: unknown key"):
        run_stage(cfg)
    assert not (tmp_path / "r").exists()


def test_unknown_key_in_a_yaml_file_is_rejected():
    """What Hydra does with every YAML file: merge it onto the typed schema."""
    schema = OmegaConf.structured(TrainConfig)
    with pytest.raises(OmegaConfBaseException, match="warmup_epoch"):
        OmegaConf.merge(schema, OmegaConf.create({"stage": {"warmup_epoch": 1}}))


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["stage.lr=-0.001"], "stage.lr"),
        (["stage.batch_size=0"], "stage.batch_size"),
        (["stage.grad_accum=0"], "stage.grad_accum"),
        (["stage.warmup_epochs=-1"], "stage.warmup_epochs"),
        (["stage.eval_every=-1"], "stage.eval_every"),
        (["stage.max_steps=0"], "stage.max_steps"),
        (["stage.max_nonfinite=0"], "stage.max_nonfinite"),
        (["loss.contrastive_weight=0"], "loss.contrastive_weight"),
        (["loss.label_smoothing=-0.1"], "loss.label_smoothing"),
        (["precision=fp8"], "precision"),
        (["device=tpu"], "device"),
        (["data=phoenix14t", "data.root=null", "data.labels_dir=null"], "data.root"),
        (["data=phoenix14t", "data.root=/no/such/dataset"], "data.root"),
        (["selection=trajectory"], "selection.pair_scores"),
        (["selection=trajectory", "selection.pair_scores=/no/such.npy"], "selection.pair_scores"),
        (["stage=translate", "selection=trajectory"], "selection.name"),
        (["stage=translate", "stage.init_from=/no/such/run"], "stage.init_from"),
        (["stage.init_from=/tmp"], "stage.init_from"),  # stage 1 does not start from a run
        (["stage=translate", "tracker.enabled=true"], "tracker.enabled"),
        (["resume=/no/such/checkpoint"], "resume"),
        # frame settings, checked even where the modality (features here) does not use them
        (["data.augment_p=1.5"], "data.augment_p"),
        (["data.rotate_degrees=-5"], "data.rotate_degrees"),
        (["data.scale_jitter=0.95"], "data.scale_jitter"),
        (["data.crop=300"], "data.crop"),
        (["data.resize=0"], "data.resize"),
    ],
)
def test_bad_values_fail_before_any_work(overrides, key, tiny_overrides, tmp_path):
    run_dir = tmp_path / "never-created"
    # The bad override comes last so it wins; max_steps bounds the run if validation missed it.
    cfg = compose_train([*tiny_overrides, f"run_dir={run_dir}", "stage.max_steps=1", *overrides])
    with pytest.raises(ConfigError) as err:
        run_stage(cfg)
    assert str(err.value).startswith(f"{key}:"), str(err.value)
    assert not run_dir.exists()  # nothing was created: validation ran first


def test_cli_reports_config_error_and_exits_2(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scl_slt.train",
            "stage.max_steps=1",
            "stage.lr=-1",
            f"run_dir={tmp_path / 'x'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "config error: stage.lr: must be positive" in result.stderr
    assert not (tmp_path / "x").exists()
