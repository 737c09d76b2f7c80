"""The data section of the typed configuration schema (``data/`` configs): layouts, modality,
the synthetic sign language and question assistance. ``config.py`` re-exports every name."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional


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


class Assist(str, Enum):
    """What a clip's ``question`` carries (question-based SLT, data/questions.py)."""

    none = "none"  # video only
    question = "question"  # the question the clip answers: data.questions_dir, or the dialogue
    gloss = "gloss"  # the clip's gloss sequence in the question's place (gloss assistance)


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
    # dialogue (data.assist=question): share of an answer's content words its question carries
    question_overlap: float = 0.5


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
    assist: Assist = Assist.none  # question-based SLT: what each record's question carries
    questions_dir: Optional[str] = None  # QA sidecar folder: <dir>/<split>.json {name: question}
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
