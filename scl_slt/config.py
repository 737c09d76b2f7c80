"""Typed configuration schema.

Every YAML file under ``configs/`` is merged onto these dataclasses (registered with Hydra's
ConfigStore as ``base_train`` / ``base_evaluate``), so an unknown key or a wrong type fails at
composition time, naming the key. Value checks that types cannot express live in
``validate_*`` below and run before any work starts.

Sections mirror the config groups: ``data/``, ``model/``, ``selection/``, ``stage/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""


# --------------------------------------------------------------------------------------- data
class Modality(str, Enum):
    features = "features"  # per-frame feature vectors, <feature_root>/<name>.npy, shape (T, D)
    frames = "frames"  # RGB frames through the ResNet-18 sign embedding


class Layout(str, Enum):
    synthetic = "synthetic"  # generated on first use into data.synthetic.cache_dir
    gfslt = "gfslt"  # labels.{train,dev,test} gzip-pickles (+ frames or features)
    official = "official"  # the datasets' own release layout (corpus CSVs / csl2020ct_v2.pkl)


class BadSample(str, Enum):
    error = "error"  # stop with the sample's name and path
    skip = "skip"  # drop the sample from its batch and count it (SignDataset.bad_sample_count)


class ResizeMode(str, Enum):
    square = "square"  # every frame to resize x resize, aspect not kept (GFSLT lineage)
    short_side = "short_side"  # shorter side to resize, aspect kept


@dataclass
class SyntheticConfig:
    """The built-in synthetic sign language (``scl_slt.data.synthetic``)."""

    seed: int = 0
    cache_dir: str = "${oc.env:SCL_SLT_CACHE,'~/.cache/scl_slt'}/synthetic"  # ~ is expanded
    num_train: int = 600
    num_dev: int = 80
    num_test: int = 80
    num_glosses: int = 40
    num_signers: int = 4
    feature_dim: int = 64
    min_glosses: int = 2  # glosses per sentence
    max_glosses: int = 6
    min_gloss_frames: int = 6  # frames per gloss motion
    max_gloss_frames: int = 10
    noise: float = 0.15  # per-frame Gaussian noise (features) / pixel noise (frames)
    signer_shift: float = 0.3  # strength of the per-signer style transform
    confusable_rate: float = 0.2  # share of glosses that have a near-identical twin
    confusable_distance: float = 0.1  # twin-to-partner motion distance / a random pair's (<= 0.4)
    duplicate_rate: float = 0.2  # share of train clips whose sentence is signed by another clip
    eval_seen_rate: float = 0.1  # share of dev/test clips whose sentence also occurs in train
    image_size: int = 32  # frames modality: rendered frame side in pixels


@dataclass
class DataConfig:
    name: str = "synthetic"  # synthetic | phoenix14t | csl_daily
    layout: Layout = Layout.synthetic
    modality: Modality = Modality.features
    language: str = "de"  # de (word-level metrics) | zh (character-level metrics)
    lang_code: str = "de_DE"  # mBART-50 target language code
    root: Optional[str] = None  # dataset root as released
    labels_dir: Optional[str] = None  # folder with GFSLT-style labels.{train,dev,test}
    feature_root: Optional[str] = None  # <feature_root>/<name>.npy
    frame_root: Optional[str] = None  # frames root for GFSLT-style labels
    frame_cache: Optional[str] = None  # uint8 frame store built by scl_slt.data.frame_cache
    max_frames: int = 300  # temporal subsampling above this
    resize: int = 256
    resize_mode: ResizeMode = ResizeMode.square
    crop: int = 224  # random crop (train) / centre crop (eval) after the resize
    augment: bool = True  # train-time clip-consistent augmentation (frames modality)
    # augment: chance that each of zoom, rotation, brightness, contrast is applied to a clip (the
    # lineage's "sometimes 0.5"); 1 applies all four to every clip
    augment_p: float = 0.5
    rotate_degrees: float = 5.0  # augment: rotation drawn from [-d, d]
    scale_jitter: float = 0.1  # augment: zoom drawn from [1 - j, 1 + j]
    brightness: float = 0.2  # augment: brightness factor drawn from [1 - b, 1 + b]
    contrast: float = 0.2  # augment: contrast factor drawn from [1 - c, 1 + c]
    # frames batches as uint8 pixels, colour change and ImageNet normalisation applied by the
    # model on its device (4x less to move than float32, same network input); false: float32
    frames_uint8: bool = True
    num_workers: int = 0
    on_bad_sample: BadSample = BadSample.error
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


# -------------------------------------------------------------------------------------- model
class SimilarityMethod(str, Enum):
    cico = "cico"  # fine-grained token-level similarity (default)
    cls = "cls"  # learned visual CLS token vs text EOS token, cosine
    mean = "mean"  # masked mean pooling on both sides, cosine


@dataclass
class SignEmbeddingConfig:
    feature_dim: int = 64  # input width in the features modality
    pretrained: str = "none"  # frames modality ResNet-18 weights: none | imagenet | <path>
    hidden: int = 1024  # temporal Conv1d width
    kernel: int = 5


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    )


@dataclass
class SimilarityConfig:
    method: SimilarityMethod = SimilarityMethod.cico
    proj_dim: int = 256
    tau: float = 0.07  # inner softmax temperature of the fine-grained similarity
    logit_scale_init: float = 2.6592  # ln(1 / 0.07)
    max_logit_scale: float = 4.6052  # ln(100)


@dataclass
class GenerationConfig:
    num_beams: int = 8
    max_length: int = 100
    length_penalty: float = 1.0


@dataclass
class ModelConfig:
    name: str = "tiny"  # tiny | mbart_large_50
    mbart_path: Optional[str] = None  # HF id (local cache only) or a directory
    tokenizer_path: Optional[str] = None  # defaults to mbart_path; tiny: trained on train texts
    # Tiny MBart dimensions (ignored when mbart_path is given).
    d_model: int = 64
    encoder_layers: int = 2
    decoder_layers: int = 2
    attention_heads: int = 4
    ffn_dim: int = 128
    vocab_size: int = 400  # tiny tokenizer's trained vocabulary size
    max_position_embeddings: int = 256
    init_std: float = 0.02  # tiny MBart weight init (MBartConfig.init_std); tiny.yaml: 0.1
    dropout: float = 0.1
    freeze_text_encoder: bool = True
    sign_embedding: SignEmbeddingConfig = field(default_factory=SignEmbeddingConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)


# ---------------------------------------------------------------------------------- selection
class SelectionName(str, Enum):
    random = "random"
    trajectory = "trajectory"
    text_semantic = "text_semantic"
    visual_confusable = "visual_confusable"
    online_trajectory = "online_trajectory"


class Schedule(str, Enum):
    linear = "linear"
    sqrt = "sqrt"
    log = "log"
    easy_only = "easy_only"
    hard_only = "hard_only"


class OnlineDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"


class TextScoreMethod(str, Enum):
    tfidf = "tfidf"  # TF-IDF cosine: words (de) / character 1-2-grams (zh)
    embedding = "embedding"  # mean-pooled sentence embeddings from text_model_path (local only)


@dataclass
class SelectionConfig:
    name: SelectionName = SelectionName.random
    schedule: Schedule = Schedule.log  # alpha = schedule((epoch + 1) / epochs), 0-based epoch
    pair_scores: Optional[str] = None  # N x N fp16 .npy written by scl_slt.score
    pool_size: Optional[int] = None  # sample this many candidates per pick (off by default)
    # text_semantic: scores from target-sentence similarity (scl_slt/selection/strategies.py)
    text_method: TextScoreMethod = TextScoreMethod.tfidf
    text_model_path: Optional[str] = None  # local sentence-embedding model dir (embedding)
    # visual_confusable: a reference run's snapshot folder (epoch-NNNN, or snapshots/ = latest)
    snapshot: Optional[str] = None
    # online_trajectory: per-pair EMA of in-batch similarity (scl_slt/selection/online.py)
    online_decay: float = 0.5  # weight of the previous average at each new observation
    online_dtype: OnlineDtype = OnlineDtype.float32  # state: 2 N^2 x 4 (or 2) bytes


@dataclass
class TrackerConfig:
    enabled: bool = False
    interval: int = 5  # epochs between snapshots (one is always taken before the first update)


# ------------------------------------------------------------------------------ loss / stage
@dataclass
class LossConfig:
    contrastive_weight: float = 1.0
    translation_weight: float = 1.0
    label_smoothing: float = 0.2
    mask_duplicate_texts: bool = False  # drop off-diagonal pairs whose targets are identical
    signcl_weight: float = 0.0  # 0.01 enables SignCL
    signcl_margin_min: float = 10.0
    signcl_margin_ratio: float = 2.3
    signcl_m: float = 64.0


class StageName(str, Enum):
    contrastive = "contrastive"  # stage 1: contrastive + translation
    translate = "translate"  # stage 2 (or the end-to-end baseline): translation only


class NonFinite(str, Enum):
    error = "error"
    skip = "skip"


@dataclass
class StageConfig:
    name: StageName = StageName.contrastive
    epochs: int = 80
    batch_size: int = 16  # global batch (split across ranks)
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    grad_accum: int = 1
    drop_last: bool = False
    eval_every: int = 1  # dev evaluation every N epochs (0: never)
    # Stage 1: dev retrieval R@K / median rank and Sign Density Ratio every N epochs (0: never;
    # null: with every dev evaluation, i.e. eval_every). scl_slt/alignment_metrics.py
    retrieval_every: Optional[int] = None
    eval_batch_size: int = 16
    keep_last: int = 2  # complete checkpoints kept
    keep_best: int = 1  # best-on-dev checkpoints kept
    average_best: bool = False  # average the kept best checkpoints at the end
    nonfinite: NonFinite = NonFinite.error
    max_nonfinite: int = 10  # skip mode: stop after this many non-finite steps in a row
    init_from: Optional[str] = None  # stage-1 run dir or checkpoint dir (stage 2)
    log_every: int = 10
    max_steps: Optional[int] = None  # stop early (smoke tests)
    sync_batchnorm: bool = False  # global-batch BN: temporal BN on any backend, ResNet's on CUDA


@dataclass
class TrainConfig:
    seed: int = 0
    run_dir: str = "runs/${now:%Y%m%d-%H%M%S}"
    runs_root: str = "runs"  # root of the experiment configs' chained run dirs (configs/experiment)
    resume: str = "none"  # none | auto | <checkpoint dir>
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    stage: StageConfig = field(default_factory=StageConfig)


@dataclass
class EvaluateConfig:
    run_dir: str = "???"  # a training run directory
    checkpoint: str = "best"  # best | last | <checkpoint dir>
    split: str = "test"  # dev | test | train (test: final evaluation only, never for selection)
    batch_size: int = 16
    num_beams: Optional[int] = None  # override the run's generation settings
    max_length: Optional[int] = None
    length_penalty: Optional[float] = None
    num_workers: Optional[int] = None  # default: the run's data.num_workers
    out_dir: Optional[str] = None  # default: <run_dir>/eval/<checkpoint tag>/<split>
    device: str = "auto"
    precision: str = "auto"


def register_configs() -> None:
    """Register the schemas with Hydra so YAML is validated against them."""
    from hydra.core.config_store import ConfigStore

    if not OmegaConf.has_resolver("now"):  # Hydra registers it only inside @hydra.main
        from datetime import datetime

        OmegaConf.register_new_resolver("now", lambda fmt: datetime.now().strftime(fmt))
    cs = ConfigStore.instance()
    cs.store(name="base_train", node=TrainConfig)
    cs.store(name="base_evaluate", node=EvaluateConfig)


# --------------------------------------------------------------------------------- validation
def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


# upper bound of each augmentation setting (all >= 0); ClipTransform checks them with this too
AUGMENT_RANGES = {
    "augment_p": 1.0,
    "rotate_degrees": 180.0,
    "scale_jitter": 0.9,
    "brightness": 1.0,
    "contrast": 1.0,
}


def check_augmentation(**values: float) -> None:
    """``data.<key>`` in [0, AUGMENT_RANGES[key]] for each given key; raises ConfigError."""
    for key, value in values.items():
        upper = AUGMENT_RANGES[key]
        _check(0.0 <= value <= upper, f"data.{key}", f"must be in [0, {upper}], got {value}")


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


def to_container(cfg: Any) -> dict:
    """A plain dict of a typed or Omega config (for saving, hashing and logging)."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.structured(cfg)
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
