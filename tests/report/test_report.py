"""The results report on small hand-made run directories.

Run directories are written the way training leaves them: ``config.yaml`` from the real schema
(``TrainConfig``), ``eval/best/test/metrics.json`` through the real ``write_predictions``,
``metrics.jsonl`` records in ``MetricsWriter``'s format, ``trajectory/summary.json`` with its
``shares``. Expected means and standard deviations are computed by hand below.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from scl_slt.config import TrainConfig, to_container
from scl_slt.eval.translation import write_predictions
from scl_slt.report.__main__ import main
from scl_slt.report.build import build_report
from scl_slt.report.runs import (
    BASELINE,
    CL_SLT,
    SCL_SLT,
    W_CL,
    W_SCL,
    ReportError,
    classify_component,
    find_run_dirs,
    load_run,
)

REPO = Path(__file__).resolve().parents[2]
SEEDS = (0, 1, 2)
# BLEU-4 of each component row per seed; the other metrics are offsets of it.
BLEU4 = {
    BASELINE: (10.0, 11.0, 15.0),
    W_CL: (12.0, 12.0, 12.0),
    W_SCL: (20.0, 22.0, 24.0),
    CL_SLT: (18.0, 19.0, 20.0),
    SCL_SLT: (25.0, 26.5, 30.5),
}
# The test sentences every run translates, and what each component row's runs output for them
# (constructed for the paired test, independent of the scores above): CL-SLT gets most of each
# sentence right, SCL-SLT all, w/ CL exactly what CL-SLT outputs; w/ SCL differs in one
# sentence in seed 0 (right) and one in seed 1 (wrong): a difference the test should not call real.
REFERENCES = [f"regen {w} am {d} im {r}" for w in ("und wind", "oder sonne", "mit schnee")
              for d in ("montag", "dienstag", "mittwoch", "freitag")
              for r in ("norden", "sueden", "westen", "osten")]  # fmt: skip
# Every sentence but its last two words: each still has 4-gram matches, so one sentence more or
# less moves corpus BLEU-4 a little (from none at all it would jump).
HALF = [" ".join(r.split()[:-2] + ["xx", "xx"]) for r in REFERENCES]
HYPOTHESES = {
    BASELINE: ["xx yy zz"] * len(REFERENCES),
    W_CL: HALF,
    W_SCL: {0: [REFERENCES[0], *HALF[1:]], 1: [HALF[0], "xx", *HALF[2:]], 2: HALF},
    CL_SLT: HALF,
    SCL_SLT: REFERENCES,
}
SHARES = {  # trajectory category shares of the three reference runs
    0: {"H->L": 0.40, "H->H": 0.30, "L->H": 0.20, "L->L": 0.10},
    1: {"H->L": 0.30, "H->H": 0.30, "L->H": 0.30, "L->L": 0.10},
    2: {"H->L": 0.35, "H->H": 0.36, "L->H": 0.19, "L->L": 0.10},
}


def hand_mean_std(values):
    """Mean and sample standard deviation (divisor n - 1), written out."""
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def scores(bleu4: float) -> dict[str, float]:
    return {
        "bleu1": bleu4 + 30,
        "bleu2": bleu4 + 20,
        "bleu3": bleu4 + 10,
        "bleu4": bleu4,
        "rouge_l": bleu4 + 25,
        "bleu_signature": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.x",
    }


def make_run(
    path: Path,
    *,
    dataset: str = "phoenix14t",
    stage: str = "contrastive",
    selection: str = "random",
    seed: int = 0,
    schedule: str = "log",
    pooling: str = "cico",
    init_from: Path | None = None,
    pair_scores: Path | None = None,
    tracker_interval: int | None = None,
    bleu4: float | None = None,
    shares: dict[str, float] | None = None,
    alignment: dict[str, float] | None = None,
    epochs: int | None = None,
    hypotheses: list[str] | None = None,
) -> Path:
    """A run directory as training and evaluation leave it (``bleu4=None``: not evaluated);
    its predictions are ``hypotheses`` for ``REFERENCES`` (default: CL-SLT's)."""
    path.mkdir(parents=True)
    config = to_container(TrainConfig(run_dir=str(path), seed=seed))
    config["data"]["name"] = dataset
    config["stage"].update(name=stage, init_from=str(init_from) if init_from else None)
    config["selection"].update(
        name=selection, schedule=schedule, pair_scores=str(pair_scores) if pair_scores else None
    )
    config["model"]["similarity"]["method"] = pooling
    if epochs is not None:
        config["stage"]["epochs"] = epochs
    if tracker_interval is not None:
        config["tracker"] = {"enabled": True, "interval": tracker_interval}
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    records = [
        {"split": "train", "step": s, "time": 0.0, "loss": 5.0 / s, "epoch": 0} for s in (1, 2)
    ]
    records += [
        {"split": "dev", "step": 2 * e, "time": 0.0, "epoch": e, **scores(e)} for e in (1, 2)
    ]
    lines = [json.dumps(r) for r in records] + ['{"split": "train", "st']  # a line cut by a crash
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if bleu4 is not None:
        hypotheses = HYPOTHESES[CL_SLT] if hypotheses is None else hypotheses
        rows = [{"index": i, "name": f"clip{i}", "hypothesis": h, "reference": r}
                for i, (h, r) in enumerate(zip(hypotheses, REFERENCES))]  # fmt: skip
        meta = {"split": "test", "checkpoint": str(path / "checkpoints" / "best")}
        write_predictions(path / "eval" / "best" / "test", rows, scores(bleu4), meta, alignment)
    if shares is not None:
        (path / "trajectory").mkdir()
        (path / "trajectory" / "summary.json").write_text(json.dumps({"shares": shares}))
    if tracker_interval is not None:
        (path / "pair_scores.npy").write_bytes(b"")
    return path


def make_pipeline(root: Path, seed: int, dataset: str = "phoenix14t") -> Path:
    """The runs of one ``compare_random=true`` pipeline, plus its end-to-end baseline."""
    out = root / f"seed{seed}"
    ref = make_run(out / "1-reference", dataset=dataset, seed=seed, tracker_interval=5,
                   shares=SHARES[seed])  # fmt: skip
    pairs = ref / "pair_scores.npy"
    i = SEEDS.index(seed)
    scl = make_run(out / "2-selective", dataset=dataset, selection="trajectory", seed=seed,
                   pair_scores=pairs, bleu4=BLEU4[W_SCL][i], hypotheses=HYPOTHESES[W_SCL][seed])  # fmt: skip
    cl = make_run(out / "2-random", dataset=dataset, seed=seed, bleu4=BLEU4[W_CL][i],
                  hypotheses=HYPOTHESES[W_CL])  # fmt: skip
    make_run(out / "3-translate", dataset=dataset, stage="translate", seed=seed, init_from=scl,
             bleu4=BLEU4[SCL_SLT][i], hypotheses=HYPOTHESES[SCL_SLT])  # fmt: skip
    make_run(out / "3-translate-random", dataset=dataset, stage="translate", seed=seed,
             init_from=cl / "checkpoints" / "step-00000010", bleu4=BLEU4[CL_SLT][i],
             hypotheses=HYPOTHESES[CL_SLT])  # fmt: skip
    (cl / "checkpoints" / "step-00000010").mkdir(parents=True)
    make_run(root / "baseline" / f"seed{seed}", dataset=dataset, stage="translate", seed=seed,
             bleu4=BLEU4[BASELINE][i], hypotheses=HYPOTHESES[BASELINE])  # fmt: skip
    timings = {"reference": 10.0 + seed, "score": 2.0, "2-selective": 30.0}
    (out / "pipeline.json").write_text(json.dumps({"_timings": timings}))
    return out


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for seed in SEEDS:
        make_pipeline(root, seed)
    pairs5 = root / "seed0" / "1-reference" / "pair_scores.npy"
    ablations = root / "ablations"
    # Schedule ablation at the default interval 5 / cico: two hard-only seeds, one linear.
    for seed, value in ((0, 5.0), (1, 8.0)):
        make_run(ablations / f"hard-{seed}", selection="trajectory", schedule="hard_only",
                 seed=seed, pair_scores=pairs5, bleu4=value)  # fmt: skip
    make_run(ablations / "linear", selection="trajectory", schedule="linear", pair_scores=pairs5,
             bleu4=21.0)  # fmt: skip
    # Pooling: CLS at log / 5.  Interval: a reference run tracked every epoch.
    make_run(ablations / "cls", selection="trajectory", pooling="cls", pair_scores=pairs5,
             bleu4=9.0)  # fmt: skip
    ref1 = make_run(ablations / "reference-1", seed=7, tracker_interval=1)
    make_run(ablations / "interval-1", selection="trajectory", pair_scores=ref1 / "pair_scores.npy",
             bleu4=23.0)  # fmt: skip
    # Broken ones: corrupt metrics, stage-1 run gone, and the same with an explicit row.
    bad = make_run(root / "broken" / "corrupt", stage="translate", seed=3, bleu4=1.0)
    record = json.loads((bad / "eval/best/test/metrics.json").read_text())
    del record["metrics"]["bleu4"]
    (bad / "eval/best/test/metrics.json").write_text(json.dumps(record))
    make_run(
        root / "broken" / "orphan", stage="translate", init_from=root / "gone" / "x", bleu4=2.0
    )
    labelled = make_run(root / "broken" / "labelled", stage="translate",
                        init_from=root / "gone" / "y", seed=4, bleu4=31.5,
                        hypotheses=HYPOTHESES[SCL_SLT])  # fmt: skip
    (labelled / "report.json").write_text(json.dumps({"report_row": SCL_SLT}))
    bad_label = make_run(root / "broken" / "bad-label", stage="translate", seed=5, bleu4=3.0)
    (bad_label / "report.json").write_text(json.dumps(["SCL-SLT"]))
    # A baseline run whose translations are gone (metrics.json kept).
    (root / "baseline" / "seed2" / "eval" / "best" / "test" / "predictions.tsv").unlink()
    # A second dataset without paper numbers.
    make_run(root / "synthetic" / "baseline", dataset="synthetic", stage="translate", bleu4=40.0)
    return root


@pytest.fixture(scope="module")
def report(runs_root, tmp_path_factory):
    return build_report([str(runs_root)], tmp_path_factory.mktemp("report"))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def csv_row(rows, table, dataset, row, metric, context=None):
    hits = [
        r
        for r in rows
        if (r["table"], r["dataset"], r["row"], r["metric"]) == (table, dataset, row, metric)
        and (context is None or r["context"] == context)
    ]
    assert len(hits) == 1, (table, dataset, row, metric, hits)
    return hits[0]


def test_classify_component_from_config():
    def cfg(stage, selection="random", init_from=None):
        return {"stage": {"name": stage, "init_from": init_from}, "selection": {"name": selection}}

    assert classify_component(cfg("translate"), None) == BASELINE
    assert classify_component(cfg("contrastive"), None) == W_CL
    assert classify_component(cfg("contrastive", "trajectory"), None) == W_SCL
    assert classify_component(cfg("contrastive", "text_semantic"), None) == "w/ text_semantic"
    two_stage = cfg("translate", init_from="runs/s1")
    assert classify_component(two_stage, cfg("contrastive", "random")) == CL_SLT
    assert classify_component(two_stage, cfg("contrastive", "trajectory")) == SCL_SLT
    assert classify_component(two_stage, cfg("contrastive", "visual_confusable")) == (
        "visual_confusable, then translate"
    )
    assert classify_component(two_stage, None) is None  # stage-1 run unknown


def test_component_table_means_and_stds(report):
    rows = read_csv(report.files["tables.csv"])
    for label, values in BLEU4.items():
        if label == SCL_SLT:  # the labelled run (report.json) joins the three pipeline seeds
            values = (*values, 31.5)
        mean, std = hand_mean_std(values)
        got = csv_row(rows, "component", "phoenix14t", label, "bleu4")
        assert int(got["n"]) == len(values)
        assert float(got["mean"]) == pytest.approx(mean, abs=1e-4)
        assert float(got["std"]) == pytest.approx(std, abs=1e-4)
        rouge = csv_row(rows, "component", "phoenix14t", label, "rouge_l")
        assert float(rouge["mean"]) == pytest.approx(mean + 25, abs=1e-4)
    assert csv_row(rows, "component", "phoenix14t", SCL_SLT, "bleu4")["paper"] == "26.00"
    assert csv_row(rows, "component", "phoenix14t", BASELINE, "rouge_l")["paper"] == "41.81"
    assert csv_row(rows, "component", "phoenix14t", W_SCL, "bleu1")["paper"] == ""
    # The Markdown line of a row, numbers as computed by hand: 10, 11, 15 -> 12.00 ± 2.65 and
    # the interval 12 ± t(0.975, 2) * sqrt(7) / sqrt(3), t = 4.302653 (published tables).
    half = 4.302653 * math.sqrt(7) / math.sqrt(3)
    got = csv_row(rows, "component", "phoenix14t", BASELINE, "bleu4")
    assert float(got["ci_low"]) == pytest.approx(12 - half, abs=1e-4)
    assert float(got["ci_high"]) == pytest.approx(12 + half, abs=1e-4)
    cells = [f"{m:.2f} ± {math.sqrt(7):.2f} [{m - half:.1f}, {m + half:.1f}]"
             for m in (42, 32, 22, 12, 37)]  # fmt: skip
    markdown = report.files["tables.md"].read_text()
    line = (
        "| baseline end-to-end | 3 | 0 1 2 | " + " | ".join(cells) + " | < 0.001 | 21.97 | 41.81 |"
    )
    assert line in markdown
    assert "| w/ CL | 3 | 0 1 2 | 42.00 ± 0.00 [42.0, 42.0] |" in markdown
    # The synthetic dataset has its own table, one run (no ±, no interval), no paper columns.
    synthetic = csv_row(rows, "component", "synthetic", BASELINE, "bleu4")
    assert (synthetic["n"], float(synthetic["mean"]), synthetic["std"]) == ("1", 40.0, "")
    assert (synthetic["ci_low"], synthetic["p_value"]) == ("", "")
    assert synthetic["test"] == "not tested: no CL-SLT run"
    assert (
        "| baseline end-to-end | 1 | 0 | 70.00 (1 seed) | 60.00 (1 seed) | 50.00 (1 seed) | "
        "40.00 (1 seed) | 65.00 (1 seed) | not tested |" in markdown
    )
    # The pipelines' step times (pipeline.json): seed 2 took 12 + 2 + 30 s.
    assert "reference 12, score 2, 2-selective 30 | 44 |" in markdown


def test_rows_not_significantly_different_from_cl_slt_are_marked(report):
    """The paired test against CL-SLT on the constructed translations: SCL-SLT (all right) and
    the baseline (all wrong) differ; w/ CL (identical) and w/ SCL (two sentences) do not."""
    rows = read_csv(report.files["tables.csv"])
    tested = {label: csv_row(rows, "component", "phoenix14t", label, "bleu4") for label in BLEU4}
    assert tested[CL_SLT]["test"] == "reference row" and tested[CL_SLT]["p_value"] == ""
    assert float(tested[W_CL]["p_value"]) == 1.0 and tested[W_CL]["significant"] == "no"
    assert float(tested[W_SCL]["p_value"]) >= 0.05 and tested[W_SCL]["significant"] == "no"
    for label in (SCL_SLT, BASELINE):
        assert float(tested[label]["p_value"]) < 0.01 and tested[label]["significant"] == "yes"
    n = len(REFERENCES)
    assert (
        tested[W_SCL]["test"]
        == f"paired bootstrap BLEU-4 vs CL-SLT, seeds 0 1 2, {3 * n} sentences"
    )
    # Left out of the test, and said: the labelled SCL-SLT run's seed 4 has no CL-SLT partner;
    # the baseline's seed 2 has no predictions.
    assert tested[SCL_SLT]["test"].endswith(
        f"{3 * n} sentences; seed 4: no CL-SLT run with this seed"
    )
    assert (
        "seed 2: no predictions" in tested[BASELINE]["test"]
        and "seeds 0 1," in tested[BASELINE]["test"]
    )
    assert csv_row(rows, "component", "phoenix14t", BASELINE, "bleu3")["p_value"] == ""
    markdown = report.files["tables.md"].read_text()
    table = markdown.split("### Component table")[1].split("###")[0]
    lines = {line.split(" | ")[0][2:]: line for line in table.splitlines() if line.startswith("| ")}
    assert "| p (BLEU-4 vs CL-SLT) |" in lines["row"]
    for label in (W_CL, W_SCL):
        assert "] † |" in lines[label], lines[label]
    for label in (SCL_SLT, BASELINE, CL_SLT):
        assert "†" not in lines[label]
    assert lines[CL_SLT].endswith("| reference | 25.01 | 46.13 |")
    assert (
        "† not significantly different from CL-SLT (paired bootstrap on BLEU-4, p >= 0.05)" in table
    )
    assert (
        "- SCL-SLT (BLEU-4): tested on seeds 0 1 2; seed 4: no CL-SLT run with this seed" in table
    )
    assert "- baseline end-to-end (BLEU-4): tested on seeds 0 1; seed 2: no predictions (" in table
    assert "paired bootstrap resampling (1000 resamples, bootstrap seed 12345)" in markdown
    # The strategy table: both BLEU-4 columns against the random row.
    strategy = csv_row(rows, "strategies", "phoenix14t", "trajectory", "stage2_bleu4")
    assert float(strategy["p_value"]) < 0.01  # SCL-SLT's translations against CL-SLT's
    stage1 = csv_row(rows, "strategies", "phoenix14t", "trajectory", "stage1_bleu4")
    assert float(stage1["p_value"]) >= 0.05  # w/ SCL against w/ CL: two sentences apart
    assert "| p (stage-1 BLEU-4 vs random) | p (BLEU-4 after stage 2 vs random) |" in markdown


def test_ablation_tables_group_by_the_other_factors(report):
    rows = read_csv(report.files["tables.csv"])
    default = "interval 5, pooling cico"
    hard = csv_row(rows, "schedule", "phoenix14t", "hard_only", "bleu4", default)
    assert (hard["n"], hard["paper"]) == ("2", "12.41")
    assert float(hard["mean"]) == pytest.approx(6.5)
    assert float(hard["std"]) == pytest.approx(hand_mean_std([5.0, 8.0])[1], abs=1e-4)
    log_row = csv_row(rows, "schedule", "phoenix14t", "log", "bleu4", default)
    assert int(log_row["n"]) == 3 and float(log_row["mean"]) == pytest.approx(22.0)
    missing = csv_row(rows, "schedule", "phoenix14t", "sqrt", "bleu4", default)
    assert (missing["n"], missing["mean"], missing["paper"]) == ("0", "", "24.54")
    cls = csv_row(rows, "pooling", "phoenix14t", "cls", "bleu4", "schedule log, interval 5")
    assert float(cls["mean"]) == 9.0 and cls["paper"] == "14.85"
    # The interval comes from the reference run behind selection.pair_scores.
    one = csv_row(rows, "interval", "phoenix14t", "1", "bleu4", "schedule log, pooling cico")
    assert (one["n"], float(one["mean"]), one["paper"]) == ("1", 23.0, "24.68")
    intervals = [r["row"] for r in rows if r["table"] == "interval" and r["metric"] == "bleu4"]
    assert intervals == ["1", "5", "10"]
    # In the component table the ablation runs have rows of their own, apart from w/ SCL.
    own = csv_row(rows, "component", "phoenix14t", "w/ SCL (schedule hard_only)", "bleu4")
    assert (own["n"], float(own["mean"])) == ("2", 6.5)
    csv_row(rows, "component", "phoenix14t", "w/ SCL (interval 1)", "bleu4")
    assert csv_row(rows, "component", "phoenix14t", W_SCL, "bleu4")["context"] == (
        "SCL rows: schedule log, interval 5, pooling cico"
    )


def test_category_shares_are_averaged_over_reference_runs(report):
    rows = read_csv(report.files["tables.csv"])
    for category in ("H->L", "H->H", "L->H", "L->L"):
        mean, std = hand_mean_std([100 * SHARES[s][category] for s in SEEDS])
        got = csv_row(rows, "categories", "phoenix14t", "reference runs", category)
        assert float(got["mean"]) == pytest.approx(mean, abs=1e-4)
        assert float(got["std"]) == pytest.approx(std, abs=1e-4)
    assert csv_row(rows, "categories", "phoenix14t", "reference runs", "H->L")["paper"] == "35.90"


def test_broken_runs_are_named_and_skipped(report, runs_root):
    problems = {r.path.name: r.problem for r in report.runs if r.problem}
    assert "metrics.bleu4" in problems["corrupt"]
    assert "stage.init_from" in problems["orphan"] and "report_row" in problems["orphan"]
    assert "labelled" not in problems
    assert "report.json" in problems["bad-label"] and "report_row" in problems["bad-label"]
    assert "metrics.json is missing" in problems["1-reference"]
    markdown = report.files["tables.md"].read_text()
    skipped = markdown.split("## Skipped runs")[1]
    for name in ("corrupt", "orphan", "1-reference"):
        assert str(runs_root / "broken" / name) in skipped or f"/{name}`" in skipped
    statuses = {Path(r["run"]).name: r["status"] for r in read_csv(report.files["runs.csv"])}
    assert statuses["labelled"] == "ok" and statuses["corrupt"].startswith("unreadable")


def test_figures_are_written(report):
    matplotlib_image = pytest.importorskip("matplotlib.image")
    for name in ("curves.png", "categories.png"):
        path = report.files[name]
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width = matplotlib_image.imread(path).shape[:2]
        assert height > 100 and width > 100


def test_moved_tree_is_classified_through_sibling_runs(runs_root, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(runs_root / "seed1", moved)  # init_from / pair_scores still name the old tree
    shutil.rmtree(runs_root / "seed1" / "2-random")
    try:
        cl_slt = load_run(moved / "3-translate-random")
        assert cl_slt.row == CL_SLT and cl_slt.problem is None
        assert load_run(moved / "2-selective").factors["interval"] == "5"
    finally:
        shutil.copytree(moved / "2-random", runs_root / "seed1" / "2-random")


def test_interval_from_pair_scores_json_without_reference_config(tmp_path):
    scores_dir = tmp_path / "scores"
    scores_dir.mkdir()
    (scores_dir / "pair_scores.npy").write_bytes(b"")
    snapshots = [{"epoch": e} for e in (0, 10, 20)]
    (scores_dir / "pair_scores.json").write_text(json.dumps({"snapshots": snapshots}))
    run = make_run(tmp_path / "scl", selection="trajectory",
                   pair_scores=scores_dir / "pair_scores.npy", bleu4=3.0)  # fmt: skip
    assert load_run(run).factors == {"schedule": "log", "interval": "10", "pooling": "cico"}


def test_span_scored_interval_is_its_own_row(tmp_path):
    """A reference scored with delta=span gets an interval label of its own, so its runs never
    join the whole-run (endpoints) rows of the same interval."""
    rows = {}
    for interval, window in (("5", None), ("5s", "span"), ("1", "span")):
        ref = tmp_path / f"ref-{interval}"
        ref.mkdir()
        (ref / "pair_scores.npy").write_bytes(b"")
        record = {"snapshots": [{"epoch": e} for e in (0, int(interval[0]), 2 * int(interval[0]))]}
        if window:
            record["window"] = {"delta": "span", "span_snapshots": 4, "interval": interval[0]}
        (ref / "pair_scores.json").write_text(json.dumps(record))
        run = make_run(tmp_path / f"scl-{interval}", selection="trajectory",
                       pair_scores=ref / "pair_scores.npy", bleu4=3.0)  # fmt: skip
        rows[interval] = load_run(run).factors["interval"]
    assert rows == {"5": "5", "5s": "5 (span 4)", "1": "1 (span 4)"}
    from scl_slt.report.tables import ABLATIONS, _row_order

    interval = next(a for a in ABLATIONS if a.factor == "interval")
    order = _row_order(interval, ["10 (span 4)", "5 (span 4)", "1 (span 4)", "5"])
    assert order.index("1 (span 4)") < order.index("5") < order.index("10 (span 4)")


def test_cli_and_bad_arguments(runs_root, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main([str(runs_root / "seed*"), str(runs_root / "baseline"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "### Component table" in printed and "SCL-SLT" in printed
    assert {p.name for p in out.iterdir()} >= {"tables.md", "tables.csv", "runs.csv", "curves.png"}
    assert len(find_run_dirs([str(runs_root / "seed*")])) == 3 * 5
    assert main([str(tmp_path / "missing"), "--out", str(out)]) == 2
    with pytest.raises(ReportError, match="matches no"):
        find_run_dirs([str(tmp_path / "nothing-*")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportError, match="no run directory"):
        find_run_dirs([str(empty)])


@pytest.mark.parametrize(
    "script",
    [
        "reproduce_synthetic.sh",
        "reproduce_paper.sh",
        "compare_strategies.sh",
        "qbslt_synthetic.sh",
    ],
)
def test_reproduce_scripts_parse(script):
    path = REPO / "scripts" / script
    text = path.read_text()
    assert "set -euo pipefail" in text and "scl_slt.report" in text
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def alignment(r1: float, sdr: float) -> dict[str, float]:
    """An evaluation's alignment entry (v2t R@1 = r1, t2v R@1 = r1 + 1)."""
    return {"v2t_r1": r1, "v2t_r5": 100.0, "v2t_medr": 1.0, "t2v_r1": r1 + 1, "t2v_r5": 100.0,
            "t2v_medr": 1.0, "retrieval_samples": 80, "sdr": sdr, "sdr_glosses": 40}  # fmt: skip


def test_strategy_table_joins_stage1_alignment_with_stage2_bleu(tmp_path):
    # Per strategy and seed: (v2t R@1, SDR, stage-1 BLEU-4, stage-2 BLEU-4).
    plan = {
        "random": {0: (60.0, 0.40, 30.0, 50.0), 1: (64.0, 0.36, 32.0, 54.0)},
        "text_semantic": {0: (70.0, 0.30, 31.0, 57.0), 1: (72.0, 0.32, 35.0, 59.0)},
    }
    for strategy, seeds in plan.items():
        for seed, (r1, sdr, b1, b2) in seeds.items():
            stage1 = make_run(tmp_path / f"seed{seed}" / f"2-{strategy}", dataset="synthetic",
                              selection=strategy, seed=seed, bleu4=b1,
                              alignment=alignment(r1, sdr))  # fmt: skip
            make_run(tmp_path / f"seed{seed}" / f"3-{strategy}", dataset="synthetic",
                     stage="translate", seed=seed, init_from=stage1, bleu4=b2)  # fmt: skip
    # A longer text_semantic run is a row of its own, without a stage-2 run.
    make_run(tmp_path / "long", dataset="synthetic", selection="text_semantic", seed=0,
             bleu4=40.0, alignment=alignment(90.0, 0.2), epochs=50)  # fmt: skip
    report = build_report([str(tmp_path)], tmp_path / "report")
    (table,) = [t for t in report.tables if t.name == "strategies"]
    rows = {row.label: row for row in table.rows}
    usual = TrainConfig().stage.epochs
    assert list(rows) == ["random", "text_semantic", "text_semantic (50 epochs)"]
    assert table.context.startswith(f"{usual} stage-1 epochs")
    for strategy, seeds in plan.items():
        row = rows[strategy]
        assert row.seeds == "0 1"
        columns = (("v2t_r1", 0), ("sdr", 1), ("stage1_bleu4", 2), ("stage2_bleu4", 3))
        for column, position in columns:
            expected = sorted(v[position] for v in seeds.values())
            assert sorted(row.values(column)) == pytest.approx(expected)
        assert sorted(row.values("t2v_r1")) == pytest.approx(
            sorted(v[0] + 1 for v in seeds.values())
        )
    assert rows["text_semantic (50 epochs)"].values("stage2_bleu4") == []
    assert rows["text_semantic (50 epochs)"].values("v2t_r1") == [90.0]
    markdown = report.files["tables.md"].read_text()
    mean, std = hand_mean_std([0.30, 0.32])
    line = next(x for x in markdown.splitlines() if x.startswith("| text_semantic | 2 |"))
    assert f"{mean:.3f} ± {std:.3f}" in line  # SDR with three decimals
    mean, std = hand_mean_std([57.0, 59.0])
    # BLEU-4 after stage 2 with its interval (t(0.975, 1) = 12.706205: half = t * s / sqrt(2)),
    # then the two p columns: every run here outputs the same translations, so p = 1 (dagger).
    half = 12.706205 * std / math.sqrt(2)
    interval = f"[{mean - half:.1f}, {mean + half:.1f}]"
    assert line.endswith(f"| {mean:.2f} ± {std:.2f} {interval} † | 1.000 | 1.000 |"), line
    assert "V→T R@1" in markdown and "BLEU-4 after stage 2" in markdown
    component = next(x for x in markdown.splitlines() if x.startswith("| row | n | seeds | BLEU-1"))
    assert "| BLEU-4 |" in component  # the component table keeps its own column names


def test_strategy_table_needs_two_strategies(report):
    tables = [t for t in report.tables if t.name == "strategies"]
    # The shared fixture's PHOENIX runs use random and trajectory stage 1: one table there only.
    assert [t.dataset for t in tables] == ["phoenix14t"]
    labels = [row.label for row in tables[0].rows]
    assert labels[:2] == ["random", "trajectory"]
    assert "trajectory (schedule hard_only)" in labels
