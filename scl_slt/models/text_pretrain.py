"""Pretrain the tiny MBart on text alone (mBART-style denoising), saved as `model.mbart_path` loads.

Why: at paper scale the frozen text encoder is mBART-50, in whose space similar sentences sit
close; a tiny MBart frozen at random initialisation has no such prior. This gives the CPU
experiments one, learnt from the training sentences (or any corpus) in minutes.

Objective (what is implemented): a text is noised and the model reconstructs it.
1. Sentence permutation: a text with several sentences (split after ``. ! ?``, for Chinese also
   ``。！？``) has its sentences shuffled. Most sign-language targets are one sentence, so this
   rarely applies (``pretrain.permute_sentences``).
2. Span masking (mBART's text infilling, on whole words): span lengths are drawn from
   Poisson(``poisson_lambda``) until they cover ``round(mask_ratio * words)`` words (the last one
   cut to fit); the spans go to random non-overlapping places and each becomes one ``<mask>``
   token; a span of length 0 inserts a ``<mask>``. A word is a pre-token of the tokenizer (a
   space-separated word; a character for Chinese), so its sub-word pieces are masked together.
The encoder reads ``[lang] noised </s>`` (the layout the frozen text encoder is fed in training),
the decoder predicts ``[lang] text </s>`` from ``</s> [lang] text`` (the translation decoder's
layout); the loss is token cross-entropy.

The tokenizer is the tiny one the tiny path trains (`SLTTokenizer.train`, same corpus,
`model.vocab_size`) plus a ``<mask>`` special token, as mBART-50 has.

Determinism and resume: the model is initialised from `seed`; the batches of step ``s`` (which
sentences, their noise) and its dropout are drawn from generators seeded by ``(seed, s)``, so a
run resumed from a checkpoint at step ``s`` continues exactly as if never stopped, and the same
seed always gives the same weights. Resumable checkpoints (``rundir/checkpoint.py``) go to the
work folder ``<out_dir>.work/``; the finished folder is written whole by ``rundir/atomic.py``
(never half-overwritten) and the work folder removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import MBartForConditionalGeneration

from ..config import ConfigError, DataConfig, ModelConfig, PretrainTextConfig, to_container
from ..data.datasets import split_records
from ..data.labels import DataError
from ..rundir.atomic import atomic_directory, write_json_atomic
from ..rundir.checkpoint import (
    CheckpointManager,
    clean_partial_writes,
    find_latest_checkpoint,
    load_train_state,
    load_weights,
)
from ..training.optim import build_optimizer, build_scheduler
from ..training.runtime import StopRequest, TrainingInterrupted
from .builder import tiny_mbart_config
from .tokenizer import SLTTokenizer

log = logging.getLogger(__name__)

MASK = "<mask>"
RECORD_FILE = "pretrain.json"  # in the finished folder: settings, corpus digest, loss curve
IDENTITY_FILE = "identity.json"  # in the work folder: what a resumed run must match
_SENTENCE_END = {"de": re.compile(r"(?<=[.!?])\s+"), "zh": re.compile(r"(?<=[。！？!?])")}


# ------------------------------------------------------------------------------------ corpus
def read_corpus(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file (one sentence per line), stripped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrain.corpus: file not found: {path}")
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    texts = [t for t in texts if t]
    if not texts:
        raise DataError(f"pretrain.corpus: {path} holds no non-empty line")
    return texts


def corpus_texts(cfg: PretrainTextConfig) -> list[str]:
    """`pretrain.corpus`, or by default the target sentences of the data config's train split."""
    if cfg.pretrain.corpus:
        return read_corpus(cfg.pretrain.corpus)
    texts = [str(r["text"]).strip() for r in split_records(cfg.data, "train")]
    if not any(texts):
        raise DataError(f"data={cfg.data.name}: the train split has no target sentence")
    return [t for t in texts if t]


