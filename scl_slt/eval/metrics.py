"""Translation metrics: BLEU-1..4 (sacrebleu corpus BLEU) and ROUGE-L F1 (rouge-score).

The one place that decides how a hypothesis is compared with its reference, so training's dev
evaluation, ``python -m scl_slt.evaluate`` and the two-file CLI below report the same numbers.

How each number is computed
---------------------------
* **BLEU-n** (n = 1..4) is sacrebleu's corpus BLEU with ``max_ngram_order=n``: the brevity
  penalty times the geometric mean of the modified n-gram precisions of orders 1..n with uniform
  weights 1/n (the cumulative BLEU-n that gloss-free SLT papers report). BLEU-4 is sacrebleu's
  default BLEU. All four use sacrebleu's defaults otherwise: ``smooth_method="exp"``,
  ``lowercase=False``, ``effective_order=False``, one reference per sample.
* **ROUGE-L** is rouge-score's ``rougeL`` F-measure (LCS-based, ``beta = 1``, no stemming) of each
  sample, averaged over the samples and multiplied by 100. rouge-score has no corpus mode; the
  sentence mean is what the SLT literature reports.

Languages
---------
* ``de`` (PHOENIX-2014-T): word level. BLEU uses sacrebleu's ``13a`` tokenizer, ROUGE-L splits
  on whitespace. The texts are scored exactly as given: PHOENIX texts are lower-case and carry no
  trailing period, and nothing here adds, strips or lower-cases anything. (On the released texts,
  which hold only letters, digits and spaces, ``13a`` equals whitespace splitting.) rouge-score's
  default tokenizer is *not* used: it lower-cases and deletes every non-``[a-z0-9]`` character,
  which turns ``für`` into the two tokens ``f r``.
* ``zh`` (CSL-Daily): character level for both metrics. Each text is split into its characters,
  whitespace dropped (``"他 今年"`` -> ``他 今 年``); BLEU then runs with ``tokenize="none"`` on
  the space-joined characters, and ROUGE-L on the character list. Punctuation such as ``。`` is a
  character like any other and is kept. rouge-score's default tokenizer would delete all Chinese
  text (score 0), hence the explicit tokenizer.

Empty hypotheses are allowed (a model may generate nothing; they score 0); empty references are
rejected because they indicate broken data.

CLI: ``python -m scl_slt.metrics hyps.txt refs.txt --language de`` (one sentence per line).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

LANGUAGES = ("de", "zh")
MAX_BLEU_ORDER = 4
# sacrebleu tokenizer per language; "zh" texts are split into characters before BLEU sees them.
BLEU_TOKENIZE = {"de": "13a", "zh": "none"}
TOKEN_LEVEL = {"de": "word", "zh": "char"}


def characters(text: str) -> list[str]:
    """The characters of ``text`` with whitespace dropped (the zh token sequence)."""
    return [c for c in text if not c.isspace()]


class _WhitespaceTokenizer:
    """rouge-score tokenizer for word-level text: whitespace split, case and umlauts kept."""

    def tokenize(self, text: str) -> list[str]:
        return text.split()


class _CharacterTokenizer:
    """rouge-score tokenizer for character-level text: every non-space character is a token."""

    def tokenize(self, text: str) -> list[str]:
        return characters(text)


_ROUGE_TOKENIZERS = {"de": _WhitespaceTokenizer, "zh": _CharacterTokenizer}


def _check_inputs(hypotheses: Sequence[str], references: Sequence[str], language: str) -> None:
    if language not in LANGUAGES:
        raise ValueError(f"language: expected one of {LANGUAGES}, got {language!r}")
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise TypeError("hypotheses and references must be lists of strings, not a single string")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"hypotheses and references differ in length: {len(hypotheses)} vs {len(references)}"
        )
    if len(references) == 0:
        raise ValueError("no samples to score: hypotheses and references are empty")
    for kind, texts in (("hypothesis", hypotheses), ("reference", references)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"{kind} {i} is {type(text).__name__}, expected str")
    empty = [i for i, ref in enumerate(references) if not ref.strip()]
    if empty:
        raise ValueError(
            f"{len(empty)} empty reference(s), first at position {empty[0]}: "
            "references come from the dataset and must not be empty"
        )


def bleu_inputs(texts: Sequence[str], language: str) -> list[str]:
    """Texts in the form handed to sacrebleu: as given (de) or space-joined characters (zh)."""
    if language == "zh":
        return [" ".join(characters(t)) for t in texts]
    return list(texts)


def compute_metrics(hypotheses: list[str], references: list[str], language: str) -> dict:
    """Corpus BLEU-1..4 and mean ROUGE-L F1 (all ×100), plus sacrebleu's BLEU-4 signature.

    Returns ``{"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l": float, "bleu_signature": str}``.
    Raises ValueError/TypeError on mismatched lengths, no samples, empty references or a bad
    language.
    """
    _check_inputs(hypotheses, references, language)
    sys_texts = bleu_inputs(hypotheses, language)
    ref_texts = bleu_inputs(references, language)
    metrics: dict = {}
    signature = ""
    for order in range(1, MAX_BLEU_ORDER + 1):
        bleu = BLEU(max_ngram_order=order, tokenize=BLEU_TOKENIZE[language])
        metrics[f"bleu{order}"] = float(bleu.corpus_score(sys_texts, [ref_texts]).score)
        if order == MAX_BLEU_ORDER:
            signature = str(bleu.get_signature())

    scorer = rouge_scorer.RougeScorer(
        ["rougeL"], use_stemmer=False, tokenizer=_ROUGE_TOKENIZERS[language]()
    )
    f1 = [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)]
    metrics["rouge_l"] = 100.0 * sum(f1) / len(f1)
    # BLEU-1..3 differ from BLEU-4 only in max_ngram_order, which the signature does not show.
    metrics["bleu_signature"] = signature
    return metrics


def read_lines(path: str | Path) -> list[str]:
    """One sentence per line, UTF-8; only the line break is removed.

    Lines end at ``\n`` alone (a ``\r`` before it is dropped: Windows files read the same), and
    a UTF-8 byte-order mark at the start of the file is dropped. ``str.splitlines`` is not used:
    it also breaks at U+2028, U+2029, U+0085 and other characters a sentence may hold, which
    splits one sentence into two and misaligns every line after it with its reference.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    try:  # bytes, not read_text: its universal newlines would break lines at a lone \r too
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not valid UTF-8: {e}") from e
    text = text.removeprefix("\ufeff")
    if not text:
        return []
    lines = text.removesuffix("\n").split("\n")
    return [line.removesuffix("\r") for line in lines]
