"""text_semantic and visual_curriculum pair scores: hand-built cases, naive references, and the
curriculum they feed through build_batch_sampler."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from scl_slt.config import ConfigError, SelectionConfig
from scl_slt.selection.build import build_batch_sampler
from scl_slt.selection.curriculum import CurriculumBatchSampler
from scl_slt.selection.pair_scores import score_file
from scl_slt.selection.pair_scores.text import (
    pair_similarity,
    sentence_terms,
    text_semantic_scores,
    tfidf_vectors,
)
from scl_slt.selection.pair_scores.visual import (
    pooled_video_embeddings,
    resolve_snapshot,
    visual_curriculum_scores,
)
from scl_slt.selection.tracker import names_hash, read_snapshot


def load(path: Path) -> np.ndarray:
    scores = np.load(path, mmap_mode="r")
    assert scores.dtype == np.float16
    return np.asarray(scores, dtype=np.float64)


def naive_tfidf_cosine(docs: list[list[str]]) -> np.ndarray:
    """TF-IDF cosine written out with dicts: tf = count, idf = ln((1 + N) / (1 + df)) + 1."""
    n = len(docs)
    df = Counter(term for doc in docs for term in set(doc))
    vectors = []
    for doc in docs:
        w = {t: c * (math.log((1 + n) / (1 + df[t])) + 1) for t, c in Counter(doc).items()}
        norm = math.sqrt(sum(v * v for v in w.values()))
        vectors.append({t: v / norm for t, v in w.items()} if norm else w)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = sum(v * vectors[j].get(t, 0.0) for t, v in vectors[i].items())
    return out


# ------------------------------------------------------------------------------ text_semantic
def test_tfidf_hand_computed_three_sentences(tmp_path):
    texts = [
        "heute regnet es im norden",
        "heute regnet es im süden",
        "morgen scheint die sonne",
    ]
    scores = load(text_semantic_scores(texts, "de", tmp_path / "s.npy"))
    # heute, regnet, es, im occur in 2 of 3 sentences; every other word in one.
    shared = math.log(4 / 3) + 1
    single = math.log(4 / 2) + 1
    expected_01 = 4 * shared**2 / (4 * shared**2 + single**2)
    assert scores[0, 1] == pytest.approx(expected_01, abs=1e-3)
    assert scores[1, 0] == pytest.approx(expected_01, abs=1e-3)
    assert scores[0, 2] == scores[1, 2] == 0.0  # no word in common
    assert np.allclose(np.diag(scores), 1.0, atol=1e-3)
    off = scores - np.eye(3) * 10
    assert np.unravel_index(np.argmax(off), off.shape) in ((0, 1), (1, 0))  # higher = harder


def test_tfidf_matches_naive_reference_de(tmp_path):
    texts = [
        "Heute regnet es im Norden.",
        "morgen regnet es im norden und im süden",
        "es bleibt trocken",
        "heute regnet es im norden",  # identical after lower-casing / punctuation: score 1
        "",  # no terms: an all-zero row
        "sonne sonne sonne im osten",
    ]
    got = load(text_semantic_scores(texts, "de", tmp_path / "s.npy"))
    docs = [sentence_terms(t, "de") for t in texts]
    assert docs[0] == ["heute", "regnet", "es", "im", "norden"]
    np.testing.assert_allclose(got, naive_tfidf_cosine(docs), atol=2e-3)
    assert got[0, 3] == pytest.approx(1.0, abs=1e-3)
    assert (got[4] == 0).all()


def test_pair_similarity_matches_naive_cosine_for_any_pairs():
    texts = [
        "heute regnet es im norden",
        "morgen regnet es im norden und im süden",
        "es bleibt trocken",
        "heute regnet es im norden",
        "",
        "sonne sonne sonne im osten",
    ]
    naive = naive_tfidf_cosine([sentence_terms(t, "de") for t in texts])
    tfidf = tfidf_vectors(texts, "de")
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(texts), 200), rng.integers(0, len(texts), 200)
    for chunk in (1, 7, 1 << 16):  # chunk boundaries do not change anything
        got = pair_similarity(tfidf, i, j, chunk_pairs=chunk)
        np.testing.assert_allclose(got, naive[i, j], atol=1e-6)
    assert pair_similarity(tfidf, [0], [3])[0] == pytest.approx(1.0)
    assert pair_similarity(tfidf, [4], [0])[0] == 0.0


def test_tfidf_zh_character_ngrams(tmp_path):
    assert sentence_terms("今天，下雨。", "zh") == [
        "今",
        "天",
        "下",
        "雨",
        "今天",
        "天下",
        "下雨",
    ]
    texts = ["今天下雨", "今天下雪", "我们去学校", "今天下雨了"]
    got = load(text_semantic_scores(texts, "zh", tmp_path / "s.npy"))
    docs = [sentence_terms(t, "zh") for t in texts]
    np.testing.assert_allclose(got, naive_tfidf_cosine(docs), atol=2e-3)
    assert got[0, 3] > got[0, 1] > got[0, 2] == 0.0


def test_unknown_language_is_named(tmp_path):
    with pytest.raises(ValueError, match="language 'fr'"):
        text_semantic_scores(["a b"], "fr", tmp_path / "s.npy")


def test_row_blocks_give_the_same_scores(tmp_path, monkeypatch):
    texts = [f"wort{i % 5} wort{i % 3} es regnet" for i in range(23)]
    whole = load(text_semantic_scores(texts, "de", tmp_path / "a.npy"))
    monkeypatch.setattr(score_file, "BLOCK_ELEMENTS", 50)  # blocks of 2 rows
    blocked = load(text_semantic_scores(texts, "de", tmp_path / "b.npy"))
    np.testing.assert_array_equal(whole, blocked)


def _tiny_encoder(folder: Path) -> Path:
    """A random 1-layer BERT and a word-piece tokenizer saved locally (nothing downloaded)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = "heute morgen regnet es im norden süden sonne scheint".split()
    vocab = folder / "vocab.txt"
    folder.mkdir()
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    config = BertConfig(vocab_size=len(words) + 5, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    return folder


def test_a_failed_score_file_leaves_the_previous_one_whole(tmp_path):
    """Score files are written atomically: a failure mid-way (here a non-finite block) keeps the
    previous file and its record, and leaves no temporary behind."""
    path = tmp_path / "s.npy"
    score_file.write_score_file(
        path, 3, lambda r0, r1: np.ones((r1 - r0, 3)), 2, {"strategy": "first"}
    )
    assert score_file.record_matches(path, {"strategy": "first", "num_samples": 3})

    def nan_in_second_block(r0: int, r1: int) -> np.ndarray:
        return np.full((r1 - r0, 3), np.nan if r0 else 0.0)

    with pytest.raises(ValueError, match="non-finite score in rows 2:3"):
        score_file.write_score_file(path, 3, nan_in_second_block, 2, {"strategy": "second"})
    np.testing.assert_array_equal(load(path), np.ones((3, 3)))
    assert score_file.record_matches(path, {"strategy": "first"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.npy"]


def test_embedding_scores_match_per_sentence_pooling(tmp_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    model_dir = _tiny_encoder(tmp_path / "encoder")
    texts = ["heute regnet es", "morgen scheint im süden die sonne", "es regnet im norden", "heute"]
    got = load(text_semantic_scores(texts, "de", tmp_path / "s.npy", "embedding", model_dir))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    vectors = []
    with torch.no_grad():
        for text in texts:  # one at a time: no padding at all
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
            mean = hidden.mean(0)
            vectors.append((mean / mean.norm()).numpy())
    expected = np.array([[float(a @ b) for b in vectors] for a in vectors])
    np.testing.assert_allclose(got, expected, atol=2e-3)


def test_embedding_model_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="text_model_path.*nowhere"):
        text_semantic_scores(["a"], "de", tmp_path / "s.npy", "embedding", tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="selection.text_model_path"):
        text_semantic_scores(["a"], "de", tmp_path / "s.npy", "embedding", None)


# -------------------------------------------------------------------------- visual_curriculum
def write_snapshot(root: Path, epoch: int, video: list[np.ndarray], names=None, texts=None) -> Path:
    """A snapshot folder in the tracker's on-disk format, from per-sample (Tv_i, d) tokens."""
    n = len(video)
    names = names or [f"train/clip-{i}" for i in range(n)]
    texts = texts or [f"satz {i}" for i in range(n)]
    folder = root / "snapshots" / f"epoch-{epoch:04d}"
    folder.mkdir(parents=True)
    text_tokens = [np.ones((2, video[0].shape[1])) / np.sqrt(video[0].shape[1])] * n
    for side, parts in (("video", video), ("text", text_tokens)):
        np.save(folder / f"{side}_features.npy", np.concatenate(parts).astype(np.float16))
        np.save(folder / f"{side}_lengths.npy", np.array([len(p) for p in parts], dtype=np.int64))
    (folder / "samples.json").write_text(json.dumps({"names": names, "texts": texts}))
    meta = {"epoch": epoch, "num_samples": n, "fingerprint": {"names": names_hash(names)},
            "created": f"test-{epoch}"}  # fmt: skip
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / "COMPLETE").write_text("ok\n")
    return folder


def unit(rows) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fake_videos() -> list[np.ndarray]:
    # Videos 0 and 2 sign nearly the same motion (very confusable), 1 and 3 a similar one.
    return [
        unit([[1, 0, 0], [0.9, 0.1, 0]]),
        unit([[0, 1, 0], [0, 1, 0.2], [0.1, 1, 0]]),
        unit([[1, 0.05, 0]]),
        unit([[0, 1, 1], [0.3, 1, 1]]),
    ]


def test_visual_curriculum_on_fake_snapshot(tmp_path):
    videos = fake_videos()
    folder = write_snapshot(tmp_path, 5, videos)
    got = load(visual_curriculum_scores(folder, tmp_path / "v.npy"))
    pooled = [v.mean(axis=0) / np.linalg.norm(v.mean(axis=0)) for v in videos]
    expected = np.array([[float(a @ b) for b in pooled] for a in pooled])
    np.testing.assert_allclose(got, expected, atol=2e-3)
    off = got - 10 * np.eye(4)
    assert np.unravel_index(np.argmax(off), off.shape) in ((0, 2), (2, 0))  # higher = harder
    chunked = pooled_video_embeddings(read_snapshot(folder), chunk_samples=3)
    np.testing.assert_allclose(chunked, np.stack(pooled), atol=1e-3)  # fp16 features
    record = json.loads((tmp_path / "v.json").read_text())
    assert record["strategy"] == "visual_curriculum" and record["snapshot_epoch"] == 5


def test_resolve_snapshot_takes_the_latest(tmp_path):
    write_snapshot(tmp_path, 0, fake_videos())
    latest = write_snapshot(tmp_path, 10, fake_videos())
    (tmp_path / "snapshots" / ".tmp-epoch-0020-1").mkdir()  # an interrupted write is ignored
    assert resolve_snapshot(tmp_path) == latest
    assert resolve_snapshot(tmp_path / "snapshots") == latest
    with pytest.raises(FileNotFoundError, match="selection.snapshot"):
        resolve_snapshot(tmp_path / "elsewhere")


# ------------------------------------------------------------------------ build_batch_sampler
PAIRED_TEXTS = [
    "heute regnet es im norden",  # 0 ~ 2
    "morgen scheint die sonne im osten",  # 1 ~ 3
    "heute regnet es im norden stark",
    "morgen scheint die sonne im osten lange",
]


@pytest.mark.parametrize(
    "schedule,expected", [("hard_only", [{0, 2}, {1, 3}]), ("easy_only", None)]
)
def test_text_semantic_sampler_batches_similar_sentences_when_hard(tmp_path, schedule, expected):
    cfg = SelectionConfig(name="text_semantic", schedule=schedule)
    sampler = build_batch_sampler(cfg, 4, 2, epochs=2, seed=0, texts=PAIRED_TEXTS, language="de",
                                  run_dir=tmp_path)  # fmt: skip
    assert isinstance(sampler, CurriculumBatchSampler) and sampler.kind == "text_semantic"
    for epoch in range(2):
        batches = [set(b) for b in sampler.global_batches(epoch)]
        if expected is not None:
            assert sorted(batches, key=min) == expected
        else:  # easy: never the similar pair
            assert all(b not in ({0, 2}, {1, 3}) for b in batches)


def test_text_semantic_file_is_cached_per_texts(tmp_path):
    cfg = SelectionConfig(name="text_semantic")
    kwargs = dict(texts=PAIRED_TEXTS, language="de", run_dir=tmp_path)
    build_batch_sampler(cfg, 4, 2, epochs=2, seed=0, **kwargs)
    path = tmp_path / "selection" / "text_semantic.npy"
    stamp = path.stat().st_mtime_ns
    build_batch_sampler(cfg, 4, 2, epochs=2, seed=0, **kwargs)
    assert path.stat().st_mtime_ns == stamp  # reused
    other = PAIRED_TEXTS[::-1]
    sampler = build_batch_sampler(cfg, 4, 2, epochs=2, seed=0, **{**kwargs, "texts": other})
    assert path.stat().st_mtime_ns != stamp  # other texts: recomputed
    np.testing.assert_allclose(np.asarray(sampler.pair_scores, dtype=np.float64),
                               load(path), atol=0)  # fmt: skip


def test_text_semantic_sampler_errors(tmp_path):
    cfg = SelectionConfig(name="text_semantic")
    with pytest.raises(ConfigError, match="selection.name.*text_semantic"):
        build_batch_sampler(cfg, 4, 2, epochs=2, seed=0, run_dir=tmp_path)
    with pytest.raises(ValueError, match="3 texts for 4 samples"):
        build_batch_sampler(cfg, 4, 2, epochs=2, seed=0, texts=PAIRED_TEXTS[:3], language="de",
                            run_dir=tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match="run_dir"):
        build_batch_sampler(cfg, 4, 2, epochs=2, seed=0, texts=PAIRED_TEXTS, language="de")


def test_visual_curriculum_sampler(tmp_path):
    names = [f"train/clip-{i}" for i in range(4)]
    write_snapshot(tmp_path / "reference", 10, fake_videos(), names=names)
    cfg = SelectionConfig(name="visual_curriculum", schedule="hard_only",
                          snapshot=str(tmp_path / "reference"))  # fmt: skip
    sampler = build_batch_sampler(
        cfg, 4, 2, epochs=1, seed=0, names=names, run_dir=tmp_path / "run"
    )
    assert sampler.kind == "visual_curriculum"
    assert sorted(map(set, sampler.global_batches(0)), key=min) == [{0, 2}, {1, 3}]
    with pytest.raises(ValueError, match="selection.snapshot.*not the training split"):
        build_batch_sampler(cfg, 4, 2, epochs=1, seed=0, names=names[::-1], run_dir=tmp_path)
    with pytest.raises(ValueError, match="selection.snapshot"):
        build_batch_sampler(cfg, 5, 2, epochs=1, seed=0, run_dir=tmp_path)
    cfg = SelectionConfig(name="visual_curriculum")
    with pytest.raises(ConfigError, match="selection.snapshot"):
        build_batch_sampler(cfg, 4, 2, epochs=1, seed=0, run_dir=tmp_path)


SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.parametrize("dataset,language", [("phoenix14t", "de"), ("csl_daily", "zh")])
def test_tfidf_on_real_dev_sentences(tmp_path, dataset, language):
    path = SHARED_DATA / dataset / "labels.dev"
    if not path.is_file():
        pytest.skip(f"real annotation file not available: {path}")
    from scl_slt.data.labels import read_labels

    texts = [r["text"] for r in read_labels(path).values()][:120]
    got = load(text_semantic_scores(texts, language, tmp_path / "s.npy"))
    docs = [sentence_terms(t, language) for t in texts]
    assert all(docs)  # every real sentence yields terms
    np.testing.assert_allclose(got, naive_tfidf_cosine(docs), atol=2e-3)
