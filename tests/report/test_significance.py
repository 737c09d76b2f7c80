"""The report's statistics: the t interval over seeds and the paired bootstrap test.

The t quantiles are checked against the t distribution itself (its density integrated
numerically, and the closed forms for 1 and 2 degrees of freedom); the interval against a hand
computation; the paired test (sacrebleu's) on constructed translations whose answer is known.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import pytest

from scl_slt.eval.metrics import compute_metrics
from scl_slt.eval.translation import write_predictions
from scl_slt.report.significance import (
    BOOTSTRAP_SEED,
    PredictionsError,
    Sample,
    compare_samples,
    paired_bootstrap,
    read_translations,
    summarise,
    t_quantile,
)


def t_density(x: float, df: int) -> float:
    """Student's t density, from its definition."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


def t_mass_0_to(q: float, df: int, steps: int = 20000) -> float:
    """P(0 < T < q) by Simpson's rule."""
    h = q / steps
    total = t_density(0.0, df) + t_density(q, df)
    total += sum((4 if i % 2 else 2) * t_density(i * h, df) for i in range(1, steps))
    return total * h / 3


@pytest.mark.parametrize("df", [*range(1, 31), 31, 35, 45, 60, 120, 1000])
def test_t_quantile_leaves_2_5_percent_in_each_tail(df):
    assert t_mass_0_to(t_quantile(df), df) == pytest.approx(0.475, abs=1e-6)


def test_t_quantile_closed_forms_and_bad_input():
    # df = 1 (Cauchy): tan(pi (p - 1/2)); df = 2: (2p - 1) / sqrt(2 p (1 - p)); p = 0.975.
    assert t_quantile(1) == pytest.approx(math.tan(math.pi * 0.475), abs=1e-6)
    assert t_quantile(2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), abs=1e-6)
    assert t_quantile(10**6) == pytest.approx(1.959964, abs=1e-5)  # the normal quantile
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="degrees of freedom"):
            t_quantile(bad)


def test_interval_by_hand():
    # 10, 11, 15: mean 12, s^2 = (4 + 1 + 9) / 2 = 7; t(0.975, 2) = 4.302653 (published tables).
    s = summarise([10.0, 11.0, 15.0])
    half = 4.302653 * math.sqrt(7) / math.sqrt(3)
    assert (s.n, s.mean, s.std) == (3, pytest.approx(12.0), pytest.approx(math.sqrt(7)))
    assert s.ci == (pytest.approx(12 - half, abs=1e-5), pytest.approx(12 + half, abs=1e-5))
    assert s.ci[0] == pytest.approx(5.4275, abs=1e-3) and s.ci[1] == pytest.approx(
        18.5725, abs=1e-3
    )
    one = summarise([40.0])
    assert (one.n, one.mean, one.std, one.ci) == (1, 40.0, None, None)
    assert summarise([]) == summarise(())
    assert summarise([]).mean is None
    same = summarise([3.0, 3.0, 3.0, 3.0])
    assert same.ci == (3.0, 3.0)


WORDS = "regen sonne wind nord sued morgen heute abend nacht wolken schnee gewitter".split()


def corpus(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 10))) for _ in range(n)]


def half_right(references: list[str]) -> list[str]:
    """Each reference with its second half replaced: a mediocre system."""
    out = []
    for ref in references:
        words = ref.split()
        keep = len(words) // 2
        out.append(" ".join(words[:keep] + ["xx"] * (len(words) - keep)))
    return out


def test_identical_systems_are_not_different():
    refs = corpus()
    system = half_right(refs)
    result = paired_bootstrap(system, list(system), refs, "de")
    assert result.p_value == 1.0
    assert result.system_bleu == result.reference_bleu


def test_right_everywhere_against_wrong_everywhere_is_significant():
    refs = corpus()
    wrong = ["xx yy zz ww vv"] * len(refs)
    result = paired_bootstrap(list(refs), wrong, refs, "de")
    assert result.p_value < 0.01
    assert result.system_bleu == pytest.approx(100.0) and result.reference_bleu == 0.0
    # Mediocre against wrong, and the other way round: significant too.
    assert paired_bootstrap(half_right(refs), wrong, refs, "de").p_value < 0.01
    assert paired_bootstrap(wrong, half_right(refs), refs, "de").p_value < 0.01


def test_one_changed_sentence_in_200_is_not_significant():
    refs = corpus()
    baseline = half_right(refs)
    changed = list(baseline)
    changed[17] = refs[17]  # one sentence now right
    result = paired_bootstrap(changed, baseline, refs, "de")
    assert result.p_value >= 0.05
    assert result.system_bleu > result.reference_bleu  # a real but tiny gain


