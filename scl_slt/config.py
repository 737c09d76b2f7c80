"""Typed configuration schema.

Every YAML file under ``configs/`` (shipped inside the package: ``CONFIG_DIR``) is merged onto
these dataclasses (registered with Hydra's ConfigStore as ``base_train`` / ``base_evaluate``), so
an unknown key or a wrong type fails at composition time, naming the key. Value checks that types
cannot express are ``config_checks.py``'s and run before any work starts.

Sections mirror the config groups: ``data/`` (``config_data.py``), ``model/``, ``selection/``,
``stage/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from .config_data import (  # noqa: F401  (the data section's schema, re-exported here)
    Assist,
    BadSample,
    DataConfig,
    Layout,
    Modality,
    ResizeMode,
    SyntheticConfig,
)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # shipped with the package


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""


# -------------------------------------------------------------------------------------- model
class Fusion(str, Enum):
    """How a question joins the video memory the decoder attends to (models/question_fusion.py)."""

    none = "none"  # video only (a question, if any, is not used for translation)
    concat = "concat"  # video and question tokens side by side, no mixing
    softmax = "softmax"  # self-attention over the joined sequence, softmax weights
    ssaw = "ssaw"  # the same with sigmoid weights: each token gated on its own (SSL-SSAW)


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
    fusion: Fusion = Fusion.none  # question-based SLT: the question encoder's output joins here
    # Speed options (models/speed_options.py), off by default; each matches the plain path to
    # float tolerance (tests/models/test_speed_options.py). Activation checkpointing: the MBart
    # layers and the ResNet stages keep only their inputs for backward and recompute the rest
    # (less memory, ~1/3 more compute). channels_last: ResNet-18 weights and frames in NHWC.
    activation_checkpointing: bool = False
    channels_last: bool = False
    sign_embedding: SignEmbeddingConfig = field(default_factory=SignEmbeddingConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)


# ---------------------------------------------------------------------------------- selection
class SelectionName(str, Enum):
    random = "random"
    trajectory = "trajectory"
    text_semantic = "text_semantic"
    visual_curriculum = "visual_curriculum"  # reference snapshot's visual similarity, curriculum
    san = "san"  # per-anchor hard negatives in the sign-embedding space (hard_negatives.py)
    online_trajectory = "online_trajectory"
    self_trajectory = "self_trajectory"  # the run's own snapshots, no reference run
    # Renamed (visual_curriculum or san): kept so old run configs still load; training refuses it.
    visual_confusable = "visual_confusable"


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
    # No two samples with exactly equal target text in one global batch, every sample still once
    # per epoch (any selection; selection/samplers.py DistinctTargets). loss.mask_duplicate_texts
    # instead keeps such pairs in the batch and only drops them from the contrastive softmax.
    distinct_targets: bool = False
    # text_semantic: scores from target-sentence similarity (scl_slt/selection/pair_scores/text.py)
    text_method: TextScoreMethod = TextScoreMethod.tfidf
    text_model_path: Optional[str] = None  # local sentence-embedding model dir (embedding)
    # visual_curriculum: a reference run's snapshot folder (epoch-NNNN, or snapshots/ = latest)
    snapshot: Optional[str] = None
    # san: a stage-1 run dir (its best, else last checkpoint) or a checkpoint dir to embed with
    checkpoint: Optional[str] = None
    hard_negatives_k: int = 3  # mined negatives per anchor
    hard_negatives_candidates: int = 16  # M: each sample's precomputed neighbour list (>= k)
    exclude_near_identical: bool = False  # also never pair targets with TF-IDF cosine >= 0.8
    # online_trajectory: per-pair EMA of in-batch similarity (scl_slt/selection/online.py)
    online_decay: float = 0.5  # weight of the previous average at each new observation
    online_dtype: OnlineDtype = OnlineDtype.float32  # state: 2 N^2 x 4 (or 2) bytes
    # batch diagnostics (selection/diagnostics.py): one metrics.jsonl record per stage-1 epoch
    diagnostics: bool = True
    diagnostics_reference: Optional[str] = None  # a scored reference run: δ, S, category figures


@dataclass
class TrackerConfig:
    enabled: bool = False
    interval: int = 5  # epochs between snapshots (one is always taken before the first update)


# ---------------------------------------------------------------------------------- retrieval
class DuplicateTargets(str, Enum):
    """How retrieval counts a candidate whose sentence is identical to the query's true one
    (scl_slt/eval/retrieval.py). exclude is the default: it neither rewards a model for a
    look-alike (hit) nor punishes it for a tie no text-side model can break (miss)."""

    hit = "hit"  # an identical sentence counts as a correct answer
    miss = "miss"  # only the true pair is correct; identical sentences are ordinary negatives
    exclude = "exclude"  # identical-sentence candidates (other than the true one) are removed


@dataclass
class RetrievalConfig:
    """The retrieval protocol of stage 1's dev retrieval and of evaluate (eval/retrieval.py)."""

    duplicates: DuplicateTargets = DuplicateTargets.exclude
    fine_k: int = 10  # fine-grained: the true item + the k TF-IDF-closest different sentences


