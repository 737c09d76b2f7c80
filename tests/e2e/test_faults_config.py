"""Faults of input and of earlier attempts: nothing lost, nothing silent, every error names its
cause. Files the run reads are checked before its directory exists (training/preflight.py); a
run directory never mixes two attempts (rundir/layout.set_aside_attempt); metrics.jsonl is strict
JSON; an error that ends a run is in its train.log; every command exits by one rule
(training/run_context.exit_code: 2 user's error, 1 otherwise, 128 + signal)."""

from __future__ import annotations

import csv
import json
import logging
import math
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException

from scl_slt import losses
from scl_slt.config import ConfigError, DataConfig, Layout
from scl_slt.data.labels import DataError, write_labels
from scl_slt.models.handoff import HandOffError
from scl_slt.rundir import checkpoint as ck
from scl_slt.rundir.layout import MetricsWriter, read_metrics
from scl_slt.stages import contrastive, run_stage
from scl_slt.training.optim import NonFiniteLossError
from scl_slt.training.preflight import train_split_size
from scl_slt.training.run_context import exit_code
from scl_slt.training.runtime import TrainingInterrupted

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------- files, before the run dir
def test_pair_scores_of_another_split_are_refused_before_the_run_directory(
    tiny_train_cfg, tmp_path
):
    path = tmp_path / "pair_scores.npy"
    np.save(path, np.zeros((30, 30), np.float16))  # the tiny train split has 24 clips
    run_dir = tmp_path / "never-created"
    cfg = tiny_train_cfg(
        "selection=trajectory", f"selection.pair_scores={path}", f"run_dir={run_dir}"
    )
    with pytest.raises(ConfigError, match=r"^selection.pair_scores: .* N=30 .* has 24"):
        run_stage(cfg)
    assert not run_dir.exists()


def _official_phoenix(root: Path) -> Path:
    manual = root / "annotations" / "manual"
    manual.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        with open(manual / f"PHOENIX-2014-T.{split}.corpus.csv", "w", newline="") as f:
            w = csv.writer(f, delimiter="|")
            w.writerow(["name", "video", "start", "end", "speaker", "orth", "translation"])
            for i in range(3 if split == "train" else 1):
                w.writerow([f"clip{i}", "x", "-1", "-1", "Signer01", "A B", "am tag ."])
    return root


def _official_csl(root: Path) -> Path:
    labels = root / "sentence_label"
    labels.mkdir(parents=True)
    rows = ["name|split", "S1_P1_T00|train", "S2_P1_T00|train", "S3_P1_T00|dev", "S4_P1_T00|test"]
    (labels / "split_1.txt").write_text("\n".join(rows) + "\n")
    (labels / "csl2020ct_v2.pkl").write_bytes(b"")
    return root


def _gfslt(root: Path) -> Path:
    for split in ("train", "dev", "test"):
        write_labels(root / f"labels.{split}", {f"{split}/a": {"text": "x"}, "b": {"text": "y"}})
    return root


@pytest.mark.parametrize(
    "data,folder,key,hint",
    [
        ("phoenix14t_features", "empty", "data.labels_dir", None),
        ("phoenix14t_features", "phoenix", "data.labels_dir", "data.layout=official"),
        ("csl_daily_features", "csl", "data.labels_dir", "data.layout=official"),
        ("phoenix14t", "gfslt", "data.root", "data.layout=gfslt"),
        ("csl_daily", "gfslt", "data.root", "data.layout=gfslt"),
    ],
)
def test_a_labels_folder_of_the_wrong_layout_is_refused_before_the_run_directory(
    tiny_train_cfg, tmp_path, data, folder, key, hint
):
    where = tmp_path / folder
    where.mkdir()
    if folder != "empty":
        {"phoenix": _official_phoenix, "csl": _official_csl, "gfslt": _gfslt}[folder](where)
    features = tmp_path / "features"
    features.mkdir()
    paths = [f"{key}={where}", "data.root=null" if key != "data.root" else "data.labels_dir=null"]
    run_dir = tmp_path / "never-created"
    cfg = tiny_train_cfg(
        f"data={data}", *paths, f"data.feature_root={features}", f"run_dir={run_dir}"
    )
    with pytest.raises(DataError) as err:
        run_stage(cfg)
    message = str(err.value)
    assert message.startswith(f"{key}={where}") or message.startswith(f"data.root={where}")
    if hint:
        assert hint in message, message
    else:
        assert "labels.train" in message and "data.layout=" not in message
    assert not run_dir.exists()


