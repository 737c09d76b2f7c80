"""The proxy benchmark builder (``scl_slt.data.proxy``): features rendered from real glosses.

Built from the real annotation files in ``../shared/data`` (small subsets, seconds), or from small
label files written here. Checked against plain recomputations: the vocabulary, subsets, lengths
and spans from the source records; the rendered frames against each gloss's cosine-basis curve
written out again from its definition; twins against random gloss pairs; and the folder is read
by the training code end to end (one tiny epoch).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, compose_train

from scl_slt.config import ConfigError
from scl_slt.config_checks import validate_train
from scl_slt.data.datasets import build_split
from scl_slt.data.labels import SPLITS, DataError, read_labels, write_labels
from scl_slt.data.proxy.__main__ import main
from scl_slt.data.proxy.build import build_proxy
from scl_slt.data.proxy.language import build_language
from scl_slt.data.proxy.options import ProxyOptions
from scl_slt.rundir.layout import read_metrics
from scl_slt.selection.diagnostics import dataset_twins
from scl_slt.stages import run_stage

SHARED = REPO.parent / "shared" / "data"
DIM = 16
SMALL = {"max_train": 64, "max_dev": 16, "max_test": 16, "feature_dim": DIM}


def shared_labels(dataset: str) -> Path:
    folder = SHARED / dataset
    if not all((folder / f"labels.{s}").is_file() for s in SPLITS):
        pytest.skip(f"needs the real annotation files in {folder} (not present)")
    return folder


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory):
    labels = shared_labels("phoenix14t")
    return labels, build_proxy(
        labels, tmp_path_factory.mktemp("proxy") / "ph", ProxyOptions(**SMALL)
    )


@pytest.fixture(scope="module")
def csl(tmp_path_factory):
    labels = shared_labels("csl_daily")
    return labels, build_proxy(
        labels, tmp_path_factory.mktemp("proxy") / "csl", ProxyOptions(**SMALL)
    )


def files_of(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def features(root: Path, name: str) -> np.ndarray:
    return np.load(root / "features" / f"{name}.npy")


def write_source(folder: Path, records: dict[str, dict[str, dict]]) -> Path:
    for split in SPLITS:
        write_labels(folder / f"labels.{split}", records.get(split, {}))
    return folder


def small_source(folder: Path) -> Path:
    """Five hand-made clips: plain, short (fewer frames than glosses), no gloss, a repeat."""

    def rec(name: str, gloss: str, length: int) -> dict:
        return {"name": name, "gloss": gloss, "text": gloss.lower(), "length": length}

    train = [
        rec("train/a-1", "A B C", 30),
        rec("train/a-2", "C A", 8),
        rec("train/b-1", "B C A B", 3),
    ]
    dev = [rec("dev/c-1", "", 10)]
    test = [rec("test/d-1", "A B C", 31)]

    def as_dict(rs: list[dict]) -> dict[str, dict]:
        return {r["name"]: r for r in rs}

    return write_source(
        folder, {"train": as_dict(train), "dev": as_dict(dev), "test": as_dict(test)}
    )


# ---------------------------------------------------------------------------- the built folder
def test_same_seed_gives_identical_files_and_another_seed_other_ones(phoenix, tmp_path):
    labels, first = phoenix
    again = build_proxy(labels, tmp_path / "again", ProxyOptions(**SMALL))
    assert not again.reused
    assert files_of(again.root) == files_of(first.root)  # labels, features and meta, byte for byte
    other = build_proxy(labels, tmp_path / "seed1", ProxyOptions(**SMALL, seed=1))
    assert other.meta["glosses"] == first.meta["glosses"]
    assert other.meta["twins"] != first.meta["twins"]
    common = set(read_labels(other.root / "labels.dev")) & set(
        read_labels(first.root / "labels.dev")
    )
    for name in common:
        assert not np.array_equal(features(other.root, name), features(first.root, name))


def test_meta_records_and_lengths_follow_the_source(phoenix):
    labels, built = phoenix
    meta = json.loads((built.root / "meta.json").read_text())
    source = {s: read_labels(labels / f"labels.{s}") for s in SPLITS}
    vocabulary = sorted({g for s in SPLITS for r in source[s].values() for g in r["gloss"].split()})
    assert meta["glosses"] == vocabulary
    for s, limit in (("train", 64), ("dev", 16), ("test", 16)):  # whole sentences, while they fit
        biggest = max(Counter(r["text"] for r in source[s].values()).values())
        assert limit - biggest < meta["splits"][s] <= limit
    assert meta["source"]["records"] == {s: len(source[s]) for s in SPLITS}
    for s in SPLITS:
        assert (
            meta["source"]["sha256"][s]
            == hashlib.sha256((labels / f"labels.{s}").read_bytes()).hexdigest()
        )
    assert meta["options"] == {**ProxyOptions(**SMALL).__dict__, "builder_version": 1}
    assert len(meta["twins"]) == round(0.2 * len(vocabulary) / 2)
    twin_ids = [g for pair in meta["twins"] for g in pair]
    assert len(set(twin_ids)) == len(twin_ids)
    assert meta["twin_glosses"] == [[vocabulary[a], vocabulary[b]] for a, b in meta["twins"]]
    for s in SPLITS:
        written = read_labels(built.root / f"labels.{s}")
        names = list(written)
        assert names == [n for n in source[s] if n in written]  # a subset, in file order
        for name, rec in written.items():
            real = source[s][name]
            assert (rec["text"], rec["gloss"], rec["source_length"]) == (
                real["text"],
                real["gloss"],
                real["length"],
            )
            assert "imgs_path" not in rec
            x = features(built.root, name)
            assert x.dtype == np.float32 and x.shape == (rec["length"], DIM)
            assert rec["length"] == max(real["length"], len(real["gloss"].split()))
            spans = rec["alignment"]
            assert [vocabulary[g] for g, _, _ in spans] == real["gloss"].split()
            assert [s0 for _, s0, _ in spans] == [0] + [e for _, _, e in spans[:-1]]
            assert all(e > s0 for _, s0, e in spans) and (
                not spans or spans[-1][2] == rec["length"]
            )


@pytest.mark.parametrize("by", ["clip", "sentence"])
def test_subsets_are_nested_and_clips_do_not_depend_on_the_subset(csl, tmp_path, by):
    labels, _ = csl
    small, big = (
        build_proxy(
            labels, tmp_path / str(n), ProxyOptions(**{**SMALL, "max_train": n, "subset_by": by})
        )
        for n in (32, 64)
    )
    source = read_labels(labels / "labels.train")
    big_train, small_train = (read_labels(b.root / "labels.train") for b in (big, small))
    assert set(small_train) <= set(big_train)
    for name in small_train:
        assert small_train[name] == big_train[name]
        assert np.array_equal(features(small.root, name), features(big.root, name))
    if by == "clip":
        assert (len(small_train), len(big_train)) == (32, 64)
    else:  # every kept sentence with all its clips: CSL-Daily's duplicates stay duplicates
        kept = Counter(r["text"] for r in big_train.values())
        everywhere = Counter(r["text"] for r in source.values())
        assert all(kept[t] == everywhere[t] for t in kept) and 60 <= len(big_train) <= 64
        assert big.meta["rates"]["duplicate_train_texts"] > 0.5


def test_frame_stride_frames_per_gloss_and_clips_without_glosses(tmp_path):
    source = small_source(tmp_path / "labels")
    strided = build_proxy(source, tmp_path / "s3", ProxyOptions(frame_stride=3, feature_dim=8))
    per_gloss = build_proxy(
        source, tmp_path / "fpg", ProxyOptions(frames_per_gloss=5, feature_dim=8)
    )
    for s in SPLITS:
        real = read_labels(source / f"labels.{s}")
        for name, rec in read_labels(strided.root / f"labels.{s}").items():
            n = len(real[name]["gloss"].split())
            assert rec["length"] == max(math.ceil(real[name]["length"] / 3), n, 1)
            assert features(strided.root, name).shape == (rec["length"], 8)
        for name, rec in read_labels(per_gloss.root / f"labels.{s}").items():
            assert rec["length"] == 5 * max(len(real[name]["gloss"].split()), 1)
    assert strided.meta["lengthened_clips"] == 1  # train/b-1: 3 frames / 3 < 4 glosses
    rest = read_labels(strided.root / "labels.dev")["dev/c-1"]
    assert rest["alignment"] == [] and strided.meta["no_gloss_clips"] == 1


def test_frames_are_shared_in_proportion_to_gloss_durations(tmp_path):
    source = small_source(tmp_path / "labels")
    built = build_proxy(source, tmp_path / "out", ProxyOptions(duration_jitter=0.0, feature_dim=8))
    durations = np.array(built.meta["durations"])
    for s in SPLITS:
        for rec in read_labels(built.root / f"labels.{s}").values():
            spans = rec["alignment"]
            if not spans:
                continue
            weights = durations[[g for g, _, _ in spans]]
            extra = rec["length"] - len(spans)  # one frame each, the rest in proportion
            ideal = 1 + extra * weights / weights.sum()
            counts = np.array([e - s0 for _, s0, e in spans])
            assert counts.sum() == rec["length"] and np.all(np.abs(counts - ideal) < 1)


def _curves(motion: np.ndarray, length: int) -> np.ndarray:
    """(G, length, D) every gloss's frames over ``length`` frames, from the definition:
    frame t = sum_k c_k cos(pi k (t + 0.5) / length)."""
    t = (np.arange(length) + 0.5) / length
    basis = np.cos(np.pi * np.arange(motion.shape[1])[None, :] * t[:, None])  # (L, K)
    return np.einsum("lk,gkd->gld", basis, motion)


def test_the_frames_of_each_gloss_are_closest_to_its_motion(phoenix, tmp_path):
    labels, _ = phoenix
    options = ProxyOptions(**SMALL, signer_shift=0.0)  # no style transform: frames = curve + noise
    built = build_proxy(labels, tmp_path / "plain", options)
    motion = build_language(built.meta["glosses"], options).motion
    twin_of = {a: b for a, b in built.meta["twins"]} | {b: a for a, b in built.meta["twins"]}
    exact = total = 0
    for s in SPLITS:
        for name, rec in read_labels(built.root / f"labels.{s}").items():
            x = features(built.root, name)
            for g, start, end in rec["alignment"]:
                if end - start < 4:
                    continue
                inner = slice(1, end - start - 1)  # boundary frames are blurred with neighbours
                frames = x[start:end][inner]
                curves = _curves(motion, end - start)[:, inner]  # (G, L - 2, D)
                errors = ((frames[None] - curves) ** 2).mean(axis=(1, 2))
                best = int(np.argmin(errors))
                assert best in (g, twin_of.get(g)), (name, g, best)
                exact += best == g
                total += 1
    assert total > 300 and exact / total > 0.9


def test_twins_are_much_closer_than_random_glosses(phoenix):
    _, built = phoenix
    options = ProxyOptions(**SMALL)
    flat = build_language(built.meta["glosses"], options).motion.reshape(
        len(built.meta["glosses"]), -1
    )
    rng = np.random.default_rng(0)
    pairs = rng.integers(len(flat), size=(2000, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    random_dist = np.linalg.norm(flat[pairs[:, 0]] - flat[pairs[:, 1]], axis=1)
    twin_dist = np.array([np.linalg.norm(flat[a] - flat[b]) for a, b in built.meta["twins"]])
    assert twin_dist.max() < np.quantile(random_dist, 0.01)
    assert 0.05 < twin_dist.mean() / np.median(random_dist) < 0.2  # confusable_distance 0.1
    assert abs(built.meta["rates"]["confusable"]["achieved"] - 0.2) < 0.02


def test_signers_come_from_the_names(phoenix, csl):
    _, ph = phoenix
    by_broadcast: dict[str, set[int]] = {}
    for s in SPLITS:
        for name, rec in read_labels(ph.root / f"labels.{s}").items():
            broadcast = re.sub(r"-\d+$", "", name.split("/", 1)[1])
            by_broadcast.setdefault(broadcast, set()).add(rec["signer"])
            assert rec["signer"] == int(hashlib.sha256(broadcast.encode()).hexdigest()[:16], 16) % 9
    assert all(len(v) == 1 for v in by_broadcast.values())
    _, zh = csl
    person = {}
    for s in SPLITS:
        for name, rec in read_labels(zh.root / f"labels.{s}").items():
            person.setdefault(re.match(r"S\d+_(P\d+)_T\d+", name).group(1), set()).add(
                rec["signer"]
            )
    assert all(len(v) == 1 for v in person.values())
    assert len(set().union(*person.values())) == len(person)  # different people, different styles
    assert zh.meta["signers"]["source"] == "name (P number)"


# ---------------------------------------------------------------- reuse, refusal, bad input
def test_reuses_the_same_build_and_refuses_another_one(phoenix, tmp_path):
    labels, built = phoenix
    before = files_of(built.root)
    again = build_proxy(labels, built.root, ProxyOptions(**SMALL))
    assert again.reused and files_of(built.root) == before
    with pytest.raises(DataError, match=r"meta\.json.*other options.*seed: 0 != 3"):
        build_proxy(labels, built.root, ProxyOptions(**SMALL, seed=3))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "labels.train").write_bytes(b"")
    with pytest.raises(DataError, match="has no meta.json: not a finished proxy dataset"):
        build_proxy(labels, tmp_path / "half", ProxyOptions(**SMALL))
    assert files_of(built.root) == before
    assert not [p for p in built.root.parent.iterdir() if ".tmp-" in p.name]


def test_bad_input_is_named_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "none" / "labels.train"))):
        build_proxy(tmp_path / "none", out, ProxyOptions())
    source = small_source(tmp_path / "labels")
    records = read_labels(source / "labels.test")
    del records["test/d-1"]["gloss"]
    write_labels(source / "labels.test", records)
    with pytest.raises(DataError, match=r"labels\.test: record 'test/d-1' has no 'gloss'"):
        build_proxy(source, out, ProxyOptions())
    records["test/d-1"].update(gloss="A", length=None)
    write_labels(source / "labels.test", records)
    with pytest.raises(
        DataError, match=r"labels\.test: record 'test/d-1' needs a positive integer 'length'"
    ):
        build_proxy(source, out, ProxyOptions())
    with pytest.raises(ConfigError, match="--confusable-rate"):
        build_proxy(source, out, ProxyOptions(confusable_rate=1.5))
    assert not out.exists()


def test_command_builds_then_reuses_and_names_errors(tmp_path, capsys):
    source = small_source(tmp_path / "labels")
    args = ["--labels", str(source), "--out", str(tmp_path / "out"), "--feature-dim", "8"]
    assert main([*args, "--frames-per-gloss", "auto", "--max-train", "2"]) == 0
    assert "built in" in capsys.readouterr().out
    assert main([*args, "--max-train", "2"]) == 0
    assert "reused in" in capsys.readouterr().out
    assert main([*args, "--max-train", "2", "--noise", "0.5"]) == 2
    assert "noise: 0.15 != 0.5" in capsys.readouterr().err


# -------------------------------------------------------------------------- read by training
def test_phoenix_proxy_trains_one_epoch_with_alignment_metrics(phoenix, tiny_overrides):
    _, built = phoenix
    extra = [
        "data=phoenix14t_proxy",
        f"data.root={built.root}",
        f"model.sign_embedding.feature_dim={DIM}",
    ]
    cfg = compose_train([*tiny_overrides, *extra, "stage.epochs=1", "stage.retrieval_every=1"])
    typed = validate_train(cfg)
    assert typed.data.feature_root == f"{built.root}/features"
    assert len(build_split(typed.data, "train", feature_dim=DIM)) == 64
    result = run_stage(cfg)
    (dev,) = read_metrics(result["run_dir"], "dev")
    assert dev["retrieval_samples"] == 16 and dev["sdr"] > 0
    # The batch diagnostics find the proxy's confusable twins in its meta.json.
    meta = json.loads((built.root / "meta.json").read_text())
    assert dataset_twins(typed.data) == [tuple(t) for t in meta["twin_glosses"]]
    (record,) = [r for r in read_metrics(result["run_dir"]) if r.get("kind") == "batch_diagnostics"]
    assert "confusable_share" in record and 0.0 <= record["confusable_share"] <= 1.0


def test_csl_proxy_is_chinese_and_translates(csl, tiny_overrides):
    _, built = csl
    extra = [
        "data=csl_daily_proxy",
        f"data.root={built.root}",
        f"model.sign_embedding.feature_dim={DIM}",
    ]
    cfg = compose_train([*tiny_overrides, *extra, "stage=translate", "stage.epochs=1"])
    typed = validate_train(cfg)
    assert (typed.data.language, typed.data.lang_code) == ("zh", "zh_CN")
    result = run_stage(cfg)
    (dev,) = read_metrics(result["run_dir"], "dev")
    assert "bleu4" in dev


def test_proxy_config_without_a_root_names_the_key(tiny_overrides):
    cfg = compose_train([*tiny_overrides, "data=phoenix14t_proxy", "data.root=null"])
    with pytest.raises(ConfigError, match="data.root"):
        validate_train(cfg)
