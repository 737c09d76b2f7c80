"""What an epoch's batches teach: figures over the in-batch negative pairs of any sampler.

The contrastive loss contrasts every sample of a global batch with every other one, so a
sampler decides which negatives the model sees. For an epoch's global batches (dataset indices
of the train split) ``BatchDiagnostics`` measures, over the **in-batch negative pairs** (every
unordered pair of two different samples inside one global batch; P pairs):

- ``identical_share``: pairs whose target sentences are identical (false negatives);
- ``near_identical_share``: pairs of *different* sentences whose TF-IDF cosine
  (``pair_scores.text.tfidf_vectors`` over the train texts, ``pair_similarity``) is at least
  ``NEAR_IDENTICAL_TFIDF``; ``text_similarity_mean``: the mean TF-IDF cosine of all P pairs;
- ``confusable_share`` (synthetic data, whose ``meta.json`` lists confusable gloss twins): pairs
  whose gloss sequences differ only by twin swaps and whose targets differ
  (``trajectory.confusable_pairs``);
- with a scored reference run (``Reference``: its ``pair_scores.npy`` = δ, the first and last
  ``scores/S-epoch-NNNN.npy``, the H/L thresholds of ``trajectory/summary.json``): mean and
  10/50/90 % quantiles of δ (``delta_*``) and of the last snapshot's similarity
  (``similarity_*``), and the H->L / H->H / L->H / L->L mix (``share_HL`` ... ``share_LL``; H =
  strictly above the threshold, as ``trajectory.categorize``). δ and S are per (video i, text j),
  not symmetric, and the loss uses both (i, j) and (j, i): these figures are over the 2P ordered
  pairs.

``all_negatives`` holds the same figures over every negative pair of the split for comparison:
exact for the shares of identical and confusable targets and for the category mix (the
reference's own ``summary.json`` shares), from a fixed random sample of ``ALL_NEGATIVES_SAMPLE``
ordered pairs for δ and the similarity once N (N - 1) exceeds twice that (exact below).

The N x N files are memory-mapped and only the pairs asked for are read (sorted by position), so
an epoch at CSL-Daily scale (N = 18,400, batch 16: 138k pairs) takes about a second. The result
is a flat dict of numbers (JSON-able), plus the ``all_negatives`` and ``reference`` dicts.
``replay`` replays a sampler's epochs without training (``python -m scl_slt.diagnose``); stage 1
logs one record per epoch (``log_epoch``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError, DataConfig, Layout, TrainConfig
from ..data.datasets import split_records
from ..data.synthetic.generate import META, ensure_synthetic
from ..distributed import is_main_process
from .build import build_batch_sampler
from .pair_scores.text import NEAR_IDENTICAL_TFIDF, pair_similarity, tfidf_vectors
from .pair_scores.trajectory import PAIR_SCORES, SCORES_DIRNAME
from .tracker import names_hash
from .trajectory import CATEGORIES, confusable_pairs
from .trajectory_report import REPORT_DIRNAME

log = logging.getLogger(__name__)

RECORD = "batch_diagnostics"  # the metrics.jsonl split (and "kind") of the per-epoch record
QUANTILES = (0.1, 0.5, 0.9)
ALL_NEGATIVES_SAMPLE = 1_000_000
CATEGORY_KEYS = {c: "share_" + c.replace("->", "") for c in CATEGORIES}  # H->L: share_HL


class DiagnosticsError(ConfigError):
    """A reference run that cannot feed the diagnostics (a file missing or not matching)."""


# ------------------------------------------------------------------------------------ pairs
def in_batch_pairs(batches: Iterable[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(I, J): every unordered pair of positions a < b inside each batch, as dataset indices; a
    pair of the same index twice (not a negative) is left out."""
    by_size: dict[int, list[Sequence[int]]] = {}
    for batch in batches:
        by_size.setdefault(len(batch), []).append(batch)
    rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for size, group in by_size.items():
        if size < 2:
            continue
        members = np.asarray(group, dtype=np.int64)  # (batches, size)
        a, b = np.triu_indices(size, 1)
        rows.append(members[:, a].ravel())
        cols.append(members[:, b].ravel())
    i, j = np.concatenate(rows), np.concatenate(cols)
    keep = i != j
    return i[keep], j[keep]


