"""Alternative pair scores for the curriculum: only the scores differ, never the batch builder.

Every strategy writes an N x N float16 ``.npy`` (memory-mappable, ``np.lib.format``) in the
convention of the trajectory deltas that ``CurriculumBatchSampler`` reads: entry ``[i, j]`` is
for video i and text j of the train split in dataset order, and **a higher score means a harder
negative** (more similar, more likely to be confused); a lower score means an easier one. The
schedule's small α then batches dissimilar samples and its large α similar ones, exactly as it
does for δ. The diagonal (a sample with itself) is never read by the curriculum.

- ``text_semantic`` — similarity of the target sentences, the cheap "off-the-shelf semantic
  similarity" proxy. Default TF-IDF cosine (``tfidf_vectors``):
  terms are lower-cased words (``\\w+``) for German (``de``) and character unigrams + bigrams
  for Chinese (``zh``; whitespace and punctuation dropped, since Chinese is not written with
  spaces and single characters are too ambiguous alone). ``tf`` = raw count,
  ``idf(t) = ln((1 + N) / (1 + df(t))) + 1`` (smoothed, so a term in every sentence keeps a small
  weight), rows L2-normalised, score = dot product in [0, 1]. Option ``method="embedding"``:
  a sentence-embedding model from a local folder (transformers ``AutoModel``; the encoder of an
  encoder-decoder model), masked mean pooling, cosine in [-1, 1]. Nothing is downloaded.
  Identical sentences score 1 (the hardest): they are false negatives, see
  ``loss.mask_duplicate_texts``.
- ``visual_confusable`` (SAN: hard negatives by visual confusability in the sign-embedding
  space) — cosine similarity of the reference model's video embeddings of two *different*
  videos: each sample's projected visual tokens from a tracker snapshot are mean-pooled and
  L2-normalised. Video-video, so the matrix is symmetric; pairs of videos with identical targets
  keep their (typically high) visual score.

Both are computed in row blocks straight into the memory map (``_write_scores``), so memory stays
at the sentence/video vectors plus one block; a ``<file>.json`` beside the scores records what
they were computed from, and ``prepare_strategy_scores`` reuses a file whose record matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...config import ConfigError, SelectionConfig, SelectionName, TextScoreMethod
from ..tracker import Snapshot, is_complete_snapshot, names_hash, read_snapshot

log = logging.getLogger(__name__)

STRATEGY_DIRNAME = "selection"  # <run_dir>/selection/<strategy>.npy
_BLOCK_ELEMENTS = 1 << 24  # elements of one dense row block while computing scores
_WORD = re.compile(r"\w+")


# -------------------------------------------------------------------------------- text: terms
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


# --------------------------------------------------------------------------- text: embeddings
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


# -------------------------------------------------------------------------------- writing
def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False))
    _fsync(tmp)
    os.replace(tmp, path)


def _write_scores(
    out_path: str | os.PathLike,
    n: int,
    row_block: Callable[[int, int], np.ndarray],
    block_rows: int,
    record: dict[str, Any],
) -> Path:
    """Fill an (n, n) fp16 .npy with ``row_block(r0, r1)`` blocks, atomically, plus its record."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + f".tmp-{os.getpid()}")
    started = time.time()
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, n))
        for r0 in range(0, n, block_rows):
            r1 = min(n, r0 + block_rows)
            block = row_block(r0, r1)
            if not np.isfinite(block).all():
                raise ValueError(f"{record.get('strategy')}: non-finite score in rows {r0}:{r1}")
            out[r0:r1] = block
        out.flush()
        del out
        _fsync(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    out_path.with_suffix(".json").unlink(missing_ok=True)
    os.replace(tmp, out_path)
    seconds = round(time.time() - started, 2)
    _write_json_atomic(
        out_path.with_suffix(".json"),
        {
            **record,
            "file": out_path.name,
            "layout": "score[i, j] for video i and text j of the train split, dataset order; "
            "higher = harder (more similar) negative",
            "dtype": "float16",
            "num_samples": n,
            "seconds": seconds,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    log.info("%s scores: %d x %d in %.1fs -> %s", record.get("strategy"), n, n, seconds, out_path)
    return out_path


def _gram_blocks(vectors: np.ndarray) -> tuple[Callable[[int, int], np.ndarray], int]:
    """Row blocks of ``V V^T`` for dense (N, d) float32 vectors."""
    rows = max(1, _BLOCK_ELEMENTS // max(1, vectors.shape[0]))
    return (lambda r0, r1: vectors[r0:r1] @ vectors.T), rows


def _texts_hash(texts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


# ------------------------------------------------------------------------------ strategies
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
        rows = max(1, _BLOCK_ELEMENTS // max(tfidf.shape[1], n))

        def row_block(r0: int, r1: int) -> np.ndarray:
            block = torch.from_numpy(tfidf.dense_rows(r0, r1))  # (b, V)
            return (sparse @ block.T).T.numpy()  # (b, N)

        return _write_scores(out_path, n, row_block, rows, record)
    tokenizer, encoder = load_sentence_encoder(model_path)
    vectors = sentence_embeddings(texts, tokenizer, encoder, device=device)
    row_block, rows = _gram_blocks(vectors)
    return _write_scores(out_path, n, row_block, rows, record)


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


def resolve_snapshot(path: str | os.PathLike) -> Path:
    """A snapshot folder itself, or the latest complete one in a snapshots/ or run folder."""
    path = Path(path).expanduser()
    if is_complete_snapshot(path):
        return path
    for folder in (path, path / "snapshots"):
        if folder.is_dir():
            found = [p for p in folder.iterdir() if is_complete_snapshot(p)]
            if found:
                return max(found, key=lambda p: int(p.name.split("-", 1)[1]))
    raise FileNotFoundError(
        f"selection.snapshot: no complete snapshot at {path} (give an epoch-NNNN snapshot "
        "folder, a run's snapshots/ folder or the run folder)"
    )


def pooled_video_embeddings(snapshot: Snapshot, chunk_samples: int = 4096) -> np.ndarray:
    """(N, d) float32: each sample's visual tokens mean-pooled, then L2-normalised.

    Read from the memory map ``chunk_samples`` samples at a time (float32 copies of one chunk).
    """
    lengths = np.asarray(snapshot.video_lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    pooled = np.empty((len(lengths), snapshot.video_features.shape[1]), dtype=np.float64)
    for s0 in range(0, len(lengths), chunk_samples):
        s1 = min(len(lengths), s0 + chunk_samples)
        lo = int(ends[s0 - 1]) if s0 else 0
        feats = np.asarray(snapshot.video_features[lo : ends[s1 - 1]], dtype=np.float32)
        starts = np.concatenate([[0], ends[s0 : s1 - 1] - lo])
        pooled[s0:s1] = np.add.reduceat(feats, starts, axis=0) / lengths[s0:s1, None]
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


def visual_confusable_scores(snapshot_dir: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """N x N fp16 cosine of the snapshot's mean-pooled video embeddings (video i vs video j).

    Higher = more visually confusable = harder negative. ``snapshot_dir`` is resolved by
    ``resolve_snapshot`` (the latest snapshot when given a run or snapshots/ folder).
    """
    snapshot = read_snapshot(resolve_snapshot(snapshot_dir))
    vectors = pooled_video_embeddings(snapshot)
    row_block, rows = _gram_blocks(vectors)
    record = {"strategy": "visual_confusable", **visual_confusable_key(snapshot)}
    return _write_scores(out_path, snapshot.num_samples, row_block, rows, record)


def visual_confusable_key(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "method": "cosine of mean-pooled projected visual tokens",
        "snapshot": str(snapshot.path.resolve()),
        "snapshot_epoch": snapshot.epoch,
        "snapshot_created": snapshot.created,
        "names_sha256": names_hash(snapshot.names),
    }


# ------------------------------------------------------------------- for build_batch_sampler
def _cached(out_path: Path, key: dict[str, Any]) -> bool:
    record = out_path.with_suffix(".json")
    if not (out_path.is_file() and record.is_file()):
        return False
    try:
        saved = json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    return all(saved.get(k) == v for k, v in key.items())


def prepare_strategy_scores(
    cfg: SelectionConfig,
    num_samples: int,
    texts: Sequence[str] | None,
    names: Sequence[str] | None,
    language: str | None,
    run_dir: str | os.PathLike | None,
) -> Path:
    """The score file of ``text_semantic`` / ``visual_confusable``, computed once per run.

    Written to ``<run_dir>/selection/<name>.npy`` and reused while its record matches (same
    texts, language and method; same snapshot). Under torch.distributed rank 0 computes and the
    other ranks wait at a barrier; writes are atomic either way.
    """
    from ... import distributed

    name = SelectionName(cfg.name)
    if name is SelectionName.text_semantic:
        if texts is None or language is None:
            raise ConfigError(
                "selection.name: text_semantic needs the train split's texts and language "
                "(build_batch_sampler(..., texts=..., language=..., run_dir=...))"
            )
        if len(texts) != num_samples:
            raise ValueError(f"text_semantic: {len(texts)} texts for {num_samples} samples")
        key = text_semantic_key(texts, language, cfg.text_method, cfg.text_model_path)

        def compute(path: Path) -> Path:
            return text_semantic_scores(texts, language, path, cfg.text_method, cfg.text_model_path)
    elif name is SelectionName.visual_confusable:
        if not cfg.snapshot:
            raise ConfigError(
                "selection.snapshot: selection.name=visual_confusable needs a reference run's "
                "snapshot folder (epoch-NNNN, its snapshots/ folder or the run folder)"
            )
        snapshot = read_snapshot(resolve_snapshot(cfg.snapshot))
        if snapshot.num_samples != num_samples or (
            names is not None and snapshot.names != list(names)
        ):
            raise ValueError(
                f"selection.snapshot: {snapshot.path} holds {snapshot.num_samples} samples that "
                f"are not the training split's {num_samples} in dataset order"
            )
        key = visual_confusable_key(snapshot)

        def compute(path: Path) -> Path:
            return visual_confusable_scores(snapshot.path, path)
    else:
        raise ValueError(f"prepare_strategy_scores: {name.value} has no score file")
    if run_dir is None:
        raise ValueError(
            f"selection={name.value}: build_batch_sampler needs run_dir= for its scores"
        )
    out_path = Path(run_dir) / STRATEGY_DIRNAME / f"{name.value}.npy"

    def prepare() -> None:  # rank 0; the others wait and get its failure, if any
        if _cached(out_path, key):
            log.info("%s: reusing %s", name.value, out_path)
        else:
            compute(out_path)

    distributed.on_main_process(prepare)
    return out_path
