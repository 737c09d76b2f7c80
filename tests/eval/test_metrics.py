"""BLEU-1..4 and ROUGE-L against formulas written out here, on German and Chinese examples."""

from __future__ import annotations

import gzip
import json
import math
import pickle
from collections import Counter
from pathlib import Path

import pytest

from scl_slt.eval.metrics import compute_metrics
from scl_slt.metrics import main

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


# ------------------------------------------------------------------ independent references
def ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def naive_bleu(hyps: list[list[str]], refs: list[list[str]], max_n: int) -> float:
    """Corpus BLEU-n: BP * exp(mean_{k=1..n} log p_k), p_k = clipped k-gram matches / k-grams.

    BP = 1 if c >= r else exp(1 - r / c) with c, r the summed hypothesis / reference lengths.
    A precision with zero matches is smoothed the NIST way (sacrebleu's default "exp"): the
    j-th such order gets 1 / (2^j * total_k). No match at any order, or an order with no
    k-grams at all, gives 0.
    """
    matches, totals = [0] * max_n, [0] * max_n
    c = sum(len(h) for h in hyps)
    r = sum(len(x) for x in refs)
    for h, ref in zip(hyps, refs):
        for k in range(1, max_n + 1):
            hyp_counts, ref_counts = ngrams(h, k), ngrams(ref, k)
            matches[k - 1] += sum(min(cnt, ref_counts[g]) for g, cnt in hyp_counts.items())
            totals[k - 1] += max(len(h) - k + 1, 0)
    if c == 0 or sum(matches) == 0 or 0 in totals:
        return 0.0
    bp = 1.0 if c >= r else math.exp(1 - r / c)
    log_p, halvings = 0.0, 1
    for m, t in zip(matches, totals):
        if m == 0:
            halvings *= 2
            log_p += math.log(1 / (halvings * t))
        else:
            log_p += math.log(m / t)
    return 100 * bp * math.exp(log_p / max_n)


