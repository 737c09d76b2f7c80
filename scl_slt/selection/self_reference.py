"""Self-referenced selection (``selection=self_trajectory``): SCL's curriculum without a
reference run.

SCL-SLT's trajectories come from a whole extra contrastive run (the reference run) before the
real one. Here the stage-1 run is its own reference:

1. the snapshot tracker (``tracker.py``) encodes the train split before the first update and
   every ``tracker.interval`` epochs into ``<run_dir>/snapshots/epoch-NNNN/``, as in a reference
   run (only the snapshots a later epoch uses: none after the last epoch unless
   ``tracker.enabled`` asks for it);
2. after the snapshot at epoch k > 0, rank 0 scores all pairs of it with the all-pairs scorer
   (``pair_scores.trajectory.score_snapshot``: ``S^k`` into ``<run_dir>/self_scores/``, S^0 the
   first time) and writes ``δ^k = S^k - S^0`` (the endpoints protocol over the snapshots so far,
   ``trajectory.trajectory_delta``) as ``self_scores/delta-epoch-NNNN.npy``, an fp16 N x N file
   with its record; the other ranks wait for it and read the same file;
3. training epoch e (0-based; e epochs are complete before it starts) takes the curriculum of
   ``CurriculumBatchSampler`` (α = schedule((e + 1) / epochs), the same builder) over the δ of
   the latest snapshot k with 0 < k <= e. The epochs before the first interval have no trajectory
   yet and get shuffled batches, like the reference run's.

Which δ an epoch uses depends on the epoch alone and every δ file is written before the
checkpoint of its epoch, so a resumed run rebuilds the very same batches; a δ file missing at
resume is rescored from its snapshot (``SelfReference.ensure``). Disk: only S^0 and the newest δ
are kept (each N^2 x 2 bytes: 101 MB at PHOENIX14T, 677 MB at CSL-Daily); S^k and older δ files
are removed once the new δ is written (the snapshots stay, so any of them can be rescored).

Cost, against CL-SLT's stage 1 with the same epochs: one no-gradient pass over the train split
per snapshot (epochs / interval of them) and one N x N scoring per snapshot (plus S^0); the time
of each is logged as a ``self_reference`` record of ``metrics.jsonl``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed
from ..config import SimilarityMethod
from ..rundir.atomic import write_json_atomic
from .curriculum import CurriculumBatchSampler, load_pair_scores
from .pair_scores.score_file import new_score_matrix, record_matches, record_path
from .pair_scores.trajectory import score_snapshot
from .tracker import read_snapshot, snapshot_dirname, snapshots_dir
from .trajectory import trajectory_delta

log = logging.getLogger(__name__)

SELF_SCORES_DIRNAME = "self_scores"  # <run_dir>/self_scores/{S,delta}-epoch-NNNN.npy


class SelfReference:
    """The run's own snapshots -> the δ each later epoch's curriculum uses.

    ``interval``: epochs between snapshots (``tracker.interval``); ``epochs``: the stage's epochs;
    ``method`` / ``tau``: the run's similarity (``model.similarity``), the one its loss uses.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        num_samples: int,
        interval: int,
        epochs: int,
        method: SimilarityMethod | str,
        tau: float,
        device: str | torch.device | None = None,
    ):
        if interval < 1:
            raise ValueError(f"tracker.interval: must be >= 1, got {interval}")
        if interval >= epochs:
            raise ValueError(
                f"tracker.interval: selection=self_trajectory needs a snapshot before the last "
                f"epoch, got interval {interval} for {epochs} epochs"
            )
        self.run_dir = Path(run_dir)
        self.num_samples = int(num_samples)
        self.interval = int(interval)
        self.epochs = int(epochs)
        self.method = SimilarityMethod(method)
        self.tau = float(tau)
        self.device = device

    @property
    def scores_dir(self) -> Path:
        return self.run_dir / SELF_SCORES_DIRNAME

    def describe(self) -> str:
        return f"its own snapshots every {self.interval} epochs"

    # ------------------------------------------------------------------ which snapshot, when
    def due(self, completed_epochs: int) -> bool:
        """Whether the snapshot after ``completed_epochs`` serves a later epoch."""
        return completed_epochs < self.epochs and completed_epochs % self.interval == 0

    def source_epoch(self, epoch: int) -> int | None:
        """The snapshot whose δ (against snapshot 0) 0-based epoch ``epoch`` uses; None: none
        yet (shuffled batches)."""
        k = (epoch // self.interval) * self.interval
        return k if k > 0 else None

    def delta_path(self, k: int) -> Path:
        return self.scores_dir / f"delta-{snapshot_dirname(k)}.npy"

    # ----------------------------------------------------------------------------- scoring
    def update(self, completed_epochs: int) -> dict[str, Any]:
        """Score the snapshot just taken after ``completed_epochs`` epochs and write its δ (rank
        0; every rank calls this and returns once the file is there). Returns the timing record."""
        return distributed.on_main_process(lambda: self._write_delta(completed_epochs))

    def ensure(self, completed_epochs: int) -> None:
        """At a resume: the δ the next epoch needs exists, else it is scored from its snapshot."""
        k = self.source_epoch(completed_epochs)
        if k is not None and not self._delta_done(k):
            log.info("self-referenced selection: δ of snapshot %d missing, scoring it again", k)
            self.update(k)

    def _delta_key(self, k: int) -> dict[str, Any]:
        return {"first": 0, "last": k, "method": self.method.value, "tau": self.tau}

    def _delta_done(self, k: int) -> bool:
        return record_matches(self.delta_path(k), {"key": self._delta_key(k)})

    def _snapshot(self, k: int):
        path = snapshots_dir(self.run_dir) / snapshot_dirname(k)
        snapshot = read_snapshot(path)  # SnapshotError naming the folder when incomplete
        if snapshot.num_samples != self.num_samples:
            raise ValueError(
                f"{path}: {snapshot.num_samples} samples, the training split has {self.num_samples}"
            )
        return snapshot

    def _write_delta(self, k: int) -> dict[str, Any]:
        started = time.perf_counter()
        self.scores_dir.mkdir(parents=True, exist_ok=True)

        def score(e: int) -> Path:  # S^e, reused when already scored
            return score_snapshot(
                self._snapshot(e), self.scores_dir, self.method, self.tau, self.device
            )

        first, last = score(0), score(k)
        scored = time.perf_counter()
        path = self.delta_path(k)
        record_path(path).unlink(missing_ok=True)
        with new_score_matrix(path, self.num_samples) as out:
            S = (np.load(p, mmap_mode="r") for p in (first, last))
            trajectory_delta(S, [0, k], "endpoints", out=out)
        self._prune(k, keep=(first, path))
        seconds = {
            "score_s": round(scored - started, 3),
            "delta_s": round(time.perf_counter() - scored, 3),
        }
        write_json_atomic(
            record_path(path),
            {
                "key": self._delta_key(k),
                "layout": "delta[i, j] = S^last - S^first for video i and text j of the train "
                "split, dataset order",
                "scores": [str(first), str(last)],
                "num_samples": self.num_samples,
                **seconds,
            },
        )
        log.info(
            "self-referenced selection: δ of snapshots 0 -> %d, %d x %d pairs, scored in %.1fs "
            "(+%.1fs δ) -> %s",
            k,
            self.num_samples,
            self.num_samples,
            seconds["score_s"],
            seconds["delta_s"],
            path,
        )
        return {"epoch": k, **seconds}

    def _prune(self, k: int, keep: tuple[Path, Path]) -> None:
        """Remove the score files no later epoch reads: S^j (j > 0) and δ files other than
        δ^k (with their records)."""
        for npy in self.scores_dir.glob("*.npy"):
            if npy not in keep and (npy.name.startswith(("S-", "delta-"))):
                npy.unlink(missing_ok=True)
                record_path(npy).unlink(missing_ok=True)

    def delta(self, k: int) -> np.ndarray:
        """δ^k, memory-mapped; a clear error when it was never written."""
        if not self._delta_done(k):
            raise FileNotFoundError(
                f"self-referenced selection: {self.delta_path(k)} (δ of snapshot {k}) is missing "
                "or incomplete; the stage writes it right after that snapshot"
            )
        return load_pair_scores(self.delta_path(k), self.num_samples)


class SelfCurriculumSampler(CurriculumBatchSampler):
    """Curriculum batches over the run's own δ (``SelfReference``); shuffled batches until the
    first interval. The epoch's δ is read when its batches are built, at the epoch's start."""

    kind = "self_trajectory"

    # Built like CurriculumBatchSampler, with the SelfReference in place of the pair scores.
    def _attach(self, reference: SelfReference) -> int:  # type: ignore[override]
        self.reference = reference
        self._source: int | None = None
        return reference.num_samples

    def _build_epoch(self, epoch: int) -> list[list[int]]:
        self._source = self.reference.source_epoch(epoch)
        return super()._build_epoch(epoch)

    def _shuffled(self, epoch: int) -> bool:
        return self.reference.source_epoch(epoch) is None

    def _epoch_scores(self, rng: np.random.Generator) -> tuple[np.ndarray, None]:
        return self.reference.delta(self._source), None

    def _epoch_note(self) -> str:
        return f", δ of its own snapshots 0 -> {self._source}"

    def _identity(self) -> dict[str, Any]:
        return {**super()._identity(), "interval": self.reference.interval}
