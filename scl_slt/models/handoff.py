"""The stage hand-off: a checkpoint into a model, by submodule name.

One loader serves both places a trained checkpoint is read into a fresh model: stage 2
initialised from stage 1 (``stage.init_from``) and evaluation (``python -m scl_slt.evaluate``).
Submodule names are the contract (docs/architecture.md): ``sign_embedding``, ``visual_encoder``,
``decoder`` always carry over, and so does ``question`` (question-based SLT: question encoder,
fusion, MLM head) when the run reads questions; the text branch (``text_encoder``, ``similarity``) is dropped on
purpose for translation, and kept for evaluating a stage-1 checkpoint's retrieval. Every other
key must match exactly, or ``HandOffError`` lists the missing and unexpected keys before anything
is loaded: no ``strict=False`` that silently starts from scratch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import TrainConfig
from ..rundir.checkpoint import load_weights, resolve_checkpoint, run_dir_of
from ..rundir.layout import TOKENIZER_DIR
from .builder import build_model
from .slt import TEXT_BRANCH
from .tokenizer import SLTTokenizer

log = logging.getLogger(__name__)


class HandOffError(RuntimeError):
    """A checkpoint does not match the model it is loaded into; the message lists the keys."""


def _listing(keys: Sequence[str], limit: int = 20) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_submodules(
    model: nn.Module, state_dict: Mapping[str, Tensor], drop: Sequence[str] = TEXT_BRANCH
) -> dict[str, Any]:
    """Load a stage-1 checkpoint into a stage-2 model by submodule name.

    The submodules named in `drop` are removed from the model (if still there) and their
    checkpoint tensors are discarded, on purpose and logged. Every other key must match exactly:
    a missing or extra key raises `HandOffError` listing them, before anything is loaded.
    Returns a report: tensors loaded per submodule and tensors dropped per branch.
    """
    dropped: dict[str, int] = {}
    for name in drop:
        if getattr(model, name, None) is not None:
            setattr(model, name, None)
        dropped[name] = sum(1 for k in state_dict if k.split(".", 1)[0] == name)
        log.info(
            "hand-off: dropping %s (%d checkpoint tensors) on purpose: stage 2 trains "
            "translation only",
            name,
            dropped[name],
        )
    kept = {k: v for k, v in state_dict.items() if k.split(".", 1)[0] not in set(drop)}
    expected = set(model.state_dict())
    missing, extra = expected - set(kept), set(kept) - expected
    if missing or extra:
        if any(k.split(".", 1)[0] == "question" for k in (*missing, *extra)):
            raise HandOffError(
                f"checkpoint and model disagree on the question branch (question-based SLT): "
                f"{len(missing)} missing key(s) [{_listing(missing)}]; {len(extra)} unexpected "
                f"key(s) [{_listing(extra)}]. Both stages (and evaluation) must use the same "
                f"data.assist and model.fusion."
            )
        raise HandOffError(
            f"checkpoint does not match the model: {len(missing)} missing key(s) "
            f"[{_listing(missing)}]; {len(extra)} unexpected key(s) [{_listing(extra)}]. "
            f"Stage 1 and stage 2 must use the same model config (LoRA, similarity method, "
            f"modality); only {', '.join(drop) or 'nothing'} is dropped on purpose."
        )
    model.load_state_dict(kept, strict=True)
    loaded: dict[str, int] = {}
    for key in kept:
        loaded[key.split(".", 1)[0]] = loaded.get(key.split(".", 1)[0], 0) + 1
    log.info("hand-off: loaded %d tensors (%s)", len(kept), loaded)
    return {"loaded": loaded, "dropped": dropped, "num_loaded": len(kept)}


def has_text_branch(weights: Mapping[str, Any]) -> bool:
    """Whether checkpoint weights hold the text encoder and the similarity head (stage 1)."""
    prefixes = {key.split(".", 1)[0] for key in weights}
    return all(name in prefixes for name in TEXT_BRANCH)


def locate_checkpoint(source: str | Path, which: str = "best") -> tuple[Path, Path]:
    """``(checkpoint directory, its run's tokenizer directory)`` for a run directory (its
    ``which`` = best | last checkpoint; best falls back to last) or a checkpoint directory."""
    checkpoint = resolve_checkpoint(Path(source).expanduser(), which)
    return checkpoint, run_dir_of(checkpoint) / TOKENIZER_DIR


def load_checkpoint(
    model: nn.Module, checkpoint: str | Path, keep_text_branch: bool = False
) -> dict[str, Any]:
    """Load ``checkpoint``'s weights into ``model`` by submodule name (``load_submodules``).

    The text branch is dropped from model and weights unless ``keep_text_branch`` and the
    checkpoint holds it (a stage-2 checkpoint has none; a stage-1 one has both).
    """
    weights = load_weights(checkpoint)
    keep = keep_text_branch and has_text_branch(weights)
    report = load_submodules(model, weights, drop=() if keep else TEXT_BRANCH)
    log.info("loaded %s%s", checkpoint, "" if keep else f" (dropped {', '.join(TEXT_BRANCH)})")
    return report


def load_trained_model(
    train_cfg: TrainConfig,
    run_dir: Path,
    checkpoint: str,
    device: torch.device | str,
    keep_text_branch: bool = False,
) -> tuple[SLTTokenizer, nn.Module, Path]:
    """Tokenizer, model with the checkpoint's weights (on ``device``), and the checkpoint path.

    ``checkpoint`` is ``best`` / ``last`` of ``run_dir`` or a checkpoint directory; the model is
    built from the run's config and its tokenizer is the run's.
    """
    tokenizer = SLTTokenizer.load(run_dir / TOKENIZER_DIR)
    if checkpoint in ("best", "last"):
        ckpt_dir = resolve_checkpoint(run_dir, checkpoint)
    else:
        ckpt_dir = resolve_checkpoint(Path(checkpoint).expanduser())
    model = build_model(train_cfg.model, train_cfg.data, tokenizer)
    load_checkpoint(model, ckpt_dir, keep_text_branch)
    return tokenizer, model.to(device), ckpt_dir
