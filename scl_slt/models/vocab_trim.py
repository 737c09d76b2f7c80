"""A trimmed mBART-50 (model + tokenizer) that keeps only the tokens a dataset uses.

mBART-50's 250,054-token vocabulary makes its embedding and LM head about 256M parameters; a
sign language corpus uses a few thousand of those tokens. Trimming keeps the tokens that the
*full* tokenizer produces on the train, dev and test references, plus every special token and
language code, in their original order, and cuts the embedding matrix, LM head and
`final_logits_bias` to match.

The trimmed tokenizer is the full one with unused pieces removed from its Unigram vocabulary, so
it segments every corpus text exactly as the full one did (the best segmentation is still
available and nothing better was added). `verify_trimmed` proves it on every reference: the
trimmed ids must be the full ids renumbered, no `<unk>` may appear, and decoding must return the
reference unchanged. Decoding restores what the full tokenizer's NFKC normaliser changes (e.g.
"！" -> "!" -> "！") through the restoration map learnt on the train texts
(`tokenizer.restoration_map`); texts it still cannot give back unchanged (the normalised form is
the corpus's own more often) are reported and fail unless `allow_normalization` is set.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn

from .builder import load_pretrained_mbart, load_pretrained_tokenizer
from .tokenizer import MBART50_LANG_CODES, SPECIAL_TOKENS, SLTTokenizer, restoration_map

log = logging.getLogger(__name__)

# State-dict entries of MBartForConditionalGeneration indexed by token id (rows), all tied.
VOCAB_ROWS = (
    "model.shared.weight",
    "model.encoder.embed_tokens.weight",
    "model.decoder.embed_tokens.weight",
    "lm_head.weight",
)
TOKEN_ID_FIELDS = (
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "decoder_start_token_id",
    "forced_bos_token_id",
    "forced_eos_token_id",
)
KEPT_IDS_FILE = "kept_token_ids.json"
REPORT_FILE = "trim_report.json"


class TrimError(RuntimeError):
    """Trimming would lose or change text, or the inputs cannot be trimmed."""


# mBART-50's added tokens, which a trimmed vocabulary always keeps: <s> <pad> </s> <unk>, the 52
# language codes and <mask>
MBART50_ADDED_TOKENS = len(SPECIAL_TOKENS) + len(MBART50_LANG_CODES) + 1


# ---------------------------------------------------------------------------- tokenizer
def estimate_kept_tokens(texts: Sequence[str], language: str) -> int:
    """The size of the trimmed vocabulary of `texts` when mBART-50's tokenizer is not at hand
    (``kept_token_ids`` gives the exact one): their distinct words (characters for ``zh``)
    plus the tokens always kept. An estimate: SentencePiece pieces are not words. A rare
    compound splits into pieces (more tokens), common stems and endings are shared (fewer);
    Chinese pieces often span several characters (more)."""
    if language == "zh":
        units = {char for text in texts for char in text if not char.isspace()}
    else:
        units = {word for text in texts for word in text.split()}
    return len(units) + MBART50_ADDED_TOKENS


def kept_token_ids(backend: Tokenizer, texts: Sequence[str]) -> list[int]:
    """Old ids to keep, ascending: every id the texts encode to, plus all special tokens."""
    used: set[int] = set()
    for encoding in backend.encode_batch(list(texts), add_special_tokens=False):
        used.update(encoding.ids)
    specials = set(backend.get_added_tokens_decoder())
    return sorted(used | specials)


def trim_backend(backend: Tokenizer, kept: Sequence[int]) -> Tokenizer:
    """The Unigram tokenizer restricted to `kept` (old ids), renumbered 0..len(kept)-1."""
    spec = json.loads(backend.to_str())
    if spec["model"]["type"] != "Unigram":
        raise TrimError(
            f"vocabulary trimming supports Unigram (SentencePiece) tokenizers such as "
            f"mBART-50's, got {spec['model']['type']}"
        )
    vocab = spec["model"]["vocab"]
    new_id = {old: new for new, old in enumerate(kept)}
    if kept and max(kept) >= len(vocab):
        raise TrimError(f"token id {max(kept)} is outside the vocabulary of {len(vocab)}")
    spec["model"]["vocab"] = [vocab[old] for old in kept]
    unk = spec["model"].get("unk_id")
    if unk is not None:
        spec["model"]["unk_id"] = new_id[unk]
    for token in spec.get("added_tokens", []):
        token["id"] = new_id[token["id"]]
    post = spec.get("post_processor")
    if post and post.get("type") == "TemplateProcessing":
        for special in post["special_tokens"].values():
            special["ids"] = [new_id[i] for i in special["ids"]]
    elif post is not None:
        raise TrimError(f"cannot renumber a {post.get('type')} post-processor")
    return Tokenizer.from_str(json.dumps(spec))


# -------------------------------------------------------------------------------- model
def _remap_ids(config: Any, new_id: Mapping[int, int]) -> None:
    for name in TOKEN_ID_FIELDS:
        old = getattr(config, name, None)
        if old is None:
            continue
        if old not in new_id:
            raise TrimError(f"{name}={old} is not among the kept tokens")
        setattr(config, name, new_id[old])


def trim_model(model: nn.Module, kept: Sequence[int]) -> nn.Module:
    """A new MBartForConditionalGeneration whose vocabulary is `kept` (old ids, in order)."""
    from transformers import MBartConfig, MBartForConditionalGeneration

    old_vocab = model.config.vocab_size
    index = torch.tensor(list(kept), dtype=torch.long)
    new_id = {old: new for new, old in enumerate(kept)}
    config = MBartConfig.from_dict(model.config.to_dict())
    config.vocab_size = len(kept)
    _remap_ids(config, new_id)
    trimmed = MBartForConditionalGeneration(config)
    state = {}
    for key, value in model.state_dict().items():
        if key in VOCAB_ROWS:
            value = value.index_select(0, index)
        elif key == "final_logits_bias":
            value = value.index_select(1, index)
        elif old_vocab in value.shape:
            raise TrimError(f"unexpected vocabulary-sized tensor {key} {tuple(value.shape)}")
        state[key] = value
    trimmed.load_state_dict(state, strict=True)
    generation = copy.deepcopy(model.generation_config)
    _remap_ids(generation, new_id)
    trimmed.generation_config = generation
    return trimmed


# ------------------------------------------------------------------------------ check
def verify_trimmed(
    full: SLTTokenizer,
    trimmed: SLTTokenizer,
    kept: Sequence[int],
    texts_by_split: Mapping[str, Sequence[str]],
    allow_normalization: bool = False,
) -> dict[str, Any]:
    """Encode -> decode every reference with the trimmed tokenizer; raise on any loss.

    Fails on: `<unk>`; ids that are not the full tokenizer's ids renumbered; decoded text that
    differs from the reference (unless the full tokenizer changes it identically, i.e. its own
    normaliser did it, and `allow_normalization` is set). Returns counts per split.
    """
    new_id = {old: new for new, old in enumerate(kept)}
    problems: dict[str, list[str]] = {
        "unk": [],
        "segmentation": [],
        "changed": [],
        "normalised": [],
    }
    missing_chars: set[str] = set()
    counts = {}
    for split, texts in texts_by_split.items():
        texts = list(texts)
        full_ids = full.tokenize(texts)
        trimmed_ids = trimmed.tokenize(texts)
        decoded = trimmed.decode(trimmed.encode_targets(texts)[0]) if texts else []
        full_decoded = full.decode(full.encode_targets(texts)[0]) if texts else []
        for text, f_ids, t_ids, out, f_out in zip(
            texts, full_ids, trimmed_ids, decoded, full_decoded
        ):
            where = f"{split}: {text!r}"
            if trimmed.unk_id in t_ids or full.unk_id in f_ids:
                problems["unk"].append(where)
                missing_chars.update(c for c in text if full.unk_id in full.tokenize([c])[0])
            elif t_ids != [new_id.get(i, -1) for i in f_ids]:
                problems["segmentation"].append(where)
            elif out != text:
                kind = "normalised" if out == f_out else "changed"
                problems[kind].append(f"{where} -> {out!r}")
        counts[split] = len(texts)
    failing = ["unk", "segmentation", "changed"] + ([] if allow_normalization else ["normalised"])
    errors = [k for k in failing if problems[k]]
    if problems["normalised"]:
        log.warning(
            "%d references are changed by the full tokenizer's own normaliser, e.g. %s",
            len(problems["normalised"]),
            problems["normalised"][:3],
        )
    if errors:
        lines = []
        for kind in errors:
            lines.append(f"{len(problems[kind])} x {kind}: " + "; ".join(problems[kind][:5]))
        if missing_chars:
            lines.append(
                f"characters the full tokenizer itself cannot encode: {''.join(sorted(missing_chars))!r}"
            )
        if "normalised" in errors:
            lines.append(
                "'normalised': the full mBART-50 tokenizer changes these texts itself (NFKC); "
                "pass --allow-normalization to accept (references stay raw for scoring)"
            )
        raise TrimError("trimmed tokenizer loses or changes text:\n  " + "\n  ".join(lines))
    return {
        "texts": counts,
        "normalised_by_full_tokenizer": len(problems["normalised"]),
    }


# ------------------------------------------------------------------------------ entry
def trim_mbart(
    mbart_path: str,
    texts_by_split: Mapping[str, Sequence[str]],
    out_dir: str | os.PathLike,
    lang_code: str = "de_DE",
    allow_normalization: bool = False,
) -> dict[str, Any]:
    """Write a trimmed model + tokenizer to `out_dir` (save_pretrained) and verify it.

    The check runs on the files as saved, loaded the way training loads them.
    """
    out_dir = Path(out_dir)
    all_texts = [t for texts in texts_by_split.values() for t in texts]
    if not all_texts:
        raise TrimError("no reference texts given")
    hf_tokenizer = load_pretrained_tokenizer(mbart_path)
    restore_from = list(texts_by_split.get("train") or all_texts)  # as training builds it
    restore = restoration_map(hf_tokenizer.backend_tokenizer, restore_from)
    full = SLTTokenizer(
        hf_tokenizer.backend_tokenizer, lang_code, "", source="mbart", restore=restore
    )
    model = load_pretrained_mbart(mbart_path)
    if model.config.vocab_size != full.vocab_size:
        raise TrimError(
            f"{mbart_path}: model vocabulary {model.config.vocab_size} != tokenizer "
            f"vocabulary {full.vocab_size}"
        )
    kept = kept_token_ids(full.backend, all_texts)
    log.info("keeping %d of %d tokens", len(kept), full.vocab_size)
    trimmed_backend = trim_backend(full.backend, kept)
    trimmed_model = trim_model(model, kept)

    out_dir.mkdir(parents=True, exist_ok=True)
    trimmed_model.save_pretrained(out_dir)
    hf_tokenizer.save_pretrained(out_dir)
    for stale in out_dir.glob("*.model"):  # an untrimmed SentencePiece file would disagree
        stale.unlink()
    trimmed_backend.save(str(out_dir / "tokenizer.json"))
    (out_dir / KEPT_IDS_FILE).write_text(json.dumps(kept) + "\n", encoding="utf-8")

    reloaded = SLTTokenizer(
        load_pretrained_tokenizer(str(out_dir)).backend_tokenizer,
        lang_code,
        "",
        source="mbart",
        restore=restore,
    )
    reloaded_model = load_pretrained_mbart(str(out_dir))
    if not (reloaded.vocab_size == reloaded_model.config.vocab_size == len(kept)):
        raise TrimError(
            f"{out_dir}: tokenizer vocabulary {reloaded.vocab_size}, model vocabulary "
            f"{reloaded_model.config.vocab_size}, kept {len(kept)}: they must agree"
        )
    index = torch.tensor(kept, dtype=torch.long)
    same_rows = torch.equal(
        reloaded_model.get_input_embeddings().weight, model.get_input_embeddings().weight[index]
    ) and torch.equal(reloaded_model.lm_head.weight, model.lm_head.weight[index])
    if not same_rows:
        raise TrimError(f"{out_dir}: saved embeddings are not the kept rows of the full model")
    stats = verify_trimmed(full, reloaded, kept, texts_by_split, allow_normalization)
    report = {
        "source": mbart_path,
        "full_vocab": full.vocab_size,
        "kept_vocab": len(kept),
        "restored_by_decoding": restore,
        **stats,
    }
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
