"""Whether a difference in a results table is real: the spread over seeds and a paired test.

Two questions, answered separately:

* **How much does a number move from one training seed to the next?** Every cell is the mean and
  sample standard deviation (divisor n - 1) over its row's n runs, with the 95 % confidence
  interval of the mean, ``mean ± t · s / sqrt(n)``, t the 0.975 quantile of Student's t with
  n - 1 degrees of freedom (``t_quantile``; a table for 1..30, an expansion beyond). One run has
  no interval.
* **Do two systems translate the same test sentences differently?** sacrebleu's paired bootstrap
  resampling (``sacrebleu.significance.PairedTest``, ``test_type="bs"``, the test behind
  ``sacrebleu --paired-bs``) on corpus BLEU-4, scored exactly as ``eval/metrics.py`` scores it
  (tokenizer per language, characters for zh). Each row is tested against its table's reference
  row (``TESTED``): CL-SLT in the component table, ``random`` in the strategy table.

Seeds are paired: seed k of a row with seed k of the reference row (both translate the same test
sentences in the same order, which is checked), and the pairs' corpora are **concatenated into
one paired test**. One test per row gives one p-value, with no correction for testing each seed
separately, and a row's seeds all count; each resample draws sentences from the concatenation,
so it measures the variation over test sentences of the seeds' translations taken together
(the variation between seeds is the interval's business). A seed found in only one of the two
rows, or a run without predictions, is left out of the test and named in the table's notes.

Determinism: 1000 resamples, bootstrap seed 12345 (sacrebleu reads it from ``SACREBLEU_SEED``,
which is set for the test's duration and restored). sacrebleu's p is ``(c + 1) / (R + 1)`` where
c counts the resamples whose centred difference exceeds the observed one; for two identical
corpora every difference is 0, c = 0 and p would be its minimum 1/1001, so identical outputs
are given p = 1 without resampling (no difference at all is no evidence of one).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sacrebleu.metrics import BLEU
from sacrebleu.significance import PairedTest

from ..eval.metrics import BLEU_TOKENIZE, bleu_inputs, read_lines
from .runs import CL_SLT, Run, _get
from .tables import SIGNIFICANCE_LEVEL, Comparison, Table, TableRow

log = logging.getLogger(__name__)

BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 12345  # non-zero: sacrebleu passes a seed of 0 on as "no seed"
# Per table: which metric is tested against which row.
TESTED = {
    "component": {"bleu4": CL_SLT},
    "strategies": {"stage1_bleu4": "random", "stage2_bleu4": "random"},
}
PREDICTIONS_FILE = "predictions.tsv"

METHOD_PARAGRAPH = (
    "How the numbers are computed. Each cell is the mean ± sample standard deviation (n - 1) "
    "over the n runs (training seeds) of its row, then in brackets the 95 % confidence interval "
    "of the mean, mean ± t·s/√n with t the 0.975 quantile of Student's t with n - 1 degrees of "
    'freedom; a row with one run says "1 seed" and has no interval. The p columns are '
    f"sacrebleu's paired bootstrap resampling ({BOOTSTRAP_SAMPLES} resamples, bootstrap seed "
    f"{BOOTSTRAP_SEED}) on corpus BLEU-4 (the tested metric, scored as the BLEU-4 cells) of the "
    "row against the reference row (component table: CL-SLT; strategy table: random) on the "
    "same sentences of the split: seed k of the row is paired with seed k of the reference row and the "
    "pairs' translations are concatenated into one paired test, so a row gets one two-sided "
    f"p-value. † marks a difference that is not significant (p >= {SIGNIFICANCE_LEVEL}). The "
    "interval describes the spread over training seeds, the test the spread over test "
    "sentences; a seed without a partner or a run without predictions is named in the notes."
)


# ------------------------------------------------------------------- spread over seeds
# 0.975 quantile of Student's t, df = 1..30.
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004,
         2.262157, 2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905,
         2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899,
         2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)  # fmt: skip
_Z975 = 1.959963984540054


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (two-sided 95 %).

    df 1..30 from the table; beyond, the Cornish-Fisher expansion of t in powers of 1/df
    around the normal quantile (four terms; error below 1e-5 from df 31 on)."""
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"degrees of freedom: expected an integer >= 1, got {df!r}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and 95 % t interval of a cell's values (None where
    undefined: no value, or a single one)."""

    n: int
    mean: float | None
    std: float | None
    ci: tuple[float, float] | None


def summarise(values: Sequence[float]) -> Summary:
    if not values:
        return Summary(0, None, None, None)
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Summary(1, mean, None, None)
    std = statistics.stdev(values)
    half = t_quantile(len(values) - 1) * std / math.sqrt(len(values))
    return Summary(len(values), mean, std, (mean - half, mean + half))


# ------------------------------------------------------------------ the paired test
class PredictionsError(ValueError):
    """A run's predictions are missing or unreadable (the message names the file)."""