def gather(matrix: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``matrix[rows, cols]`` as float64, read in file order (a memory map is paged in once)."""
    n = matrix.shape[1]
    flat = rows.astype(np.int64) * n + cols.astype(np.int64)
    order = np.argsort(flat, kind="stable")
    out = np.empty(flat.size, dtype=np.float64)
    out[order] = np.asarray(matrix.reshape(-1)[flat[order]], dtype=np.float64)
    return out


def value_summary(prefix: str, values: np.ndarray) -> dict[str, float | None]:
    """``<prefix>_mean`` and ``<prefix>_q10/_q50/_q90`` (None without values)."""
    keys = [f"{prefix}_mean", *(f"{prefix}_q{round(100 * q)}" for q in QUANTILES)]
    if values.size == 0:
        return dict.fromkeys(keys)
    numbers = [float(values.mean()), *np.quantile(values, QUANTILES).tolist()]
    return dict(zip(keys, numbers))


def category_shares(first: np.ndarray, last: np.ndarray, thresholds: tuple[float, float]) -> dict:
    """The H/L mix of pairs from their first and last similarity (``trajectory.categorize``)."""
    if first.size == 0:
        return dict.fromkeys(CATEGORY_KEYS.values())
    high0, high_k = first > thresholds[0], last > thresholds[1]
    codes = np.where(high0, np.where(high_k, 1, 0), np.where(high_k, 2, 3))
    tally = np.bincount(codes, minlength=4)
    return {CATEGORY_KEYS[c]: float(tally[k] / codes.size) for k, c in enumerate(CATEGORIES)}


# -------------------------------------------------------------------------------- reference
def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise DiagnosticsError(f"selection.diagnostics_reference: {path} not found ({what})")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise DiagnosticsError(f"{path}: not JSON ({e})") from e


def _open_matrix(path: Path, n: int) -> np.ndarray:
    if not path.is_file():
        raise DiagnosticsError(f"selection.diagnostics_reference: {path} not found")
    matrix = np.load(path, mmap_mode="r")
    if matrix.shape != (n, n):
        raise DiagnosticsError(
            f"{path}: shape {matrix.shape}, but the training split has {n} samples "
            "(the reference run must be scored on the same train split)"
        )
    return matrix


@dataclass
class Reference:
    """A scored reference run, memory-mapped: δ, the first and last similarity, thresholds."""

    path: Path
    delta: np.ndarray  # (N, N) memmap
    first: np.ndarray  # (N, N) memmap, S at the first snapshot
    last: np.ndarray  # (N, N) memmap, S at the last snapshot
    thresholds: tuple[float, float]  # H/L split at the first and the last snapshot
    mode: str
    shares: dict[str, float]  # the category mix over all negatives (summary.json)

    @classmethod
    def load(
        cls, run_dir: str | os.PathLike, num_samples: int, names: Sequence[str] | None = None
    ) -> Reference:
        """Open the run's files (``score.py``'s layout); a missing file or a different split is
        a DiagnosticsError naming the file."""
        run_dir = Path(run_dir).expanduser()
        if not run_dir.is_dir():
            raise DiagnosticsError(f"selection.diagnostics_reference: no folder {run_dir}")
        delta_path = run_dir / PAIR_SCORES
        record_file = delta_path.with_suffix(".json")
        record = _read_json(record_file, "written by python -m scl_slt.score")
        if names is not None and record.get("names_sha256") not in (None, names_hash(names)):
            raise DiagnosticsError(
                f"{record_file}: scored on other samples or another order than the train split"
            )
        snapshots = record.get("snapshots") or []
        if len(snapshots) < 2:
            raise DiagnosticsError(f"{record_file}: fewer than two scored snapshots")
        # By file name under <run>/scores: the recorded absolute paths break when runs move.
        s_paths = [run_dir / SCORES_DIRNAME / Path(s["scores"]).name for s in snapshots]
        summary_path = run_dir / REPORT_DIRNAME / "summary.json"
        summary = _read_json(summary_path, "the trajectory report of python -m scl_slt.score")
        try:
            threshold = summary["threshold"]
            thresholds = (float(threshold["first"]), float(threshold["last"]))
            shares = {c: float(summary["shares"][c]) for c in CATEGORIES}
        except (KeyError, TypeError, ValueError) as e:
            raise DiagnosticsError(f"{summary_path}: no threshold/shares entry ({e})") from e
        return cls(
            path=run_dir,
            delta=_open_matrix(delta_path, num_samples),
            first=_open_matrix(s_paths[0], num_samples),
            last=_open_matrix(s_paths[-1], num_samples),
            thresholds=thresholds,
            mode=str(threshold.get("mode", "?")),
            shares=shares,
        )

    def pair_figures(self, rows: np.ndarray, cols: np.ndarray) -> dict[str, float | None]:
        """δ and last-similarity summaries and the category mix of the pairs (video, text)."""
        first, last = gather(self.first, rows, cols), gather(self.last, rows, cols)
        return {
            **value_summary("delta", gather(self.delta, rows, cols)),
            **value_summary("similarity", last),
            **category_shares(first, last, self.thresholds),
        }

    def all_negative_figures(self, seed: int = 0) -> dict[str, Any]:
        """The same over all negatives: δ and similarity exact for small N, else a fixed random
        sample of ordered pairs; the category mix is the reference's own (exact)."""
        n = self.delta.shape[0]
        total = n * (n - 1)
        if total <= 2 * ALL_NEGATIVES_SAMPLE:
            rows, cols = np.nonzero(~np.eye(n, dtype=bool))
        else:
            rng = np.random.default_rng(seed)
            rows = rng.integers(0, n, size=ALL_NEGATIVES_SAMPLE)
            cols = (rows + rng.integers(1, n, size=ALL_NEGATIVES_SAMPLE)) % n  # never rows
        figures = self.pair_figures(rows, cols)
        figures.update({CATEGORY_KEYS[c]: self.shares[c] for c in CATEGORIES})
        return {"matrix_pairs": total, "matrix_pairs_read": int(rows.size), **figures}


