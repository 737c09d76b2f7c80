"""Evaluate a checkpoint of a training run on one split: the work of ``python -m scl_slt.evaluate``
and of the pipeline's test step.

Reads the run's resolved ``config.yaml`` (``rundir.layout.load_run_config``) and its
``tokenizer/``, rebuilds the model and loads the checkpoint through the stage hand-off
(``models.handoff``), translates the split (all ranks under torchrun, gathered and scored once)
and writes ``predictions.tsv``, ``hypotheses.txt``, ``references.txt`` and ``metrics.json`` to
``out_dir`` (default ``<run_dir>/eval/<checkpoint tag>/<split>``). ``split=test`` is final
evaluation only: training chooses the best checkpoint on dev, and the metrics JSON says so.

Decoding settings default to the run's ``model.generation`` and can be overridden. A stage-1
checkpoint still holds the text branch: then video->text / text->video retrieval and, when its
records carry gloss alignments, the Sign Density Ratio are reported too (``eval/alignment.py``),
written to ``metrics.json`` as its ``alignment`` section. Retrieval follows the run's
``retrieval`` protocol (duplicate targets, fine-grained candidates; ``eval/retrieval.py``) unless
``retrieval.<key>=`` overrides it; the protocol used is the section's ``retrieval_protocol``.

A checkpoint whose weights hold NaN/inf (a diverged run) is refused before any decoding with
``NonFiniteWeightsError``, naming the tensors and how many of their values are non-finite.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config import ConfigError, EvaluateConfig, RetrievalConfig, TrainConfig, to_container
from ..data.batching import Collator
from ..data.datasets import build_split
from ..models.handoff import load_trained_model
from ..rundir.layout import load_run_config
from ..training.optim import check_weights
from ..training.runtime import setup_runtime
from .alignment import evaluate_alignment
from .translation import (
    SPLIT_PURPOSE,
    build_eval_loader,
    evaluation_meta,
    override_generation,
    score_rows,
    translate_loader,
    write_predictions,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")


def validate_evaluate(cfg: EvaluateConfig | DictConfig) -> EvaluateConfig:
    """Check the evaluation settings before any work; return the typed object."""
    if isinstance(cfg, DictConfig):
        if OmegaConf.is_missing(cfg, "run_dir"):
            raise ConfigError("run_dir: required, e.g. run_dir=runs/20250101-120000")
        cfg = OmegaConf.to_object(cfg)
    if not cfg.run_dir or cfg.run_dir == "???":
        raise ConfigError("run_dir: required, e.g. run_dir=runs/20250101-120000")
    if cfg.split not in SPLITS:
        raise ConfigError(f"split: expected one of {SPLITS}, got {cfg.split!r}")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size: must be >= 1, got {cfg.batch_size}")
    if cfg.num_beams is not None and cfg.num_beams < 1:
        raise ConfigError(f"num_beams: must be >= 1, got {cfg.num_beams}")
    if cfg.max_length is not None and cfg.max_length < 1:
        raise ConfigError(f"max_length: must be >= 1, got {cfg.max_length}")
    if cfg.num_workers is not None and cfg.num_workers < 0:
        raise ConfigError(f"num_workers: must be >= 0, got {cfg.num_workers}")
    if not cfg.checkpoint:
        raise ConfigError("checkpoint: best | last | a checkpoint directory")
    if cfg.retrieval.fine_k is not None and cfg.retrieval.fine_k < 1:
        raise ConfigError(f"retrieval.fine_k: must be >= 1 or null, got {cfg.retrieval.fine_k}")
    return cfg


def retrieval_protocol(cfg: EvaluateConfig, train_cfg: TrainConfig) -> RetrievalConfig:
    """The run's ``retrieval`` section with evaluate's non-null ``retrieval.<key>`` over it."""
    given = {k: v for k, v in dataclasses.asdict(cfg.retrieval).items() if v is not None}
    return dataclasses.replace(train_cfg.retrieval, **given)


def checkpoint_tag(checkpoint: str) -> str:
    """Short name of the evaluated checkpoint for the default output folder."""
    if checkpoint in ("best", "last"):
        return checkpoint
    return Path(checkpoint).expanduser().resolve().name


def evaluate(cfg: EvaluateConfig | DictConfig) -> dict[str, Any]:
    """Run one evaluation; returns the translation metrics (same on every rank), files written
    by rank 0."""
    return evaluate_checkpoint(cfg)[0]


def evaluate_checkpoint(
    cfg: EvaluateConfig | DictConfig,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Run one evaluation: ``(translation metrics, alignment metrics)``, the same on every rank.

    The alignment metrics (coarse- and fine-grained retrieval R@K and median rank with their
    ``retrieval_protocol``, SDR when the split has gloss alignments) are None for a checkpoint
    without the text branch (stage 2).
    """
    cfg = validate_evaluate(cfg)
    run_dir = Path(cfg.run_dir).expanduser()
    train_cfg = load_run_config(run_dir)
    runtime = setup_runtime(cfg.device, cfg.precision)
    tokenizer, model, ckpt_dir = load_trained_model(
        train_cfg, run_dir, cfg.checkpoint, runtime.device, keep_text_branch=True
    )
    check_weights(model, f"checkpoint {ckpt_dir}")  # named, instead of failing in decoding
    dataset = build_split(train_cfg.data, cfg.split, train=False)
    num_workers = train_cfg.data.num_workers if cfg.num_workers is None else cfg.num_workers
    loader = build_eval_loader(
        dataset, Collator(tokenizer), cfg.batch_size, num_workers, runtime.pins_memory
    )
    generation = override_generation(
        train_cfg.model.generation, cfg.num_beams, cfg.max_length, cfg.length_penalty
    )
    language = train_cfg.data.language
    log.info(
        "evaluating %s on %s (%d samples; %s), %s",
        ckpt_dir,
        cfg.split,
        len(dataset),
        SPLIT_PURPOSE[cfg.split],
        generation,
    )
    device, autocast = runtime.device, runtime.autocast
    rows = translate_loader(model, loader, tokenizer, generation, device, autocast, progress=True)
    metrics = score_rows(rows, language)
    alignment = None
    if getattr(model, "similarity", None) is not None:  # a stage-1 checkpoint
        sim = train_cfg.model.similarity
        protocol = retrieval_protocol(cfg, train_cfg)
        alignment = evaluate_alignment(
            model, loader, sim.method, sim.tau, runtime.device,
            protocol, language, runtime.autocast,
        )  # fmt: skip
    if runtime.is_main:
        out_dir = (
            Path(cfg.out_dir)
            if cfg.out_dir
            else (run_dir / "eval" / checkpoint_tag(cfg.checkpoint) / cfg.split)
        )
        meta = evaluation_meta(
            cfg.split,
            str(ckpt_dir),
            generation,
            language,
            checkpoint_requested=cfg.checkpoint,
            run_dir=str(run_dir),
            dataset=train_cfg.data.name,
            evaluate_config=to_container(cfg),
        )
        write_predictions(out_dir, rows, metrics, meta, alignment)
        log.info("predictions and metrics in %s", out_dir)
    return metrics, alignment


def evaluate_run(
    run_dir: str | Path, checkpoint: str = "best", split: str = "test", **settings: Any
) -> dict[str, Any]:
    """Python entry for other code (the pipeline): ``settings`` are other EvaluateConfig fields."""
    return evaluate(
        EvaluateConfig(run_dir=str(run_dir), checkpoint=checkpoint, split=split, **settings)
    )
