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


@pytest.fixture
def recorded(monkeypatch) -> list[list[int]]:
    """The sample indices of every stage-1 training forward (one process: the global batch)."""
    from scl_slt.stages import contrastive

    batches: list[list[int]] = []
    original = contrastive.compute_losses

    def record(model, batch, cfg, runtime):
        batches.append(batch["indices"].tolist())
        return original(model, batch, cfg, runtime)

    monkeypatch.setattr(contrastive, "compute_losses", record)
    return batches


def fake_scored_reference(
    folder: Path,
    names: list[str],
    seed: int,
    epochs: tuple[int, int],
    thresholds: tuple[float, float],
    shares: tuple[float, float, float, float],
):
    """A scored reference run in ``python -m scl_slt.score``'s layout (``pair_scores.npy`` +
    ``.json``, ``scores/S-epoch-NNNN.npy`` of two snapshots, ``trajectory/summary.json`` with the
    given thresholds and H->L, H->H, L->H, L->L shares) whose δ and S are seeded random matrices;
    returns δ (fp16)."""
    import json

    import numpy as np

    from scl_slt.selection.tracker import names_hash

    n = len(names)
    rng = np.random.default_rng(seed)
    (folder / "scores").mkdir(parents=True)
    (folder / "trajectory").mkdir()
    delta = rng.normal(size=(n, n)).astype(np.float16)
    np.save(folder / "pair_scores.npy", delta)
    for epoch in epochs:
        np.save(folder / "scores" / f"S-epoch-{epoch:04d}.npy", rng.normal(size=(n, n)))
    snapshots = [{"epoch": e, "scores": f"scores/S-epoch-{e:04d}.npy"} for e in epochs]
    record = {"names_sha256": names_hash(names), "snapshots": snapshots}
    (folder / "pair_scores.json").write_text(json.dumps(record))
    first, last = thresholds
    summary = {
        "threshold": {"mode": "last_median", "first": first, "last": last},
        "shares": dict(zip(("H->L", "H->H", "L->H", "L->L"), shares)),
    }
    (folder / "trajectory" / "summary.json").write_text(json.dumps(summary))
    return delta


def sigterm_at_call(monkeypatch, stage_module, call: int) -> None:
    """Deliver a real SIGTERM to this process during the ``call``-th forward (1-based) of
    ``stage_module.compute_losses`` (the stage then stops at a checkpoint: a resume test)."""
    import os
    import signal

    original = stage_module.compute_losses
    calls = {"n": 0}

    def forward_then_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(stage_module, "compute_losses", forward_then_signal)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a test's gloo process group."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_gloo(rank: int, port: int, world: int = 2) -> None:
    """In a spawned test process: the environment ``torch.distributed`` reads to form a gloo
    group of ``world`` CPU ranks (the run then initialises it), one thread per rank."""
    import os

    import torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)


def interrupted_and_resumed(make_cfg, tmp_path, monkeypatch, stage_module, call: int, before_resume=None):  # fmt: skip
    """A stage run straight through (``<tmp>/straight``) and the same run stopped by SIGTERM
    during forward ``call`` (``<tmp>/stopped``), then resumed with ``resume=auto``;
    ``before_resume(stopped_dir)`` runs in between. ``make_cfg(*overrides)`` composes the
    config. Returns both results."""
    import pytest

    from scl_slt.stages import run_stage
    from scl_slt.training.runtime import TrainingInterrupted

    straight = run_stage(make_cfg(f"run_dir={tmp_path / 'straight'}"))
    stopped = tmp_path / "stopped"
    with monkeypatch.context() as m:
        sigterm_at_call(m, stage_module, call)
        with pytest.raises(TrainingInterrupted):
            run_stage(make_cfg(f"run_dir={stopped}"))
    if before_resume is not None:
        before_resume(stopped)
    return straight, run_stage(make_cfg(f"run_dir={stopped}", "resume=auto"))


def assert_same_final_weights(*results) -> None:
    """The runs' last checkpoints hold bit-identical weights."""
    import torch

    from scl_slt.rundir.checkpoint import load_weights

    first, *others = (load_weights(r["last_checkpoint"]) for r in results)
    for other in others:
        assert first.keys() == other.keys()
        assert all(torch.equal(first[k], other[k]) for k in first)
