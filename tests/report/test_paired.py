"""``python -m scl_slt.report.paired``: two rows of evaluated runs against each other."""

from __future__ import annotations

from pathlib import Path

import yaml

from scl_slt.config import TrainConfig, to_container
from scl_slt.eval.translation import write_predictions
from scl_slt.report.paired import main

REFERENCES = [f"heute {w} es im {r}" for w in ("regnet", "schneit", "stuermt", "nebelt")
              for r in ("norden", "sueden", "westen", "osten", "alpen")]  # fmt: skip
WRONG = [" ".join(r.split()[:2] + ["xx", "yy", "zz"]) for r in REFERENCES]


def _run(path: Path, seed: int, hypotheses: list[str], bleu4: float) -> None:
    path.mkdir(parents=True)
    config = to_container(TrainConfig(run_dir=str(path), seed=seed))
    config["stage"]["name"] = "translate"
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"index": i, "name": f"clip{i}", "hypothesis": h, "reference": r}
            for i, (h, r) in enumerate(zip(hypotheses, REFERENCES))]  # fmt: skip
    scores = {"bleu1": bleu4, "bleu2": bleu4, "bleu3": bleu4, "bleu4": bleu4, "rouge_l": bleu4}
    write_predictions(path / "eval" / "best" / "test", rows, scores, {"split": "test"}, None)


def test_a_better_row_is_significant_and_an_identical_one_is_not(tmp_path, capsys):
    for seed, (good, bad) in enumerate([(90.0, 20.0), (94.0, 22.0)]):
        _run(tmp_path / "good" / f"seed{seed}", seed, REFERENCES, good)
        _run(tmp_path / "bad" / f"seed{seed}", seed, WRONG, bad)
        _run(tmp_path / "same" / f"seed{seed}", seed, WRONG, bad)
    assert main([str(tmp_path / "good"), "--against", str(tmp_path / "bad")]) == 0
    out = capsys.readouterr().out.splitlines()
    # 90, 94 -> 92 ± 2.83; t(1) = 12.706: half-width 12.706 * 2.828 / sqrt(2) = 25.41.
    assert out[0] == "A BLEU-4: 92.00 ± 2.83 [66.59, 117.41], n = 2"
    assert out[1] == "B BLEU-4: 21.00 ± 1.41 [8.29, 33.71], n = 2"
    assert "seeds 0 1, 40 sentence pairs" in out[2] and out[2].endswith("(significant at 0.05)")
    assert main([str(tmp_path / "same"), "--against", str(tmp_path / "bad")]) == 0
    assert capsys.readouterr().out.splitlines()[2].endswith("p = 1.000 (not significant at 0.05)")


def test_no_evaluated_run_is_an_error_naming_the_folder(tmp_path, capsys):
    _run(tmp_path / "good" / "seed0", 0, REFERENCES, 90.0)
    (tmp_path / "empty" / "run").mkdir(parents=True)
    config = to_container(TrainConfig(run_dir="x"))
    (tmp_path / "empty" / "run" / "config.yaml").write_text(yaml.safe_dump(config))
    assert main([str(tmp_path / "good"), "--against", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no evaluated run" in err and "metrics.json is missing" in err