@dataclass
class RetrievalOverrides:
    """evaluate's retrieval settings; null keeps the evaluated run's ``retrieval.<key>``."""

    duplicates: Optional[DuplicateTargets] = None
    fine_k: Optional[int] = None


# ------------------------------------------------------------------------------ loss / stage
@dataclass
class LossConfig:
    contrastive_weight: float = 1.0
    translation_weight: float = 1.0
    label_smoothing: float = 0.2
    mask_duplicate_texts: bool = False  # drop off-diagonal pairs whose targets are identical
    # (selection.distinct_targets keeps such pairs out of a batch instead: the batch is all used)
    signcl_weight: float = 0.0  # 0.01 enables SignCL
    # SignCL's margin, in video frames: max(margin_min, frames / spoken words x ratio); negatives
    # are frames more than 2 x margin apart (losses.signcl_loss converts it to feature steps)
    signcl_margin_min: float = 10.0
    signcl_margin_ratio: float = 2.3  # spoken words per gloss (the paper's Zipf factor)
    signcl_m: float = 64.0  # hinge: negatives are pushed until this Euclidean distance
    # question-based SLT (data.assist): video-question InfoNCE and masked LM on the question
    question_contrastive_weight: float = 0.0
    mlm_weight: float = 0.0
    mlm_mask_ratio: float = 0.15  # share of a question's tokens masked for the MLM term


class StageName(str, Enum):
    contrastive = "contrastive"  # stage 1: contrastive + translation
    translate = "translate"  # stage 2 (or the end-to-end baseline): translation only


class NonFinite(str, Enum):
    error = "error"
    skip = "skip"


class OptimizerImpl(str, Enum):
    """How AdamW runs its update (training/optim.py); all give the same update to float
    rounding, foreach the very same on the CPU (tests/training/test_optimizer_impl.py)."""

    auto = "auto"  # fused on CUDA, foreach elsewhere
    foreach = "foreach"  # one multi-tensor op per step phase
    fused = "fused"  # one fused kernel (CUDA; the CPU from torch 2.4)
    plain = "plain"  # a loop over the parameters (torch's default on the CPU)


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
    optimizer_impl: OptimizerImpl = OptimizerImpl.auto
    compile: bool = False  # torch.compile the MBart layers and ResNet stages (models/speed_options)


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
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)


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
    retrieval: RetrievalOverrides = field(default_factory=RetrievalOverrides)  # null: the run's


@dataclass
class DenoisingConfig:
    """mBART-style text pretraining of the tiny MBart (``models/text_pretrain.py``)."""

    out_dir: str = "???"  # the folder model.mbart_path= loads (written whole at the end)
    corpus: Optional[str] = None  # text file, one sentence per line; null: data's train texts
    overwrite: bool = False  # replace a finished out_dir pretrained with other settings
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    mask_ratio: float = 0.35  # share of the words of a text inside masked spans
    poisson_lambda: float = 3.5  # mean span length (words); a span becomes one <mask>
    permute_sentences: bool = True  # shuffle the sentence order of a multi-sentence text
    checkpoint_every: int = 250  # steps between resumable checkpoints in <out_dir>.work
    log_every: int = 50
    probe_sentences: int = 1000  # the check: sentences retrieved under noise
    probe_pairs: int = 2000  # the check: pairs per kind (near-identical, random)


@dataclass
class PretrainTextConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: DenoisingConfig = field(default_factory=DenoisingConfig)


def register_configs() -> None:
    """Register the schemas with Hydra so YAML is validated against them."""
    from hydra.core.config_store import ConfigStore

    if not OmegaConf.has_resolver("now"):  # Hydra registers it only inside @hydra.main
        from datetime import datetime

        OmegaConf.register_new_resolver("now", lambda fmt: datetime.now().strftime(fmt))
    cs = ConfigStore.instance()
    cs.store(name="base_train", node=TrainConfig)
    cs.store(name="base_evaluate", node=EvaluateConfig)
    cs.store(name="base_pretrain_text", node=PretrainTextConfig)


# ------------------------------------------------------------------------------- composition
def compose_config(config_name: str = "train", overrides: Sequence[str] = ()) -> DictConfig:
    """``configs/<config_name>.yaml`` plus Hydra overrides, composed as the commands compose them
    (not validated: ``validate_train`` does that)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


# ------------------------------------------------------------------------------ value ranges
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
        if not 0.0 <= value <= upper:
            raise ConfigError(f"data.{key}: must be in [0, {upper}], got {value}")


def to_container(cfg: Any) -> dict:
    """A plain dict of a typed or Omega config (for saving, hashing and logging)."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.structured(cfg)
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