# ------------------------------------------------------------------------------ diagnostics
class BatchDiagnostics:
    """The figures of the module docstring for any epoch's batches over one training split.

    ``texts`` (dataset order) and ``language`` (``de``/``zh``) define the targets; ``glosses``
    (gloss sequences) with ``twins`` (confusable gloss pairs) add the confusable share;
    ``reference`` adds the δ / similarity / category figures. Heavy parts (TF-IDF, the
    all-negatives figures) are computed at the first call."""

    def __init__(
        self,
        texts: Sequence[str],
        language: str,
        glosses: Sequence[Sequence[str]] | None = None,
        twins: Iterable[tuple[str, str]] | None = None,
        reference: Reference | None = None,
    ):
        if language not in ("de", "zh"):
            raise ValueError(f"batch diagnostics: language de | zh, got {language!r}")
        self.texts, self.language, self.reference = list(texts), language, reference
        self.n = len(self.texts)
        if self.n < 2:
            raise ValueError(f"batch diagnostics need at least 2 samples, got {self.n}")
        ids: dict[str, int] = {}
        self.text_ids = np.array([ids.setdefault(t, len(ids)) for t in self.texts], np.int64)
        self.confusable: np.ndarray | None = None  # sorted i * N + j of the ordered pairs
        if glosses is not None and twins is not None:
            pairs = np.asarray(confusable_pairs(glosses, self.texts, twins), np.int64)
            self.confusable = np.sort(pairs.reshape(-1, 2) @ np.array([self.n, 1]))
        self._tfidf = None
        self._all: dict[str, Any] | None = None

    def all_negatives(self) -> dict[str, Any]:
        """The comparison figures over every negative pair of the split (computed once)."""
        if self._all is None:
            counts = np.bincount(self.text_ids)
            pairs = self.n * (self.n - 1) / 2
            found: dict[str, Any] = {
                "pairs": int(pairs),
                "identical_share": float(np.sum(counts * (counts - 1) / 2) / pairs),
            }
            if self.confusable is not None:
                found["confusable_share"] = self.confusable.size / 2 / pairs
            if self.reference is not None:
                found.update(self.reference.all_negative_figures())
            self._all = found
        return self._all

    def __call__(self, batches: Sequence[Sequence[int]]) -> dict[str, Any]:
        """The figures over the in-batch negative pairs of ``batches`` (see the module doc)."""
        if self._tfidf is None:
            self._tfidf = tfidf_vectors(self.texts, self.language)
        i, j = in_batch_pairs(batches)
        if i.size and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= self.n):
            raise ValueError(f"batch diagnostics: indices outside [0, {self.n})")
        identical = self.text_ids[i] == self.text_ids[j]
        similarity = np.ones(i.size)
        similarity[~identical] = pair_similarity(self._tfidf, i[~identical], j[~identical])
        near = ~identical & (similarity >= NEAR_IDENTICAL_TFIDF)
        pairs = max(int(i.size), 1)
        out: dict[str, Any] = {
            "batches": len(batches),
            "pairs": int(i.size),
            "identical_share": float(identical.sum() / pairs),
            "near_identical_share": float(near.sum() / pairs),
            "near_identical_threshold": NEAR_IDENTICAL_TFIDF,
            "text_similarity_mean": float(similarity.mean()) if i.size else None,
        }
        if self.confusable is not None:
            hits = np.isin(i * self.n + j, self.confusable)
            out["confusable_share"] = float(hits.sum() / pairs)
        if self.reference is not None:
            rows, cols = np.concatenate([i, j]), np.concatenate([j, i])
            out["matrix_pairs"] = int(rows.size)
            out.update(self.reference.pair_figures(rows, cols))
            out["reference"] = {
                "run": str(self.reference.path),
                "threshold_mode": self.reference.mode,
                "thresholds": list(self.reference.thresholds),
            }
        out["all_negatives"] = self.all_negatives()
        return out

    def log_epoch(self, sampler: Any, epoch: int, step: int, metrics: Any) -> dict | None:
        """On the main process: the figures of 0-based ``epoch``'s global batches as one
        ``batch_diagnostics`` record (``"epoch"`` 1-based like the ``train_epoch`` and ``dev``
        records; numbers also to TensorBoard through ``MetricsWriter``)."""
        if not is_main_process():
            return None
        found = self(sampler.global_batches(epoch))
        metrics.log(RECORD, step, {"kind": RECORD, "epoch": epoch + 1, **found})
        return found


