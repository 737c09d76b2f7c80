"""Question-based SLT in the stages (``data.assist=question|gloss``, SSL-SSAW): what a batch's
question gives the model, and the two question terms of the loss.

    loss += question_contrastive_weight * InfoNCE(video_proj, question_proj)   # stage 1 only
          + mlm_weight * CE(masked question tokens)                            # both stages

The video-question InfoNCE is the contrastive loss of stage 1 (``losses.output_contrastive_loss``,
with its multi-GPU gather) with the question's projection in place of the target text's; stage 2
has no similarity head, so only its MLM term remains. The MLM masks are drawn from a generator
seeded by the run's seed and the batch's sample indices: the same batch gets the same masks in
every run and after a resume, on every number of ranks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from .. import losses
from ..config import Assist, TrainConfig
from ..models.question_mlm import mlm_loss
from ..models.slt import ModelOutput


def mlm_generator(seed: int, indices: torch.Tensor) -> torch.Generator:
    """A CPU generator seeded by (run seed, the batch's sample indices)."""
    entropy = [int(seed) & 0xFFFFFFFF, *(int(i) for i in indices.tolist())]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def question_inputs(batch: dict[str, Any], device: torch.device, cfg: TrainConfig) -> dict:
    """The model's question keyword arguments for a batch (none without a question): ids and
    mask on ``device`` and, when the MLM term is on, its ratio and generator."""
    if "question_ids" not in batch:
        return {}
    inputs = {
        "question_ids": batch["question_ids"].to(device),  # (B, Lq)
        "question_mask": batch["question_mask"].to(device),  # (B, Lq)
    }
    if cfg.loss.mlm_weight > 0:
        inputs["mlm_ratio"] = cfg.loss.mlm_mask_ratio
        inputs["mlm_generator"] = mlm_generator(cfg.seed, batch["indices"])
    return inputs


def question_terms(
    out: ModelOutput, batch: dict[str, Any], cfg: TrainConfig
) -> dict[str, tuple[float, torch.Tensor]]:
    """``{term: (weight, value)}`` of the question terms the output allows and the config asks
    for: ``question_contrastive`` (needs the stage-1 projections) and ``mlm``."""
    w, terms = cfg.loss, {}
    if w.question_contrastive_weight > 0 and out.question_proj is not None:
        as_text = dataclasses.replace(
            out, text_proj=out.question_proj, text_proj_mask=out.question_proj_mask
        )
        keys = batch["questions"] if w.mask_duplicate_texts else None
        sim = cfg.model.similarity
        value = losses.output_contrastive_loss(as_text, sim.method, sim.tau, keys)
        terms["question_contrastive"] = (w.question_contrastive_weight, value)
    if w.mlm_weight > 0 and out.mlm_logits is not None:
        terms["mlm"] = (w.mlm_weight, mlm_loss(out.mlm_logits, out.mlm_labels))
    return terms


def unused_question_parts(cfg: TrainConfig) -> bool:
    """Whether DDP must be told that some parameters may get no gradient: with a question branch
    its MLM head (MLM off), or its whole encoder (fusion none without a question term), can be
    left out of the loss."""
    return Assist(cfg.data.assist) is not Assist.none
