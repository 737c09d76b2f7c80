"""The dataset validator finds every planted problem, with the right counts and exit code."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scl_slt.config import Assist, DataConfig, Layout, Modality, SyntheticConfig
from scl_slt.data.frame_cache import build_frame_cache
from scl_slt.data.labels import write_labels
from scl_slt.data.questions import write_questions
from scl_slt.data.validate import CATEGORIES, main, validate_dataset


def write_clip(folder: Path, length: int, size=(10, 8)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(length):
        Image.fromarray(np.full((*size, 3), 10 * t, dtype=np.uint8)).save(
            folder / f"images{t + 1:04d}.png"
        )


def planted_frames_dataset(root: Path) -> DataConfig:
    """Eight train clips (with imgs_path, as PHOENIX labels) and two dev clips, problems planted:

    clip0 fine; clip1 folder missing; clip2 two listed frames missing; clip3 one corrupt frame;
    clip4 empty text; clip5 label length 9 but 5 frames listed; clip6 one frame of another size;
    clip7 fine but its text is only blanks; dev: one fine clip, one folder with no frames."""
    frames = root / "frames"
    records = {}
    for i in range(8):
        name = f"train/clip{i}"
        records[name] = {
            "name": name,
            "text": "ein satz",
            "length": 5,
            "imgs_path": [f"{name}/images{t + 1:04d}.png" for t in range(5)],
        }
        if i != 1:
            write_clip(frames / name, 5)
    (frames / "train/clip2/images0002.png").unlink()
    (frames / "train/clip2/images0004.png").unlink()
    (frames / "train/clip3/images0003.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    records["train/clip4"]["text"] = ""
    records["train/clip5"]["length"] = 9
    Image.fromarray(np.zeros((12, 8, 3), dtype=np.uint8)).save(
        frames / "train/clip6/images0005.png"
    )
    records["train/clip7"]["text"] = "   "
    write_labels(root / "labels" / "labels.train", records)
    write_clip(frames / "dev/ok", 3)
    (frames / "dev/empty").mkdir(parents=True)
    dev = {n: {"name": n, "text": "x", "length": 3} for n in ("dev/ok", "dev/empty")}
    write_labels(root / "labels" / "labels.dev", dev)
    return DataConfig(
        name="phoenix14t",
        layout=Layout.gfslt,
        modality=Modality.frames,
        labels_dir=str(root / "labels"),
        frame_root=str(frames),
        resize=10,
        crop=8,
    )


def test_finds_every_planted_frame_problem(tmp_path):
    cfg = planted_frames_dataset(tmp_path)
    report = validate_dataset(cfg, splits=("train", "dev"))
    assert report.samples == {"train": 8, "dev": 2}
    assert dict(report.counts()) == {
        "missing_folder": 1,
        "missing_frame": 2,
        "unreadable_frame": 1,
        "empty_text": 2,
        "length_mismatch": 1,
        "frame_size_mismatch": 1,
        "empty_folder": 1,
    }
    where = {(p.category, p.name) for p in report.problems}
    assert ("missing_folder", "train/clip1") in where and (
        "unreadable_frame",
        "train/clip3",
    ) in where
    assert ("length_mismatch", "train/clip5") in where and ("empty_folder", "dev/empty") in where
    missing = sorted(Path(p.path).name for p in report.problems if p.category == "missing_frame")
    assert missing == ["images0002.png", "images0004.png"]
    assert not report.ok
    # without decoding, the decode-only problems are not looked for
    quick = validate_dataset(cfg, splits=("train",), decode=False).counts()
    assert (
        "unreadable_frame" not in quick
        and "frame_size_mismatch" not in quick
        and quick["missing_frame"] == 2
    )


def test_parallel_gives_the_same_report(tmp_path):
    cfg = planted_frames_dataset(tmp_path)
    serial = validate_dataset(cfg, splits=("train",))
    parallel = validate_dataset(cfg, splits=("train",), workers=2)
    assert [p.line() for p in serial.problems] == [p.line() for p in parallel.problems]


def test_features_problems(tmp_path):
    feats = tmp_path / "feats"
    feats.mkdir()
    records = {n: {"name": n, "text": "t", "length": 4} for n in ("a", "b", "c", "d")}
    np.save(feats / "a.npy", np.zeros((4, 3), np.float16))
    np.save(feats / "b.npy", np.zeros((6, 3), np.float32))  # length 4 in the label
    (feats / "c.npy").write_bytes(b"garbage")
    write_labels(tmp_path / "labels" / "labels.test", records)  # d: no file
    cfg = DataConfig(layout=Layout.gfslt, modality=Modality.features, labels_dir=str(tmp_path / "labels"),
                     feature_root=str(feats))  # fmt: skip
    report = validate_dataset(cfg, splits=("test",))
    assert dict(report.counts()) == {
        "length_mismatch": 1,
        "unreadable_feature": 1,
        "missing_feature": 1,
    }
    assert {(p.category, p.name) for p in report.problems} == {
        ("length_mismatch", "b"), ("unreadable_feature", "c"), ("missing_feature", "d")
    }  # fmt: skip


def test_known_broken_and_duplicates_in_official_layouts(tmp_path):
    csl = tmp_path / "csl"
    (csl / "sentence_label").mkdir(parents=True)
    names = ["S000000_P0000_T00", "S000005_P0004_T00"]
    info = [
        {"name": n, "length": 3, "label_gloss": ["好"], "label_char": ["好", "。"]} for n in names
    ]
    with open(csl / "sentence_label" / "csl2020ct_v2.pkl", "wb") as f:
        pickle.dump({"info": info}, f)
    (csl / "sentence_label" / "split_1.txt").write_text(
        "name|split\n" + "".join(f"{n}|train\n" for n in names)
    )
    write_clip(csl / "sentence" / "frames_512x512" / names[0], 3)
    cfg = DataConfig(
        name="csl_daily", layout=Layout.official, modality=Modality.frames, root=str(csl)
    )
    report = validate_dataset(cfg, splits=("train",))
    assert dict(report.counts()) == {"known_broken": 1}
    problem = report.problems[0]
    assert (
        problem.name == "S000005_P0004_T00" and "missing_folder" in problem.detail and not report.ok
    )
    assert validate_dataset(cfg, splits=("train",), ignore_known_broken=True).ok

    manual = tmp_path / "ph" / "annotations" / "manual"
    manual.mkdir(parents=True)
    row = "a|a/1/*.png|-1|-1|Signer01|X|satz .\n"
    (manual / "PHOENIX-2014-T.dev.corpus.csv").write_text(
        "name|video|start|end|speaker|orth|translation\n" + row * 2
    )
    write_clip(tmp_path / "ph" / "features" / "fullFrame-210x260px" / "dev" / "a", 2)
    cfg = DataConfig(
        name="phoenix14t",
        layout=Layout.official,
        modality=Modality.frames,
        root=str(tmp_path / "ph"),
    )
    assert dict(validate_dataset(cfg, splits=("dev",)).counts()) == {"duplicate_name": 1}


def test_frame_cache_coverage(tmp_path):
    cfg = planted_frames_dataset(tmp_path)
    build_frame_cache(cfg, tmp_path / "cache", splits=("dev",))
    cfg.frame_cache = str(tmp_path / "cache")
    counts = validate_dataset(cfg, splits=("dev",), decode=False).counts()
    assert dict(counts) == {"empty_folder": 1, "missing_cache_clip": 1}


def test_command_line_exit_codes_and_report(tmp_path, capsys):
    cfg = planted_frames_dataset(tmp_path)
    config = tmp_path / "data.yaml"
    config.write_text(
        f"name: phoenix14t\nlayout: gfslt\nmodality: frames\nlabels_dir: {cfg.labels_dir}\nframe_root: {cfg.frame_root}\n"
    )
    report = tmp_path / "report.json"
    assert main([f"data={config}", "splits=train,dev", f"report={report}"]) == 1
    out = capsys.readouterr().out
    assert "missing_folder       train train/clip1" in out and "FAILED: 9 problems" in out
    assert json.loads(report.read_text())["counts"]["empty_text"] == 2
    write_labels(
        tmp_path / "labels" / "labels.test",
        {"dev/ok": {"name": "dev/ok", "text": "x", "length": 3}},
    )
    assert main([f"data={config}", "splits=test"]) == 0
    assert "OK: no problems found" in capsys.readouterr().out
    assert main([f"data={config}", "bogus=1"]) == 2
    assert main(["data=phoenix14t", "data.root=null", "data.labels_dir=null", "splits=dev"]) == 2
    assert set(CATEGORIES) >= {
        "missing_folder",
        "unreadable_frame",
        "empty_text",
        "length_mismatch",
    }


@pytest.mark.parametrize("decode", ["true", "false"])
def test_clean_dataset_passes(tmp_path, decode, capsys):
    write_clip(tmp_path / "frames" / "a", 3)
    write_labels(tmp_path / "labels" / "labels.dev", {"a": {"name": "a", "text": "x", "length": 3}})
    config = tmp_path / "data.yaml"
    config.write_text(
        f"layout: gfslt\nmodality: frames\nlabels_dir: {tmp_path / 'labels'}\nframe_root: {tmp_path / 'frames'}\n"
    )
    assert main([f"data={config}", "splits=dev", f"decode={decode}"]) == 0


# ---------------------------------------------------------------------------------- questions
def features_dataset(root: Path, names: list[str], split: str = "dev", **kw) -> DataConfig:
    """A clean features dataset of ``names`` (gloss "X" except where ``kw`` says otherwise)."""
    (root / "feats" / split).mkdir(parents=True)
    records = {n: {"name": n, "text": "t", "gloss": "X", "length": 2} for n in names}
    for name in names:
        np.save(root / "feats" / f"{name}.npy", np.zeros((2, 3), np.float32))
    write_labels(root / "labels" / f"labels.{split}", records)
    return DataConfig(layout=Layout.gfslt, modality=Modality.features, labels_dir=str(root / "labels"),
                      feature_root=str(root / "feats"), **kw)  # fmt: skip


def test_question_sidecar_problems_are_named_and_counted(tmp_path, capsys):
    names = [f"dev/c{i}" for i in range(6)]
    qa = tmp_path / "qa"
    cfg = features_dataset(tmp_path, names, assist=Assist.question, questions_dir=str(qa))
    questions = {"dev/c0": "wer?", "c1": "wo?", "dev/c2": " ", "dev/c3": "a", "c3": "a", "zz": "?"}
    write_questions(qa / "dev.json", questions)  # c4, c5 missing
    report = validate_dataset(cfg, splits=("dev",))
    assert dict(report.counts()) == {
        "missing_question": 2,
        "empty_question": 1,
        "unknown_question": 1,
        "duplicate_question": 1,
    }
    assert {(p.category, p.name) for p in report.problems} == {
        ("missing_question", "dev/c4"), ("missing_question", "dev/c5"),
        ("empty_question", "dev/c2"), ("unknown_question", "zz"), ("duplicate_question", "dev/c3"),
    }  # fmt: skip
    assert all(p.path == str(qa / "dev.json") for p in report.problems)

    config = tmp_path / "data.yaml"
    config.write_text(
        f"layout: gfslt\nmodality: features\nlabels_dir: {cfg.labels_dir}\n"
        f"feature_root: {cfg.feature_root}\nassist: question\nquestions_dir: {qa}\n"
    )
    assert main([f"data={config}", "splits=dev"]) == 1
    out = capsys.readouterr().out
    assert "missing_question     dev   dev/c4" in out and "FAILED: 5 problems" in out
    assert "  missing_question     2" in out
    write_questions(qa / "dev.json", {n: "frage" for n in names})
    assert main([f"data={config}", "splits=dev"]) == 0  # the bare "c1" spelling is fine too
    (qa / "dev.json").unlink()
    assert main([f"data={config}", "splits=dev"]) == 1
    assert "bad_question_file    dev" in capsys.readouterr().out


def test_questions_dir_alone_is_checked_and_gloss_assistance_needs_glosses(tmp_path, capsys):
    cfg = features_dataset(tmp_path, ["a", "b"], questions_dir=str(tmp_path / "qa"))
    write_questions(tmp_path / "qa" / "dev.json", {"a": "wer?"})
    assert dict(validate_dataset(cfg, splits=("dev",)).counts()) == {"missing_question": 1}
    cfg.questions_dir = None
    assert validate_dataset(cfg, splits=("dev",)).ok  # no assistance, no sidecar: nothing to check
    cfg.assist = Assist.gloss
    assert validate_dataset(cfg, splits=("dev",)).ok
    write_labels(
        Path(cfg.labels_dir) / "labels.dev", {"a": {"name": "a", "text": "t", "length": 2}}
    )
    assert [(p.category, p.name) for p in validate_dataset(cfg, splits=("dev",)).problems] == [
        ("empty_question", "a")
    ]
    cfg.assist = Assist.question  # real data without questions_dir: a config error (exit 2)
    config = tmp_path / "data.yaml"
    config.write_text(f"layout: gfslt\nlabels_dir: {cfg.labels_dir}\nassist: question\n")
    assert main([f"data={config}", "splits=dev", "data.modality=features",
                 f"data.feature_root={cfg.feature_root}"]) == 2  # fmt: skip
    assert "data.questions_dir is not set" in capsys.readouterr().err


def test_synthetic_dialogue_validates(tmp_path):
    synthetic = SyntheticConfig(cache_dir=str(tmp_path), num_train=10, num_dev=4, num_test=4)
    cfg = DataConfig(modality=Modality.features, synthetic=synthetic, assist=Assist.question)
    assert validate_dataset(cfg).ok