def lcs_length(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            if a[i - 1] == b[j - 1]:
                table[i][j] = table[i - 1][j - 1] + 1
            else:
                table[i][j] = max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def naive_rouge_l(hyps: list[list[str]], refs: list[list[str]]) -> float:
    """Mean over samples of F1 = 2PR / (P + R), P = LCS / |hyp|, R = LCS / |ref|, times 100."""
    scores = []
    for h, ref in zip(hyps, refs):
        lcs = lcs_length(h, ref)
        if lcs == 0:
            scores.append(0.0)
            continue
        p, rec = lcs / len(h), lcs / len(ref)
        scores.append(2 * p * rec / (p + rec))
    return 100 * sum(scores) / len(scores)


def words(texts: list[str]) -> list[list[str]]:
    return [t.split() for t in texts]


def chars(texts: list[str]) -> list[list[str]]:
    return [[c for c in t if not c.isspace()] for t in texts]


def assert_matches_naive(hyps: list[str], refs: list[str], language: str) -> dict:
    split = words if language == "de" else chars
    got = compute_metrics(hyps, refs, language)
    for n in range(1, 5):
        expected = naive_bleu(split(hyps), split(refs), n)
        assert got[f"bleu{n}"] == pytest.approx(expected, rel=1e-9, abs=1e-9), n
    assert got["rouge_l"] == pytest.approx(naive_rouge_l(split(hyps), split(refs)), rel=1e-12)
    return got


# ----------------------------------------------------------------------------- German
GERMAN_REFS = [
    "und nun die wettervorhersage für morgen donnerstag den zwölften august",
    "tiefer luftdruck bestimmt in den nächsten tagen unser wetter",
]
GERMAN_HYPS = [
    "und nun die wettervorhersage für morgen freitag",
    "der luftdruck bestimmt in den tagen unser wetter",
]


def test_german_worked_example_by_hand():
    # Sample 1: hyp 7 words, ref 10; sample 2: hyp 8 words, ref 9.  c = 15, r = 19.
    # 1-grams: 6/7 + 7/8 ("freitag", "der" unmatched)          -> 13/15
    # 2-grams: 5/6 + 5/7 (broken: "morgen freitag"; "der luftdruck", "den tagen")  -> 10/13
    # 3-grams: 4/5 + 3/6 (s2 matches: luftdruck bestimmt in, bestimmt in den, tagen unser wetter)
    #                                                              -> 7/11
    # 4-grams: 3/4 + 1/5 (s2 matches: luftdruck bestimmt in den) -> 4/9
    bp = math.exp(1 - 19 / 15)
    expected = {
        "bleu1": 100 * bp * (13 / 15),
        "bleu2": 100 * bp * (13 / 15 * 10 / 13) ** (1 / 2),
        "bleu3": 100 * bp * (13 / 15 * 10 / 13 * 7 / 11) ** (1 / 3),
        "bleu4": 100 * bp * (13 / 15 * 10 / 13 * 7 / 11 * 4 / 9) ** (1 / 4),
    }
    # ROUGE-L: LCS 6 (s1: 7 vs 10 words), 7 (s2: 8 vs 9 words).
    f1 = [2 * (6 / 7) * (6 / 10) / (6 / 7 + 6 / 10), 2 * (7 / 8) * (7 / 9) / (7 / 8 + 7 / 9)]
    got = compute_metrics(GERMAN_HYPS, GERMAN_REFS, "de")
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    assert got["rouge_l"] == pytest.approx(100 * sum(f1) / 2, rel=1e-12)
    assert "tok:13a" in got["bleu_signature"] and "smooth:exp" in got["bleu_signature"]
    assert_matches_naive(GERMAN_HYPS, GERMAN_REFS, "de")


def test_german_umlauts_are_whole_tokens_in_rouge():
    # rouge-score's default tokenizer would turn "für" and "fur" both into "f r" and match them.
    got = compute_metrics(["fur morgen"], ["für morgen"], "de")
    assert got["rouge_l"] == pytest.approx(50.0)


def test_smoothing_and_short_outputs_match_naive():
    # No 4-gram match anywhere (exp smoothing), an empty hypothesis, a hypothesis longer than
    # its reference, and repeated words (clipped counts).
    hyps = ["heute regen regen regen", "", "es wird kalt und windig im norden", "sonne"]
    refs = ["heute regen", "morgen schnee", "es wird im norden kalt", "sonne und wolken"]
    got = assert_matches_naive(hyps, refs, "de")
    assert 0 < got["bleu4"] < got["bleu1"]


def test_no_matches_gives_zero():
    got = compute_metrics(["a b c"], ["x y z"], "de")
    assert all(got[f"bleu{n}"] == 0.0 for n in range(1, 5)) and got["rouge_l"] == 0.0


def test_texts_are_scored_as_given():
    # No period is added or stripped and case is kept: a trailing period and a capital letter
    # are differences.
    ref = ["und nun die wettervorhersage"]
    assert compute_metrics(ref, ref, "de")["bleu4"] == pytest.approx(100.0)
    assert compute_metrics(["und nun die wettervorhersage ."], ref, "de")["bleu1"] < 100.0
    assert compute_metrics(["Und nun die wettervorhersage"], ref, "de")["bleu1"] < 100.0


# ---------------------------------------------------------------------------- Chinese
CHINESE_REFS = ["他今年四岁。", "你们好！", "我 明天 去 北京"]
CHINESE_HYPS = ["他今年四岁", "你好！", "我明天到北京"]


def test_chinese_character_level_by_hand():
    # Characters (spaces dropped): hyp lengths 5, 3, 6; ref lengths 6, 4, 6.  c = 14, r = 16.
    # 1-grams: 5/5 + 3/3 + 5/6 ("到" unmatched)                          -> 13/14
    # 2-grams: 4/4 + 1/2 ("好！") + 3/5 (我明, 明天, 北京)                  -> 8/11
    # 3-grams: 3/3 + 0/1 + 1/4 (我明天)                                   -> 4/8
    # 4-grams: 2/2 + 0/0 + 0/3                                            -> 2/5
    bp = math.exp(1 - 16 / 14)
    expected = {
        "bleu1": 100 * bp * (13 / 14),
        "bleu2": 100 * bp * (13 / 14 * 8 / 11) ** (1 / 2),
        "bleu3": 100 * bp * (13 / 14 * 8 / 11 * 4 / 8) ** (1 / 3),
        "bleu4": 100 * bp * (13 / 14 * 8 / 11 * 4 / 8 * 2 / 5) ** (1 / 4),
    }
    # ROUGE-L on characters: LCS 5 (5 vs 6), 3 (3 vs 4), 5 (6 vs 6).
    f1 = [2 * 1 * (5 / 6) / (1 + 5 / 6), 2 * 1 * (3 / 4) / (1 + 3 / 4), 5 / 6]
    got = compute_metrics(CHINESE_HYPS, CHINESE_REFS, "zh")
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    assert got["rouge_l"] > 0
    assert got["rouge_l"] == pytest.approx(100 * sum(f1) / 3, rel=1e-12)
    assert "tok:none" in got["bleu_signature"]
    assert_matches_naive(CHINESE_HYPS, CHINESE_REFS, "zh")


def test_word_level_versus_character_level():
    # Unsegmented Chinese at word level is one token per sentence: nothing matches.
    as_words = compute_metrics(["他今年四岁"], ["他今年四岁。"], "de")
    as_chars = compute_metrics(["他今年四岁"], ["他今年四岁。"], "zh")
    assert as_words["bleu1"] == 0.0 and as_words["rouge_l"] == 0.0
    assert as_chars["rouge_l"] == pytest.approx(100 * 10 / 11, rel=1e-12)
    # German at character level is a different (and here higher) score, equal to the
    # character-level formulas.
    de_words = assert_matches_naive(GERMAN_HYPS, GERMAN_REFS, "de")
    de_chars = assert_matches_naive(GERMAN_HYPS, GERMAN_REFS, "zh")
    assert de_chars["bleu4"] != pytest.approx(de_words["bleu4"])


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "hyps, refs, language, error, match",
    [
        (["a", "b"], ["a"], "de", ValueError, "differ in length: 2 vs 1"),
        ([], [], "de", ValueError, "no samples"),
        (["a"], [" "], "de", ValueError, "empty reference"),
        (["a"], ["a"], "en", ValueError, "language"),
        ("a", "a", "de", TypeError, "lists of strings"),
        ([None], ["a"], "de", TypeError, "hypothesis 0"),
    ],
)
def test_bad_input_raises(hyps, refs, language, error, match):
    with pytest.raises(error, match=match):
        compute_metrics(hyps, refs, language)


