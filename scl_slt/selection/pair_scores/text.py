"""``text_semantic`` pair scores: similarity of the target sentences, the cheap "off-the-shelf
semantic similarity" proxy. Higher = more similar = harder negative (``score_file``'s convention).

Default TF-IDF cosine (``tfidf_vectors``): terms are lower-cased words (``\\w+``) for German
(``de``) and character unigrams + bigrams for Chinese (``zh``; whitespace and punctuation dropped,
since Chinese is not written with spaces and single characters are too ambiguous alone).
``tf`` = raw count, ``idf(t) = ln((1 + N) / (1 + df(t))) + 1`` (smoothed, so a term in every
sentence keeps a small weight), rows L2-normalised, score = dot product in [0, 1]. Option
``method="embedding"``: a sentence-embedding model from a local folder (transformers
``AutoModel``; the encoder of an encoder-decoder model), masked mean pooling, cosine in [-1, 1].
Nothing is downloaded. Identical sentences score 1 (the hardest): they are false negatives, see
``loss.mask_duplicate_texts``.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...config import ConfigError, TextScoreMethod
from .score_file import block_rows, gram_blocks, write_score_file

_WORD = re.compile(r"\w+")


# ------------------------------------------------------------------------------------- terms
def sentence_terms(text: str, language: str) -> list[str]:
    """The TF-IDF terms of one sentence: words for ``de``, character 1- and 2-grams for ``zh``."""
    if language == "de":
        return _WORD.findall(text.lower())
    if language == "zh":
        chars = [c for c in text if not c.isspace() and not unicodedata.category(c).startswith("P")]
        return chars + [a + b for a, b in zip(chars, chars[1:])]
    raise ValueError(f"text_semantic: unknown language {language!r} (de: words, zh: characters)")


@dataclass
class TfidfMatrix:
    """L2-normalised TF-IDF rows of N sentences over V terms, in CSR form (numpy arrays)."""

    crow: np.ndarray  # (N + 1,) int64: row r owns entries crow[r]:crow[r + 1]
    col: np.ndarray  # (nnz,) int64 term ids
    val: np.ndarray  # (nnz,) float32 weights
    terms: list[str]

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.crow) - 1, max(1, len(self.terms))

    def dense_rows(self, r0: int, r1: int) -> np.ndarray:
        """(r1 - r0, V) float32 dense copy of rows r0:r1."""
        block = np.zeros((r1 - r0, self.shape[1]), dtype=np.float32)
        lo, hi = self.crow[r0], self.crow[r1]
        rows = np.repeat(np.arange(r1 - r0), np.diff(self.crow[r0 : r1 + 1]))
        block[rows, self.col[lo:hi]] = self.val[lo:hi]
        return block

    def torch_csr(self) -> torch.Tensor:
        with warnings.catch_warnings():  # torch flags sparse CSR as beta; the product is exact
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                torch.from_numpy(self.crow), torch.from_numpy(self.col),
                torch.from_numpy(self.val), size=self.shape, check_invariants=True,
            )  # fmt: skip


def tfidf_vectors(texts: Sequence[str], language: str) -> TfidfMatrix:
    """TF-IDF rows of the sentences: ``w[d, t] = count(t in d) * (ln((1 + N) / (1 + df(t))) + 1)``,
    each row divided by its Euclidean norm (a sentence without any term keeps an all-zero row)."""
    if len(texts) == 0:
        raise ValueError("text_semantic: no sentences given")
    counts = [Counter(sentence_terms(t, language)) for t in texts]
    vocab: dict[str, int] = {}
    for c in counts:
        for term in c:
            vocab.setdefault(term, len(vocab))
    df = np.zeros(len(vocab), dtype=np.float64)
    for c in counts:
        df[[vocab[t] for t in c]] += 1
    idf = np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0
    crow, cols, vals = [0], [], []
    for c in counts:
        ids = np.fromiter((vocab[t] for t in c), dtype=np.int64, count=len(c))
        w = np.fromiter(c.values(), dtype=np.float64, count=len(c)) * idf[ids]
        norm = np.sqrt(np.sum(w * w))
        order = np.argsort(ids)  # CSR: column ids ascending within a row
        cols.append(ids[order])
        vals.append((w / norm if norm > 0 else w)[order])
        crow.append(crow[-1] + len(c))
    return TfidfMatrix(
        crow=np.asarray(crow, dtype=np.int64),
        col=np.concatenate(cols).astype(np.int64),
        val=np.concatenate(vals).astype(np.float32),
        terms=list(vocab),
    )


# Near-identical targets: two different sentences whose TF-IDF cosine (``tfidf_vectors``, the
# words / character 1-2-grams of ``sentence_terms``) is at least this are "near-identical" (the
# batch diagnostics, SAN's exclusion of semantically equal pairs, fine-grained retrieval's
# candidates). 0.8 keeps sentences that differ in one or two words of a dozen.
NEAR_IDENTICAL_TFIDF = 0.8


def pair_similarity(
    tfidf: TfidfMatrix, i: np.ndarray, j: np.ndarray, chunk_pairs: int = 1 << 16
) -> np.ndarray:
    """TF-IDF cosine of the sentence pairs ``(i[k], j[k])``: (K,) float64 in [0, 1].

    Sparse row dot products, no N x N matrix (usable at CSL-Daily scale for the pairs of every
    batch of an epoch): the entries of both rows of every pair in a chunk are keyed by
    ``pair * V + term``, sorted, and equal neighbouring keys (a term in both rows; a row holds
    each term once) contribute the product of their weights to their pair."""
    i = np.asarray(i, dtype=np.int64).ravel()
    j = np.asarray(j, dtype=np.int64).ravel()
    if i.shape != j.shape:
        raise ValueError(f"pair_similarity: {i.size} left but {j.size} right indices")
    out = np.zeros(i.size, dtype=np.float64)
    vocab = tfidf.shape[1]
    for c0 in range(0, i.size, chunk_pairs):
        rows = np.concatenate([i[c0 : c0 + chunk_pairs], j[c0 : c0 + chunk_pairs]])  # (2k,)
        pair = np.tile(np.arange(rows.size // 2, dtype=np.int64), 2)
        starts, counts = tfidf.crow[rows], np.diff(tfidf.crow)[rows]
        owner = np.repeat(np.arange(rows.size), counts)  # entry -> position in ``rows``
        entry = np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts, counts)
        entry += starts[owner]  # entry -> index into col / val
        keys = pair[owner] * vocab + tfidf.col[entry]
        order = np.argsort(keys, kind="stable")
        keys, weights = keys[order], tfidf.val[entry[order]].astype(np.float64)
        same = np.flatnonzero(keys[1:] == keys[:-1])  # (matches,) first of each equal pair
        products = weights[same] * weights[same + 1]
        out[c0 : c0 + rows.size // 2] = np.bincount(
            keys[same] // vocab, weights=products, minlength=rows.size // 2
        )
    return out


# -------------------------------------------------------------------------------- embeddings
def load_sentence_encoder(model_path: str | os.PathLike) -> tuple[Any, torch.nn.Module]:
    """(tokenizer, encoder) from a local folder; the one ``from_pretrained`` of this module."""
    if not model_path:
        raise ConfigError(
            "selection.text_model_path: text_method=embedding needs a local model folder"
        )
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"selection.text_model_path: model folder not found: {path} (models are never "
            "downloaded; point it at a local copy)"
        )
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"selection.text_model_path: cannot load a model from {path}: {e}") from e
    if getattr(model.config, "is_encoder_decoder", False):
        model = model.get_encoder()  # e.g. mBART: embed with the encoder alone
    return tokenizer, model.eval()


def sentence_embeddings(
    texts: Sequence[str],
    tokenizer: Any,
    encoder: torch.nn.Module,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """(N, d) float32 L2-normalised masked-mean-pooled last hidden states of the sentences."""
    encoder = encoder.to(device)
    rows = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start : start + batch_size]), padding=True,
                            truncation=True, return_tensors="pt")  # fmt: skip
            mask = enc["attention_mask"].to(device)  # (b, L)
            hidden = encoder(input_ids=enc["input_ids"].to(device), attention_mask=mask)
            hidden = hidden.last_hidden_state.float()  # (b, L, d)
            keep = mask.unsqueeze(-1).float()  # (b, L, 1)
            pooled = (hidden * keep).sum(1) / keep.sum(1).clamp_min(1.0)  # (b, d)
            rows.append(torch.nn.functional.normalize(pooled, dim=1).cpu().numpy())
    return np.concatenate(rows).astype(np.float32)


# ---------------------------------------------------------------------------------- scores
def text_semantic_scores(
    texts: Sequence[str],
    language: str,
    out_path: str | os.PathLike,
    method: TextScoreMethod | str = TextScoreMethod.tfidf,
    model_path: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
) -> Path:
    """N x N fp16 similarity of the target sentences (higher = more similar = harder negative).

    ``method="tfidf"`` (default; see the module docstring) or ``"embedding"`` with a local
    ``model_path``, embedded on ``device``. Returns ``out_path``.
    """
    method = TextScoreMethod(method)
    n = len(texts)
    record = {"strategy": "text_semantic", **text_semantic_key(texts, language, method, model_path)}
    if method is TextScoreMethod.tfidf:
        tfidf = tfidf_vectors(texts, language)
        record["vocabulary"] = len(tfidf.terms)
        sparse = tfidf.torch_csr()  # (N, V)
        rows = block_rows(max(tfidf.shape[1], n))

        def row_block(r0: int, r1: int) -> np.ndarray:
            block = torch.from_numpy(tfidf.dense_rows(r0, r1))  # (b, V)
            return (sparse @ block.T).T.numpy()  # (b, N)

        return write_score_file(out_path, n, row_block, rows, record)
    tokenizer, encoder = load_sentence_encoder(model_path)
    vectors = sentence_embeddings(texts, tokenizer, encoder, device=device)
    row_block, rows = gram_blocks(vectors)
    return write_score_file(out_path, n, row_block, rows, record)


def text_semantic_key(
    texts: Sequence[str],
    language: str,
    method: TextScoreMethod | str,
    model_path: str | os.PathLike | None,
) -> dict[str, Any]:
    """What a text_semantic score file depends on (its cache key)."""
    method = TextScoreMethod(method)
    resolved = str(Path(model_path).expanduser().resolve()) if model_path else None
    return {
        "method": method.value,
        "language": language,
        "model_path": resolved if method is TextScoreMethod.embedding else None,
        "texts_sha256": _texts_hash(texts),
    }


def _texts_hash(texts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()
