"""The grammar of the synthetic sign language: a weather-report lexicon and its translation.

A gloss sequence ``[TIME] [REGION] HEAD [MODIFIER] [NICHT]`` (clauses optionally joined by UND /
ABER) maps to a lower-case German-like sentence with verb-second order and function words, so the
target is a deterministic, learnable function of the glosses but never a copy of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# ------------------------------------------------------------------------------------ lexicon
# fmt: off
TIMES = {"HEUTE": "heute", "MORGEN": "morgen", "ABEND": "am abend", "NACHT": "in der nacht",
         "MONTAG": "am montag", "WOCHENENDE": "am wochenende", "SPAETER": "spaeter",
         "DIENSTAG": "am dienstag"}
REGIONS = {"NORD": "im norden", "SUED": "im sueden", "WEST": "im westen", "OST": "im osten",
           "BERG": "in den bergen", "KUESTE": "an der kueste", "MITTE": "in der mitte",
           "ALPEN": "an den alpen"}
# gloss -> (verb, subject, tail, negated tail); a None negated tail means the clause takes a
# modifier and is negated with "nicht" (noun weathers negate the noun instead: "keine gewitter").
WEATHERS = {
    "REGEN": ("regnet", "es", "", None),
    "SCHNEE": ("schneit", "es", "", None),
    "SONNE": ("scheint", "die sonne", "", None),
    "WIND": ("weht", "der wind", "", None),
    "WOLKE": ("ist", "es", "bewoelkt", None),
    "GEWITTER": ("gibt", "es", "gewitter", "keine gewitter"),
    "NEBEL": ("gibt", "es", "nebel", "keinen nebel"),
    "SCHAUER": ("gibt", "es", "schauer", "keine schauer"),
}
TEMPERATURES = {"WARM": "warm", "KALT": "kalt", "MILD": "mild", "KUEHL": "kuehl", "HEISS": "heiss"}
MODIFIERS = {"STARK": ("stark", "sehr"), "LEICHT": ("leicht", "etwas")}  # weather / temperature
TRENDS = {"STEIGEN": ("steigen", ""), "SINKEN": ("sinken", ""), "GLEICH": ("bleiben", "gleich")}
NUMBERS = {"NULL": "null", "FUENF": "fuenf", "ZEHN": "zehn", "ZWANZIG": "zwanzig",
           "DREISSIG": "dreissig"}
CONJUNCTIONS = {"UND": "und", "ABER": "aber"}
NEGATION, TOPIC, UNIT = "NICHT", "TEMPERATUR", "GRAD"

# Round-robin order used to trim the lexicon to ``num_glosses`` (every category keeps >= 1 gloss).
CATEGORIES: dict[str, list[str]] = {
    "weather": list(WEATHERS), "temperature": list(TEMPERATURES), "region": list(REGIONS),
    "time": list(TIMES), "number": list(NUMBERS), "trend": list(TRENDS),
    "modifier": list(MODIFIERS), "conjunction": list(CONJUNCTIONS), "negation": [NEGATION],
    "topic": [TOPIC], "unit": [UNIT],
}
# fmt: on
CATEGORY_OF = {g: cat for cat, glosses in CATEGORIES.items() for g in glosses}
# Words of the lexicon's phrases that carry no meaning of their own (articles, prepositions,
# "es", the copulas); every other lexicon word translates a gloss: an answer's *content words*.
FUNCTION_WORDS = frozenset({"am", "an", "in", "im", "der", "die", "den", "es", "ist", "gibt",
                            "keine", "keinen"})  # fmt: skip
MAX_CLAUSE_GLOSSES = 5
MAX_SENTENCE_GLOSSES = 2 * MAX_CLAUSE_GLOSSES + 1  # two clauses and a conjunction


# ------------------------------------------------------------------------------------ grammar
def _v2(front: str, verb: str, subject: str, rest: list[str]) -> list[str]:
    """German verb-second order: the fronted phrase, the verb, then the subject."""
    return [front, verb, subject, *rest] if front else [subject, verb, *rest]


def _translate_clause(clause: Sequence[str]) -> str:
    pos, time_, region = 0, "", ""
    if pos < len(clause) and clause[pos] in TIMES:
        time_, pos = TIMES[clause[pos]], pos + 1
    if pos < len(clause) and clause[pos] in REGIONS:
        region, pos = REGIONS[clause[pos]], pos + 1
    front = time_ or region
    rest = [region] if time_ and region else []
    head = clause[pos] if pos < len(clause) else None
    tail = list(clause[pos + 1 :])

    def take(options: Any) -> str | None:
        if tail and tail[0] in options:
            return tail.pop(0)
        return None

    def modifier_and_negation(reading: int) -> list[str]:
        modifier, negative = take(MODIFIERS), take({NEGATION})
        return ["nicht"] * bool(negative) + ([MODIFIERS[modifier][reading]] if modifier else [])

    if head in WEATHERS:
        verb, subject, noun, negated = WEATHERS[head]
        if negated is None:  # "regnet es (nicht) (stark)", "ist es (nicht) (stark) bewoelkt"
            rest += [*modifier_and_negation(0), noun]
        else:  # "gibt es gewitter" / "gibt es keine gewitter"
            rest.append(negated if take({NEGATION}) else noun)
        words = _v2(front, verb, subject, rest)
    elif head in TEMPERATURES:
        words = _v2(front, "wird", "es", [*rest, *modifier_and_negation(1), TEMPERATURES[head]])
    elif head == TOPIC and tail and tail[0] in TRENDS:
        verb, particle = TRENDS[tail.pop(0)]
        rest += ["nicht"] * bool(take({NEGATION})) + [particle]
        words = _v2(front, verb, "die temperaturen", rest)
    elif head in NUMBERS and tail and tail[0] == UNIT:
        tail.pop(0)
        words = [front or "es", "werden", *rest, "bis zu", NUMBERS[head], "grad erwartet"]
    else:
        raise ValueError(f"ungrammatical clause {' '.join(clause)!r}: no weather/temperature head")
    if tail:
        raise ValueError(f"ungrammatical clause {' '.join(clause)!r}: unexpected {tail[0]!r}")
    return " ".join(w for w in words if w)


def translate(glosses: Sequence[str]) -> str:
    """The target sentence of a gloss sequence (the language's deterministic translation)."""
    clauses: list[list[str]] = [[]]
    joiners: list[str] = []
    for gloss in glosses:
        if gloss in CONJUNCTIONS:
            joiners.append(CONJUNCTIONS[gloss])
            clauses.append([])
        else:
            clauses[-1].append(gloss)
    if any(not clause for clause in clauses):
        raise ValueError(f"ungrammatical gloss sequence {' '.join(glosses)!r}: empty clause")
    parts = [_translate_clause(clauses[0])]
    for joiner, clause in zip(joiners, clauses[1:]):
        parts += [joiner, _translate_clause(clause)]
    return " ".join(parts)


# -------------------------------------------------------------------------------- content words
def _lexicon_words() -> set[str]:
    """Every word the lexicon's translations use (structural words of the grammar excluded)."""
    phrases = [*TIMES.values(), *REGIONS.values(), *TEMPERATURES.values(), *NUMBERS.values()]
    phrases += [p for entry in (*WEATHERS.values(), *MODIFIERS.values(), *TRENDS.values())
                for p in entry if p]  # fmt: skip
    return {word for phrase in phrases for word in phrase.split()}


CONTENT_WORDS = frozenset(_lexicon_words() - FUNCTION_WORDS)


def content_words(text: str) -> list[str]:
    """The distinct content words of a target sentence, in order of first appearance: the words
    that translate its glosses ("morgen regnet es im norden" -> morgen, regnet, norden)."""
    return list(dict.fromkeys(w for w in text.split() if w in CONTENT_WORDS))
