"""The batch contract with questions: ``questions``, ``question_ids`` (B, Lq) and ``question_mask``
(B, Lq) when the samples carry one, none of them otherwise, and an error for a mixed batch."""

from __future__ import annotations

import pytest
import torch

from scl_slt.config import Assist, DataConfig, Layout, Modality, SyntheticConfig
from scl_slt.data.batching import Collator
from scl_slt.data.datasets import build_split
from scl_slt.data.labels import DataError
from scl_slt.models.tokenizer import SLTTokenizer

QUESTION_KEYS = {"questions", "question_ids", "question_mask"}


def synthetic_split(cache, assist: Assist, name: str = "train"):
    cfg = SyntheticConfig(cache_dir=str(cache), num_train=24, num_dev=6, num_test=6)
    data = DataConfig(layout=Layout.synthetic, modality=Modality.features, synthetic=cfg)
    data.assist = assist
    return build_split(data, name)


def tokenizer_for(dataset) -> SLTTokenizer:
    """The tiny tokenizer trained on the train texts and, as the stages should, the questions."""
    return SLTTokenizer.train(dataset.texts + dataset.questions, "de", "de_DE", vocab_size=120)


def naive_encoding(tokenizer: SLTTokenizer, questions: list[str]):
    """``[lang] tokens </s>`` per question, right-padded with <pad>, built row by row."""
    rows = [[tokenizer.lang_id, *tokenizer.tokenize([q])[0], tokenizer.eos_id] for q in questions]
    width = max(map(len, rows))
    ids = [row + [tokenizer.pad_id] * (width - len(row)) for row in rows]
    mask = [[True] * len(row) + [False] * (width - len(row)) for row in rows]
    return torch.tensor(ids), torch.tensor(mask)


@pytest.mark.parametrize("assist", [Assist.question, Assist.gloss])
def test_question_ids_and_mask(synthetic_cache, assist):
    dataset = synthetic_split(synthetic_cache, assist)
    tokenizer = tokenizer_for(dataset)
    samples = [dataset[i] for i in (3, 0, 7, 5)]
    batch = Collator(tokenizer)(samples)
    questions = [dataset.records[i]["question"] for i in (3, 0, 7, 5)]
    assert batch["questions"] == questions
    ids, mask = naive_encoding(tokenizer, questions)
    assert batch["question_ids"].dtype == torch.long and batch["question_mask"].dtype == torch.bool
    assert batch["question_ids"].shape == batch["question_mask"].shape == ids.shape  # (B, Lq)
    assert torch.equal(batch["question_ids"], ids) and torch.equal(batch["question_mask"], mask)
    assert tokenizer.unk_id not in batch["question_ids"]  # the question words are in the vocabulary
    assert tokenizer.decode(batch["question_ids"]) == questions  # exact inverse
    if assist is Assist.gloss:
        assert questions == [dataset.records[i]["gloss"] for i in (3, 0, 7, 5)]


def test_no_question_keys_without_assistance(synthetic_cache):
    plain = synthetic_split(synthetic_cache, Assist.none)
    asked = synthetic_split(synthetic_cache, Assist.question)
    tokenizer = tokenizer_for(asked)
    batch = Collator(tokenizer)([plain[i] for i in range(4)])
    assert not QUESTION_KEYS & set(batch)
    with_questions = Collator(tokenizer)([asked[i] for i in range(4)])
    assert set(with_questions) - set(batch) == QUESTION_KEYS
    for key in set(batch) - {"inputs"}:  # everything else is the same batch
        same = batch[key] == with_questions[key]
        assert same if isinstance(same, bool) else bool(same.all()), key
    assert torch.equal(batch["inputs"], with_questions["inputs"])


def test_a_batch_mixing_samples_with_and_without_question_fails(synthetic_cache):
    plain = synthetic_split(synthetic_cache, Assist.none, "dev")
    asked = synthetic_split(synthetic_cache, Assist.question, "dev")
    collate = Collator(tokenizer_for(asked))
    with pytest.raises(DataError, match=r"samples \['dev/synth-00002'\] carry no question"):
        collate([asked[0], plain[1], asked[2]])
    assert collate([None, asked[1]])["questions"] == [asked.records[1]["question"]]  # skipped