def corpus_digest(texts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


def pretrain_tokenizer(texts: Sequence[str], data_cfg: DataConfig, vocab_size: int) -> SLTTokenizer:
    """The tiny path's tokenizer trained on `texts`, with mBART's ``<mask>`` added."""
    tiny = SLTTokenizer.train(texts, data_cfg.language, data_cfg.lang_code, vocab_size)
    tiny.backend.add_special_tokens([MASK])
    return SLTTokenizer(tiny.backend, data_cfg.lang_code, data_cfg.language, "tiny", tiny.restore)


# ------------------------------------------------------------------------------------- noise
def split_sentences(text: str, language: str) -> list[str]:
    return [s for s in _SENTENCE_END[language].split(text.strip()) if s]


def word_pieces(tokenizer: SLTTokenizer, text: str) -> list[list[int]]:
    """Token ids of `text` grouped by word (the backend's pre-tokens)."""
    enc = tokenizer.backend.encode(text, add_special_tokens=False)
    words: list[list[int]] = []
    last = None
    for token_id, word in zip(enc.ids, enc.word_ids):
        if word != last or not words:
            words.append([])
            last = word
        words[-1].append(token_id)
    return words


def span_mask(
    words: Sequence[Sequence[int]], rng: np.random.Generator, mask_id: int, ratio: float, lam: float
) -> list[int]:
    """Ids of `words` with Poisson(`lam`) spans covering round(`ratio` * words) words replaced
    by one `mask_id` each (see the module docstring)."""
    n = len(words)
    target = round(ratio * n)
    lengths: list[int] = []
    while sum(lengths) < target:
        lengths.append(min(int(rng.poisson(lam)), target - sum(lengths)))
    kept = n - target
    # interleave `kept` words with the spans: the spans take random slots among kept + spans
    slots = np.zeros(kept + len(lengths), dtype=bool)
    slots[rng.choice(len(slots), size=len(lengths), replace=False)] = True
    out: list[int] = []
    w = span = 0
    for is_span in slots:
        if is_span:
            out.append(mask_id)
            w += lengths[span]
            span += 1
        else:
            out.extend(words[w])
            w += 1
    return out


def noise_text(
    sentences: Sequence[Sequence[Sequence[int]]],
    rng: np.random.Generator,
    mask_id: int,
    ratio: float,
    lam: float,
    permute: bool,
) -> list[int]:
    """Sentence permutation (when there are several), then span masking over all words."""
    order = rng.permutation(len(sentences)) if permute and len(sentences) > 1 else None
    ordered = [sentences[i] for i in order] if order is not None else list(sentences)
    return span_mask([w for s in ordered for w in s], rng, mask_id, ratio, lam)


class DenoisingData:
    """The corpus tokenised once; `batch(step)` gives the step's noised inputs and targets."""

    def __init__(self, texts: Sequence[str], tokenizer: SLTTokenizer, cfg: PretrainTextConfig):
        self.cfg = cfg.pretrain
        self.seed = cfg.seed
        self.tokenizer = tokenizer
        self.mask_id = tokenizer.backend.token_to_id(MASK)
        if self.mask_id is None:
            raise ValueError(f"the tokenizer has no {MASK} token (use pretrain_tokenizer)")
        language = tokenizer.language
        self.sentences = [
            [word_pieces(tokenizer, s) for s in split_sentences(t, language)] for t in texts
        ]
        self.targets = tokenizer.tokenize(texts)
        self.limit = cfg.model.max_position_embeddings
        longest = max(len(t) for t in self.targets) + 2
        if longest > self.limit:
            raise ConfigError(
                f"model.max_position_embeddings: {self.limit} positions, but a corpus text has "
                f"{longest} tokens with its language code and </s>"
            )
        self.multi_sentence = sum(len(s) > 1 for s in self.sentences)
        self.batch_size = min(self.cfg.batch_size, len(texts))
        self.steps_per_epoch = max(1, len(texts) // self.batch_size)

    def noised(self, i: int, rng: np.random.Generator) -> list[int]:
        c = self.cfg
        ids = noise_text(
            self.sentences[i], rng, self.mask_id, c.mask_ratio, c.poisson_lambda,
            c.permute_sentences,
        )  # fmt: skip
        return ids[: self.limit - 2]

    def indices(self, step: int) -> np.ndarray:
        """The sentences of `step`: consecutive slices of a per-epoch permutation."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.targets))
        return order[k * self.batch_size : (k + 1) * self.batch_size]

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, 1, step])
        chosen = self.indices(step)
        sources = pad_rows([self.noised(int(i), rng) for i in chosen], self.tokenizer)
        targets = pad_rows([self.targets[int(i)] for i in chosen], self.tokenizer)
        return {"input_ids": sources[0], "attention_mask": sources[1],
                "labels": targets[0], "label_mask": targets[1]}  # fmt: skip


def pad_rows(rows: Sequence[Sequence[int]], tok: SLTTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """`[lang] ids </s>` per row, right-padded: ids (B, L) long, mask (B, L) bool."""
    rows = [[tok.lang_id, *r, tok.eos_id] for r in rows]
    ids = torch.full((len(rows), max(map(len, rows))), tok.pad_id, dtype=torch.long)  # (B, L)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids, ids != tok.pad_id


# ------------------------------------------------------------------------------------- model
def new_text_model(model_cfg: ModelConfig, tokenizer: SLTTokenizer, seed: int):
    """The tiny MBart (``builder.tiny_mbart_config``) at its seeded random initialisation."""
    torch.manual_seed(seed)
    return MBartForConditionalGeneration(tiny_mbart_config(model_cfg, tokenizer))


def denoising_loss(model, batch: dict[str, torch.Tensor], tokenizer: SLTTokenizer) -> torch.Tensor:
    """Mean token cross-entropy of reconstructing the clean text (teacher-forced)."""
    labels, label_mask = batch["labels"], batch["label_mask"]  # (B, L)
    start = labels.new_full((labels.shape[0], 1), tokenizer.eos_id)  # (B, 1)
    decoder_in = torch.cat([start, labels[:, :-1]], dim=1).masked_fill(
        ~label_mask, tokenizer.pad_id
    )
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=decoder_in,
        decoder_attention_mask=label_mask,
    ).logits  # (B, L, V)
    return F.cross_entropy(logits[label_mask], labels[label_mask])


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.default_rng([seed, 2, step]).integers(2**62))


# -------------------------------------------------------------------------------------- run
def run_identity(cfg: PretrainTextConfig, texts: Sequence[str]) -> dict[str, Any]:
    """The settings that decide the weights: a resumed or repeated run must match them."""
    p = to_container(cfg.pretrain)
    for key in ("out_dir", "overwrite", "checkpoint_every", "log_every", "probe_sentences",
                "probe_pairs", "corpus"):  # fmt: skip
        p.pop(key)
    model = to_container(cfg.model)
    keep = ("d_model", "encoder_layers", "decoder_layers", "attention_heads", "ffn_dim",
            "vocab_size", "max_position_embeddings", "init_std", "dropout")  # fmt: skip
    return {
        "seed": cfg.seed,
        "language": cfg.data.language,
        "lang_code": cfg.data.lang_code,
        "model": {k: model[k] for k in keep},
        "pretrain": p,
        "corpus_sha256": corpus_digest(texts),
        "corpus_size": len(texts),
    }


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += _differences(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            out.append(f"{prefix}{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return out


def finished_record(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / RECORD_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def pretrain_text(cfg: PretrainTextConfig, texts: Sequence[str], device: torch.device) -> dict:
    """Train (or resume, or find finished) the model of `cfg` on `texts`; returns the record of
    the finished folder `pretrain.out_dir` (see the module docstring)."""
    out_dir = Path(cfg.pretrain.out_dir).expanduser()
    identity = run_identity(cfg, texts)
    record = finished_record(out_dir)
    if record is not None and record.get("identity") == identity:
        log.info("%s is already pretrained with these settings; nothing to do", out_dir)
        return record
    if out_dir.exists() and not cfg.pretrain.overwrite:
        why = "was pretrained with other settings" if record else "is not a pretrained folder"
        raise ConfigError(
            f"pretrain.out_dir: {out_dir} exists and {why}; choose another folder or set "
            "pretrain.overwrite=true (it is replaced whole, at the end)"
        )
    work = out_dir.with_name(out_dir.name + ".work")
    tokenizer = _work_tokenizer(work, identity, texts, cfg)
    data = DenoisingData(texts, tokenizer, cfg)
    log.info("corpus: %d texts (%d with several sentences), vocabulary %d, %d steps of %d",
             len(texts), data.multi_sentence, tokenizer.vocab_size, cfg.pretrain.steps,
             data.batch_size)  # fmt: skip
    model = new_text_model(cfg.model, tokenizer, cfg.seed).to(device)
    p = cfg.pretrain
    optimizer = build_optimizer(model, p.lr, p.weight_decay)
    scheduler = build_scheduler(optimizer, p.warmup_steps, p.steps, p.min_lr_ratio)
    checkpoints = CheckpointManager(work, keep_last=1, keep_best=1)
    clean_partial_writes(checkpoints.root)
    step, losses = 0, []
    latest = find_latest_checkpoint(checkpoints.root)
    if latest is not None:
        model.load_state_dict(load_weights(latest))
        state = load_train_state(latest)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, losses = state["step"], state["losses"]
        log.info("resumed from %s (step %d)", latest, step)

    def save(at: int) -> Path:
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "step": at, "losses": losses}  # fmt: skip
        return checkpoints.save(at, model.state_dict(), state, {"step": at})

    started = time.monotonic()
    model.train()
    with StopRequest() as stop:
        while step < p.steps:
            batch = {k: v.to(device) for k, v in data.batch(step).items()}
            torch.manual_seed(_step_seed(cfg.seed, step))  # this step's dropout
            loss = denoising_loss(model, batch, tokenizer)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite denoising loss at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if p.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(round(loss.item(), 5))
            if step % p.log_every == 0 or step == p.steps:
                recent = losses[-p.log_every :]
                log.info("step %d/%d loss %.4f lr %.2e", step, p.steps,
                         sum(recent) / len(recent), scheduler.get_last_lr()[0])  # fmt: skip
            if stop.requested:
                raise TrainingInterrupted(stop.signum, str(save(step)))
            if step % p.checkpoint_every == 0 and step < p.steps:
                save(step)
    seconds = time.monotonic() - started
    record = {"identity": identity, "steps": step, "train_seconds_this_session": round(seconds, 1),
              "multi_sentence_texts": data.multi_sentence, "losses": losses}  # fmt: skip
    save_pretrained_folder(out_dir, model.cpu(), tokenizer, record)
    shutil.rmtree(work, ignore_errors=True)
    return record


def _work_tokenizer(work: Path, identity: dict, texts: Sequence[str], cfg) -> SLTTokenizer:
    """The run's tokenizer in the work folder: trained once, reopened by a resumed run (whose
    identity must match the one that started the folder)."""
    saved = work / IDENTITY_FILE
    if saved.is_file():
        before = json.loads(saved.read_text(encoding="utf-8"))
        diff = _differences(before, identity)
        if diff:
            raise ConfigError(
                f"{work} holds an interrupted pretraining with other settings ({'; '.join(diff)})"
                f": rerun it with those, or delete {work} to start afresh"
            )
        return SLTTokenizer.load(work / "tokenizer")
    if work.exists():
        shutil.rmtree(work)  # a start killed before its identity was written: nothing to keep
    tokenizer = pretrain_tokenizer(texts, cfg.data, cfg.model.vocab_size)
    tokenizer.save(work / "tokenizer")
    write_json_atomic(saved, identity)
    return tokenizer


def save_pretrained_folder(out_dir: Path, model, tokenizer: SLTTokenizer, record: dict) -> None:
    """Weights and config (``save_pretrained``), the tokenizer (SLTTokenizer files, also readable
    by ``AutoTokenizer``) and `record`, written whole under `out_dir`."""
    from transformers import PreTrainedTokenizerFast

    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend, bos_token="<s>",
                                     eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                     mask_token=MASK)  # fmt: skip
        hf.save_pretrained(tmp)
        tokenizer.save(tmp)
        write_json_atomic(tmp / RECORD_FILE, record)
    log.info("pretrained text model written to %s (model.mbart_path=%s)", out_dir, out_dir)
