"""What a text encoder learnt: the check printed after text pretraining (``text_pretrain.py``).

The frozen text encoder matters to the method because similar sentences sit close in its space
(so random in-batch negatives hold false negatives a trajectory can tell apart). Two figures,
each for the pretrained encoder and for the same architecture at its random initialisation (the
weights the tiny path freezes; the pretraining's own step 0):

* retrieval under noise: each of up to `probe_sentences` distinct sentences is noised with the
  pretraining's noise (span masking, sentence permutation; ``text_pretrain.noise_text``) and
  must find its own clean version among all of them: R@1, R@5 (cosine of mean-pooled vectors);
* mean cosine of sentence pairs: identical (the same text at two corpus positions; 1 up to
  float error for any encoder, a check that padding and batching leave a sentence's vector
  alone), near-identical (different texts with TF-IDF cosine >= ``NEAR_IDENTICAL_TFIDF``, the
  project's own definition) and random pairs of corpus positions; the gap near-identical minus
  random says whether similar sentences are closer than chance.

Cosines are taken after removing the corpus' mean vector (mean of the clean sentences'
vectors): a direction every sentence shares says nothing about which sentences are alike, and
the similarity head's text projection (a linear layer with bias) removes it anyway. How large it
is, is reported as ``anisotropy``: the raw (uncentred) mean cosine of the random pairs.

Sentences are encoded as the translation model's frozen text encoder sees them:
``[lang] tokens </s>``, eval mode, mean-pooled over the valid tokens.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..selection.pair_scores.text import NEAR_IDENTICAL_TFIDF, tfidf_vectors
from .builder import load_pretrained_mbart
from .text_pretrain import (
    MASK,
    finished_record,
    noise_text,
    pad_rows,
    split_sentences,
    word_pieces,
)
from .tokenizer import SLTTokenizer

PAIR_KINDS = ("identical", "near_identical", "random")


@torch.no_grad()
def encode_rows(
    encoder: nn.Module,
    rows: Sequence[Sequence[int]],
    tokenizer: SLTTokenizer,
    batch_size: int = 256,
    normalise: bool = True,
) -> np.ndarray:
    """(N, D) float32 masked means of the encoder's output for `rows` (token ids without
    specials; ``[lang] ... </s>`` is added), L2-normalised unless `normalise` is false."""
    encoder.eval()
    device = next(encoder.parameters()).device
    out = []
    for start in range(0, len(rows), batch_size):
        ids, mask = pad_rows(rows[start : start + batch_size], tokenizer)  # (b, L)
        hidden = encoder(input_ids=ids.to(device), attention_mask=mask.to(device))
        hidden = hidden.last_hidden_state.float()  # (b, L, D)
        keep = mask.to(device).unsqueeze(-1).float()  # (b, L, 1)
        pooled = (hidden * keep).sum(1) / keep.sum(1)  # (b, D)
        out.append((nn.functional.normalize(pooled, dim=1) if normalise else pooled).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def near_identical_pairs(texts: Sequence[str], language: str) -> np.ndarray:
    """(K, 2) indices into `texts` of pairs of different texts with TF-IDF cosine >=
    ``NEAR_IDENTICAL_TFIDF`` (each unordered pair once, i < j)."""
    tfidf = tfidf_vectors(texts, language)
    dense = tfidf.dense_rows(0, len(texts))  # (N, V)
    found = []
    for r0 in range(0, len(texts), 512):
        block = dense[r0 : r0 + 512] @ dense.T  # (b, N)
        rows, cols = np.nonzero(block >= NEAR_IDENTICAL_TFIDF)
        rows = rows + r0
        keep = rows < cols
        found.append(np.stack([rows[keep], cols[keep]], axis=1))
    pairs = np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)
    return np.array([p for p in pairs if texts[p[0]] != texts[p[1]]], dtype=np.int64).reshape(-1, 2)


def probe_pairs(texts: Sequence[str], language: str, n_pairs: int, seed: int) -> dict:
    """Up to `n_pairs` (K, 2) index pairs of each kind (``PAIR_KINDS``) over `texts`."""
    rng = np.random.default_rng([seed, 3])
    by_text: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(texts):
        by_text[t].append(i)
    identical = np.array(
        [(g[0], j) for g in by_text.values() for j in g[1:]], dtype=np.int64
    ).reshape(-1, 2)
    unique = list(by_text)
    near = near_identical_pairs(unique, language)
    near = np.array([[by_text[unique[a]][0], by_text[unique[b]][0]] for a, b in near])
    near = near.reshape(-1, 2).astype(np.int64)
    i = rng.integers(len(texts), size=n_pairs)
    j = (i + rng.integers(1, max(2, len(texts)), size=n_pairs)) % len(texts)  # j != i
    pairs = {"identical": identical, "near_identical": near, "random": np.stack([i, j], 1)}
    for kind, found in pairs.items():
        if len(found) > n_pairs:
            pairs[kind] = found[np.sort(rng.choice(len(found), n_pairs, replace=False))]
    return pairs


def probe_encoder(
    encoder: nn.Module,
    tokenizer: SLTTokenizer,
    texts: Sequence[str],
    pairs: dict[str, np.ndarray],
    noised: Sequence[Sequence[int]],
    retrieval_ids: np.ndarray,
) -> dict[str, Any]:
    """The figures of one encoder (see the module docstring)."""
    raw = encode_rows(encoder, tokenizer.tokenize(texts), tokenizer, normalise=False)  # (N, D)
    centre = raw.mean(0, keepdims=True)  # (1, D) the direction all sentences share
    vectors = _unit(raw - centre)  # (N, D)
    result: dict[str, Any] = {}
    for kind in PAIR_KINDS:
        p = pairs[kind]
        cos = (vectors[p[:, 0]] * vectors[p[:, 1]]).sum(1) if len(p) else np.zeros(0)
        result[kind] = {"pairs": int(len(p)), "mean_cosine": float(cos.mean()) if len(p) else None}
    if result["near_identical"]["pairs"]:
        gap = result["near_identical"]["mean_cosine"] - result["random"]["mean_cosine"]
        result["near_minus_random"] = gap
    p = pairs["random"]
    result["anisotropy"] = float((_unit(raw)[p[:, 0]] * _unit(raw)[p[:, 1]]).sum(1).mean())
    clean = vectors[retrieval_ids]  # (M, D)
    noisy = _unit(encode_rows(encoder, noised, tokenizer, normalise=False) - centre)  # (M, D)
    sims = noisy @ clean.T  # (M, M) noised x clean
    correct = np.diag(sims)[:, None]
    rank = (sims > correct).sum(1)  # 0 = retrieved first
    result["retrieval"] = {
        "sentences": int(len(retrieval_ids)),
        "r1": float((rank < 1).mean()),
        "r5": float((rank < 5).mean()),
        "median_rank": float(np.median(rank) + 1),
    }
    return result


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def compare_encoders(
    encoders: dict[str, nn.Module],
    tokenizer: SLTTokenizer,
    texts: Sequence[str],
    seed: int,
    n_sentences: int,
    n_pairs: int,
    mask_ratio: float,
    poisson_lambda: float,
    permute: bool,
) -> dict[str, Any]:
    """`probe_encoder` for each encoder on the same pairs and the same noised sentences."""
    language = tokenizer.language
    pairs = probe_pairs(texts, language, n_pairs, seed)
    first = {t: i for i, t in reversed(list(enumerate(texts)))}  # first position of each text
    rng = np.random.default_rng([seed, 4])
    distinct = np.array(sorted(first.values()), dtype=np.int64)
    ids = np.sort(rng.choice(distinct, min(n_sentences, len(distinct)), replace=False))
    mask_id = tokenizer.backend.token_to_id(MASK)
    if mask_id is None:
        raise ValueError(f"the tokenizer has no {MASK} token: not a pretrained text folder")
    noised = [
        noise_text([word_pieces(tokenizer, s) for s in split_sentences(texts[i], language)],
                   rng, mask_id, mask_ratio, poisson_lambda, permute)
        for i in ids
    ]  # fmt: skip
    return {
        name: probe_encoder(enc, tokenizer, texts, pairs, noised, ids)
        for name, enc in encoders.items()
    }


def probe_folder(
    folder: str | Path, texts: Sequence[str], seed: int = 0, n_sentences: int = 1000,
    n_pairs: int = 2000,
) -> dict[str, Any]:  # fmt: skip
    """The check of a finished pretraining folder on `texts`, against its random init (the
    model built from the folder's config with the seed it was pretrained from)."""
    folder = Path(folder)
    record = finished_record(folder)
    if record is None:
        raise FileNotFoundError(f"{folder}: no pretrain.json (not made by scl_slt.pretrain_text)")
    identity = record["identity"]
    tokenizer = SLTTokenizer.load(folder)
    pretrained = load_pretrained_mbart(str(folder))
    torch.manual_seed(identity["seed"])
    random_init = type(pretrained)(pretrained.config)
    p = identity["pretrain"]
    return compare_encoders(
        {"pretrained": pretrained.model.encoder, "random_init": random_init.model.encoder},
        tokenizer, texts, seed, n_sentences, n_pairs, p["mask_ratio"], p["poisson_lambda"],
        p["permute_sentences"],
    )  # fmt: skip


def format_probe(result: dict[str, Any]) -> str:
    """A small table of `compare_encoders`' figures, one column per encoder."""
    names = list(result)

    def cell(value: Any) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = [f"{'':32}" + "".join(f"{n:>14}" for n in names)]
    for kind in PAIR_KINDS:
        count = result[names[0]][kind]["pairs"]
        label = f"mean cosine, {kind} ({count})"
        lines.append(
            f"{label:32}" + "".join(f"{cell(result[n][kind]['mean_cosine']):>14}" for n in names)
        )
    raw = "".join(f"{cell(result[n]['anisotropy']):>14}" for n in names)
    lines.append(f"{'raw cosine, random (anisotropy)':32}" + raw)
    if "near_minus_random" in result[names[0]]:
        gap = "".join(f"{cell(result[n]['near_minus_random']):>14}" for n in names)
        lines.append(f"{'near-identical minus random':32}" + gap)
    m = result[names[0]]["retrieval"]["sentences"]
    for key in ("r1", "r5", "median_rank"):
        label = f"noised -> clean {key} ({m})"
        lines.append(
            f"{label:32}" + "".join(f"{cell(result[n]['retrieval'][key]):>14}" for n in names)
        )
    return "\n".join(lines)