def test_train_split_size_is_read_cheaply_from_each_layout(tmp_path):
    synthetic = DataConfig()
    synthetic.synthetic.num_train = 24
    assert train_split_size(synthetic) == 24  # from the config: nothing is generated
    gfslt = DataConfig(
        name="phoenix14t", layout=Layout.gfslt, labels_dir=str(_gfslt(tmp_path / "g"))
    )
    assert train_split_size(gfslt) == 2
    phoenix = DataConfig(
        name="phoenix14t", layout=Layout.official, root=str(_official_phoenix(tmp_path / "p"))
    )
    assert train_split_size(phoenix) == 3
    csl = DataConfig(
        name="csl_daily", layout=Layout.official, root=str(_official_csl(tmp_path / "c"))
    )
    assert train_split_size(csl) == 2  # split_1.txt alone: the (empty) pickle is not read


# ------------------------------------------------------------- attempts never mix in a run dir
def _crash_at_forward(monkeypatch, call: int) -> None:
    original = contrastive.compute_losses
    calls = {"n": 0}

    def forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise RuntimeError("killed")  # the process dies here, before any checkpoint
        return original(*args, **kwargs)

    monkeypatch.setattr(contrastive, "compute_losses", forward)


def test_a_fresh_start_sets_the_earlier_attempt_aside(
    tiny_train_cfg, tmp_path, monkeypatch, caplog
):
    """Killed before its first checkpoint, then resume=auto: the new attempt starts from scratch
    in a clean directory; the old one's metrics, curves and log are kept under attempts/."""
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        _crash_at_forward(m, 3)
        with pytest.raises(RuntimeError, match="killed"):
            run_stage(tiny_train_cfg(f"run_dir={run_dir}", "stage.eval_every=0"))
    assert [r["step"] for r in read_metrics(run_dir, "train")] == [1, 2]
    assert not ck.step_checkpoints(run_dir / "checkpoints")
    caplog.set_level(logging.WARNING, logger="scl_slt")
    result = run_stage(tiny_train_cfg(f"run_dir={run_dir}", "stage.eval_every=0", "resume=auto"))
    (earlier,) = (run_dir / "attempts").iterdir()
    assert earlier.name.startswith("1-")
    assert "held an earlier attempt" in caplog.text and str(earlier) in caplog.text
    steps = [r["step"] for r in read_metrics(run_dir, "train")]
    assert steps == list(range(1, result["steps"] + 1))  # each step once
    assert [r["step"] for r in read_metrics(earlier, "train")] == [1, 2]
    for name in ("train.log", "tb", "config.yaml", "meta.json", "tokenizer"):
        assert (earlier / name).exists(), name
    assert "run failed: RuntimeError: killed" in (earlier / "train.log").read_text()
    assert "held an earlier attempt" in (run_dir / "train.log").read_text()
    assert json.loads((run_dir / "meta.json").read_text())["earlier_attempt"] == str(earlier)


def test_all_checkpoints_corrupt_is_an_error_with_resume_auto(tiny_train_cfg, tmp_path):
    run_dir = tmp_path / "run"
    overrides = (f"run_dir={run_dir}", "stage.eval_every=0")
    first = run_stage(tiny_train_cfg(*overrides))
    steps = ck.step_checkpoints(run_dir / "checkpoints")
    assert len(steps) == 2
    model = steps[1] / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])
    (steps[0] / "state.pt").unlink()
    with pytest.raises(ck.CheckpointError) as err:
        run_stage(tiny_train_cfg(*overrides, "resume=auto"))
    message = str(err.value)
    assert f"{model}: truncated or modified" in message
    assert f"{steps[0] / 'state.pt'}: missing" in message
    assert "resume=none" in message
    assert exit_code(err.value) == 2
    assert not (run_dir / "attempts").exists()  # nothing moved, nothing started
    assert "run failed: CheckpointError: resume=auto" in (run_dir / "train.log").read_text()
    losses_before = [r["loss"] for r in read_metrics(run_dir, "train")]

    # The user's say-so: resume=none starts over and sets the corrupt checkpoints aside too.
    again = run_stage(tiny_train_cfg(*overrides, "resume=none"))
    (earlier,) = (run_dir / "attempts").iterdir()
    assert sorted(p.name for p in ck.step_checkpoints(earlier / "checkpoints")) == [
        p.name for p in steps
    ]
    assert [r["loss"] for r in read_metrics(earlier, "train")] == losses_before
    assert [r["loss"] for r in read_metrics(run_dir, "train")] == losses_before  # same seed
    assert again["steps"] == first["steps"]


