"""Build the tokenizer and the model from config: the only `from_pretrained` calls.

Pretrained mBART-50 weights and tokenizers come from a directory or the local Hugging Face cache
(`local_files_only=True`); nothing is downloaded. Without `model.mbart_path` the same classes are
built tiny from `MBartConfig` with a tokenizer trained on the training sentences.

The stage 1 -> stage 2 hand-off (loading a checkpoint by submodule name) is ``handoff.py``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn
from transformers import MBartConfig

from ..config import Assist, DataConfig, Fusion, LoraConfig, Modality, ModelConfig
from .sign_embedding import resnet18_weights
from .slt import SignTranslationModel, SpecialTokens
from .speed_options import apply_speed_options
from .tokenizer import SLTTokenizer, restoration_map

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ local pretrained files
def _resolve(path: str) -> str:
    """A directory as given (~ expanded), or a Hugging Face id to look up in the local cache."""
    expanded = os.path.expanduser(path)
    return expanded if Path(expanded).exists() else path


def _not_local(path: str, what: str, error: Exception) -> OSError:
    return OSError(
        f"model.mbart_path / model.tokenizer_path={path!r}: cannot load the {what} from a local "
        f"directory or the local Hugging Face cache (nothing is downloaded at run time): {error}. "
        f"On a machine with internet run `hf download {path}` (or `huggingface-cli download "
        f"{path}`) and copy the cache ($HF_HOME) here, or point the key at a directory made with "
        f"save_pretrained (e.g. by `python -m scl_slt.trim_vocab`)."
    )


def load_pretrained_mbart(path: str):
    """MBartForConditionalGeneration from a local directory or the local HF cache."""
    from transformers import MBartForConditionalGeneration

    try:
        return MBartForConditionalGeneration.from_pretrained(_resolve(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise _not_local(path, "mBART model", e) from e


def load_pretrained_tokenizer(path: str):
    """The Hugging Face tokenizer of an mBART-50 directory (or cached id), locally."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(_resolve(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise _not_local(path, "tokenizer", e) from e


# ------------------------------------------------------------------------- tokenizer
def build_tokenizer(
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    train_texts: Sequence[str],
    out_dir: str | os.PathLike | None = None,
    extra_texts: Sequence[str] = (),
) -> SLTTokenizer:
    """mBART-50's tokenizer (`model.tokenizer_path` or `model.mbart_path`) or the tiny one
    trained on `train_texts` and `extra_texts` (the train questions of question-based SLT);
    saved to `out_dir` (the run's `tokenizer/`) when given."""
    train_texts = [*train_texts, *extra_texts]
    path = model_cfg.tokenizer_path or model_cfg.mbart_path
    if path and SLTTokenizer.is_saved_in(os.path.expanduser(path)):
        saved = SLTTokenizer.load(os.path.expanduser(path))
        tokenizer = SLTTokenizer(
            saved.backend,
            data_cfg.lang_code,
            data_cfg.language,
            saved.source,
            restoration_map(saved.backend, train_texts),  # this dataset's characters
        )
    elif path:
        backend = load_pretrained_tokenizer(path).backend_tokenizer
        restore = restoration_map(backend, train_texts)
        tokenizer = SLTTokenizer(
            backend, data_cfg.lang_code, data_cfg.language, source="mbart", restore=restore
        )
        log.info("tokenizer from %s: vocabulary %d", path, tokenizer.vocab_size)
        if restore:
            log.info(
                "decoding restores %d character(s) its normaliser changes: %s",
                len(restore),
                " ".join(f"{form!r}->{char!r}" for form, char in restore.items()),
            )
    else:
        tokenizer = SLTTokenizer.train(
            train_texts, data_cfg.language, data_cfg.lang_code, model_cfg.vocab_size
        )
    if out_dir is not None:
        tokenizer.save(out_dir)
    return tokenizer


# ----------------------------------------------------------------------------- model
def tiny_mbart_config(model_cfg: ModelConfig, tokenizer: SLTTokenizer) -> MBartConfig:
    """A small MBart (pre-LN, scaled embeddings, like mBART-large-50) from ModelConfig."""
    return MBartConfig(
        vocab_size=tokenizer.vocab_size,
        d_model=model_cfg.d_model,
        encoder_layers=model_cfg.encoder_layers,
        decoder_layers=model_cfg.decoder_layers,
        encoder_attention_heads=model_cfg.attention_heads,
        decoder_attention_heads=model_cfg.attention_heads,
        encoder_ffn_dim=model_cfg.ffn_dim,
        decoder_ffn_dim=model_cfg.ffn_dim,
        max_position_embeddings=model_cfg.max_position_embeddings,
        init_std=model_cfg.init_std,
        dropout=model_cfg.dropout,
        scale_embedding=True,
        pad_token_id=tokenizer.pad_id,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        decoder_start_token_id=tokenizer.eos_id,
    )


