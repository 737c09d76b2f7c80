"""Every ``configs/experiment/*.yaml`` composes, validates and trains a few steps on the tiny
model and the synthetic data (paths it expects from earlier runs are made here), the paper's ones
once per dataset (``experiment=<name> data=<dataset>``); the paper's grid of experiments chains
its run directories correctly on either dataset, scripts/reproduce_paper.sh launches it as
``experiment=<name> data=<dataset>``, and the report puts every run of the grid in the row or
ablation it stands for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import compose_train
from omegaconf import OmegaConf

from scl_slt.config import CONFIG_DIR, SelectionName, StageName, TrainConfig, to_container
from scl_slt.config_checks import validate_train
from scl_slt.eval.translation import write_predictions
from scl_slt.report.build import build_report
from scl_slt.report.runs import CL_SLT, COMPONENT_ROWS, SCL_SLT, W_CL, W_SCL
from scl_slt.rundir.checkpoint import find_latest_checkpoint
from scl_slt.stages import run_stage

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
SMOKE = ("data=synthetic", "model=tiny", "stage.max_steps=2", "stage.eval_every=0")
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"

DATASETS = ("phoenix14t", "csl_daily")
SCHEDULES = ("hard_only", "easy_only", "linear", "sqrt")  # log: scl
INTERVALS = (1, 5, 10)  # scored with delta=span: report rows "<i> (span 4)"
METHODS = ("cls", "mean")  # cico: reference / scl
SPAN_ROWS = tuple(f"{i} (span 4)" for i in INTERVALS)  # never the whole-run "5" of scl
COMPONENT = ("reference", "scl", "translate", "cl_slt", "baseline")
ABLATIONS = (
    *(f"schedule_{s}" for s in SCHEDULES),
    *(f"reference_interval_{i}" for i in INTERVALS), *(f"interval_{i}" for i in INTERVALS),
    *(f"reference_{m}" for m in METHODS), *(f"similarity_{m}" for m in METHODS),
)  # fmt: skip
GRID = (*COMPONENT, *ABLATIONS)  # the paper's experiments: one file each, for either dataset
# The paper's experiments are smoke-run once per dataset (as written with data=<dataset>, then
# trained with the SMOKE overrides), the others (tiny, tiny_hard: their own data) once.
SMOKE_CASES = [
    pytest.param(name, dataset, id=f"{name}-{dataset}" if dataset else name)
    for name in EXPERIMENTS
    for dataset in (DATASETS if name in GRID else (None,))
]


def test_experiments_exist():
    assert "tiny" in EXPERIMENTS and len(EXPERIMENTS) >= 2


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory, synthetic_cache) -> Path:
    """A tiny finished stage-1 run for experiments that start from one."""
    from conftest import TINY_OVERRIDES

    run_dir = tmp_path_factory.mktemp("stage1") / "run"
    overrides = [*TINY_OVERRIDES, f"data.synthetic.cache_dir={synthetic_cache}", *SMOKE]
    run_stage(compose_train([*overrides, f"run_dir={run_dir}", "stage.max_steps=1"]))
    return run_dir


@pytest.mark.parametrize(("name", "dataset"), SMOKE_CASES)
def test_experiment_smoke_runs(name, dataset, tiny_overrides, stage1_run, tmp_path):
    data = [f"data={dataset}"] if dataset else []
    as_written = compose_train([f"experiment={name}", *data])  # the file itself composes
    if dataset:
        assert as_written.data.name == dataset
    overrides = [f"experiment={name}", *data, *SMOKE, *tiny_overrides]  # SMOKE's data= wins
    if as_written.selection.name == SelectionName.trajectory.value:
        scores = tmp_path / "pair_scores.npy"
        np.save(scores, np.random.default_rng(0).normal(size=(24, 24)).astype(np.float16))
        overrides.append(f"selection.pair_scores={scores}")
    if as_written.stage.init_from is not None:
        overrides.append(f"stage.init_from={stage1_run}")
    composed = compose_train(overrides)
    cfg = validate_train(composed)
    result = run_stage(composed)
    assert result["steps"] == 2
    assert find_latest_checkpoint(Path(result["run_dir"]) / "checkpoints") is not None
    if cfg.stage.name is StageName.translate and cfg.stage.init_from:
        assert result["init_from"] is not None
    if cfg.tracker.enabled:
        assert (Path(result["run_dir"]) / "snapshots" / "epoch-0000" / "COMPLETE").is_file()


def grid_config(dataset: str, name: str, root: Path, seed: int = 0) -> TrainConfig:
    """The typed config of ``experiment=<name> data=<dataset>``; not validated, since the paths it
    names are the outputs of the runs before it (the smoke test above validates every file)."""
    overrides = [f"experiment={name}", f"data={dataset}", f"runs_root={root}", f"seed={seed}"]
    return OmegaConf.to_object(compose_train(overrides))


def test_paper_grid_leaves_the_dataset_to_the_command_line():
    """No experiment of the grid sets the dataset itself: without data= it keeps train.yaml's
    default (so data= on the command line, or in reproduce_paper.sh, picks the dataset)."""
    default = compose_train([]).data.name
    for name in GRID:
        assert compose_train([f"experiment={name}"]).data.name == default, name


@pytest.mark.parametrize("dataset", DATASETS)
def test_paper_grid_exists_and_chains_its_runs(dataset, tmp_path):
    assert set(GRID) <= set(EXPERIMENTS)
    c = {name: grid_config(dataset, name, tmp_path, seed=3) for name in GRID}
    run = {name: Path(cfg.run_dir) for name, cfg in c.items()}
    assert len(set(run.values())) == len(GRID)  # no two experiments share a run directory
    assert all(r.is_relative_to(tmp_path / dataset / "seed3") for r in run.values())
    assert all(
        cfg.data.name == dataset and cfg.model.name == "mbart_large_50" for cfg in c.values()
    )

    def scores_of(name):
        return Path(c[name].selection.pair_scores)

    # The paper's chain: reference -> scores -> SCL -> SCL-SLT; reference -> CL-SLT; baseline.
    assert c["reference"].tracker.enabled and c["reference"].tracker.interval == 5
    assert c["reference"].selection.name is SelectionName.random
    assert scores_of("scl") == run["reference"] / "pair_scores.npy"
    assert c["scl"].selection.schedule.value == "log"
    assert Path(c["translate"].stage.init_from) == run["scl"]
    assert Path(c["cl_slt"].stage.init_from) == run["reference"]
    assert c["baseline"].stage.init_from is None
    for name in ("translate", "cl_slt", "baseline"):
        assert c[name].stage.name is StageName.translate
        assert (c[name].stage.epochs, c[name].stage.batch_size, c[name].stage.lr) == (200, 8, 1e-4)
    for name in ("reference", "scl"):
        assert (c[name].stage.epochs, c[name].stage.batch_size, c[name].stage.lr) == (80, 16, 1e-4)
    # Ablations: one factor changed from the SCL run, each with its own reference when needed.
    for s in SCHEDULES:
        assert c[f"schedule_{s}"].selection.schedule.value == s
        assert scores_of(f"schedule_{s}") == scores_of("scl")
    for i in INTERVALS:
        assert c[f"reference_interval_{i}"].tracker.interval == i
        assert scores_of(f"interval_{i}") == run[f"reference_interval_{i}"] / "pair_scores.npy"
    for m in METHODS:
        assert c[f"reference_{m}"].model.similarity.method.value == m
        assert c[f"similarity_{m}"].model.similarity.method.value == m
        assert scores_of(f"similarity_{m}") == run[f"reference_{m}"] / "pair_scores.npy"
    pooling_runs = {f"{kind}_{m}" for kind in ("reference", "similarity") for m in METHODS}
    for name, cfg in c.items():  # every other factor keeps the paper's setting
        if name not in pooling_runs:
            assert cfg.model.similarity.method.value == "cico", name
        if not name.startswith("schedule_"):
            assert cfg.selection.schedule.value == "log", name


def test_report_places_every_run_of_the_grid(tmp_path):
    """Runs laid out as the grid's configs say (config.yaml as training writes it, made-up test
    scores) give the report's five component rows and all three ablation tables. The interval
    references are not evaluated (they train exactly as the main reference run does)."""
    root = tmp_path / "runs"
    bleu = {name: 10.0 + i for i, name in enumerate(GRID)}
    for dataset in DATASETS:
        for seed in (0, 1):
            for name in GRID:
                cfg = grid_config(dataset, name, root, seed)
                run_dir = Path(cfg.run_dir)
                run_dir.mkdir(parents=True)
                (run_dir / "config.yaml").write_text(yaml.safe_dump(to_container(cfg)))
                if cfg.tracker.enabled:
                    (run_dir / "pair_scores.npy").write_bytes(b"")
                if name.startswith("reference_interval_"):  # scored as the script scores them
                    window = {"delta": "span", "span_snapshots": 4}
                    (run_dir / "pair_scores.json").write_text(json.dumps({"window": window}))
                    continue
                rows = [{"index": 0, "name": "a", "hypothesis": "x", "reference": "x y"}]
                scores = {k: bleu[name] + seed for k in ("bleu1", "bleu2", "bleu3", "bleu4")}
                scores.update(rouge_l=bleu[name], bleu_signature="nrefs:1")
                write_predictions(run_dir / "eval" / "best" / "test", rows, scores, {})
    report = build_report([str(root)], tmp_path / "report")
    evaluated = [r for r in report.runs if "reference-interval" not in r.path.name]
    assert len(evaluated) == 2 * 2 * (len(GRID) - len(INTERVALS))
    assert not [r for r in evaluated if r.problem]
    for dataset in DATASETS:
        (component,) = [t for t in report.tables if (t.name, t.dataset) == ("component", dataset)]
        rows = {row.label: row for row in component.rows}
        ablation_rows = [f"w/ CL (pooling {m})" for m in METHODS] + [
            f"w/ SCL ({factor} {value})"
            for factor, values in (("interval", SPAN_ROWS), ("pooling", METHODS),
                                   ("schedule", SCHEDULES))
            for value in values
        ]  # fmt: skip
        # The paper's rows first; each ablation run in a row of its own, never in the main rows.
        assert list(rows)[: len(COMPONENT_ROWS)] == list(COMPONENT_ROWS)
        assert sorted(list(rows)[len(COMPONENT_ROWS) :]) == sorted(ablation_rows)
        for m in METHODS:
            assert sorted(rows[f"w/ CL (pooling {m})"].values("bleu4")) == [
                bleu[f"reference_{m}"],
                bleu[f"reference_{m}"] + 1,
            ]
        expected = {W_CL: "reference", W_SCL: "scl", SCL_SLT: "translate", CL_SLT: "cl_slt"}
        for label, name in expected.items():
            assert sorted(rows[label].values("bleu4")) == [bleu[name], bleu[name] + 1], label
        assert len(rows[COMPONENT_ROWS[0]].runs) == 2  # the baseline, both seeds
        assert component.context == "SCL rows: schedule log, interval 5, pooling cico"
        ablations = {
            t.name: {row.label: row for row in t.rows}
            for t in report.tables
            if t.dataset == dataset and t.name in ("schedule", "interval", "pooling")
        }
        assert set(ablations) == {"schedule", "interval", "pooling"}
        for factor, values, name_of in (
            ("schedule", SCHEDULES, "schedule_{}"),
            ("interval", INTERVALS, "interval_{}"),
            ("pooling", METHODS, "similarity_{}"),
        ):
            for value in values:
                label = f"{value} (span 4)" if factor == "interval" else str(value)
                row = ablations[factor][label]
                name = name_of.format(value)
                assert sorted(row.values("bleu4")) == [bleu[name], bleu[name] + 1], (factor, value)
            main = {"schedule": "log", "interval": "5", "pooling": "cico"}[factor]
            assert sorted(ablations[factor][main].values("bleu4")) == [bleu["scl"], bleu["scl"] + 1]


@pytest.mark.parametrize("nproc", [1, 2])
def test_reproduce_paper_script_launches_the_grid_per_dataset(nproc, tmp_path):
    """scripts/reproduce_paper.sh with a stand-in for python that only logs its command lines:
    for each dataset, every experiment of its grid (the ablations on ABLATION_DATASETS only) trains
    once per seed as ``experiment=<name> data=<dataset> runs_root=OUT_DIR`` with EXTRA last, as a
    Hydra multirun (NPROC=1) or one torch.distributed.run per run (NPROC>1), each experiment after
    the runs it starts from; then the report."""
    calls = tmp_path / "calls.tsv"
    fake = tmp_path / "python"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\t" "$@" >>"$CALLS"\necho >>"$CALLS"\n')
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(fake), "CALLS": str(calls), "SEEDS": "0 1",
           "DATASETS": " ".join(DATASETS), "ABLATION_DATASETS": "phoenix14t",
           "NPROC": str(nproc), "EXTRA": "stage.epochs=2"}  # fmt: skip
    for var in ("MBART_PATH", "MBART_PATH_PHOENIX14T", "MBART_PATH_CSL_DAILY"):
        env.pop(var, None)
    script = SCRIPTS / "reproduce_paper.sh"
    result = subprocess.run(
        ["bash", str(script), str(out)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [line.rstrip("\t").split("\t") for line in calls.read_text().splitlines()]
    trained = []  # (dataset, experiment, seed) in launch order
    for args in lines:
        if "scl_slt.train" not in args:
            continue
        train_args = args[args.index("scl_slt.train") + 1 :]
        assert ("-m" in train_args) == (nproc == 1)  # a Hydra multirun unless DDP
        assert ("torch.distributed.run" in args) == (nproc > 1)
        assert train_args[-1] == "stage.epochs=2"  # EXTRA comes last
        kv = dict(a.split("=", 1) for a in train_args if "=" in a)
        assert kv["runs_root"] == str(out.resolve()) and kv["resume"] == "auto"
        for experiment in kv["experiment"].split(","):
            assert experiment in EXPERIMENTS, experiment
            trained += [(kv["data"], experiment, seed) for seed in kv["seed"].split(",")]
    expected = {
        (dataset, name, seed)
        for dataset in DATASETS
        for name in (GRID if dataset == "phoenix14t" else COMPONENT)
        for seed in ("0", "1")
    }
    assert sorted(trained) == sorted(expected)  # each exactly once
    for dataset in DATASETS:
        order = [name for d, name, _ in trained if d == dataset]

        def first(name, order=order):
            return order.index(name)

        assert first("reference") < first("scl") < first("translate")
        assert first("reference") < min(first("cl_slt"), first("baseline"))
        if dataset == "phoenix14t":
            references = [n for n in ABLATIONS if n.startswith("reference_")]
            selective = [n for n in ABLATIONS if not n.startswith("reference_")]
            assert max(map(first, references)) < min(map(first, selective))
    assert "scl_slt.report" in lines[-1]


@pytest.mark.slow
def test_reproduce_paper_script_runs_the_grid_on_synthetic_data(tmp_path):
    """scripts/reproduce_paper.sh end to end (one seed, the PHOENIX14T grid with ablations, whose
    data=phoenix14t EXTRA's data=synthetic overrides) with the tiny model on the synthetic data:
    every run of the grid trains, the references are scored, the table runs are evaluated and the
    report has all its tables."""
    from conftest import TINY_OVERRIDES

    out = tmp_path / "out"
    extra = ["data=synthetic", "model=tiny", "stage.epochs=2", "stage.batch_size=8",
             "stage.lr=1e-3", *TINY_OVERRIDES]  # fmt: skip
    env = {**os.environ, "PYTHON": sys.executable, "SEEDS": "0", "DATASETS": "phoenix14t",
           "EXTRA": " ".join(extra), "SCL_SLT_CACHE": str(tmp_path / "cache"),
           # 2-epoch references are too short for delta=span at interval 10 (it needs epoch 40)
           "INTERVAL_DELTA": "endpoints"}  # fmt: skip
    script = SCRIPTS / "reproduce_paper.sh"
    result = subprocess.run(
        ["bash", str(script), str(out)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    seed = out / "synthetic" / "seed0"
    references = [
        "reference",
        *(f"ablation/reference-{v}" for v in (*(f"interval-{i}" for i in INTERVALS), *METHODS)),
    ]
    for run in references:
        assert (seed / run / "pair_scores.npy").is_file(), run
    table_runs = ["reference", "scl", "scl-slt", "cl-slt", "baseline",
                  *(f"ablation/schedule-{s}" for s in SCHEDULES),
                  *(f"ablation/interval-{i}" for i in INTERVALS),
                  *(f"ablation/similarity-{m}" for m in METHODS)]  # fmt: skip
    for run in table_runs:
        assert (seed / run / "eval" / "best" / "test" / "metrics.json").is_file(), run
    tables = (out / "report" / "tables.md").read_text()
    for title in (
        "Component table",
        "Curriculum schedule",
        "Trajectory interval",
        "Similarity pooling",
        "Negative-selection strategies",
        "Trajectory categories",
    ):
        assert title in tables, title
    # A second invocation finds everything done and trains nothing new.
    again = subprocess.run(["bash", str(script), str(out)], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "starting fresh" not in again.stdout + again.stderr
