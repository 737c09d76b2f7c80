"""Build a split from ``DataConfig``: the one place that knows which layout lives where."""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import DataConfig, Layout, Modality
from .dataset import FeatureSource, SignDataset
from .labels import DataError, labels_path, read_labels

log = logging.getLogger(__name__)


def _records(labels_dir: Path, split: str) -> list[dict]:
    labels = read_labels(labels_path(labels_dir, split))
    records = []
    for name, rec in labels.items():
        rec = dict(rec)
        rec.setdefault("name", name)
        records.append(rec)
    return records


def build_split(cfg: DataConfig, split: str, train: bool | None = None) -> SignDataset:
    """The dataset of one split. ``train`` (default: split == "train") enables augmentation."""
    train = split == "train" if train is None else train
    if cfg.layout is Layout.synthetic:
        from .synthetic import ensure_synthetic

        root = ensure_synthetic(cfg.synthetic, cfg.modality)
        records = _records(root, split)
        if cfg.modality is Modality.features:
            source = FeatureSource(root / "features")
        else:
            from .frames import build_frame_source

            source = build_frame_source(cfg, frame_root=root / "frames", train=train)
        return SignDataset(records, source, cfg.max_frames, train=train, split=split)
    if cfg.layout is Layout.gfslt:
        labels_dir = Path(cfg.labels_dir or cfg.root)
        records = _records(labels_dir, split)
        if cfg.modality is Modality.features:
            source = FeatureSource(cfg.feature_root)
        else:
            from .frames import build_frame_source

            source = build_frame_source(cfg, frame_root=Path(cfg.frame_root or cfg.root), train=train)
        return SignDataset(records, source, cfg.max_frames, train=train, split=split)
    raise DataError(f"data.layout={cfg.layout.value!r} is not supported yet")
