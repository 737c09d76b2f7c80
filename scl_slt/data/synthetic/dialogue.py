"""The synthetic dialogue: the question each sentence answers (``data.assist=question``).

Question-based SLT gives the model the question a signer is answering ("what will the weather
be tomorrow in the north?"); the question shares some words with its answer, and that is what a
model can profit from. Here every sentence gets a question made of

* an opener in the language's style chosen by the head of its first clause
  (``was macht das wetter``, ``wie wird die temperatur``, ...), whose question words are never
  content words, and
* a share ``data.synthetic.question_overlap`` of the answer's content words (the words that
  translate glosses, ``grammar.content_words``): ``round(overlap x n)`` of its ``n`` distinct
  ones, chosen at random and kept in answer order,

so with overlap 0 the question names none of the answer's content words and with overlap 1 all.

Determinism and the cache: the choice is drawn from its own stream,
``stream_rng(seed, STREAM_DIALOGUE, <digest of the gloss sequence>)``, so a sentence has one
question (for a seed and an overlap) whichever clip signs it, and nothing the generator writes
(texts, glosses, alignments, features, frames) depends on it. Questions are derived from the
records when a split is built, never stored in the cached dataset; ``question_overlap`` is
therefore left out of ``generate.config_hash``, and every dataset cached before the dialogue
existed stays valid.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import Any

from ...config import SyntheticConfig
from .grammar import CATEGORY_OF, CONTENT_WORDS, content_words
from .language import STREAM_DIALOGUE, as_synthetic_config, stream_rng

# The question vocabulary: an opener per kind of first clause (head category -> words).
OPENERS = {
    "weather": "was macht das wetter",
    "temperature": "wie wird die temperatur",
    "topic": "wie entwickeln sich die temperaturen",  # TEMPERATUR + trend
    "number": "wie viele grad werden erwartet",
}
QUESTION_WORDS = frozenset(w for opener in OPENERS.values() for w in opener.split())
assert not QUESTION_WORDS & CONTENT_WORDS, "a question word must never be an answer's content word"


def _opener(glosses: Sequence[str]) -> str:
    """The opener of the first clause's head (the first weather, temperature, topic or number)."""
    for gloss in glosses:
        if CATEGORY_OF.get(gloss) in OPENERS:
            return OPENERS[CATEGORY_OF[gloss]]
    raise ValueError(f"gloss sequence {' '.join(glosses)!r} has no clause head")


def _sentence_key(glosses: Sequence[str]) -> int:
    """A stable integer of the gloss sequence (Python's hash() differs between processes)."""
    digest = hashlib.sha256(" ".join(glosses).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def carried_count(overlap: float, n: int) -> int:
    """How many of ``n`` content words a question carries: ``overlap x n`` rounded half up."""
    return min(n, max(0, math.floor(overlap * n + 0.5)))


def question_for(glosses: Sequence[str], text: str, overlap: float, seed: int) -> str:
    """The question a sentence (its glosses and their translation ``text``) answers."""
    words = content_words(text)
    rng = stream_rng(seed, STREAM_DIALOGUE, _sentence_key(glosses))
    chosen = sorted(rng.choice(len(words), size=carried_count(overlap, len(words)), replace=False))
    return " ".join([_opener(glosses), *(words[i] for i in chosen)])


def dialogue_questions(cfg: SyntheticConfig, records: Iterable[dict[str, Any]]) -> dict[str, str]:
    """``name -> question`` for synthetic records (each with ``gloss`` and ``text``)."""
    cfg = as_synthetic_config(cfg)
    return {
        r["name"]: question_for(r["gloss"].split(), r["text"], cfg.question_overlap, cfg.seed)
        for r in records
    }