def dataset_twins(data: DataConfig) -> list[tuple[str, str]] | None:
    """The confusable gloss twins the data was rendered with, else None: the synthetic data's
    ``meta.json`` (``confusable_pairs``), or a proxy dataset's (``python -m scl_slt.data.proxy``:
    ``meta.json`` beside its label files, ``twin_glosses``)."""
    if data.layout is Layout.synthetic:
        meta_path = Path(ensure_synthetic(data.synthetic, data.modality)) / META
        meta = json.loads(meta_path.read_text())
        if "confusable_pairs" not in meta:
            raise KeyError(f"{meta_path}: no 'confusable_pairs' entry")
        return [(str(a), str(b)) for a, b in meta["confusable_pairs"]]
    folder = data.labels_dir or data.root
    meta_path = Path(folder).expanduser() / "meta.json" if folder else None
    if meta_path is None or not meta_path.is_file():
        return None
    twins = json.loads(meta_path.read_text()).get("twin_glosses")
    return None if twins is None else [(str(a), str(b)) for a, b in twins]  # None: not a proxy


def diagnostics_for(cfg: TrainConfig, records: Sequence[dict[str, Any]]) -> BatchDiagnostics | None:
    """The diagnostics of a training run's train split (None with ``selection.diagnostics``
    off): texts and language, the synthetic twins, ``selection.diagnostics_reference``."""
    sel = cfg.selection
    if not sel.diagnostics:
        return None
    texts = [r["text"] for r in records]
    reference = None
    if sel.diagnostics_reference:
        names = [r["name"] for r in records]
        reference = Reference.load(sel.diagnostics_reference, len(records), names)
    twins = dataset_twins(cfg.data)
    glosses = None
    if twins is not None:
        glosses = [str(r.get("gloss", "")).split() for r in records]
    return BatchDiagnostics(texts, cfg.data.language, glosses, twins, reference)


# ---------------------------------------------------------------------------------- replay
REPLAY_REFUSED = {
    "online_trajectory": "its batches depend on the similarities recorded while training (every "
    "epoch after the first is built from them), so they cannot be replayed without training; "
    "its diagnostics are the batch_diagnostics records of a training run's metrics.jsonl",
    "self_trajectory": "its batches after the first interval come from the run's own snapshots "
    "(selection/self_reference.py), so they cannot be replayed without training; its "
    "diagnostics are the batch_diagnostics records of a training run's metrics.jsonl",
}


def check_replayable(strategies: Sequence[str]) -> None:
    """Refuse, before any work, a strategy whose batches only a training run can produce."""
    for name in strategies:
        if name in REPLAY_REFUSED:
            raise ConfigError(f"strategies: {name} cannot be replayed: {REPLAY_REFUSED[name]}")


def replay(
    cfg: TrainConfig,
    work_dir: str | os.PathLike,
    records: Sequence[dict[str, Any]] | None = None,
    diagnostics: BatchDiagnostics | None = None,
) -> Iterator[dict[str, Any]]:
    """``cfg.selection``'s sampler built as stage 1 builds it (one process), its epochs replayed
    without training: per epoch ``{"epoch" (1-based), "build_seconds", "diagnostics_seconds",
    **figures}``. ``records`` (the train split's, labels only: no clip is read) and
    ``diagnostics`` are taken from ``cfg`` when not given; a strategy's score file is written
    under ``work_dir`` (cached there, like under a run directory)."""
    check_replayable([cfg.selection.name.value])
    if records is None:
        records = split_records(cfg.data, "train")
    if diagnostics is None:
        on = dataclasses.replace(
            cfg, selection=dataclasses.replace(cfg.selection, diagnostics=True)
        )
        diagnostics = diagnostics_for(on, records)
    s = cfg.stage
    sampler = build_batch_sampler(
        cfg.selection, len(records), s.batch_size, s.epochs, cfg.seed, 0, 1, s.drop_last,
        texts=[r["text"] for r in records], names=[r["name"] for r in records],
        language=cfg.data.language, run_dir=Path(work_dir), data=cfg.data,  # san: encodes on cpu
    )  # fmt: skip
    for epoch in range(s.epochs):
        started = time.perf_counter()
        batches = sampler.global_batches(epoch)
        built = time.perf_counter()
        figures = diagnostics(batches)
        done = time.perf_counter()
        yield {
            "epoch": epoch + 1,
            "build_seconds": round(built - started, 3),
            "diagnostics_seconds": round(done - built, 3),
            **figures,
        }
