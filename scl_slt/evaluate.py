"""Evaluate a checkpoint of a training run on one split.

    python -m scl_slt.evaluate run_dir=runs/<run> checkpoint=best|last|<checkpoint dir> split=test

Reads the run's resolved ``config.yaml`` and its ``tokenizer/``, rebuilds the model, loads the
checkpoint, translates the split (all ranks under torchrun, gathered and scored once) and writes
``predictions.tsv``, ``hypotheses.txt``, ``references.txt`` and ``metrics.json`` to ``out_dir``
(default ``<run_dir>/eval/<checkpoint tag>/<split>``). ``split=test`` is final evaluation only:
training chooses the best checkpoint on dev, and the metrics JSON says so.

Decoding settings default to the run's ``model.generation`` and can be overridden
(``num_beams=``, ``max_length=``, ``length_penalty=``). A stage-1 checkpoint still holds the text
branch: then video->text / text->video retrieval (R@1/5/10, median rank) on the split and, when
its records carry gloss alignments, the Sign Density Ratio are reported too
(``scl_slt.eval.alignment``): printed, and written to ``metrics.json`` as its ``alignment``
section (``evaluate_checkpoint`` returns them; ``evaluate`` returns the translation metrics
alone). The work itself lives in ``scl_slt.eval.translation``; this file only wires the run's pieces
together.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError, EvaluateConfig, TrainConfig, register_configs, to_container
from .data.dataset import Collator
from .data.datasets import build_split
from .eval.alignment import RETRIEVAL_KEYS, evaluate_alignment
from .eval.metrics import LANGUAGES
from .eval.translation import (
    SPLIT_PURPOSE,
    build_eval_loader,
    evaluate_split,
    evaluation_meta,
    override_generation,
    write_predictions,
)
from .rundir.checkpoint import load_weights, resolve_checkpoint
from .training.runtime import setup_runtime, shutdown_process_group

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
    return cfg


def load_run_config(run_dir: Path) -> TrainConfig:
    """The run's resolved training config, typed by the current schema.

    Only what evaluation uses is checked here: ``validate_train`` is not applied, because it
    also requires training-only paths (``stage.init_from``, ``selection.pair_scores``,
    ``resume``) that may be gone by the time a run is evaluated. Data paths are checked when
    the split is read.
    """
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"not a training run directory: {path} is missing")
    try:
        saved = OmegaConf.load(path)
        train_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), saved))
    except Exception as e:  # omegaconf raises several unrelated types for bad YAML/keys
        raise ConfigError(f"{path}: not a valid training config: {e}") from e
    if train_cfg.data.language not in LANGUAGES:
        raise ConfigError(
            f"{path}: data.language: expected one of {LANGUAGES}, got {train_cfg.data.language!r}"
        )
    return train_cfg


def checkpoint_tag(checkpoint: str) -> str:
    """Short name of the evaluated checkpoint for the default output folder."""
    if checkpoint in ("best", "last"):
        return checkpoint
    return Path(checkpoint).expanduser().resolve().name


def load_model(
    train_cfg: TrainConfig,
    run_dir: Path,
    checkpoint: str,
    device: Any,
    keep_text_branch: bool = False,
):
    """Tokenizer, model with the checkpoint's weights (on ``device``), and the checkpoint path.

    ``checkpoint`` is ``best`` / ``last`` of ``run_dir`` or a checkpoint directory. Translation
    needs neither the text encoder nor the similarity head, so they are dropped from the model
    and from the weights (a stage-2 checkpoint has none; a stage-1 one has both), unless
    ``keep_text_branch`` and the checkpoint holds them (retrieval needs them); every other key
    must match exactly, or ``HandOffError`` lists the missing and extra keys.
    """
    # Imported here so that a bad setting fails before transformers is even imported.
    from .models.builder import build_model, load_submodules
    from .models.slt import TEXT_BRANCH
    from .models.tokenizer import SLTTokenizer
    from .rundir.layout import TOKENIZER_DIR

    tokenizer = SLTTokenizer.load(run_dir / TOKENIZER_DIR)
    if checkpoint in ("best", "last"):
        ckpt_dir = resolve_checkpoint(run_dir, checkpoint)
    else:
        ckpt_dir = resolve_checkpoint(Path(checkpoint).expanduser())
    model = build_model(train_cfg.model, train_cfg.data, tokenizer)
    weights = load_weights(ckpt_dir)
    keep = keep_text_branch and has_text_branch(weights)
    load_submodules(model, weights, drop=() if keep else TEXT_BRANCH)
    return tokenizer, model.to(device), Path(ckpt_dir)


def has_text_branch(weights: dict[str, Any]) -> bool:
    """Whether checkpoint weights hold the text encoder and the similarity head (stage 1)."""
    from .models.slt import TEXT_BRANCH

    prefixes = {key.split(".", 1)[0] for key in weights}
    return all(name in prefixes for name in TEXT_BRANCH)


def evaluate(cfg: EvaluateConfig | DictConfig) -> dict[str, Any]:
    """Run one evaluation; returns the translation metrics (same on every rank), files written
    by rank 0."""
    return evaluate_checkpoint(cfg)[0]


def evaluate_checkpoint(
    cfg: EvaluateConfig | DictConfig,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Run one evaluation: ``(translation metrics, alignment metrics)``, the same on every rank.

    The alignment metrics (retrieval R@K and median rank, SDR when the split has gloss
    alignments) are None for a checkpoint without the text branch (stage 2).
    """
    cfg = validate_evaluate(cfg)
    run_dir = Path(cfg.run_dir).expanduser()
    train_cfg = load_run_config(run_dir)
    runtime = setup_runtime(cfg.device, cfg.precision)
    tokenizer, model, ckpt_dir = load_model(
        train_cfg, run_dir, cfg.checkpoint, runtime.device, keep_text_branch=True
    )
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
    metrics, rows = evaluate_split(
        model,
        loader,
        tokenizer,
        generation,
        runtime.device,
        language,
        runtime.autocast,
        progress=True,
    )
    alignment = None
    if getattr(model, "similarity", None) is not None:  # a stage-1 checkpoint
        sim = train_cfg.model.similarity
        alignment = evaluate_alignment(
            model, loader, sim.method, sim.tau, runtime.device, runtime.autocast
        )
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


register_configs()  # the schemas must be in the ConfigStore before hydra.main composes


@hydra.main(version_base=None, config_path="../configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:  # the process group (torchrun) is left once, at exit, as by the training entry point
        metrics, alignment = evaluate_checkpoint(cfg)
    finally:
        shutdown_process_group()
    if int(os.environ.get("RANK", "0")) != 0:
        return
    print(json.dumps(metrics, indent=2, ensure_ascii=False))
    print(f"BLEU signature: {metrics['bleu_signature']}")
    if alignment is not None:
        sdr = f"SDR {alignment['sdr']:.4f}" if "sdr" in alignment else "SDR n/a (no alignments)"
        values = " ".join(f"{key}={alignment[key]:.2f}" for key in RETRIEVAL_KEYS)
        print(f"retrieval: {values}; {sdr}")


if __name__ == "__main__":
    main()
