"""Batch diagnostics against a plain recount: loops over the batches and their pairs on small
hand-made cases, TF-IDF cosine recomputed from its definition, categories counted directly."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from scl_slt.selection.diagnostics import (
    BatchDiagnostics,
    DiagnosticsError,
    Reference,
    in_batch_pairs,
)
from scl_slt.selection.pair_scores.text import NEAR_IDENTICAL_TFIDF
from scl_slt.selection.tracker import names_hash

TEXTS = [
    "morgen regen im norden",  # 0
    "morgen regen im norden",  # 1 identical to 0
    "morgen regen im sueden",  # 2 near 0/1?
    "heute sonne und wind",  # 3
    "heute sonne und wind",  # 4 identical to 3
    "nachts frost",  # 5
    "am wochenende wird es warm",  # 6
    "morgen regen im norden",  # 7 identical to 0, 1
]
BATCHES = [[0, 3, 5], [1, 7, 2], [4, 6]]


def plain_cosine(texts: list[str], a: int, b: int) -> float:
    """TF-IDF cosine from the definition: words, raw counts, idf = ln((1+N)/(1+df)) + 1."""
    docs = [Counter(re.findall(r"\w+", t.lower())) for t in texts]
    df = Counter(term for d in docs for term in d)
    n = len(texts)

    def vector(d: Counter) -> dict[str, float]:
        return {t: c * (math.log((1 + n) / (1 + df[t])) + 1) for t, c in d.items()}

    va, vb = vector(docs[a]), vector(docs[b])
    dot = sum(w * vb.get(t, 0.0) for t, w in va.items())
    norm = math.sqrt(sum(w * w for w in va.values())) * math.sqrt(sum(w * w for w in vb.values()))
    return dot / norm


def plain_pairs(batches: list[list[int]]) -> list[tuple[int, int]]:
    return [(b[x], b[y]) for b in batches for x in range(len(b)) for y in range(x + 1, len(b))]


def test_in_batch_pairs_uneven_batches():
    i, j = in_batch_pairs([[4, 1, 2], [0, 3], [5]])
    assert sorted(zip(i.tolist(), j.tolist())) == sorted([(4, 1), (4, 2), (1, 2), (0, 3)])
    i, j = in_batch_pairs([[7]])
    assert i.size == j.size == 0


def test_text_shares_match_a_plain_recount():
    found = BatchDiagnostics(TEXTS, "de")(BATCHES)
    pairs = plain_pairs(BATCHES)
    assert found["pairs"] == len(pairs) == 3 + 3 + 1
    identical = sum(TEXTS[a] == TEXTS[b] for a, b in pairs)
    near = sum(
        TEXTS[a] != TEXTS[b] and plain_cosine(TEXTS, a, b) >= NEAR_IDENTICAL_TFIDF for a, b in pairs
    )
    cosines = [1.0 if TEXTS[a] == TEXTS[b] else plain_cosine(TEXTS, a, b) for a, b in pairs]
    assert identical == 1  # (1, 7)
    assert found["identical_share"] == pytest.approx(identical / len(pairs))
    assert found["near_identical_share"] == pytest.approx(near / len(pairs))
    assert found["text_similarity_mean"] == pytest.approx(np.mean(cosines), abs=1e-6)
    # all negatives: identical pairs among all unordered pairs (0,1,7 share a text; 3,4 do)
    total = len(TEXTS) * (len(TEXTS) - 1) / 2
    assert found["all_negatives"]["identical_share"] == pytest.approx((3 + 1) / total)
    assert "confusable_share" not in found and "delta_mean" not in found


def test_near_identical_known_case():
    texts = ["a b c d e f g h i j k l", "a b c d e f g h i j k m", "x y z", "p q r"]
    found = BatchDiagnostics(texts, "de")([[0, 1], [2, 3]])
    assert plain_cosine(texts, 0, 1) >= NEAR_IDENTICAL_TFIDF  # one word of twelve differs
    assert found["identical_share"] == 0.0
    assert found["near_identical_share"] == pytest.approx(0.5)


def test_confusable_share_from_twins():
    glosses = [["A", "B"], ["A2", "B"], ["A", "B"], ["C", "D"], ["C", "D2"], ["A", "B2"]]
    texts = ["t0", "t1", "t2", "t3", "t4", "t5"]
    twins = [("A", "A2"), ("D", "D2"), ("B", "B2")]
    batches = [[0, 1, 3], [4, 2, 5]]

    def twin_swap(a: int, b: int) -> bool:
        ga, gb = glosses[a], glosses[b]
        if len(ga) != len(gb) or ga == gb or texts[a] == texts[b]:
            return False
        pairs = {frozenset(t) for t in twins}
        return all(x == y or frozenset((x, y)) in pairs for x, y in zip(ga, gb))

    pairs = plain_pairs(batches)
    expected = sum(twin_swap(a, b) for a, b in pairs)
    assert expected == 2  # (0, 1) and (2, 5)
    found = BatchDiagnostics(texts, "de", glosses, twins)(batches)
    assert found["confusable_share"] == pytest.approx(expected / len(pairs))
    every = [(a, b) for a in range(6) for b in range(a + 1, 6)]
    total = sum(twin_swap(a, b) for a, b in every)
    assert found["all_negatives"]["confusable_share"] == pytest.approx(total / len(every))


def write_reference(folder: Path, n: int, names: list[str], seed: int = 0) -> dict:
    """A scored reference run in ``score.py``'s layout, from random matrices."""
    rng = np.random.default_rng(seed)
    first = rng.normal(size=(n, n)).astype(np.float16)
    last = rng.normal(size=(n, n)).astype(np.float16)
    delta = (last.astype(np.float32) - first.astype(np.float32)).astype(np.float16)
    (folder / "scores").mkdir(parents=True)
    (folder / "trajectory").mkdir()
    np.save(folder / "pair_scores.npy", delta)
    np.save(folder / "scores" / "S-epoch-0000.npy", first)
    np.save(folder / "scores" / "S-epoch-0002.npy", rng.normal(size=(n, n)).astype(np.float16))
    np.save(folder / "scores" / "S-epoch-0004.npy", last)
    off = ~np.eye(n, dtype=bool)
    t_first = float(np.median(first.astype(np.float32)[off]))
    t_last = float(np.median(last.astype(np.float32)[off]))
    snapshots = [
        {"epoch": e, "scores": f"/elsewhere/scores/S-epoch-{e:04d}.npy"} for e in (0, 2, 4)
    ]
    record = {"num_samples": n, "names_sha256": names_hash(names), "snapshots": snapshots}
    (folder / "pair_scores.json").write_text(json.dumps(record))
    summary = {
        "threshold": {"mode": "per_snapshot", "first": t_first, "last": t_last},
        "shares": {"H->L": 0.1, "H->H": 0.2, "L->H": 0.3, "L->L": 0.4},
    }
    (folder / "trajectory" / "summary.json").write_text(json.dumps(summary))
    return {"first": first, "last": last, "delta": delta, "t": (t_first, t_last)}