# -------------------------------------------------------------------------------- CLI
def test_cli_on_two_files(tmp_path, capsys):
    hyp_file, ref_file = tmp_path / "hyps.txt", tmp_path / "refs.txt"
    hyp_file.write_text("\n".join(CHINESE_HYPS) + "\n", encoding="utf-8")
    ref_file.write_text("\n".join(CHINESE_REFS) + "\n", encoding="utf-8")
    assert main([str(hyp_file), str(ref_file), "--language", "zh"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    printed = json.loads("\n".join(out[:-1]))
    assert printed == compute_metrics(CHINESE_HYPS, CHINESE_REFS, "zh")
    assert out[-1] == f"BLEU signature: {printed['bleu_signature']}"

    ref_file.write_text("\n".join(CHINESE_REFS[:2]) + "\n", encoding="utf-8")
    assert main([str(hyp_file), str(ref_file), "--language", "zh"]) == 2
    assert "has 3 lines but" in capsys.readouterr().err
    assert main([str(tmp_path / "absent.txt"), str(ref_file), "--language", "zh"]) == 2
    assert "absent.txt" in capsys.readouterr().err


# -------------------------------------------------------------------- real annotation texts
def _texts(dataset: str, split: str) -> list[str]:
    path = DATA / dataset / f"labels.{split}"
    if not path.is_file():
        pytest.skip(f"real annotation files not found at {path} (../shared/data beside the repo)")
    with gzip.open(path, "rb") as f:
        return [rec["text"] for rec in pickle.load(f).values()]


def _drop_last_token(text: str, language: str) -> str:
    if language == "de":
        return " ".join(text.split()[:-1])
    return text.rstrip()[:-1]


@pytest.mark.parametrize("dataset, language", [("phoenix14t", "de"), ("csl_daily", "zh")])
def test_real_texts(dataset, language):
    refs = _texts(dataset, "dev")
    assert len(refs) in (519, 1077)
    perfect = compute_metrics(refs, refs, language)
    for key in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l"):
        assert perfect[key] == pytest.approx(100.0, abs=1e-9), key
    # Perturbed: drop the last word (de) / character (zh) of every sentence and swap two
    # sentences; on a dozen samples and on the whole split, against the formulas above.
    for subset in (refs[:12], refs):
        hyps = [_drop_last_token(t, language) for t in subset]
        hyps[3], hyps[4] = subset[4], subset[3]
        got = assert_matches_naive(hyps, subset, language)
        assert 0 < got["bleu4"] < 100 and 0 < got["rouge_l"] < 100
