"""``python -m scl_slt.diagnose``: replays samplers' epochs on the synthetic data and reports the
diagnostics of exactly the batches an independently built sampler gives."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import fake_scored_reference

from scl_slt import diagnose
from scl_slt.config import ConfigError
from scl_slt.config_checks import validate_train
from scl_slt.data.datasets import split_records
from scl_slt.selection.build import build_batch_sampler
from scl_slt.selection.samplers import RandomBatchSampler


def test_replay_reports_the_batches_of_each_strategy(tiny_overrides, tiny_train_cfg, tmp_path):
    cfg = validate_train(tiny_train_cfg())
    records = split_records(cfg.data, "train")
    texts = [r["text"] for r in records]
    names = [r["name"] for r in records]
    delta = fake_scored_reference(
        tmp_path / "ref", names, 11, (0, 3), (0.1, -0.1), (0.4, 0.3, 0.2, 0.1)
    )
    out = tmp_path / "d.json"
    argv = [
        *tiny_overrides,
        "stage.epochs=3",
        f"selection.diagnostics_reference={tmp_path / 'ref'}",
        "--strategies",
        "random,text_semantic",
        f"--out={out}",
        "--work-dir",
        str(tmp_path / "work"),
    ]
    diagnose.main(argv)
    result = json.loads(out.read_text())
    assert result["num_samples"] == len(records) == 24
    text_cfg = validate_train(tiny_train_cfg("selection=text_semantic"))
    independent = {
        "random": RandomBatchSampler(24, 8, 0),
        "text_semantic": build_batch_sampler(
            text_cfg.selection, 24, 8, 3, 0, texts=texts, language="de",
            run_dir=tmp_path / "independent",
        ),
    }  # fmt: skip
    for name, sampler in independent.items():
        epochs = result["strategies"][name]["epochs"]
        assert [e["epoch"] for e in epochs] == [1, 2, 3]
        for found, epoch in zip(epochs, range(3)):
            batches = sampler.global_batches(epoch)
            pairs = [(b[x], b[y]) for b in batches for x in range(8) for y in range(x + 1, 8)]
            assert found["pairs"] == len(pairs) == 3 * 28
            same = sum(texts[a] == texts[b] for a, b in pairs)
            assert found["identical_share"] == pytest.approx(same / len(pairs))
            both = [float(delta[a, b]) for a, b in pairs] + [float(delta[b, a]) for a, b in pairs]
            assert found["delta_mean"] == pytest.approx(np.mean(both))
            assert found["build_seconds"] >= 0 and found["diagnostics_seconds"] >= 0
    # the last epoch of text_semantic's log schedule batches similar sentences together
    last = result["strategies"]["text_semantic"]["epochs"][-1]
    first = result["strategies"]["random"]["epochs"][-1]
    assert last["text_similarity_mean"] > first["text_similarity_mean"]
    assert result["all_negatives"]["share_HL"] == 0.4


def test_online_trajectory_is_refused_before_any_work(
    tiny_overrides, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "d.json"
    with pytest.raises(ConfigError, match="online_trajectory cannot be replayed"):
        diagnose.main([*tiny_overrides, "strategies=[random,online_trajectory]", f"out={out}"])
    assert not out.exists()
    monkeypatch.setattr(sys, "argv", ["diagnose", *tiny_overrides, "--bogus", "1"])
    assert diagnose.cli() == 2
    assert "--bogus" in capsys.readouterr().err


def test_split_arguments():
    options, overrides = diagnose.split_arguments(
        ["--strategies=random, trajectory", "out=x.json", "data=synthetic", "--work-dir", "w"]
    )
    assert options == {"strategies": ["random", "trajectory"], "out": "x.json", "work_dir": "w"}
    assert overrides == ["data=synthetic"]
    with pytest.raises(ConfigError, match="needs a value"):
        diagnose.split_arguments(["--out"])