@dataclass(frozen=True)
class Translations:
    """One run's translations of the evaluated split, in dataset order."""

    names: list[str]
    hypotheses: list[str]
    references: list[str]
    language: str


@dataclass(frozen=True)
class Sample:
    """A run of a row as the test sees it: its seed, where its evaluation wrote, its config."""

    seed: int | None
    eval_dir: Path
    config: dict


def read_translations(sample: Sample) -> Translations:
    """``predictions.tsv`` (name, hypothesis, reference per line, as ``write_predictions``
    writes it) and the language it was scored in (``metrics.json`` meta, else the config)."""
    path = sample.eval_dir / PREDICTIONS_FILE
    if not path.is_file():
        raise PredictionsError(f"no predictions ({path} is missing)")
    try:
        lines = read_lines(path)
    except (OSError, ValueError) as e:  # not UTF-8, unreadable
        raise PredictionsError(f"unreadable predictions: {e}") from e
    if not lines or lines[0] != "name\thypothesis\treference":
        raise PredictionsError(f"{path}: not a predictions file (bad header)")
    fields = [line.split("\t") for line in lines[1:]]
    bad = next((i for i, f in enumerate(fields) if len(f) != 3), None)
    if bad is not None:
        raise PredictionsError(f"{path}: line {bad + 2} does not have three tab-separated fields")
    if not fields:
        raise PredictionsError(f"{path}: no predictions")
    language = None
    with contextlib.suppress(OSError, ValueError):  # an unreadable metrics.json: the config's
        language = _get(json.loads((sample.eval_dir / "metrics.json").read_text()), "meta.language")
    language = language or _get(sample.config, "data.language")
    if language not in BLEU_TOKENIZE:
        raise PredictionsError(f"{sample.eval_dir}: evaluation language unknown ({language!r})")
    names, hypotheses, references = (list(column) for column in zip(*fields))
    return Translations(names, hypotheses, references, language)


@contextlib.contextmanager
def _fixed_bootstrap_seed() -> Iterator[None]:
    """``SACREBLEU_SEED`` set to ``BOOTSTRAP_SEED`` (sacrebleu reads it), sacrebleu's per-step
    info messages silenced; both restored afterwards."""
    previous = os.environ.get("SACREBLEU_SEED")
    logger = logging.getLogger("sacrebleu")
    level = logger.level
    os.environ["SACREBLEU_SEED"] = str(BOOTSTRAP_SEED)
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
        if previous is None:
            del os.environ["SACREBLEU_SEED"]
        else:
            os.environ["SACREBLEU_SEED"] = previous


@dataclass(frozen=True)
class PairedResult:
    p_value: float
    system_bleu: float
    reference_bleu: float


def paired_bootstrap(
    system: Sequence[str], reference_system: Sequence[str], references: Sequence[str], language: str
) -> PairedResult:
    """sacrebleu's paired bootstrap test of ``system`` against ``reference_system`` on corpus
    BLEU-4 (``BOOTSTRAP_SAMPLES`` resamples, ``BOOTSTRAP_SEED``); identical outputs: p = 1."""
    if not (len(system) == len(reference_system) == len(references)) or not references:
        raise ValueError(
            f"paired test needs equally many sentences, at least one: {len(system)} system, "
            f"{len(reference_system)} reference-system hypotheses, {len(references)} references"
        )
    refs = [bleu_inputs(references, language)]
    ours, theirs = bleu_inputs(system, language), bleu_inputs(reference_system, language)
    metric = BLEU(tokenize=BLEU_TOKENIZE[language])
    if ours == theirs:
        score = float(metric.corpus_score(ours, refs).score)
        return PairedResult(1.0, score, score)
    with _fixed_bootstrap_seed():
        test = PairedTest([("reference", theirs), ("system", ours)], {"BLEU": metric}, refs,
                          test_type="bs", n_samples=BOOTSTRAP_SAMPLES)  # fmt: skip
        _, scores = test()
    baseline, result = scores["BLEU"]
    return PairedResult(float(result.p_value), float(result.score), float(baseline.score))


def _seed_text(seed: int | None) -> str:
    return "no seed" if seed is None else f"seed {seed}"


