"""The training batch sampler named by ``selection.name``: the one place that maps a selection to
its sampler (``samplers.py``: random; ``curriculum.py``: trajectory and the strategies that bring
other pair scores; ``online.py``: online_trajectory)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from ..config import ConfigError, Schedule, SelectionConfig, SelectionName
from .curriculum import CurriculumBatchSampler, load_pair_scores
from .online import OnlineCurriculumSampler, OnlineTrajectory
from .pair_scores.prepare import prepare_strategy_scores
from .samplers import GlobalBatchSampler, RandomBatchSampler

log = logging.getLogger(__name__)


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
) -> GlobalBatchSampler:
    """The training batch sampler named by ``selection.name``.

    ``trajectory`` memory-maps ``selection.pair_scores`` (the N x N file of the reference run)
    and checks that it matches the ``num_samples`` of the training split. ``text_semantic`` and
    ``visual_confusable`` feed the same curriculum from their own score files
    (``pair_scores.prepare.prepare_strategy_scores``, written under ``run_dir``):
    ``text_semantic`` needs the train ``texts`` and ``language``, ``visual_confusable``
    ``selection.snapshot`` (and checks ``names`` against it when given). ``online_trajectory``
    needs the ``OnlineTrajectory`` the training loop updates after every step (``online.py``).
    """
    try:
        name = SelectionName(cfg.name)
    except ValueError as e:
        raise ConfigError(f"selection.name: unknown selection {cfg.name!r}") from e
    if name is SelectionName.random:
        return RandomBatchSampler(num_samples, batch_size, seed, rank, world_size, drop_last)
    if cfg.pool_size is not None and cfg.pool_size < 1:
        raise ConfigError(f"selection.pool_size: must be >= 1 or null, got {cfg.pool_size}")
    if name is SelectionName.online_trajectory:
        if not isinstance(trajectory, OnlineTrajectory):
            raise ConfigError(
                "selection.name: online_trajectory needs the OnlineTrajectory that the training "
                "loop updates after every step (build_batch_sampler(..., trajectory=...))"
            )
        if trajectory.num_samples != num_samples:
            raise ValueError(
                f"online_trajectory: the trajectory covers {trajectory.num_samples} samples, "
                f"the training split has {num_samples}"
            )
        if rank == 0:
            log.info(
                "pair selection: online trajectory, schedule %s, decay %s, %d samples",
                Schedule(cfg.schedule).value,
                trajectory.decay,
                num_samples,
            )
        return OnlineCurriculumSampler(
            trajectory, batch_size, epochs, cfg.schedule, seed, rank, world_size, drop_last,
            cfg.pool_size,
        )  # fmt: skip
    if name is SelectionName.trajectory:
        path = cfg.pair_scores
    else:
        path = prepare_strategy_scores(cfg, num_samples, texts, names, language, run_dir)
    scores = load_pair_scores(path, num_samples)
    sampler = CurriculumBatchSampler(
        scores, batch_size, epochs, cfg.schedule, seed, rank, world_size, drop_last, cfg.pool_size
    )
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
