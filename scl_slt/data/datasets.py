"""Build a split from ``DataConfig``: the one place that knows which layout lives where.

Layouts (``data.layout``) and where their parts come from:

==========  ==========================================  ===========================================
layout      records                                     frames (``modality=frames``)
==========  ==========================================  ===========================================
synthetic   generated labels (``ensure_synthetic``)     ``<generated root>/frames/<name>/``
gfslt       ``<labels_dir or root>/labels.{split}``     ``imgs_path`` or ``<frame_root or root>/<name>/``
official    corpus CSVs / ``csl2020ct_v2.pkl``          release folders (``official.py``) or ``frame_root``
==========  ==========================================  ===========================================

Features (``modality=features``) are ``<feature_root>/<name>.npy`` for every layout, each of
the width ``feature_width`` gives (the data config has no width of its own). With
``data.frame_cache`` set, frames come from the cache instead of files (``frame_store.py``; built
by ``frame_cache.py``).
Label files and ``csl2020ct_v2.pkl`` are pickles: they are loaded only from the paths configured.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import CONFIG_DIR, BadSample, ConfigError, DataConfig, Layout, Modality
from . import official
from .dataset import ClipSource, FeatureSource, FeatureWidth, SignDataset, feature_problem
from .frame_files import FolderFrameSource
from .frame_store import CachedFrameSource, FrameCache
from .frames import ClipTransform
from .labels import DataError, labels_path, read_labels
from .npy_header import read_npy_header
from .questions import assist_records
from .synthetic.generate import ensure_synthetic

log = logging.getLogger(__name__)


def _records(labels_dir: Path, split: str) -> list[dict]:
    labels = read_labels(labels_path(labels_dir, split))
    records = []
    for name, rec in labels.items():
        rec = dict(rec)
        rec.setdefault("name", name)
        records.append(rec)
    return records


def _synthetic_root(cfg: DataConfig) -> Path:
    return Path(ensure_synthetic(cfg.synthetic, cfg.modality))


def _required(value: str | None, key: str, what: str) -> Path:
    if not value:
        raise DataError(
            f"data.{key} is not set: {what} (set it in the data config or on the command line)"
        )
    return Path(value).expanduser()


def split_records(cfg: DataConfig, split: str) -> list[dict[str, Any]]:
    """The records of one split as the layout gives them (official PHOENIX: ``length`` None)."""
    if cfg.layout is Layout.synthetic:
        return _records(_synthetic_root(cfg), split)
    if cfg.layout is Layout.gfslt:
        where = cfg.labels_dir or cfg.root
        return _records(
            _required(where, "labels_dir", f"{cfg.name} needs its labels.* folder"), split
        )
    root = _required(cfg.root, "root", f"{cfg.name} (official layout) needs the release folder")
    return official.official_records(cfg.name, root, split, cfg.frame_root)


def frame_root_of(cfg: DataConfig) -> Path:
    """The folder frame paths are relative to (official records carry absolute ``frames_dir``)."""
    if cfg.frame_root:
        return Path(cfg.frame_root).expanduser()
    if cfg.layout is Layout.synthetic:
        return _synthetic_root(cfg) / "frames"
    root = _required(cfg.root, "frame_root", f"{cfg.name} frames: set data.frame_root or data.root")
    if cfg.layout is Layout.official:
        return official.default_frame_root(cfg.name, root)
    return root


def feature_root_of(cfg: DataConfig) -> Path:
    """The folder of ``<name>.npy`` feature files."""
    if cfg.layout is Layout.synthetic:
        return _synthetic_root(cfg) / "features"
    return _required(cfg.feature_root, "feature_root", "modality=features needs it")


def feature_width(
    cfg: DataConfig, records: Sequence[dict[str, Any]], feature_dim: int | None = None
) -> FeatureWidth | None:
    """The width every feature file must have: ``feature_dim`` when the caller knows it (pass
    ``model.sign_embedding.feature_dim``), else ``data.synthetic.feature_dim`` for the synthetic
    data, else the width of the first good file of ``records`` in their order (read from its
    header in the main process, so every DataLoader worker checks against the same number).
    None when no file is good: every sample then fails on its own account."""
    if feature_dim is not None:
        return FeatureWidth(feature_dim, "model.sign_embedding.feature_dim")
    if cfg.layout is Layout.synthetic:
        return FeatureWidth(cfg.synthetic.feature_dim, "data.synthetic.feature_dim")
    source = FeatureSource(feature_root_of(cfg))
    for record in records:
        path = source.path(record["name"])
        try:
            header = read_npy_header(path)
        except (OSError, ValueError):
            continue
        if not feature_problem(header.shape, header.dtype, None) and not header.truncated:
            return FeatureWidth(header.shape[1], f"the first good feature file {path}")
    return None


def build_source(cfg: DataConfig, train: bool, width: FeatureWidth | None = None) -> ClipSource:
    """Features (of ``width``) or frames (files or cache) for the configured layout and modality."""
    if cfg.modality is Modality.features:
        return FeatureSource(feature_root_of(cfg), width)
    return build_frame_source(cfg, frame_root=frame_root_of(cfg), train=train)


def build_frame_source(
    cfg: DataConfig, frame_root: Path, train: bool
) -> FolderFrameSource | CachedFrameSource:
    """The frame source of a split: the frame cache when ``data.frame_cache`` is set, else files.

    ``train`` allows random temporal sampling and augmentation (``data.augment``); a set cache
    folder without an index is an error (build it first; see ``scl_slt.data.frame_cache``)."""
    if cfg.resize <= 0:
        raise ConfigError(f"data.resize: must be positive, got {cfg.resize}")
    if cfg.max_frames <= 0:
        raise ConfigError(f"data.max_frames: must be positive, got {cfg.max_frames}")
    transform = ClipTransform.from_config(cfg)
    if cfg.frame_cache:
        cache = FrameCache(Path(cfg.frame_cache).expanduser())
        cache.check_matches(cfg)
        log.info("reading frames from the frame cache %s", cache.root)
        return CachedFrameSource(cache, transform, cfg.max_frames, train=train)
    return FolderFrameSource(
        frame_root, transform, cfg.max_frames, cfg.resize, cfg.resize_mode, train=train
    )


def _fill_lengths(records: list[dict[str, Any]], source: ClipSource) -> None:
    """``length`` = frames found, where the layout does not give it (0 when none are found)."""
    missing = 0
    for record in records:
        if record.get("length") is None:
            try:
                record["length"] = source.frame_count(record)
            except DataError:
                record["length"] = 0
                missing += 1
    if missing:
        log.warning(
            "%d samples have no readable frames; run python -m scl_slt.data.validate", missing
        )


def _check_known_broken(cfg: DataConfig, records: list[dict[str, Any]], source: ClipSource) -> None:
    """Fail at build time, not mid-epoch, on a known-broken clip that error mode would stop on."""
    if cfg.on_bad_sample is not BadSample.error or cfg.modality is not Modality.frames:
        return
    for record in records:
        if record.get("known_issue"):
            try:
                source.frame_count(record)
            except DataError as e:
                raise DataError(f"{e}; or drop the clip from the split") from e


def build_split(
    cfg: DataConfig, split: str, train: bool | None = None, feature_dim: int | None = None
) -> SignDataset:
    """The dataset of one split. ``train`` (default: split == "train") enables augmentation;
    ``feature_dim`` is the width feature files must have (see ``feature_width``). Records carry
    the ``question`` ``data.assist`` asks for (``questions.py``), checked before any clip is."""
    train = split == "train" if train is None else train
    records = assist_records(cfg, split, split_records(cfg, split))
    width = feature_width(cfg, records, feature_dim) if cfg.modality is Modality.features else None
    source = build_source(cfg, train, width)
    _check_known_broken(cfg, records, source)
    _fill_lengths(records, source)
    return SignDataset(
        records, source, cfg.max_frames, train=train, split=split, on_bad_sample=cfg.on_bad_sample
    )


# ------------------------------------------------------------------------- command-line config
def data_config_from_args(
    args: Sequence[str], extra_keys: Sequence[str] = ()
) -> tuple[DataConfig, dict[str, str]]:
    """``data=<name|file.yaml> data.key=value ... other=value`` -> (DataConfig, {other: value}).

    ``<name>`` is a file of ``configs/data/``; keys are checked against the schema, so a typo
    fails naming the key. Used by the data commands (validator, frame cache, benchmarks)."""
    layers: list[Any] = [OmegaConf.structured(DataConfig)]
    overrides, extra = [], {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"{arg!r}: expected key=value")
        if key == "data":
            path = Path(value).expanduser()
            if not path.suffix:
                path = CONFIG_DIR / "data" / f"{value}.yaml"
            if not path.is_file():
                raise ConfigError(f"data={value}: no config file {path}")
            layers.append(OmegaConf.load(path))
        elif key.startswith("data."):
            overrides.append(f"{key[len('data.') :]}={value}")
        elif key in extra_keys:
            extra[key] = value
        else:
            raise ConfigError(
                f"unknown argument {key!r} (expected data=..., data.<key>=... or {list(extra_keys)})"
            )
    try:
        merged = OmegaConf.merge(*layers, OmegaConf.from_dotlist(overrides))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"data config: {e}") from e
    return cfg, extra