def test_scores_are_the_cells_bleu4_deterministic_and_the_seed_is_restored(monkeypatch):
    refs = corpus(80, seed=3)
    system, baseline = half_right(refs), [r.split()[0] for r in refs]
    monkeypatch.setenv("SACREBLEU_SEED", "none")  # a user's setting: not used, and kept
    first = paired_bootstrap(system, baseline, refs, "de")
    assert os.environ["SACREBLEU_SEED"] == "none"
    assert first == paired_bootstrap(system, baseline, refs, "de")
    assert first.system_bleu == pytest.approx(compute_metrics(system, refs, "de")["bleu4"])
    assert first.reference_bleu == pytest.approx(compute_metrics(baseline, refs, "de")["bleu4"])
    monkeypatch.delenv("SACREBLEU_SEED")
    assert paired_bootstrap(system, baseline, refs, "de") == first
    assert "SACREBLEU_SEED" not in os.environ and BOOTSTRAP_SEED != 0


def test_chinese_is_scored_by_characters():
    refs = ["他今年二十岁。", "我们明天去学校", "天气很好"] * 20
    system = [r[:-1] + "吗" for r in refs]
    result = paired_bootstrap(system, system[:1] + refs[1:], refs, "zh")
    assert result.system_bleu == pytest.approx(compute_metrics(system, refs, "zh")["bleu4"])
    with pytest.raises(ValueError, match="equally many"):
        paired_bootstrap(system, refs[:-1], refs, "zh")


def write_run(folder: Path, hypotheses: list[str], references: list[str]) -> Path:
    rows = [
        {"index": i, "name": f"clip{i}", "hypothesis": h, "reference": r}
        for i, (h, r) in enumerate(zip(hypotheses, references))
    ]
    scores = compute_metrics(hypotheses, references, "de")
    write_predictions(folder, rows, scores, {"language": "de"})
    return folder


def test_seeds_are_paired_and_concatenated(tmp_path):
    refs = corpus(60, seed=1)
    cfg = {"data": {"language": "de"}}
    mediocre = {k: half_right(refs) for k in range(3)}
    mediocre[1] = [r.split()[0] + " xx" for r in refs]  # seed 1 of the reference row is worse
    good = {k: [r if (i + k) % 3 else half_right([r])[0] for i, r in enumerate(refs)]
            for k in range(3)}  # fmt: skip
    base = [Sample(k, write_run(tmp_path / f"cl{k}", mediocre[k], refs), cfg) for k in (0, 1, 2)]
    row = [Sample(k, write_run(tmp_path / f"scl{k}", good[k], refs), cfg) for k in (0, 1, 2)]
    row.append(Sample(4, write_run(tmp_path / "scl4", good[0], refs), cfg))  # no partner
    got = compare_samples(row, base, "CL-SLT")
    expected = paired_bootstrap(good[0] + good[1] + good[2],
                                mediocre[0] + mediocre[1] + mediocre[2], refs * 3, "de")  # fmt: skip
    assert (got.p_value, got.seeds, got.sentences) == (expected.p_value, (0, 1, 2), 180)
    assert got.significant and got.note == "seed 4: no CL-SLT run with this seed"
    # Missing predictions and other sentences: named, left out, the rest still tested.
    (tmp_path / "scl2" / "predictions.tsv").unlink()
    other = write_run(tmp_path / "cl0b", mediocre[0][1:], refs[1:])
    base[0] = Sample(0, other, cfg)
    got = compare_samples(row[:3], base, "CL-SLT")
    assert got.seeds == (1,)
    assert "seed 0: its test sentences differ" in got.note
    assert f"seed 2: no predictions ({tmp_path / 'scl2' / 'predictions.tsv'} is missing)" in (
        got.note
    )
    nothing = compare_samples(row[2:3], base, "CL-SLT")
    assert nothing.p_value is None and nothing.significant is None
    assert nothing.note.startswith("not tested: seed 2: no predictions")


def test_bad_predictions_are_named(tmp_path):
    folder = write_run(tmp_path / "run", ["a b"], ["a b c"])
    assert read_translations(Sample(0, folder, {})).language == "de"
    (folder / "predictions.tsv").write_text("name\thypothesis\treference\nclip0\tonly two\n")
    with pytest.raises(PredictionsError, match="line 2 does not have three"):
        read_translations(Sample(0, folder, {}))
    (folder / "predictions.tsv").write_bytes(b"name\thypothesis\treference\nclip0\t\xff\tb\n")
    with pytest.raises(PredictionsError, match="not valid UTF-8"):
        read_translations(Sample(0, folder, {}))
    (folder / "predictions.tsv").write_text("clip0\ta\tb\n")
    with pytest.raises(PredictionsError, match="bad header"):
        read_translations(Sample(0, folder, {}))
    (folder / "predictions.tsv").write_text("name\thypothesis\treference\nclip0\ta\tb\n")
    (folder / "metrics.json").write_text("{}")  # no language recorded: the config's, else error
    assert read_translations(Sample(0, folder, {"data": {"language": "zh"}})).language == "zh"
    with pytest.raises(PredictionsError, match="language unknown"):
        read_translations(Sample(0, folder, {}))
