"""Every check of a training config that its types cannot express, run before any work starts.

``validate_train`` takes the composed config (or a typed one), rejects keys the schema does not
know (Hydra's ``+key=value`` would otherwise slip past it), checks ranges and the paths it names,
and returns the typed ``TrainConfig``; a failure is a ``ConfigError`` naming the key.

Numbers: every int and float field of the schema has its allowed range in ``NUMERIC_RANGES``
(``config_ranges.py``; ``tests/test_config.py`` walks the schema, so a new field without one fails the tests), and a
float must be finite. A value that passed here and failed later (``stage.lr=inf`` as a
non-finite loss, ``model.dropout=1.5`` inside torch) would fail after the run directory was
created and without naming the key.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import (
    ConfigError,
    DataConfig,
    Layout,
    Modality,
    PretrainTextConfig,
    SelectionName,
    StageName,
    TextScoreMethod,
    TrainConfig,
)
from .config_ranges import ANY, NUMERIC_RANGES, PRETRAIN_RANGES
from .data.synthetic.language import check_config as check_synthetic


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


# --------------------------------------------------------------------------- numeric settings
@functools.cache
def numeric_fields(schema: type = TrainConfig, prefix: str = "") -> dict[str, bool]:
    """``dotted key -> Optional?`` for every int and float field of ``schema`` (nested)."""
    found: dict[str, bool] = {}
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            found.update(numeric_fields(kind, f"{prefix}{f.name}."))
            continue
        args = set(typing.get_args(kind))
        optional = type(None) in args
        if kind in (int, float) or (optional and args - {type(None)} <= {int, float}):
            found[f"{prefix}{f.name}"] = optional
    return found


def _check_numbers(cfg: Any, schema: type = TrainConfig, ranges: dict | None = None) -> None:
    """Each numeric setting finite and in its range (``NUMERIC_RANGES``)."""
    ranges = NUMERIC_RANGES if ranges is None else ranges
    for key, optional in numeric_fields(schema).items():
        value = functools.reduce(getattr, key.split("."), cfg)
        if value is None and optional:
            continue
        _check(
            not isinstance(value, float) or math.isfinite(value),
            key,
            f"must be a finite number, got {value}",
        )
        allowed = ranges.get(key, ANY)
        _check(value in allowed, key, f"must be {allowed.describe(optional)}, got {value!r}")


def validate_frames(d: DataConfig) -> None:
    """The frame pipeline's settings, checked whatever the modality (a bad value is a typo
    waiting for the day the frames are used); their ranges are in ``NUMERIC_RANGES``."""
    _check(
        d.crop <= d.resize,
        "data.crop",
        f"{d.crop} is larger than the resized frames' shorter side (data.resize={d.resize})",
    )


def validate_train(cfg: TrainConfig | DictConfig) -> TrainConfig:
    """Check values types cannot express; return the typed object. Raises ConfigError."""
    if isinstance(cfg, DictConfig):
        schema = OmegaConf.to_container(OmegaConf.structured(TrainConfig), resolve=False)
        _reject_unknown_keys(OmegaConf.to_container(cfg, resolve=False), schema)
        cfg = OmegaConf.to_object(cfg)
    _check_numbers(cfg)
    s, d, m = cfg.stage, cfg.data, cfg.model
    for key in ("run_dir", "runs_root"):  # '' would write into the current folder
        _check(bool(getattr(cfg, key).strip()), key, "must name a folder, got ''")
    _check(cfg.resume in ("none", "auto") or bool(cfg.resume), "resume", "none | auto | a path")
    _check(cfg.precision in ("auto", "fp32", "bf16"), "precision", f"unknown {cfg.precision!r}")
    _check(d.language in ("de", "zh"), "data.language", f"de | zh, got {d.language!r}")
    validate_frames(d)
    if d.layout is Layout.synthetic:
        check_synthetic(d.synthetic)  # the generator's own bounds, e.g. the lexicon's size
    else:
        _check(
            any([d.root, d.labels_dir]),
            "data.root",
            f"dataset {d.name!r} needs data.root (or data.labels_dir): no data path given",
        )
        if d.modality is Modality.features:
            _check(bool(d.feature_root), "data.feature_root", "features modality needs it")
        asks = d.assist == "question" and not d.questions_dir  # real data: from the QA sidecar
        _check(not asks, "data.questions_dir", "data.assist=question needs the QA sidecar folder")
    _check(
        m.name != "tiny_pretrained" or bool(m.mbart_path),
        "model.mbart_path",
        "model=tiny_pretrained needs the folder written by python -m scl_slt.pretrain_text",
    )
    if not m.mbart_path:  # the tiny MBart's attention splits d_model into heads
        _check(
            m.d_model % m.attention_heads == 0,
            "model.attention_heads",
            f"must divide model.d_model={m.d_model}, got {m.attention_heads}",
        )
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


def _reject_missing(cfg: DictConfig) -> None:
    """A ``???`` value left unset, named before ``to_object`` turns it into an error that does
    not say which command line key to set."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    _check(not missing, missing[0] if missing else "", "a required value is not set (???)")


def _check_path(value: str | None, key: str) -> None:
    if value:
        _check(Path(value).expanduser().exists(), key, f"path does not exist: {value}")


