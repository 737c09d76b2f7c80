"""Question assistance: the QA sidecar (read, write, errors), attaching questions to the records of
PHOENIX-2014-T and CSL-Daily in both layouts, gloss assistance, and the config check.

Small generated releases and label files stand in for the datasets (names spelt as the real
ones: ``dev/<id>`` for PHOENIX-2014-T, ``S..._P..._T..`` for CSL-Daily); features keep it fast."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from scl_slt.config import Assist, ConfigError, DataConfig, Layout, Modality
from scl_slt.config_checks import validate_train
from scl_slt.data.datasets import build_split, split_records
from scl_slt.data.labels import DataError, write_labels
from scl_slt.data.questions import (
    attach_questions,
    match_questions,
    questions_path,
    read_questions,
    write_questions,
)

PHOENIX_IDS = ["11August_2010_Wednesday_tagesschau-2", "25October_2010_Monday_tagesschau-17"]
PHOENIX_IDS += ["05May_2011_Thursday_heute-1042"]
CSL_NAMES = ["S000020_P0000_T00", "S000020_P0008_T00", "S001234_P0003_T00"]
TEXTS = ["morgen regnet es im norden", "im süden scheint die sonne", "es wird kalt"]
GLOSSES = ["MORGEN NORD REGEN", "SUED SONNE", "KALT"]


def write_features(root: Path, names: list[str], length: int = 5) -> None:
    for i, name in enumerate(names):
        path = root / f"{name}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.full((length, 4), i, dtype=np.float32))


def phoenix_gfslt(tmp: Path, split: str) -> DataConfig:
    names = [f"{split}/{i}" for i in PHOENIX_IDS]
    records = {
        n: {"name": n, "text": t, "gloss": g, "length": 5} for n, t, g in zip(names, TEXTS, GLOSSES)
    }
    write_labels(tmp / "labels" / f"labels.{split}", records)
    write_features(tmp / "feats", names)
    return DataConfig(name="phoenix14t", layout=Layout.gfslt, modality=Modality.features,
                      labels_dir=str(tmp / "labels"), feature_root=str(tmp / "feats"))  # fmt: skip


def phoenix_official(tmp: Path, split: str) -> DataConfig:
    manual = tmp / "PHOENIX-2014-T" / "annotations" / "manual"
    manual.mkdir(parents=True)
    rows = ["name|video|start|end|speaker|orth|translation"]
    rows += [
        f"{i}|{i}/1/*.png|-1|-1|Signer05|{g}|{t} ." for i, t, g in zip(PHOENIX_IDS, TEXTS, GLOSSES)
    ]
    (manual / f"PHOENIX-2014-T.{split}.corpus.csv").write_text("\n".join(rows) + "\n")
    write_features(tmp / "feats", [f"{split}/{i}" for i in PHOENIX_IDS])
    return DataConfig(name="phoenix14t", layout=Layout.official, modality=Modality.features,
                      root=str(tmp), feature_root=str(tmp / "feats"))  # fmt: skip


def csl_gfslt(tmp: Path, split: str) -> DataConfig:
    records = {
        n: {"name": n, "text": t, "gloss": g, "length": 5}
        for n, t, g in zip(CSL_NAMES, TEXTS, GLOSSES)
    }
    write_labels(tmp / "labels" / f"labels.{split}", records)
    write_features(tmp / "feats", CSL_NAMES)
    return DataConfig(name="csl_daily", layout=Layout.gfslt, modality=Modality.features,
                      labels_dir=str(tmp / "labels"), feature_root=str(tmp / "feats"))  # fmt: skip


def csl_official(tmp: Path, split: str) -> DataConfig:
    labels = tmp / "sentence_label"
    labels.mkdir(parents=True)
    info = [
        {"name": n, "length": 5, "label_gloss": g.split(), "label_char": list(t)}
        for n, t, g in zip(CSL_NAMES, TEXTS, GLOSSES)
    ]
    with open(labels / "csl2020ct_v2.pkl", "wb") as f:
        pickle.dump({"info": info}, f)
    (labels / "split_1.txt").write_text(
        "name|split\n" + "".join(f"{n}|{split}\n" for n in CSL_NAMES)
    )
    write_features(tmp / "feats", CSL_NAMES)
    return DataConfig(name="csl_daily", layout=Layout.official, modality=Modality.features,
                      root=str(tmp), feature_root=str(tmp / "feats"))  # fmt: skip


LAYOUTS = {
    "phoenix-gfslt": phoenix_gfslt,
    "phoenix-official": phoenix_official,
    "csl-gfslt": csl_gfslt,
    "csl-official": csl_official,
}


# ------------------------------------------------------------------------------ sidecar file
def test_sidecar_round_trip_is_sorted_utf8_json(tmp_path):
    mapping = {"test/b": "wie wird das wetter?", "S000020_P0000_T00": "你今年几岁？", "a": "x"}
    path = questions_path(tmp_path / "qa", "test")
    assert path == tmp_path / "qa" / "test.json"
    write_questions(path, mapping)
    assert read_questions(path) == mapping
    text = path.read_text(encoding="utf-8")
    assert "你今年几岁？" in text  # ensure_ascii=False
    assert list(json.loads(text)) == sorted(mapping)
    assert [p.name for p in path.parent.iterdir()] == ["test.json"]  # no temporary left behind


@pytest.mark.parametrize(
    "content, says",
    [
        (None, "question file not found"),
        ("{not json", "not valid JSON"),
        ('["a", "b"]', "expected a JSON object .* got list"),
        ('{"a": "ok", "b": 3, "c": null}', "2 value\\(s\\) are not strings.*'b': 3, 'c': None"),
    ],
)
def test_read_errors_name_the_file(tmp_path, content, says):
    path = tmp_path / "dev.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=says) as error:
        read_questions(path)
    assert str(path) in str(error.value)


def test_missing_empty_unknown_and_twice_are_counted_in_one_error():
    names = [f"dev/c{i}" for i in range(9)]
    questions = {f"dev/c{i}": f"frage {i}" for i in (0, 1)}  # c2..c8 missing, except:
    questions |= {"dev/c2": "  ", "c3": "", "c4": "bare spelling", "dev/c5": "q", "c5": "q"}
    questions |= {"train/c0": "other split", "zz": "no such clip"}
    match = match_questions(names, questions, "dev")
    assert match.found == {"dev/c0": "frage 0", "dev/c1": "frage 1", "dev/c4": "bare spelling"}
    assert match.missing == ["dev/c6", "dev/c7", "dev/c8"]
    assert match.empty == ["dev/c2", "dev/c3"] and match.twice == ["dev/c5"]
    assert match.unknown == ["train/c0", "zz"]
    records = [{"name": n, "text": "t"} for n in names]
    with pytest.raises(DataError) as error:
        attach_questions(records, questions, "dev", "qa/dev.json")
    message = str(error.value)
    assert "split 'dev' in qa/dev.json" in message
    assert "3 missing (dev/c6, dev/c7, dev/c8)" in message
    assert "2 empty (dev/c2, dev/c3)" in message
    assert "2 unknown (train/c0, zz)" in message and "1 written twice (dev/c5)" in message


def test_an_error_lists_the_first_names_and_counts_all():
    names = [f"c{i:02d}" for i in range(12)]
    with pytest.raises(DataError, match=r"12 missing \(c00, c01, c02, c03, c04, \.\.\.\)"):
        attach_questions([{"name": n} for n in names], {}, "train", "qa/train.json")


def test_attach_returns_new_records():
    records = [{"name": "dev/a", "text": "t"}]
    attached = attach_questions(records, {"a": "wer?"}, "dev", "qa/dev.json")
    assert attached == [{"name": "dev/a", "text": "t", "question": "wer?"}]
    assert records == [{"name": "dev/a", "text": "t"}]  # the input is untouched


# ------------------------------------------------------------------------------------ layouts
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("spelling", ["as-loaded", "bare"])
def test_questions_attach_in_every_layout(tmp_path, layout, spelling):
    cfg = LAYOUTS[layout](tmp_path, "dev")
    names = [r["name"] for r in split_records(cfg, "dev")]
    expected_names = [f"dev/{i}" for i in PHOENIX_IDS] if "phoenix" in layout else CSL_NAMES
    assert names == expected_names  # PHOENIX: split/<id> in both layouts; CSL: bare
    key = {"as-loaded": lambda n: n, "bare": lambda n: n.removeprefix("dev/")}[spelling]
    mapping = {key(n): f"frage zu {n}?" for n in names}
    write_questions(tmp_path / "qa" / "dev.json", mapping)
    cfg.assist, cfg.questions_dir = Assist.question, str(tmp_path / "qa")
    dataset = build_split(cfg, "dev")
    assert dataset.questions == [f"frage zu {n}?" for n in names]
    assert [dataset[i]["question"] for i in range(len(names))] == dataset.questions
    assert dataset.texts == TEXTS  # the release's " ." removed as before


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_unmatched_sidecar_fails_the_build_naming_file_and_clips(tmp_path, layout):
    cfg = LAYOUTS[layout](tmp_path, "test")
    names = [r["name"] for r in split_records(cfg, "test")]
    write_questions(tmp_path / "qa" / "test.json", {names[0]: "wer?", names[1]: " ", "x": "y"})
    cfg.assist, cfg.questions_dir = Assist.question, str(tmp_path / "qa")
    with pytest.raises(DataError) as error:
        build_split(cfg, "test")
    message = str(error.value)
    assert str(tmp_path / "qa" / "test.json") in message
    assert f"1 missing ({names[2]})" in message and f"1 empty ({names[1]})" in message
    assert "1 unknown (x)" in message
    (tmp_path / "qa" / "test.json").unlink()
    with pytest.raises(DataError, match="question file not found: .*qa/test.json"):
        build_split(cfg, "test")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_gloss_assistance_and_none(tmp_path, layout):
    cfg = LAYOUTS[layout](tmp_path, "train")
    plain = build_split(cfg, "train")
    assert all("question" not in r for r in plain.records) and plain.questions == []
    assert "question" not in plain[0]
    cfg.assist = Assist.gloss
    assisted = build_split(cfg, "train")
    assert assisted.questions == [r["gloss"] for r in plain.records] == GLOSSES
    assert assisted[1]["question"] == GLOSSES[1]
    strip = lambda r: {k: v for k, v in r.items() if k != "question"}  # noqa: E731
    assert [strip(r) for r in assisted.records] == plain.records


def test_gloss_assistance_without_glosses_names_the_clips(tmp_path):
    records = {n: {"name": n, "text": "t", "length": 5} for n in ("a", "b")}
    records["c"] = {"name": "c", "text": "t", "length": 5, "gloss": "X"}
    write_labels(tmp_path / "labels" / "labels.dev", records)
    write_features(tmp_path / "feats", list(records))
    cfg = DataConfig(layout=Layout.gfslt, modality=Modality.features, assist=Assist.gloss,
                     labels_dir=str(tmp_path / "labels"), feature_root=str(tmp_path / "feats"))  # fmt: skip
    with pytest.raises(DataError, match=r"assist=gloss: 2 clip\(s\) of split 'dev' .*\(a, b\)"):
        build_split(cfg, "dev")


def test_real_data_without_questions_dir(tmp_path, tiny_train_cfg):
    cfg = phoenix_gfslt(tmp_path, "dev")
    cfg.assist = Assist.question
    with pytest.raises(DataError, match="data.questions_dir is not set"):
        build_split(cfg, "dev")
    labels, feats = tmp_path / "labels", tmp_path / "feats"
    real = ("data=phoenix14t", f"data.labels_dir={labels}", f"data.feature_root={feats}",
            "data.modality=features", "data.assist=question")  # fmt: skip
    with pytest.raises(ConfigError, match="data.questions_dir: data.assist=question needs"):
        validate_train(tiny_train_cfg(*real))
    with pytest.raises(ConfigError, match="data.questions_dir: path does not exist"):
        validate_train(tiny_train_cfg(*real, f"data.questions_dir={tmp_path / 'nowhere'}"))
    (tmp_path / "qa").mkdir()
    assert validate_train(tiny_train_cfg(*real, f"data.questions_dir={tmp_path / 'qa'}"))
    assert validate_train(tiny_train_cfg("data.assist=question"))  # synthetic: the dialogue