def compare_samples(
    row: Sequence[Sample],
    reference: Sequence[Sample],
    reference_label: str,
    read=read_translations,
) -> Comparison:
    """The paired test of a row's samples against the reference row's, seed k with seed k,
    the pairs concatenated (module docstring); what could not be paired is in ``note``."""
    problems: list[str] = []
    by_seed: dict[int | None, list[Sample]] = {}
    for s in reference:
        by_seed.setdefault(s.seed, []).append(s)
    hyps, ref_hyps, refs, seeds, languages = [], [], [], [], set()
    seen: dict[int | None, int] = {}
    for s in sorted(row, key=lambda s: (s.seed is None, s.seed or 0, str(s.eval_dir))):
        partners = sorted(by_seed.get(s.seed, []), key=lambda p: str(p.eval_dir))
        k = seen.get(s.seed, 0)
        seen[s.seed] = k + 1
        if k >= len(partners):
            problems.append(f"{_seed_text(s.seed)}: no {reference_label} run with this seed")
            continue
        try:
            mine, theirs = read(s), read(partners[k])
        except PredictionsError as e:
            problems.append(f"{_seed_text(s.seed)}: {e}")
            continue
        if (mine.names, mine.references) != (theirs.names, theirs.references):
            problems.append(
                f"{_seed_text(s.seed)}: its test sentences differ from those of the "
                f"{reference_label} run ({s.eval_dir} vs {partners[k].eval_dir})"
            )
            continue
        hyps += mine.hypotheses
        ref_hyps += theirs.hypotheses
        refs += mine.references
        seeds.append(s.seed)
        languages |= {mine.language, theirs.language}
    note = "; ".join(problems)
    if not seeds:
        return Comparison(reference_label, note="not tested: " + (note or "no run"))
    if len(languages) > 1:
        return Comparison(reference_label, note=f"not tested: languages {sorted(languages)} mixed")
    result = paired_bootstrap(hyps, ref_hyps, refs, languages.pop())
    return Comparison(reference_label, result.p_value, tuple(seeds), len(refs), note)


def row_samples(
    row: TableRow, metric: str, runs_by_path: dict[Path, Run], split: str, checkpoint: str
) -> list[Sample]:
    """The runs whose translations stand behind ``metric`` in ``row``: the row's runs
    themselves, or for the strategy table's ``stage2_bleu4`` the translation runs started from
    each stage-1 run (found among the report's runs by ``stage.init_from``)."""
    out = []
    for r in row.runs:
        real = runs_by_path.get(r.path.resolve(), r)
        if metric == "stage2_bleu4":
            sources = [f for f in runs_by_path.values()
                       if f.stage1 is not None and f.stage1.resolve() == r.path.resolve()
                       and _get(f.config, "stage.name") == "translate"]  # fmt: skip
        else:
            sources = [real]
        out += [Sample(f.seed, f.path / "eval" / checkpoint / split, f.config) for f in sources]
    return out


def compare_tables(tables: Sequence[Table], runs: Sequence[Run], split: str, checkpoint: str):
    """Fill ``Table.comparisons`` of the tables ``TESTED`` names: each row (but the reference
    row itself) against the reference row, per tested metric."""
    runs_by_path = {r.path.resolve(): r for r in runs}
    cache: dict[Path, Translations] = {}
    errors: dict[Path, PredictionsError] = {}

    def read(sample: Sample) -> Translations:  # each run's file once, for every row it meets
        key = sample.eval_dir
        if key in errors:
            raise errors[key]
        if key not in cache:
            try:
                cache[key] = read_translations(sample)
            except PredictionsError as e:
                errors[key] = e
                raise
        return cache[key]

    for table in tables:
        for metric, reference_label in TESTED.get(table.name, {}).items():
            if metric not in table.metrics:
                continue
            rows = {row.label: row for row in table.rows}
            reference = rows.get(reference_label)
            ref_samples = (
                row_samples(reference, metric, runs_by_path, split, checkpoint) if reference else []
            )
            for row in table.rows:
                if row.label == reference_label:
                    table.comparisons[(row.label, metric)] = Comparison(
                        reference_label, note="reference row"
                    )
                    continue
                samples = row_samples(row, metric, runs_by_path, split, checkpoint)
                if not samples:
                    continue  # an empty row: nothing to test, nothing to say
                if not ref_samples:
                    comparison = Comparison(
                        reference_label, note=f"not tested: no {reference_label} run"
                    )
                else:
                    comparison = compare_samples(samples, ref_samples, reference_label, read)
                table.comparisons[(row.label, metric)] = comparison
                log.info("%s %s %s vs %s: %s", table.dataset, table.name, row.label,
                         reference_label, comparison)  # fmt: skip