def _validate_engine(cfg: TrainConfig) -> None:
    """Training-engine values: schedule, evaluation, faults, resume, and every path exists."""
    s, loss = cfg.stage, cfg.loss
    _check(s.warmup_epochs <= s.epochs, "stage.warmup_epochs", "must not exceed stage.epochs")
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
    for key in ("root", "labels_dir", "feature_root", "frame_root", "frame_cache", "questions_dir"):
        _check_path(getattr(d, key), f"data.{key}")
    _check_path(cfg.selection.pair_scores, "selection.pair_scores")
    if cfg.selection.diagnostics:
        _check_path(cfg.selection.diagnostics_reference, "selection.diagnostics_reference")
    _validate_selection(cfg)
    _check_path(s.init_from, "stage.init_from")
    if cfg.resume not in ("none", "auto"):
        _check_path(cfg.resume, "resume")
    m = cfg.model
    if d.modality is Modality.frames and m.sign_embedding.pretrained not in ("none", "imagenet"):
        _check_path(m.sign_embedding.pretrained, "model.sign_embedding.pretrained")
    for key in ("mbart_path", "tokenizer_path"):  # a folder, or a Hugging Face id like org/name
        value = getattr(m, key)
        if value and value.startswith(("/", "~", ".")):
            _check_path(value, f"model.{key}")


def _validate_selection(cfg: TrainConfig) -> None:
    """Fields of the selection strategies other than ``trajectory`` (stage 1 only)."""
    sel = cfg.selection
    _check(
        sel.name is not SelectionName.visual_confusable,
        "selection.name",
        "visual_confusable was renamed: visual_curriculum (the quantile curriculum over a "
        "reference snapshot's visual similarity, as before) or san (per-anchor hard negatives "
        "from a checkpoint's sign embeddings, same-target pairs excluded)",
    )
    if cfg.stage.name is not StageName.contrastive:
        return
    if sel.name is SelectionName.visual_curriculum:
        _check(
            bool(sel.snapshot),
            "selection.snapshot",
            "selection=visual_curriculum needs a reference run's snapshot folder (epoch-NNNN, "
            "its snapshots/ folder or the run folder)",
        )
        _check_path(sel.snapshot, "selection.snapshot")
    if sel.name is SelectionName.san:
        _check(
            bool(sel.checkpoint),
            "selection.checkpoint",
            "selection=san needs a stage-1 run folder (its best, else last checkpoint) or a "
            "checkpoint folder whose sign embeddings choose the hard negatives",
        )
        _check_path(sel.checkpoint, "selection.checkpoint")
        _check(
            sel.hard_negatives_candidates >= sel.hard_negatives_k,
            "selection.hard_negatives_candidates",
            f"must be >= selection.hard_negatives_k={sel.hard_negatives_k} (the neighbour list "
            f"holds each anchor's candidates), got {sel.hard_negatives_candidates}",
        )
        _check(
            not sel.distinct_targets,
            "selection.distinct_targets",
            "not available with selection=san: its mined negatives already have targets distinct "
            "from the batch; its anchors come in random order (loss.mask_duplicate_texts masks "
            "their duplicates in the loss)",
        )
    if sel.name is SelectionName.self_trajectory:
        _check(
            cfg.tracker.interval < cfg.stage.epochs,
            "tracker.interval",
            f"selection=self_trajectory snapshots the run every tracker.interval epochs and needs "
            f"one before the last epoch: must be < stage.epochs={cfg.stage.epochs}, got "
            f"{cfg.tracker.interval}",
        )
    if sel.name is SelectionName.text_semantic and sel.text_method is TextScoreMethod.embedding:
        _check(
            bool(sel.text_model_path),
            "selection.text_model_path",
            "selection.text_method=embedding needs a local sentence-embedding model folder",
        )
        _check_path(sel.text_model_path, "selection.text_model_path")


def validate_pretrain_text(cfg: PretrainTextConfig | DictConfig) -> PretrainTextConfig:
    """The text pretraining's config (``configs/pretrain_text.yaml``), checked before any work;
    returns the typed object. Raises ConfigError naming the key."""
    if isinstance(cfg, DictConfig):
        schema = OmegaConf.to_container(OmegaConf.structured(PretrainTextConfig), resolve=False)
        _reject_unknown_keys(OmegaConf.to_container(cfg, resolve=False), schema)
        _reject_missing(cfg)
        cfg = OmegaConf.to_object(cfg)
    _check_numbers(cfg, PretrainTextConfig, PRETRAIN_RANGES)
    p, d, m = cfg.pretrain, cfg.data, cfg.model
    _check(bool(p.out_dir.strip()), "pretrain.out_dir", "must name a folder, got ''")
    _check(
        re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device) is not None,
        "device",
        f"auto | cpu | cuda | cuda:N, got {cfg.device!r}",
    )
    _check(d.language in ("de", "zh"), "data.language", f"de | zh, got {d.language!r}")
    _check(
        not m.mbart_path and not m.tokenizer_path,
        "model.mbart_path",
        "pretraining builds the tiny MBart from model.* and trains its tokenizer (use model=tiny)",
    )
    _check(
        m.d_model % m.attention_heads == 0,
        "model.attention_heads",
        f"must divide model.d_model={m.d_model}, got {m.attention_heads}",
    )
    _check(p.warmup_steps <= p.steps, "pretrain.warmup_steps", "must not exceed pretrain.steps")
    if p.corpus:
        _check(Path(p.corpus).expanduser().is_file(), "pretrain.corpus", f"no file {p.corpus}")
    elif d.layout is Layout.synthetic:
        check_synthetic(d.synthetic)
    else:
        _check(
            any([d.root, d.labels_dir]),
            "data.root",
            f"dataset {d.name!r} needs data.root (or data.labels_dir), or set pretrain.corpus",
        )
        for key in ("root", "labels_dir"):
            _check_path(getattr(d, key), f"data.{key}")
    return cfg
