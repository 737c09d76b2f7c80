"""Every check of a training config that its types cannot express, run before any work starts.

``validate_train`` takes the composed config (or a typed one), rejects keys the schema does not
know (Hydra's ``+key=value`` would otherwise slip past it), checks ranges and the paths it names,
and returns the typed ``TrainConfig``; a failure is a ``ConfigError`` naming the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import (
    AUGMENT_RANGES,
    ConfigError,
    DataConfig,
    Layout,
    Modality,
    SelectionName,
    StageName,
    TextScoreMethod,
    TrainConfig,
    check_augmentation,
)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def validate_frames(d: DataConfig) -> None:
    """The frame pipeline's settings, checked whatever the modality (a bad value is a typo
    waiting for the day the frames are used)."""
    _check(d.resize > 0, "data.resize", f"must be positive, got {d.resize}")
    _check(d.crop > 0, "data.crop", f"must be positive, got {d.crop}")
    _check(
        d.crop <= d.resize,
        "data.crop",
        f"{d.crop} is larger than the resized frames' shorter side (data.resize={d.resize})",
    )
    check_augmentation(**{key: getattr(d, key) for key in AUGMENT_RANGES})


def validate_train(cfg: TrainConfig | DictConfig) -> TrainConfig:
    """Check values types cannot express; return the typed object. Raises ConfigError."""
    if isinstance(cfg, DictConfig):
        schema = OmegaConf.to_container(OmegaConf.structured(TrainConfig), resolve=False)
        _reject_unknown_keys(OmegaConf.to_container(cfg, resolve=False), schema)
        cfg = OmegaConf.to_object(cfg)
    s, d, m = cfg.stage, cfg.data, cfg.model
    _check(s.epochs > 0, "stage.epochs", f"must be positive, got {s.epochs}")
    _check(s.batch_size > 0, "stage.batch_size", f"must be positive, got {s.batch_size}")
    _check(s.lr > 0, "stage.lr", f"must be positive, got {s.lr}")
    _check(s.weight_decay >= 0, "stage.weight_decay", "must be >= 0")
    _check(s.grad_accum >= 1, "stage.grad_accum", "must be >= 1")
    _check(s.grad_clip >= 0, "stage.grad_clip", "must be >= 0 (0 disables clipping)")
    _check(0 <= s.min_lr_ratio <= 1, "stage.min_lr_ratio", "must be in [0, 1]")
    _check(s.keep_last >= 1, "stage.keep_last", "must be >= 1")
    _check(s.keep_best >= 1, "stage.keep_best", "must be >= 1")
    _check(cfg.resume in ("none", "auto") or bool(cfg.resume), "resume", "none | auto | a path")
    _check(cfg.precision in ("auto", "fp32", "bf16"), "precision", f"unknown {cfg.precision!r}")
    _check(d.language in ("de", "zh"), "data.language", f"de | zh, got {d.language!r}")
    _check(d.max_frames > 0, "data.max_frames", "must be positive")
    validate_frames(d)
    if d.layout is not Layout.synthetic:
        _check(
            any([d.root, d.labels_dir]),
            "data.root",
            f"dataset {d.name!r} needs data.root (or data.labels_dir): no data path given",
        )
        if d.modality is Modality.features:
            _check(bool(d.feature_root), "data.feature_root", "features modality needs it")
    sim = m.similarity
    _check(sim.tau > 0, "model.similarity.tau", f"must be positive, got {sim.tau}")
    _check(sim.proj_dim > 0, "model.similarity.proj_dim", "must be positive")
    _check(m.lora.r > 0, "model.lora.r", "must be positive")
    _check(cfg.loss.label_smoothing >= 0, "loss.label_smoothing", "must be >= 0")
    _check(cfg.loss.signcl_weight >= 0, "loss.signcl_weight", "must be >= 0")
    _check(cfg.tracker.interval >= 1, "tracker.interval", "must be >= 1")
    needs_scores = cfg.selection.name in (SelectionName.trajectory,)
    if needs_scores and s.name is StageName.contrastive:
        _check(
            bool(cfg.selection.pair_scores),
            "selection.pair_scores",
            "selection=trajectory needs the pair_scores file written by `python -m scl_slt.score`",
        )
    if s.name is StageName.translate:
        _check(
            cfg.selection.name is SelectionName.random,
            "selection.name",
            "stage=translate uses random batches; pair selection belongs to stage=contrastive",
        )
    _validate_engine(cfg)
    return cfg


def _reject_unknown_keys(cfg: Any, schema: Any, prefix: str = "") -> None:
    """Keys added with Hydra's ``+key=value`` bypass the schema (and ``to_object`` would drop
    them silently): a misspelt key must fail, not be ignored. Walks plain containers."""
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        _check(key in schema, path, "unknown key (not in the config schema; misspelt?)")
        if isinstance(value, dict) and isinstance(schema[key], dict):
            _reject_unknown_keys(value, schema[key], f"{path}.")


def _check_path(value: str | None, key: str) -> None:
    if value:
        _check(Path(value).expanduser().exists(), key, f"path does not exist: {value}")


def _validate_engine(cfg: TrainConfig) -> None:
    """Training-engine values: schedule, evaluation, faults, resume, and every path exists."""
    s, loss = cfg.stage, cfg.loss
    _check(s.warmup_epochs >= 0, "stage.warmup_epochs", f"must be >= 0, got {s.warmup_epochs}")
    _check(s.warmup_epochs <= s.epochs, "stage.warmup_epochs", "must not exceed stage.epochs")
    _check(s.eval_every >= 0, "stage.eval_every", "must be >= 0 (0: never)")
    _check(s.eval_batch_size > 0, "stage.eval_batch_size", "must be positive")
    _check(
        s.retrieval_every is None or s.retrieval_every >= 0,
        "stage.retrieval_every",
        f"must be >= 0 (0: never) or null (with eval_every), got {s.retrieval_every}",
    )
    _check(s.log_every >= 1, "stage.log_every", "must be >= 1")
    _check(s.max_nonfinite >= 1, "stage.max_nonfinite", "must be >= 1")
    _check(s.max_steps is None or s.max_steps >= 1, "stage.max_steps", "must be >= 1 or null")
    _check(s.grad_clip == s.grad_clip, "stage.grad_clip", "must be a number, got nan")
    for key in ("contrastive_weight", "translation_weight"):
        _check(getattr(loss, key) >= 0, f"loss.{key}", "must be >= 0")
    _check(
        re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device) is not None,
        "device",
        f"auto | cpu | cuda | cuda:N, got {cfg.device!r}",
    )
    if s.name is StageName.translate:
        _check(loss.translation_weight > 0, "loss.translation_weight", "must be > 0 in stage 2")
        _check(not cfg.tracker.enabled, "tracker.enabled", "snapshots belong to stage=contrastive")
        _check(
            not s.retrieval_every,
            "stage.retrieval_every",
            "retrieval needs the text branch, which stage=translate drops (set it to 0 or null)",
        )
    else:
        _check(
            loss.contrastive_weight > 0,
            "loss.contrastive_weight",
            "stage=contrastive needs it > 0 (translation only is stage=translate)",
        )
        _check(s.init_from is None, "stage.init_from", "only stage=translate starts from a run")
    d = cfg.data
    for key in ("root", "labels_dir", "feature_root", "frame_root", "frame_cache"):
        _check_path(getattr(d, key), f"data.{key}")
    _check_path(cfg.selection.pair_scores, "selection.pair_scores")
    _validate_selection(cfg)
    _check_path(s.init_from, "stage.init_from")
    if cfg.resume not in ("none", "auto"):
        _check_path(cfg.resume, "resume")


def _validate_selection(cfg: TrainConfig) -> None:
    """Fields of the selection strategies other than ``trajectory`` (stage 1 only)."""
    sel = cfg.selection
    _check(
        0.0 <= sel.online_decay < 1.0,
        "selection.online_decay",
        f"must be in [0, 1), got {sel.online_decay}",
    )
    _check(
        sel.pool_size is None or sel.pool_size >= 1,
        "selection.pool_size",
        f"must be >= 1 or null, got {sel.pool_size}",
    )
    if cfg.stage.name is not StageName.contrastive:
        return
    if sel.name is SelectionName.visual_confusable:
        _check(
            bool(sel.snapshot),
            "selection.snapshot",
            "selection=visual_confusable needs a reference run's snapshot folder (epoch-NNNN, "
            "its snapshots/ folder or the run folder)",
        )
        _check_path(sel.snapshot, "selection.snapshot")
    if sel.name is SelectionName.text_semantic and sel.text_method is TextScoreMethod.embedding:
        _check(
            bool(sel.text_model_path),
            "selection.text_model_path",
            "selection.text_method=embedding needs a local sentence-embedding model folder",
        )
        _check_path(sel.text_model_path, "selection.text_model_path")
