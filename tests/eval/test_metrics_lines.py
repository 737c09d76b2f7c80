"""Lines of a hypothesis or reference file: split at ``\\n`` only (eval/metrics.read_lines).

``str.splitlines`` also breaks at U+2028 (line separator), U+0085 (next line) and others, and a
byte-order mark stayed glued to the first word: identical files did not score 100, or failed on
an empty "line".
"""

from __future__ import annotations

import json

import pytest

from scl_slt.eval.metrics import read_lines
from scl_slt.metrics import main

BOM = "\ufeff"
SENTENCES = [
    "am tag scheint die sonne im süden und im westen",
    "morgen gibt es im norden regen und am abend gewitter",
    "in der nacht wird es kalt mit frost im bergland",
]


def test_lines_end_at_newline_only(tmp_path):
    path = tmp_path / "h.txt"
    text = BOM + "eins\u2028zwei drei\r\nvier\x85 fünf\nsechs\u2029 sieben\rx\nacht\u2028\n"
    path.write_bytes(text.encode("utf-8"))
    assert read_lines(path) == [
        "eins\u2028zwei drei",  # a \r before the \n is the line break's; U+2028 is text
        "vier\x85 fünf",
        "sechs\u2029 sieben\rx",  # a lone \r inside a line is text too
        "acht\u2028",
    ]


@pytest.mark.parametrize(
    "text,lines",
    [("", []), ("\n", [""]), ("a", ["a"]), ("a\n", ["a"]), ("a\r\nb", ["a", "b"]), (BOM, [])],
)
def test_line_count_as_a_text_editor_shows_it(tmp_path, text, lines):
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    assert read_lines(path) == lines


def _score(tmp_path, capsys, hyps: str, refs: str, language: str = "de") -> dict:
    (tmp_path / "h.txt").write_bytes(hyps.encode("utf-8"))
    (tmp_path / "r.txt").write_bytes(refs.encode("utf-8"))
    code = main([str(tmp_path / "h.txt"), str(tmp_path / "r.txt"), "--language", language])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out[: out.rindex("}") + 1])


@pytest.mark.parametrize("char", ["\u2028", "\x85"])
@pytest.mark.parametrize("language", ["de", "zh"])
def test_identical_files_holding_a_line_separator_score_100(tmp_path, capsys, char, language):
    """Inside a sentence and at its end (where splitlines made an empty reference of it)."""
    lines = [SENTENCES[0].replace(" im ", f" im{char}", 1), SENTENCES[1] + char, SENTENCES[2]]
    text = "\n".join(lines) + "\n"
    metrics = _score(tmp_path, capsys, text, text, language)
    assert metrics["bleu4"] == pytest.approx(100.0)
    assert metrics["rouge_l"] == pytest.approx(100.0)


def test_a_byte_order_mark_is_not_part_of_the_first_sentence(tmp_path, capsys):
    """An editor that saves with a BOM: the same sentences score 100 against a file without."""
    text = "\n".join(SENTENCES) + "\n"
    metrics = _score(tmp_path, capsys, BOM + text, text)
    assert metrics["bleu4"] == pytest.approx(100.0)
    assert metrics["rouge_l"] == pytest.approx(100.0)


def test_a_hypothesis_holding_u2028_stays_aligned_with_its_reference(tmp_path, capsys):
    """A generated sentence with U+2028 in it is one line: line counts match, the rest scores
    as before (identical lines score 100 each)."""
    hyps = "\n".join([SENTENCES[0].replace(" ", "\u2028", 1), *SENTENCES[1:]]) + "\n"
    refs = "\n".join(SENTENCES) + "\n"
    metrics = _score(tmp_path, capsys, hyps, refs)
    assert metrics["bleu4"] == pytest.approx(100.0)  # U+2028 is whitespace to the tokenizers
