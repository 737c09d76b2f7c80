"""The allowed range of every numeric setting: of the training config (``NUMERIC_RANGES``) and of
the text pretraining's (``PRETRAIN_RANGES``), checked by ``config_checks``; ``tests/test_config.py``
walks the schema, so a new int or float field without a range here fails the tests."""

from __future__ import annotations

import dataclasses

from .config import AUGMENT_RANGES


# --------------------------------------------------------------------------- numeric settings
@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric setting may take (None: unbounded on that side)."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False  # ``low`` itself excluded
    open_high: bool = False  # ``high`` itself excluded
    note: str = ""

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        return self.high is None or (
            value < self.high or (value == self.high and not self.open_high)
        )

    def describe(self, optional: bool = False) -> str:
        """``positive``, ``>= 1``, ``in [0, 1)``..., with ``or null`` and the note."""
        if self.low is None and self.high is None:
            text = "a finite number"
        elif self.high is None:
            text = "positive" if self.low == 0 and self.open_low else f">= {self.low:g}"
        else:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            text = f"in {left}{self.low:g}, {self.high:g}{right}"
        text += " or null" if optional else ""
        return f"{text} ({self.note})" if self.note else text


ANY = Range()
POSITIVE = Range(0, open_low=True)
NON_NEGATIVE = Range(0)
AT_LEAST_1 = Range(1)
SHARE = Range(0, 1)  # a share or a ratio; both ends meaningful
PROBABILITY = Range(0, 1, open_high=True)  # dropout, smoothing: 1 would drop or smooth everything

# Every int and float field of TrainConfig; None is allowed where the field is Optional.
NUMERIC_RANGES: dict[str, Range] = {
    "seed": ANY,
    # data
    "data.max_frames": AT_LEAST_1,
    "data.resize": AT_LEAST_1,
    "data.crop": AT_LEAST_1,
    **{f"data.{key}": Range(0, upper) for key, upper in AUGMENT_RANGES.items()},
    "data.num_workers": Range(0, note="0: load in the main process"),
    "data.synthetic.seed": ANY,
    **{f"data.synthetic.num_{split}": AT_LEAST_1 for split in ("train", "dev", "test")},
    "data.synthetic.num_glosses": AT_LEAST_1,  # the lexicon's bounds: synthetic check_config
    "data.synthetic.num_signers": AT_LEAST_1,
    "data.synthetic.feature_dim": AT_LEAST_1,
    "data.synthetic.min_glosses": AT_LEAST_1,
    "data.synthetic.max_glosses": AT_LEAST_1,
    "data.synthetic.min_gloss_frames": AT_LEAST_1,
    "data.synthetic.max_gloss_frames": AT_LEAST_1,
    "data.synthetic.noise": NON_NEGATIVE,
    "data.synthetic.signer_shift": NON_NEGATIVE,
    "data.synthetic.confusable_rate": SHARE,
    "data.synthetic.confusable_distance": Range(0, 0.4),
    "data.synthetic.duplicate_rate": SHARE,
    "data.synthetic.eval_seen_rate": SHARE,
    "data.synthetic.image_size": Range(8),
    "data.synthetic.question_overlap": SHARE,
    # model
    **{
        f"model.{key}": AT_LEAST_1
        for key in (
            *("d_model", "encoder_layers", "decoder_layers", "attention_heads", "ffn_dim"),
            *("vocab_size", "max_position_embeddings"),
        )
    },
    "model.init_std": POSITIVE,
    "model.dropout": PROBABILITY,
    "model.sign_embedding.feature_dim": AT_LEAST_1,
    "model.sign_embedding.hidden": AT_LEAST_1,
    "model.sign_embedding.kernel": AT_LEAST_1,
    "model.lora.r": AT_LEAST_1,
    "model.lora.alpha": POSITIVE,
    "model.lora.dropout": PROBABILITY,
    "model.similarity.proj_dim": AT_LEAST_1,
    "model.similarity.tau": POSITIVE,
    "model.similarity.logit_scale_init": ANY,  # a log scale: any finite value
    "model.similarity.max_logit_scale": ANY,
    "model.generation.num_beams": AT_LEAST_1,
    "model.generation.max_length": AT_LEAST_1,
    "model.generation.length_penalty": ANY,
    # selection, tracker, loss
    "selection.pool_size": AT_LEAST_1,
    "selection.online_decay": PROBABILITY,
    "selection.hard_negatives_k": AT_LEAST_1,
    "selection.hard_negatives_candidates": AT_LEAST_1,
    "tracker.interval": AT_LEAST_1,
    "loss.contrastive_weight": NON_NEGATIVE,
    "loss.translation_weight": NON_NEGATIVE,
    "loss.label_smoothing": PROBABILITY,
    "loss.signcl_weight": NON_NEGATIVE,
    "loss.signcl_margin_min": NON_NEGATIVE,
    "loss.signcl_margin_ratio": NON_NEGATIVE,
    "loss.signcl_m": NON_NEGATIVE,
    "loss.question_contrastive_weight": NON_NEGATIVE,
    "loss.mlm_weight": NON_NEGATIVE,
    "loss.mlm_mask_ratio": Range(0, 1, open_low=True, note="share of a question's tokens"),
    # stage
    "stage.epochs": AT_LEAST_1,
    "stage.batch_size": AT_LEAST_1,
    "stage.lr": POSITIVE,
    "stage.weight_decay": NON_NEGATIVE,
    "stage.warmup_epochs": NON_NEGATIVE,
    "stage.min_lr_ratio": SHARE,
    "stage.grad_clip": Range(0, note="0 disables clipping"),
    "stage.grad_accum": AT_LEAST_1,
    "stage.eval_every": Range(0, note="0: never"),
    "stage.retrieval_every": Range(0, note="0: never; null: with eval_every"),
    "stage.eval_batch_size": AT_LEAST_1,
    "stage.keep_last": AT_LEAST_1,
    "stage.keep_best": AT_LEAST_1,
    "stage.max_nonfinite": AT_LEAST_1,
    "stage.log_every": AT_LEAST_1,
    "stage.max_steps": AT_LEAST_1,
    # retrieval protocol (eval/retrieval.py)
    "retrieval.fine_k": AT_LEAST_1,
}


# ------------------------------------------------------------------- python -m scl_slt.pretrain_text
PRETRAIN_RANGES: dict[str, Range] = {
    **{k: v for k, v in NUMERIC_RANGES.items() if k == "seed" or k.startswith(("data.", "model."))},
    "pretrain.steps": AT_LEAST_1,
    "pretrain.batch_size": AT_LEAST_1,
    "pretrain.lr": POSITIVE,
    "pretrain.weight_decay": NON_NEGATIVE,
    "pretrain.warmup_steps": NON_NEGATIVE,
    "pretrain.min_lr_ratio": SHARE,
    "pretrain.grad_clip": Range(0, note="0 disables clipping"),
    "pretrain.mask_ratio": Range(0, 1, open_high=True),
    "pretrain.poisson_lambda": POSITIVE,
    "pretrain.checkpoint_every": AT_LEAST_1,
    "pretrain.log_every": AT_LEAST_1,
    "pretrain.probe_sentences": Range(2),
    "pretrain.probe_pairs": AT_LEAST_1,
}
