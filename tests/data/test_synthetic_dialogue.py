"""The synthetic dialogue: each sentence's question carries ``question_overlap`` of its answer's
content words, deterministically, and leaves everything generated (and the cache) as it was."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scl_slt.config import Assist, ConfigError, DataConfig, Layout, Modality, SyntheticConfig
from scl_slt.data.datasets import build_split
from scl_slt.data.synthetic.dialogue import OPENERS, QUESTION_WORDS, carried_count, question_for
from scl_slt.data.synthetic.generate import cache_root, config_hash, ensure_synthetic
from scl_slt.data.synthetic.grammar import CONTENT_WORDS, content_words, translate
from scl_slt.data.synthetic.language import as_synthetic_config


def small(cache: Path, **overrides) -> SyntheticConfig:
    values = dict(cache_dir=str(cache), num_train=60, num_dev=12, num_test=12)
    return SyntheticConfig(**(values | overrides))


def split(cfg: SyntheticConfig, name: str, assist: Assist = Assist.question):
    data = DataConfig(layout=Layout.synthetic, modality=Modality.features, synthetic=cfg)
    data.assist = assist
    return build_split(data, name)


def test_content_words_are_the_words_that_translate_glosses():
    assert content_words(translate(["MORGEN", "NORD", "REGEN"])) == ["morgen", "regnet", "norden"]
    text = translate(["HEUTE", "GEWITTER", "NICHT", "UND", "SONNE"])
    assert text == "heute gibt es keine gewitter und die sonne scheint"
    assert content_words(text) == ["heute", "gewitter", "sonne", "scheint"]
    assert content_words("es werden bis zu zehn grad erwartet") == ["zehn"]
    assert not QUESTION_WORDS & CONTENT_WORDS


@pytest.mark.parametrize("overlap", [0.0, 0.5, 1.0])
def test_questions_carry_the_requested_share_of_content_words(tmp_path, overlap):
    dataset = split(small(tmp_path, question_overlap=overlap), "train")
    for record in dataset.records:
        answer = content_words(record["text"])
        words = record["question"].split()
        carried = [w for w in words if w in CONTENT_WORDS]
        assert set(carried) <= set(answer)  # only the answer's own content words
        assert len(carried) == len(set(carried)) == carried_count(overlap, len(answer))
        assert carried == [w for w in answer if w in carried]  # in answer order
        opener = " ".join(words[: len(words) - len(carried)])
        assert opener in OPENERS.values()
        if overlap == 0:
            assert not set(words) & set(answer)
        if overlap == 1:
            assert set(answer) <= set(words)


def test_half_overlap_rounds_half_up():
    assert [carried_count(0.5, n) for n in range(1, 6)] == [1, 1, 2, 2, 3]
    assert carried_count(0.0, 4) == 0 and carried_count(1.0, 4) == 4


def test_same_sentence_same_question_and_seeded(tmp_path):
    cfg = small(tmp_path, duplicate_rate=0.5)
    records = split(cfg, "train").records
    by_gloss: dict[str, set[str]] = {}
    for r in records:
        by_gloss.setdefault(r["gloss"], set()).add(r["question"])
    assert any(sum(r["gloss"] == g for r in records) > 1 for g in by_gloss)  # duplicates exist
    assert all(len(questions) == 1 for questions in by_gloss.values())
    again = split(cfg, "train").records
    assert [r["question"] for r in again] == [r["question"] for r in records]
    glosses = ["MORGEN", "NORD", "REGEN", "STARK"]
    text = translate(glosses)
    draws = {question_for(glosses, text, 0.5, seed) for seed in range(20)}
    assert len(draws) > 1  # the seed chooses which words are carried


def test_dialogue_changes_nothing_generated_and_keeps_the_cache(tmp_path):
    plain = small(tmp_path)
    assert config_hash(SyntheticConfig()) == "0772a6a1e648"  # datasets cached before the dialogue
    zero, one = small(tmp_path, question_overlap=0.0), small(tmp_path, question_overlap=1.0)
    assert cache_root(zero) == cache_root(one) == cache_root(plain)
    root = ensure_synthetic(plain, Modality.features)
    assert "question_overlap" not in json.loads((root / "meta.json").read_text())["config"]
    for name in ("train", "dev"):
        without = split(plain, name, Assist.none)
        assert all("question" not in r for r in without.records)
        for cfg in (zero, one):
            asked = split(cfg, name)
            assert [{k: v for k, v in r.items() if k != "question"} for r in asked.records] == (
                without.records
            )
            for i in (0, len(asked) - 1):
                a, b = asked[i], without[i]
                assert np.array_equal(a["inputs"].numpy(), b["inputs"].numpy())
                assert a["text"] == b["text"] and "question" not in b


def test_gloss_assistance_on_synthetic_data(tmp_path):
    dataset = split(small(tmp_path), "dev", Assist.gloss)
    assert dataset.questions == [r["gloss"] for r in dataset.records]


def test_overlap_out_of_range_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.synthetic.question_overlap: must be in"):
        as_synthetic_config(small(tmp_path, question_overlap=1.5))