def test_reference_figures_match_a_plain_recount(tmp_path):
    n = 12
    texts = [f"satz {k % 5}" for k in range(n)]
    names = [f"s{k}" for k in range(n)]
    m = write_reference(tmp_path / "ref", n, names)
    ref = Reference.load(tmp_path / "ref", n, names)
    batches = [[0, 5, 9, 2], [11, 3, 7], [1, 4, 6, 8, 10]]
    found = BatchDiagnostics(texts, "de", reference=ref)(batches)

    deltas, sims, counts = [], [], Counter()
    t_first, t_last = m["t"]
    for batch in batches:
        for a in batch:
            for b in batch:
                if a == b:
                    continue
                deltas.append(float(m["delta"][a, b]))
                sims.append(float(m["last"][a, b]))
                high0 = float(m["first"][a, b]) > t_first
                high_k = float(m["last"][a, b]) > t_last
                counts[("H" if high0 else "L") + ("H" if high_k else "L")] += 1
    assert found["matrix_pairs"] == len(deltas) == 2 * found["pairs"] == 2 * (6 + 3 + 10)
    assert found["delta_mean"] == pytest.approx(np.mean(deltas))
    assert found["similarity_mean"] == pytest.approx(np.mean(sims))
    for q in (10, 50, 90):
        assert found[f"delta_q{q}"] == pytest.approx(np.percentile(deltas, q))
        assert found[f"similarity_q{q}"] == pytest.approx(np.percentile(sims, q))
    for code in ("HL", "HH", "LH", "LL"):
        assert found[f"share_{code}"] == pytest.approx(counts[code] / len(deltas))
    assert found["reference"]["thresholds"] == pytest.approx([t_first, t_last])

    # all negatives: exact at this size; the category mix is the reference's own
    every = [(a, b) for a in range(n) for b in range(n) if a != b]
    whole = found["all_negatives"]
    assert whole["matrix_pairs"] == len(every)
    assert whole["delta_mean"] == pytest.approx(np.mean([float(m["delta"][p]) for p in every]))
    assert whole["similarity_q50"] == pytest.approx(
        np.percentile([float(m["last"][p]) for p in every], 50)
    )
    assert whole["share_HL"] == 0.1 and whole["share_LL"] == 0.4
    json.dumps(found, allow_nan=False)  # a plain JSON-able dict


def test_reference_problems_name_the_file(tmp_path):
    names = [f"s{k}" for k in range(6)]
    write_reference(tmp_path / "ref", 6, names)
    with pytest.raises(DiagnosticsError, match="shape"):
        Reference.load(tmp_path / "ref", 7)
    with pytest.raises(DiagnosticsError, match="pair_scores.json"):
        Reference.load(tmp_path / "ref", 6, list(reversed(names)))
    (tmp_path / "ref" / "scores" / "S-epoch-0004.npy").unlink()
    with pytest.raises(DiagnosticsError, match="S-epoch-0004.npy"):
        Reference.load(tmp_path / "ref", 6, names)
    (tmp_path / "ref" / "trajectory" / "summary.json").unlink()
    with pytest.raises(DiagnosticsError, match="summary.json"):
        Reference.load(tmp_path / "ref", 6, names)
    with pytest.raises(DiagnosticsError, match="no folder"):
        Reference.load(tmp_path / "missing", 6)


def test_bad_indices_and_language():
    with pytest.raises(ValueError, match="language"):
        BatchDiagnostics(TEXTS, "fr")
    with pytest.raises(ValueError, match="outside"):
        BatchDiagnostics(TEXTS, "de")([[0, 99]])