# mBART-large-50's published architecture (facebook/mbart-large-50's config.json): the model
# `model.mbart_path` loads, here to build it without its weights (benchmarks, sizing, tests).
MBART_LARGE_50 = {
    "d_model": 1024,
    "encoder_layers": 12,
    "decoder_layers": 12,
    "encoder_attention_heads": 16,
    "decoder_attention_heads": 16,
    "encoder_ffn_dim": 4096,
    "decoder_ffn_dim": 4096,
    "max_position_embeddings": 1024,
    "activation_function": "gelu",
    "scale_embedding": True,
}
MBART_LARGE_50_VOCAB = 250_054


def mbart_large_50_config(
    tokenizer: SLTTokenizer, vocab_size: int | None = None, dropout: float = 0.1
) -> MBartConfig:
    """mBART-large-50's architecture with `tokenizer`'s special ids and a vocabulary of
    `vocab_size` rows (default the tokenizer's; 250,054 is mBART-50's full one, a trimmed
    model keeps a few thousand: ``vocab_trim.py``)."""
    vocab_size = tokenizer.vocab_size if vocab_size is None else vocab_size
    if vocab_size < tokenizer.vocab_size:
        raise ValueError(
            f"vocab_size {vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size}"
        )
    return MBartConfig(
        vocab_size=vocab_size,
        dropout=dropout,
        pad_token_id=tokenizer.pad_id,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        decoder_start_token_id=tokenizer.eos_id,
        **MBART_LARGE_50,
    )


def build_paper_scale_model(
    model_cfg: ModelConfig,
    modality: Modality | str,
    tokenizer: SLTTokenizer,
    vocab_size: int | None = None,
) -> SignTranslationModel:
    """The paper's architecture (mBART-large-50 dimensions, `model_cfg`'s sign embedding, LoRA,
    similarity head and speed options) with random weights, nothing read from disk: what
    `build_model` gives with `model.mbart_path`, before the pretrained weights are copied in.
    Timing and memory do not depend on the weights' values."""
    config = mbart_large_50_config(tokenizer, vocab_size, model_cfg.dropout)
    special = SpecialTokens.from_tokenizer(tokenizer)
    return assemble_model(config, model_cfg, modality, special)


def assemble_model(
    config: MBartConfig, model_cfg: ModelConfig, modality: Modality | str, special: SpecialTokens
) -> SignTranslationModel:
    """The model with random weights, LoRA and freezing applied (works on the meta device)."""
    model = _new_model(config, model_cfg, modality, special)
    apply_lora(model, model_cfg.lora)
    apply_speed_options(model, model_cfg.activation_checkpointing, model_cfg.channels_last)
    return model


def _new_model(
    config: MBartConfig,
    model_cfg: ModelConfig,
    modality: Modality | str,
    special: SpecialTokens,
    question: tuple[Fusion, int] | None = None,
) -> SignTranslationModel:
    """``question``: (fusion mode, MLM mask id) of a question-based model."""
    fusion, mask_id = question if question is not None else (None, None)
    return SignTranslationModel(
        config,
        model_cfg.sign_embedding,
        modality,
        model_cfg.similarity,
        special,
        freeze_text_encoder=model_cfg.freeze_text_encoder,
        question=fusion,
        mask_id=mask_id,
    )


def question_setting(
    model_cfg: ModelConfig, data_cfg: DataConfig, tokenizer: SLTTokenizer
) -> tuple[Fusion, int] | None:
    """(fusion, mask id) when the data carries questions (``data.assist``), else None. The mask
    token is ``<mask>`` when the vocabulary has one, else ``<unk>`` (models/question.py)."""
    if Assist(data_cfg.assist) is Assist.none:
        return None
    mask_id = tokenizer.backend.token_to_id("<mask>")
    return Fusion(model_cfg.fusion), tokenizer.unk_id if mask_id is None else mask_id