# ---------------------------------------------------------------------------- metrics.jsonl
def test_metrics_are_strict_json_and_old_files_still_read(tmp_path):
    writer = MetricsWriter(tmp_path, enabled=True)
    scalars = []
    writer.tb.add_scalar = lambda tag, value, step: scalars.append(tag)
    writer.log("train", 1, {"loss": float("nan"), "lr": 1e-4, "gn": float("inf"), "n": 3})
    writer.log("dev", 1, {"per_split": {"x": float("-inf")}, "values": [1.0, float("nan")]})
    writer.close()

    def strict(token: str):
        raise ValueError(f"not strict JSON: {token}")

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=strict) for line in lines]
    assert records[0]["loss"] is None and records[0]["gn"] is None and records[0]["lr"] == 1e-4
    assert records[1]["per_split"] == {"x": None} and records[1]["values"] == [1.0, None]
    assert sorted(scalars) == ["train/lr", "train/n"]  # non-finite values stay out of TensorBoard
    assert read_metrics(tmp_path, "train")[0]["loss"] is None

    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.jsonl").write_text('{"split": "train", "step": 1, "loss": NaN}\n')
    assert math.isnan(read_metrics(old, "train")[0]["loss"])


# --------------------------------------------------------------------- errors, logs and exits
def test_the_error_that_ends_a_run_is_in_its_train_log(tiny_train_cfg, monkeypatch):
    monkeypatch.setattr(
        losses, "translation_loss", lambda logits, *a, **k: logits.sum() * float("nan")
    )
    cfg = tiny_train_cfg("stage=translate", "stage.eval_every=0")
    with pytest.raises(NonFiniteLossError) as err:
        run_stage(cfg)
    log = (Path(cfg.run_dir) / "train.log").read_text()
    assert "ERROR scl_slt: run failed: NonFiniteLossError: non-finite loss at step" in log
    assert "Traceback (most recent call last)" in log and "NonFiniteLossError" in log
    assert exit_code(err.value) == 1


def test_exit_code_rule(tmp_path, monkeypatch):
    user = [
        ConfigError("stage.lr: x"),
        DataError("label file not found"),
        FileNotFoundError("x"),
        HandOffError("missing keys"),
        ConfigCompositionException("stage.epochs: ten"),
    ]
    assert [exit_code(e) for e in user] == [2] * len(user)
    with pytest.raises(ck.CheckpointError) as named:  # a checkpoint the user named
        ck.verify_checkpoint(tmp_path)
    assert exit_code(named.value) == 2

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", disk_full)
    with pytest.raises(ck.CheckpointError) as writing:  # one the run was writing
        ck.save_checkpoint(tmp_path / "c", {}, {"step": 1})
    assert exit_code(writing.value) == 1
    assert exit_code(RuntimeError("bug")) == exit_code(NonFiniteLossError("nan")) == 1
    assert exit_code(TrainingInterrupted(signal.SIGTERM, "c")) == 128 + signal.SIGTERM


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_cli_user_errors_exit_2_naming_the_cause(tmp_path, tiny_overrides):
    run_dir = tmp_path / "never-created"
    cases = [
        (
            ["scl_slt.train", "stage.lr=inf", f"run_dir={run_dir}"],
            "config error: stage.lr: must be a finite number, got inf",
        ),
        (["scl_slt.train", "stage.epochs=ten", f"run_dir={run_dir}"], "config error: "),
        (
            [
                "scl_slt.train",
                "data=phoenix14t_features",
                f"data.labels_dir={tmp_path}",
                f"data.feature_root={tmp_path}",
                f"run_dir={run_dir}",
            ],
            f"data error: data.labels_dir={tmp_path}: no GFSLT-style label file labels.train",
        ),
        (["scl_slt.evaluate", f"run_dir={run_dir}"], "file not found: not a training run"),
        (["scl_slt.score", f"run_dir={run_dir}"], "file not found: run_dir: no such folder"),
        (["scl_slt.pipeline", "delta=median", f"out_dir={run_dir}"], "config error: delta"),
    ]
    for args, message in cases:
        result = _run(*args)
        assert result.returncode == 2, (args, result.stderr[-3000:])
        assert message in result.stderr, (args, result.stderr[-3000:])
        assert "Traceback" not in result.stderr, args
    assert not run_dir.exists()


def test_cli_numerical_failure_exits_1_with_traceback_in_train_log(tmp_path, tiny_overrides):
    run_dir = tmp_path / "run"
    overrides = [o for o in tiny_overrides if not o.startswith("run_dir=")]
    result = _run(
        "scl_slt.train", *overrides, "stage.lr=1e30", "stage.eval_every=0", f"run_dir={run_dir}"
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback (most recent call last)" in result.stderr
    log = (run_dir / "train.log").read_text()
    assert "ERROR scl_slt: run failed: NonFinite" in log
    assert "Traceback (most recent call last)" in log
