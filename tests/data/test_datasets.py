"""Layouts -> splits: GFSLT-style labels (real files), official releases, features, configs,
and data.on_bad_sample in both modes.

The real annotation files in ../shared/data give split sizes, names and texts; a few small
generated frame folders stand in for the videos."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from scl_slt.config import BadSample, ConfigError, DataConfig, Layout, Modality
from scl_slt.data.batching import Collator
from scl_slt.data.datasets import build_split, data_config_from_args, split_records
from scl_slt.data.labels import DataError, read_labels, write_labels
from scl_slt.data.official import KNOWN_BROKEN

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
SIZES = {"phoenix14t": (7096, 519, 642), "csl_daily": (18400, 1077, 1176)}
BROKEN = "S000005_P0004_T00"


def shared_labels(dataset: str, split: str) -> dict[str, dict]:
    path = SHARED / dataset / f"labels.{split}"
    if not path.is_file():
        pytest.skip(f"real annotation files not available at {path}")
    return read_labels(path)


def shortest(labels: dict[str, dict], n: int) -> list[str]:
    return sorted(labels, key=lambda name: (labels[name]["length"], name))[:n]


def write_clip(
    folder: Path, length: int, suffix: str = ".png", size=(10, 8), seed: int = 0
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for t in range(length):
        frame = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        Image.fromarray(frame).save(folder / f"images{t + 1:04d}{suffix}", quality=90)


class CharTokenizer:
    """The tokenizer contract (encode_targets -> ids, mask) for collating, one id per character."""

    def encode_targets(self, texts):
        width = max(len(t) for t in texts) + 2
        ids, mask = (
            torch.zeros((len(texts), width), dtype=torch.long),
            torch.zeros((len(texts), width), dtype=torch.bool),
        )
        for i, text in enumerate(texts):
            ids[i, 1 : len(text) + 1] = torch.tensor([ord(c) % 1000 for c in text])
            mask[i, : len(text) + 2] = True
        return ids, mask


def frames_cfg(**kw) -> DataConfig:
    return DataConfig(
        **{"modality": Modality.frames, "resize": 10, "crop": 8, "max_frames": 40, **kw}
    )


# ------------------------------------------------------------------------- GFSLT-style labels
@pytest.mark.parametrize("dataset", ["phoenix14t", "csl_daily"])
def test_real_label_files_split_sizes_names_texts(dataset):
    cfg = DataConfig(name=dataset, layout=Layout.gfslt, labels_dir=str(SHARED / dataset))
    for split, size in zip(("train", "dev", "test"), SIZES[dataset]):
        labels = shared_labels(dataset, split)
        records = split_records(cfg, split)
        assert len(records) == size
        assert [r["name"] for r in records] == list(labels)
        assert all(r["text"] == labels[r["name"]]["text"] for r in records)
    assert BROKEN not in {r["name"] for r in split_records(cfg, "train")}


def test_phoenix_gfslt_frames_via_imgs_path(tmp_path):
    labels = shared_labels("phoenix14t", "dev")
    names = shortest(labels, 2)
    for name in names:
        write_clip(tmp_path / "fullFrame-210x260px" / name, labels[name]["length"])
    cfg = frames_cfg(name="phoenix14t", layout=Layout.gfslt, labels_dir=str(SHARED / "phoenix14t"),
                     frame_root=str(tmp_path / "fullFrame-210x260px"))  # fmt: skip
    dataset = build_split(cfg, "dev")
    assert len(dataset) == 519 and not dataset.train
    index = dataset.names.index(names[0])
    sample = dataset[index]
    assert sample["name"] == names[0] and sample["text"] == labels[names[0]]["text"]
    assert sample["inputs"].shape == (labels[names[0]]["length"], 3, 8, 8)


def test_csl_gfslt_frames_listed_from_folder(tmp_path):
    labels = shared_labels("csl_daily", "test")
    name = shortest(labels, 1)[0]
    write_clip(
        tmp_path / "frames_512x512" / name, labels[name]["length"], suffix=".jpg", size=(12, 12)
    )
    cfg = frames_cfg(name="csl_daily", layout=Layout.gfslt, labels_dir=str(SHARED / "csl_daily"),
                     frame_root=str(tmp_path / "frames_512x512"), max_frames=8)  # fmt: skip
    dataset = build_split(cfg, "test")
    assert len(dataset) == 1176
    sample = dataset[dataset.names.index(name)]
    assert sample["text"] == labels[name]["text"] and sample["inputs"].shape == (8, 3, 8, 8)


def test_features_for_a_layout(tmp_path):
    labels = shared_labels("csl_daily", "dev")
    chosen = {n: labels[n] for n in list(labels)[:3]}
    write_labels(tmp_path / "labels" / "labels.dev", chosen)
    (tmp_path / "feats").mkdir()
    for i, (name, rec) in enumerate(chosen.items()):
        np.save(
            tmp_path / "feats" / f"{name}.npy", np.full((rec["length"], 5), i, dtype=np.float16)
        )
    cfg = DataConfig(name="csl_daily", layout=Layout.gfslt, modality=Modality.features,
                     labels_dir=str(tmp_path / "labels"), feature_root=str(tmp_path / "feats"))  # fmt: skip
    dataset = build_split(cfg, "dev")
    for i, name in enumerate(chosen):
        sample = dataset[i]
        assert sample["inputs"].dtype == torch.float32
        assert (
            sample["inputs"].shape == (chosen[name]["length"], 5)
            and float(sample["inputs"][0, 0]) == i
        )
    assert dataset.source.frame_count(dataset.records[0]) == chosen[dataset.names[0]]["length"]


# -------------------------------------------------------------------------- official releases
def write_phoenix_release(root: Path, labels: dict, names: list[str], split: str) -> Path:
    """Tiny PHOENIX-2014-T release: corpus CSV (translation with the release's final ' .')."""
    release = root / "PHOENIX-2014-T"
    manual = release / "annotations" / "manual"
    manual.mkdir(parents=True, exist_ok=True)
    lines = ["name|video|start|end|speaker|orth|translation"]
    for name in names:
        short = name.split("/", 1)[1]
        lines.append(
            f"{short}|{short}/1/*.png|-1|-1|Signer05|{labels[name]['gloss']}|{labels[name]['text']} ."
        )
    (manual / f"PHOENIX-2014-T.{split}.corpus.csv").write_text(
        "\n".join(lines) + "\n", encoding="utf-8"
    )
    return release


def test_phoenix_official_layout(tmp_path):
    labels = shared_labels("phoenix14t", "test")
    names = shortest(labels, 3)
    release = write_phoenix_release(tmp_path, labels, names, "test")
    for i, name in enumerate(names[:2]):  # the third clip has no frames
        write_clip(
            release / "features" / "fullFrame-210x260px" / name, labels[name]["length"], seed=i
        )
    for root in (tmp_path, release):  # the release folder or its parent
        cfg = frames_cfg(
            name="phoenix14t", layout=Layout.official, root=str(root), on_bad_sample=BadSample.skip
        )
        dataset = build_split(cfg, "test")
        assert dataset.names == names  # "test/<id>", as in the label files
        assert dataset.texts == [labels[n]["text"] for n in names]  # the release's ' .' removed
        assert [r["gloss"] for r in dataset.records] == [labels[n]["gloss"] for n in names]
        assert [r["length"] for r in dataset.records] == [
            labels[n]["length"] for n in names[:2]
        ] + [0]
        assert dataset[0]["inputs"].shape[0] == labels[names[0]]["length"]
        assert dataset[2] is None and dataset.bad_sample_count == 1
    with pytest.raises(DataError, match="not a PHOENIX-2014-T release"):
        split_records(
            frames_cfg(name="phoenix14t", layout=Layout.official, root=str(tmp_path / "x")), "test"
        )
    with pytest.raises(DataError, match="corpus file not found: .*PHOENIX-2014-T.dev.corpus.csv"):
        split_records(
            frames_cfg(name="phoenix14t", layout=Layout.official, root=str(release)), "dev"
        )


def write_csl_release(root: Path, entries: list[tuple[str, str, str]]) -> None:
    """Tiny CSL-Daily release: csl2020ct_v2.pkl (key 'info') + split_1.txt; entries (name, split, text)."""
    labels = root / "sentence_label"
    labels.mkdir(parents=True)
    info = [
        {
            "name": n,
            "length": 6,
            "label_gloss": ["你", "好"],
            "label_char": list(text),
            "label_word": [text],
        }
        for n, _, text in entries
    ]
    with open(labels / "csl2020ct_v2.pkl", "wb") as f:
        pickle.dump({"info": info, "gloss_map": ["你", "好"]}, f)
    rows = ["name|split"] + [f"{n}|{s}" for n, s, _ in entries]
    (labels / "split_1.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    "frames_dir", ["sentence/frames_512x512", "sentence_frames-512x512/frames_512x512"]
)
def test_csl_official_layout_and_known_broken_clip(tmp_path, frames_dir):
    train = shared_labels("csl_daily", "train")
    dev = shared_labels("csl_daily", "dev")
    good = list(train)[:2]
    entries = [(n, "train", train[n]["text"]) for n in good] + [(BROKEN, "train", "你叫什么名字？")]
    entries += [(n, "dev", dev[n]["text"]) for n in list(dev)[:1]]
    write_csl_release(tmp_path, entries)
    for i, name in enumerate(good + list(dev)[:1]):
        write_clip(tmp_path / frames_dir / name, 6, suffix=".jpg", seed=i)
    cfg = frames_cfg(name="csl_daily", layout=Layout.official, root=str(tmp_path))
    assert [r["name"] for r in split_records(cfg, "dev")] == list(dev)[:1]
    with pytest.raises(DataError, match=f"{BROKEN}.*known issue.*on_bad_sample=skip"):
        build_split(cfg, "train")  # error mode: refused before any work
    cfg.on_bad_sample = BadSample.skip
    dataset = build_split(cfg, "train")
    assert dataset.names == good + [BROKEN]
    assert dataset.texts == [train[n]["text"] for n in good] + ["你叫什么名字？"]
    assert dataset.records[2]["known_issue"] == KNOWN_BROKEN[BROKEN]
    assert dataset.records[0]["signer"] == good[0].split("_")[1]
    batch = Collator(CharTokenizer())([dataset[i] for i in range(3)])
    assert batch["names"] == good and dataset.bad_sample_count == 1
    assert batch["inputs"].shape == (2, 6, 3, 8, 8)


def test_unknown_dataset_and_missing_paths(tmp_path):
    with pytest.raises(DataError, match="data.root is not set"):
        split_records(DataConfig(name="phoenix14t", layout=Layout.official), "train")
    with pytest.raises(DataError, match="data.labels_dir is not set"):
        split_records(DataConfig(name="phoenix14t", layout=Layout.gfslt), "train")
    write_labels(tmp_path / "labels" / "labels.dev", {"a": {"name": "a", "text": "t", "length": 2}})
    with pytest.raises(DataError, match="data.feature_root is not set"):
        build_split(
            DataConfig(name="x", layout=Layout.gfslt, labels_dir=str(tmp_path / "labels")), "dev"
        )
    with pytest.raises(DataError, match="no official layout"):
        split_records(
            DataConfig(name="how2sign", layout=Layout.official, root=str(tmp_path)), "train"
        )
    write_csl_release(tmp_path, [("A_P1_T0", "train", "好")])
    (tmp_path / "sentence_label" / "split_1.txt").write_text("name|split\nB_P1_T0|train\n")
    with pytest.raises(DataError, match="'B_P1_T0' has no entry"):
        split_records(
            DataConfig(name="csl_daily", layout=Layout.official, root=str(tmp_path)), "train"
        )


# ------------------------------------------------------------------------------ bad samples
def tiny_frames_split(tmp_path, n=6, missing=(2,), **kw):
    records = {}
    for i in range(n):
        name = f"train/clip{i}"
        if i not in missing:
            write_clip(tmp_path / "frames" / name, 4 + i, seed=i)
        records[name] = {"name": name, "text": f"satz {i}", "length": 4 + i}
    write_labels(tmp_path / "labels" / "labels.train", records)
    return frames_cfg(
        layout=Layout.gfslt,
        labels_dir=str(tmp_path / "labels"),
        frame_root=str(tmp_path / "frames"),
        **kw,
    )


def test_on_bad_sample_error_names_sample_and_path(tmp_path):
    dataset = build_split(tiny_frames_split(tmp_path), "train")
    assert dataset[0] is not None
    with pytest.raises(
        DataError, match="train sample 2 'train/clip2': frame folder missing: .*frames/train/clip2"
    ):
        dataset[2]


def test_on_bad_sample_skip_counts_and_keeps_batches_per_sampler_batch(tmp_path):
    cfg = tiny_frames_split(tmp_path, missing=(2, 4, 5), on_bad_sample=BadSample.skip)
    dataset = build_split(cfg, "train", train=True)
    batches = [[0, 1], [2, 3], [4, 5]]  # the last batch: every sample bad
    loader = DataLoader(
        dataset, batch_sampler=batches, collate_fn=Collator(CharTokenizer()), num_workers=2
    )
    got = list(loader)
    assert len(got) == 3  # one per sampler batch, also for the all-bad one
    assert got[0]["names"] == ["train/clip0", "train/clip1"]
    assert got[1]["names"] == ["train/clip3"] and got[1]["indices"].tolist() == [3]
    assert got[1]["texts"] == ["satz 3"] and got[1]["input_lengths"].tolist() == [7]
    assert got[2] is None
    assert dataset.bad_sample_count == 3  # counted in the workers, read in the main process
    assert dataset.reset_bad_sample_count() == 3 and dataset.bad_sample_count == 0
    list(DataLoader(dataset, batch_sampler=batches, collate_fn=Collator(CharTokenizer())))
    assert dataset.bad_sample_count == 3  # the next epoch counts again (main process here)


def test_collator_pads_with_zeros():
    samples = [
        {"index": 4, "name": "a", "text": "ab", "inputs": torch.ones(3, 2)},
        None,
        {"index": 7, "name": "b", "text": "c", "inputs": torch.full((5, 2), 2.0)},
    ]
    batch = Collator(CharTokenizer())(samples)
    assert batch["indices"].tolist() == [4, 7] and batch["input_lengths"].tolist() == [3, 5]
    expected = torch.zeros(2, 5, 2)
    expected[0, :3], expected[1] = 1.0, 2.0
    assert torch.equal(batch["inputs"], expected)
    assert Collator(CharTokenizer())([None, None]) is None


# ------------------------------------------------------------------ feature shapes per sample
def features_split(tmp_path, arrays: dict[str, np.ndarray], **kw) -> DataConfig:
    """A GFSLT-style train split whose ``<name>.npy`` files hold ``arrays``."""
    (tmp_path / "feats").mkdir()
    for name, arr in arrays.items():
        np.save(tmp_path / "feats" / f"{name}.npy", arr)
    records = {n: {"name": n, "text": f"satz {n}", "length": 4} for n in arrays}
    write_labels(tmp_path / "labels" / "labels.train", records)
    return DataConfig(name="phoenix14t", layout=Layout.gfslt, modality=Modality.features,
                      labels_dir=str(tmp_path / "labels"), feature_root=str(tmp_path / "feats"),
                      **kw)  # fmt: skip


@pytest.mark.parametrize("feature_dim", [None, 8])
def test_a_feature_file_of_the_wrong_width_is_a_bad_sample_not_a_broken_batch(
    tmp_path, feature_dim
):
    """Before: the (26, 4) file loaded, and the batch failed in the collator with numpy's
    "could not broadcast input array from shape (26,4) into shape (26,8)", naming no file, in
    skip mode too. Now it is a bad sample: skipped and counted, or an error naming file and
    shape and where the expected width comes from."""
    rng = np.random.default_rng(0)
    arrays = {f"c{i}": rng.standard_normal((20 + i, 8)).astype(np.float32) for i in range(4)}
    arrays["c2"] = np.ones((26, 4), dtype=np.float32)
    cfg = features_split(tmp_path, arrays, on_bad_sample=BadSample.skip)
    width = {} if feature_dim is None else {"feature_dim": feature_dim}  # None: as stages call it
    dataset = build_split(cfg, "train", **width)
    loader = DataLoader(dataset, batch_sampler=[[0, 1, 2, 3]], collate_fn=Collator(CharTokenizer()))
    (batch,) = list(loader)
    assert batch["names"] == ["c0", "c1", "c3"] and batch["inputs"].shape == (3, 23, 8)
    assert dataset.bad_sample_count == 1

    cfg.on_bad_sample = BadSample.error
    dataset = build_split(cfg, "train", **width)
    source = (
        "model.sign_embedding.feature_dim"
        if feature_dim
        else f"the first good feature file {tmp_path / 'feats' / 'c0.npy'}"
    )
    with pytest.raises(DataError) as err:
        dataset[2]
    assert str(err.value) == (
        f"train sample 2 'c2': feature file {tmp_path / 'feats' / 'c2.npy'}: shape (26, 4), "
        f"expected (T, 8): width 8 from {source} (data.on_bad_sample=skip skips such samples)"
    )


@pytest.mark.parametrize(
    "bad, says",
    [
        (np.ones((6, 8), dtype=np.int64), "dtype int64, expected floating point"),
        (np.ones((0, 8), dtype=np.float32), "shape (0, 8): no rows"),
        (np.ones(8, dtype=np.float32), "shape (8,), expected 2-D (T, 8)"),
        (np.ones((2, 6, 8), dtype=np.float32), "shape (2, 6, 8), expected 2-D (T, 8)"),
    ],
)
def test_feature_files_are_floating_point_2d_with_rows(tmp_path, bad, says):
    arrays = {"good": np.ones((5, 8), dtype=np.float16), "bad": bad}
    dataset = build_split(features_split(tmp_path, arrays), "train")
    assert dataset[0]["inputs"].dtype == torch.float32  # float16 files load as float32
    with pytest.raises(DataError, match=r"'bad': feature file .*bad\.npy: " + re.escape(says)):
        dataset[1]


# --------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    "name", ["phoenix14t", "phoenix14t_features", "csl_daily", "csl_daily_features"]
)
def test_data_configs_load_and_take_paths_from_env(name, monkeypatch, tmp_path):
    prefix = "CSL_DAILY" if name.startswith("csl") else "PHOENIX14T"
    for var in ("ROOT", "LABELS", "FEATURES", "FRAMES", "FRAME_CACHE"):
        monkeypatch.delenv(f"{prefix}_{var}", raising=False)
    cfg, _ = data_config_from_args([f"data={name}"])
    assert cfg.root is None and cfg.labels_dir is None
    with pytest.raises(DataError, match="is not set"):
        build_split(cfg, "dev")
    monkeypatch.setenv(f"{prefix}_LABELS", str(SHARED / cfg.name))
    monkeypatch.setenv(f"{prefix}_FEATURES", str(tmp_path))
    cfg, _ = data_config_from_args([f"data={name}", "data.layout=gfslt", "data.max_frames=64"])
    assert cfg.labels_dir == str(SHARED / cfg.name) and cfg.max_frames == 64
    assert cfg.language == ("zh" if prefix == "CSL_DAILY" else "de")
    if (SHARED / cfg.name).is_dir():
        assert len(split_records(cfg, "dev")) == SIZES[cfg.name][1]


def test_data_config_args_are_checked():
    with pytest.raises(ConfigError, match="frame_cach"):
        data_config_from_args(["data=phoenix14t", "data.frame_cach=/x"])
    with pytest.raises(ConfigError, match="unknown argument 'outt'"):
        data_config_from_args(["data=phoenix14t", "outt=/x"], ("out",))
    with pytest.raises(ConfigError, match="no config file"):
        data_config_from_args(["data=nope"])
