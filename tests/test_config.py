"""Bad configs fail before any work, naming the key: unknown keys, wrong types, bad values."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from conftest import compose_train
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scl_slt.config import ConfigError, TrainConfig
from scl_slt.config_checks import NUMERIC_RANGES, validate_train
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
        # values that used to pass and fail later, after the run directory existed, unnamed
        (["stage.lr=inf"], "stage.lr"),  # a non-finite loss at step 1
        (["model.similarity.tau=inf"], "model.similarity.tau"),  # trained, degenerate
        (["loss.label_smoothing=1.5"], "loss.label_smoothing"),  # torch's RuntimeError
        (["model.dropout=1.5"], "model.dropout"),  # torch's ValueError
        (["data.num_workers=-1"], "data.num_workers"),  # the DataLoader's ValueError
        (["model.attention_heads=3"], "model.attention_heads"),  # does not divide d_model=32
        (["data.synthetic.num_glosses=100"], "data.synthetic.num_glosses"),  # lexicon: <= 44
        (
            ["data=synthetic_frames", "model.sign_embedding.pretrained=/no/such.pth"],
            "model.sign_embedding.pretrained",
        ),
        (["model.mbart_path=./no/such/mbart"], "model.mbart_path"),
        (["runs_root=''"], "runs_root"),
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


def _numeric_schema_fields(schema: type = TrainConfig, prefix: str = "") -> dict[str, type]:
    """``key -> int | float`` for every numeric field of the schema, Optional ones included
    (walked here, not taken from config_checks, so the two cannot drift together)."""
    found = {}
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            found.update(_numeric_schema_fields(kind, f"{prefix}{f.name}."))
        elif kind in (int, float):
            found[prefix + f.name] = kind
        elif set(typing.get_args(kind)) in ({int, type(None)}, {float, type(None)}):
            found[prefix + f.name] = next(a for a in typing.get_args(kind) if a is not type(None))
    return found


def test_every_numeric_setting_has_a_range():
    """A new int or float field of the schema needs its range in NUMERIC_RANGES."""
    fields = _numeric_schema_fields()
    assert len(fields) > 70  # the walk itself works
    assert sorted(set(fields) - set(NUMERIC_RANGES)) == []
    assert sorted(set(NUMERIC_RANGES) - set(fields)) == []  # no stale entries either


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_every_float_setting_refuses_non_finite_values_naming_the_key(value):
    base = compose_train()
    floats = [k for k, kind in _numeric_schema_fields().items() if kind is float]
    assert "stage.lr" in floats and "model.similarity.tau" in floats
    for key in floats:
        cfg = base.copy()
        OmegaConf.update(cfg, key, float(value))
        with pytest.raises(ConfigError) as err:
            validate_train(cfg)
        assert str(err.value).startswith(f"{key}: must be a finite number, got {value}"), key


def test_defaults_of_every_numeric_setting_are_in_range():
    default = TrainConfig()
    for key, allowed in NUMERIC_RANGES.items():
        value = default
        for part in key.split("."):
            value = getattr(value, part)
        assert value is None or (math.isfinite(value) and value in allowed), key


def test_empty_run_dir_is_refused_instead_of_training_into_the_current_folder(
    tiny_overrides, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    cfg = compose_train([*tiny_overrides, "stage.max_steps=1", "run_dir=''"])
    with pytest.raises(ConfigError, match=r"^run_dir: must name a folder"):
        run_stage(cfg)
    assert list(tmp_path.iterdir()) == []