def apply_lora(model: SignTranslationModel, lora: LoraConfig) -> None:
    """LoRA adapters on the visual encoder, the decoder and a question encoder, whose own
    weights then freeze.

    New parameters of the visual side (the CLS token) stay trainable; the text encoder keeps the
    setting of `freeze_text_encoder`; the sign embedding and the similarity head train fully.
    """
    if not lora.enabled:
        return
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    peft_cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
    )
    targets = [model.visual_encoder.encoder, model.decoder]
    if model.question is not None:  # the question encoder trains through adapters too
        targets.append(model.question.encoder)
    for target in targets:
        target.requires_grad_(False)
        inject_adapter_in_model(peft_cfg, target)
        for name, param in target.named_parameters():
            param.requires_grad_("lora_" in name)
        if not any("lora_" in name for name, _ in target.named_parameters()):
            raise ValueError(
                f"model.lora.target_modules={list(lora.target_modules)} matched no layer"
            )
    if model.visual_encoder.cls_token is not None:
        model.visual_encoder.cls_token.requires_grad_(True)


def load_mbart_weights(model: SignTranslationModel, pretrained: nn.Module) -> None:
    """Copy a pretrained MBartForConditionalGeneration into the three MBart submodules.

    Both encoders start from mBART's encoder (the visual one without the token table), the
    decoder from mBART's decoder; mBART's LM head is its tied token embedding, which our
    decoder reads directly. Must run before LoRA wraps the linear layers.
    """
    if not getattr(pretrained.config, "tie_word_embeddings", True):
        raise ValueError("expected an mBART checkpoint whose LM head is tied to its embeddings")
    encoder_state = pretrained.model.encoder.state_dict()
    visual = {k: v for k, v in encoder_state.items() if not k.startswith("embed_tokens.")}
    model.visual_encoder.encoder.load_state_dict(visual, strict=True)
    model.text_encoder.load_state_dict(encoder_state, strict=True)
    model.decoder.decoder.load_state_dict(pretrained.model.decoder.state_dict(), strict=True)
    model.decoder.final_logits_bias.copy_(pretrained.final_logits_bias)
    if model.question is not None:  # the question encoder starts from mBART's encoder too
        model.question.encoder.load_state_dict(encoder_state, strict=True)


def build_model(
    model_cfg: ModelConfig, data_cfg: DataConfig, tokenizer: SLTTokenizer
) -> SignTranslationModel:
    """The model of `model_cfg` for `data_cfg`'s input modality, on the CPU (the caller moves
    it). Logs trainable/frozen parameter counts."""
    special = SpecialTokens.from_tokenizer(tokenizer)
    pretrained = None
    if model_cfg.mbart_path:
        pretrained = load_pretrained_mbart(model_cfg.mbart_path)
        config = MBartConfig.from_dict(pretrained.config.to_dict())
        config.dropout = model_cfg.dropout
        if config.vocab_size != tokenizer.vocab_size:
            raise ValueError(
                f"model.mbart_path={model_cfg.mbart_path!r} has a vocabulary of "
                f"{config.vocab_size} but its tokenizer has {tokenizer.vocab_size}: use the "
                f"tokenizer saved with the model (e.g. both from scl_slt.trim_vocab)"
            )
    else:
        config = tiny_mbart_config(model_cfg, tokenizer)
    question = question_setting(model_cfg, data_cfg, tokenizer)
    model = _new_model(config, model_cfg, data_cfg.modality, special, question)
    if pretrained is not None:
        load_mbart_weights(model, pretrained)
        log.info("mBART weights from %s", model_cfg.mbart_path)
        del pretrained
    if Modality(data_cfg.modality) is Modality.frames:
        weights = resnet18_weights(model_cfg.sign_embedding.pretrained)
        if weights is not None:
            model.sign_embedding.load_backbone(weights)
    apply_lora(model, model_cfg.lora)
    apply_speed_options(model, model_cfg.activation_checkpointing, model_cfg.channels_last)
    log_parameter_counts(model)
    return model


# ---------------------------------------------------------------------- parameters
def count_parameters(model: nn.Module) -> dict[str, Any]:
    """Total / trainable / frozen parameter counts, overall and per top-level submodule."""

    def counts(params) -> dict[str, int]:
        params = list(params)
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        return {"total": total, "trainable": trainable, "frozen": total - trainable}

    report: dict[str, Any] = counts(model.parameters())
    report["submodules"] = {
        name: counts(child.parameters())
        for name, child in model.named_children()
        if child is not None
    }
    return report


def log_parameter_counts(model: nn.Module) -> dict[str, Any]:
    report = count_parameters(model)
    log.info(
        "parameters: %s total, %s trainable, %s frozen",
        f"{report['total']:,}",
        f"{report['trainable']:,}",
        f"{report['frozen']:,}",
    )
    for name, c in report["submodules"].items():
        log.info(
            "  %-15s %14s total %14s trainable", name, f"{c['total']:,}", f"{c['trainable']:,}"
        )
    return report


# ----------------------------------------------------------------- stage hand-off
