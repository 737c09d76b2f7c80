"""Shared fixtures: training configs composed from the real ``configs/`` with tiny overrides.

``compose_train(overrides)`` is exactly what ``python -m scl_slt.train`` composes (Hydra compose
API over ``configs/train.yaml``). ``tiny_train_cfg(*overrides)`` adds the test sizes below: a few
dozen synthetic samples in a per-session cache, a very small model, two short epochs, greedy
decoding, CPU. Pass more ``key=value`` overrides to change anything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]

TINY_OVERRIDES = (
    "device=cpu",
    "data.synthetic.num_train=24",
    "data.synthetic.num_dev=6",
    "data.synthetic.num_test=6",
    "data.synthetic.feature_dim=16",
    "model.sign_embedding.feature_dim=16",
    "model.sign_embedding.hidden=32",
    "model.d_model=32",
    "model.ffn_dim=64",
    "model.attention_heads=2",
    "model.encoder_layers=1",
    "model.decoder_layers=1",
    "model.similarity.proj_dim=16",
    "model.generation.num_beams=1",
    "model.generation.max_length=12",
    "stage.epochs=2",
    "stage.batch_size=8",
    "stage.eval_batch_size=8",
    "stage.log_every=1",
)


def compose_train(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """configs/train.yaml + overrides, through Hydra's compose API (no validation yet)."""
    from scl_slt.config import compose_config

    return compose_config("train", overrides)


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory) -> Path:
    """One synthetic-data cache per test session (generated once per distinct data config)."""
    return tmp_path_factory.mktemp("synthetic-cache")


@pytest.fixture
def tiny_overrides(synthetic_cache, tmp_path) -> list[str]:
    return [
        *TINY_OVERRIDES,
        f"data.synthetic.cache_dir={synthetic_cache}",
        f"run_dir={tmp_path / 'run'}",
    ]


@pytest.fixture
def tiny_train_cfg(tiny_overrides) -> Callable[..., DictConfig]:
    """Factory: ``tiny_train_cfg("stage=translate", "stage.max_steps=2")`` -> composed config."""

    def make(*overrides: str) -> DictConfig:
        return compose_train([*tiny_overrides, *overrides])

    return make
