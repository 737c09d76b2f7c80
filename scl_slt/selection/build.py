"""The training batch sampler named by ``selection.name``: the one place that maps a selection to
its sampler (``samplers.py``: random; ``curriculum.py``: trajectory and the strategies that bring
other pair scores; ``online.py``: online_trajectory; ``self_reference.py``: self_trajectory)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import ConfigError, Schedule, SelectionConfig, SelectionName
from .curriculum import CurriculumBatchSampler, load_pair_scores
from .hard_negatives import build_san_sampler
from .online import OnlineCurriculumSampler, OnlineTrajectory
from .pair_scores.prepare import prepare_strategy_scores
from .samplers import (
    GlobalBatchSampler,
    RandomBatchSampler,
    check_distinct_targets,
    target_groups,
)
from .self_reference import SelfCurriculumSampler, SelfReference

log = logging.getLogger(__name__)

# Selections whose scores the training run produces: (what the engine passes as ``trajectory``,
# the sampler, how the error names it).
IN_RUN = {
    SelectionName.online_trajectory: (
        OnlineTrajectory,
        OnlineCurriculumSampler,
        "the OnlineTrajectory that the training loop updates after every step",
    ),
    SelectionName.self_trajectory: (
        SelfReference,
        SelfCurriculumSampler,
        "the SelfReference that stage 1 scores its own snapshots with",
    ),
}


def build_batch_sampler(
    cfg: SelectionConfig,
    num_samples: int,
    batch_size: int,
    epochs: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    *,
    texts: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    language: str | None = None,
    run_dir: str | os.PathLike | None = None,
    trajectory: Any = None,
    data: Any = None,
    device: Any = None,
) -> GlobalBatchSampler:
    """The training batch sampler named by ``selection.name``.

    ``trajectory`` memory-maps ``selection.pair_scores`` (the N x N file of the reference run)
    and checks that it matches the ``num_samples`` of the training split. ``text_semantic`` and
    ``visual_curriculum`` feed the same curriculum from their own score files
    (``pair_scores.prepare.prepare_strategy_scores``, written under ``run_dir``):
    ``text_semantic`` needs the train ``texts`` and ``language``, ``visual_curriculum``
    ``selection.snapshot`` (and checks ``names`` against it when given). ``san`` mines hard
    negatives per anchor (``hard_negatives.py``) with ``selection.checkpoint``'s sign embeddings
    of the train split, encoded once from ``data`` (the run's DataConfig) on ``device`` into
    ``run_dir``, and the train ``texts`` (``language`` for near-identical ones). ``online_trajectory``
    needs the ``OnlineTrajectory`` the training loop updates after every step (``online.py``),
    ``self_trajectory`` the ``SelfReference`` the stage scores its own snapshots with, passed as
    ``trajectory`` too (``self_reference.py``).
    ``selection.distinct_targets`` needs the train ``texts`` (any selection).
    """
    try:
        name = SelectionName(cfg.name)
    except ValueError as e:
        raise ConfigError(f"selection.name: unknown selection {cfg.name!r}") from e
    if name is SelectionName.visual_confusable:
        raise ConfigError(
            "selection.name: visual_confusable was renamed: visual_curriculum (the curriculum over "
            "a reference snapshot's visual similarity) or san (per-anchor hard negatives)"
        )
    if name is SelectionName.san:
        return build_san_sampler(
            cfg, num_samples, batch_size, seed, rank, world_size, drop_last, texts, names,
            language, run_dir, data, device,
        )  # fmt: skip
    groups = distinct_target_groups(cfg, texts, num_samples, batch_size)
    if groups is not None and rank == 0:
        log.info(
            "distinct targets: %d samples, %d distinct sentences, at most %d of one per epoch",
            num_samples,
            int(groups.max()) + 1,
            int(np.bincount(groups).max()),
        )
    if name is SelectionName.random:
        return RandomBatchSampler(
            num_samples, batch_size, seed, rank, world_size, drop_last, target_groups=groups
        )
    if cfg.pool_size is not None and cfg.pool_size < 1:
        raise ConfigError(f"selection.pool_size: must be >= 1 or null, got {cfg.pool_size}")
    if name in IN_RUN:  # the curriculum over scores the training run itself produces
        kind, sampler_class, what = IN_RUN[name]
        if not isinstance(trajectory, kind):
            raise ConfigError(
                f"selection.name: {name.value} needs {what} "
                "(build_batch_sampler(..., trajectory=...))"
            )
        if trajectory.num_samples != num_samples:
            raise ValueError(
                f"{name.value}: the trajectory covers {trajectory.num_samples} samples, "
                f"the training split has {num_samples}"
            )
        if rank == 0:
            log.info(
                "pair selection: %s, schedule %s, %d samples (%s)",
                name.value,
                Schedule(cfg.schedule).value,
                num_samples,
                trajectory.describe(),
            )
        return sampler_class(
            trajectory, batch_size, epochs, cfg.schedule, seed, rank, world_size, drop_last,
            cfg.pool_size, target_groups=groups,
        )  # fmt: skip
    if name is SelectionName.trajectory:
        path = cfg.pair_scores
    else:
        path = prepare_strategy_scores(cfg, num_samples, texts, names, language, run_dir)
    scores = load_pair_scores(path, num_samples)
    sampler = CurriculumBatchSampler(
        scores, batch_size, epochs, cfg.schedule, seed, rank, world_size, drop_last, cfg.pool_size,
        target_groups=groups,
    )  # fmt: skip
    sampler.kind = name.value  # a resumed run must use the same strategy's scores
    if rank == 0:
        log.info(
            "pair selection (%s): %s, schedule %s, %d samples, global batch %d, pool %s",
            name.value,
            path,
            sampler.schedule.value,
            num_samples,
            batch_size,
            cfg.pool_size,
        )
    return sampler


def distinct_target_groups(
    cfg: SelectionConfig, texts: Sequence[str] | None, num_samples: int, batch_size: int
) -> Any:
    """The samplers' target groups when ``selection.distinct_targets`` (else None): one id per
    train sample, equal iff the target texts are exactly equal strings. An epoch that cannot be
    built with distinct targets fails here, naming the sentence, before any batch is built."""
    if not cfg.distinct_targets:
        return None
    if texts is None:
        raise ConfigError(
            "selection.distinct_targets: needs the train texts "
            "(build_batch_sampler(..., texts=...))"
        )
    if len(texts) != num_samples:
        raise ValueError(
            f"selection.distinct_targets: {len(texts)} texts for {num_samples} train samples"
        )
    groups = target_groups(texts)
    first = {}  # group -> its first sample
    for index, group in enumerate(groups.tolist()):
        first.setdefault(group, index)

    def sentence(group: int) -> str:
        text = texts[first[group]]
        return repr(text if len(text) <= 60 else text[:57] + "...")

    check_distinct_targets(groups, batch_size, describe=lambda g: f"the sentence {sentence(g)}")
    return groups
