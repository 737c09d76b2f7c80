"""The built-in synthetic sign language: determinism, splits, requested rates, alignment,
confusable twins, translation, loading through build_split, and the atomic cache."""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from scl_slt.config import CONFIG_DIR, ConfigError, DataConfig, Layout, Modality, SyntheticConfig
from scl_slt.data.datasets import build_split
from scl_slt.data.labels import SPLITS, DataError, read_labels
from scl_slt.data.synthetic import generate as synthetic
from scl_slt.data.synthetic.__main__ import main
from scl_slt.data.synthetic.generate import cache_root, ensure_synthetic
from scl_slt.data.synthetic.grammar import translate
from scl_slt.data.synthetic.language import as_synthetic_config, build_language


def small(tmp_path: Path, **overrides) -> SyntheticConfig:
    values = dict(cache_dir=str(tmp_path / "cache"), num_train=60, num_dev=12, num_test=12)
    return SyntheticConfig(**(values | overrides))


def labels(root: Path) -> dict[str, dict]:
    return {split: read_labels(root / f"labels.{split}") for split in SPLITS}


def features(root: Path, records: dict) -> dict[str, np.ndarray]:
    return {name: np.load(root / "features" / f"{name}.npy") for name in records}


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> tuple[SyntheticConfig, Path]:
    """Enough clips for per-gloss statistics, still generated in well under a second."""
    cfg = SyntheticConfig(
        cache_dir=str(tmp_path_factory.mktemp("medium")), num_train=240, num_dev=40, num_test=40
    )
    return cfg, ensure_synthetic(cfg, Modality.features)


def test_same_seed_same_data_other_seed_differs(tmp_path):
    roots = [ensure_synthetic(small(tmp_path / d), Modality.features) for d in ("a", "b")]
    assert roots[0] != roots[1]  # two caches: generated twice, not reused
    first, second = labels(roots[0]), labels(roots[1])
    assert first == second
    a, b = features(roots[0], first["train"]), features(roots[1], second["train"])
    assert all(np.array_equal(a[name], b[name]) for name in a)

    other = ensure_synthetic(small(tmp_path / "a", seed=1), Modality.features)
    assert other.parent == roots[0].parent and other != roots[0]  # the seed is in the hash
    third = labels(other)
    assert [r["text"] for r in third["train"].values()] != [
        r["text"] for r in first["train"].values()
    ]
    name = next(iter(first["train"]))
    c = np.load(other / "features" / f"{name}.npy")
    assert c.shape != a[name].shape or not np.array_equal(c, a[name])


def test_split_sizes_names_and_meta(tmp_path):
    cfg = small(tmp_path, num_train=50, num_dev=7, num_test=9)
    root = ensure_synthetic(cfg, Modality.features)
    splits = labels(root)
    assert {s: len(r) for s, r in splits.items()} == {"train": 50, "dev": 7, "test": 9}
    for split, records in splits.items():
        assert list(records) == [f"{split}/synth-{i:05d}" for i in range(1, len(records) + 1)]
        for name, rec in records.items():
            assert rec["name"] == name
            assert set(rec) == {"name", "gloss", "text", "length", "signer", "alignment"}
            assert 0 <= rec["signer"] < cfg.num_signers
            assert cfg.min_glosses <= len(rec["gloss"].split()) <= cfg.max_glosses
            assert rec["gloss"] == rec["gloss"].upper() and rec["text"] == rec["text"].lower()
            assert rec["text"].isascii() and not rec["text"].endswith(".")
    meta = json.loads((root / "meta.json").read_text())
    assert meta["splits"] == {"train": 50, "dev": 7, "test": 9}
    assert meta["config"]["seed"] == cfg.seed and len(meta["glosses"]) == cfg.num_glosses


def naive_confusable_share(motion: np.ndarray) -> float:
    """Reference measurement: glosses whose nearest motion is < 0.5 x the median pair distance."""
    n = len(motion)
    dist = [
        [float(np.sqrt(((motion[i] - motion[j]) ** 2).sum())) for j in range(n)] for i in range(n)
    ]
    median = float(np.median([dist[i][j] for i, j in itertools.combinations(range(n), 2)]))
    close = [min(dist[i][j] for j in range(n) if j != i) < 0.5 * median for i in range(n)]
    return sum(close) / n


@pytest.mark.parametrize("confusable, duplicate", [(0.2, 0.2), (0.5, 0.4)])
def test_achieved_rates_match_request(tmp_path, confusable, duplicate):
    cfg = small(tmp_path, confusable_rate=confusable, duplicate_rate=duplicate, num_train=90)
    root = ensure_synthetic(cfg, Modality.features)
    texts = [r["text"] for r in read_labels(root / "labels.train").values()]
    counts = Counter(texts)
    duplicate_share = sum(counts[t] >= 2 for t in texts) / len(texts)
    assert abs(duplicate_share - duplicate) <= 1 / cfg.num_train
    assert all(2 <= c <= 3 for c in counts.values() if c > 1)

    language = build_language(cfg)
    for motion in (language.feature_motion, language.pose_motion):
        assert abs(naive_confusable_share(motion) - confusable) <= 1 / cfg.num_glosses
    meta = json.loads((root / "meta.json").read_text())
    assert meta["rates"]["duplicate"]["achieved"] == pytest.approx(duplicate_share)
    assert meta["rates"]["confusable"]["achieved"] == pytest.approx(
        naive_confusable_share(language.feature_motion)
    )
    assert len(meta["confusable_pairs"]) == round(confusable * cfg.num_glosses / 2)
    category = {g["name"]: g["category"] for g in meta["glosses"]}
    assert all(category[a] == category[b] for a, b in meta["confusable_pairs"])
    assert sum(map(len, meta["duplicate_groups"])) == sum(counts[t] >= 2 for t in texts)


def test_duplicated_sentences_are_signed_by_different_signers(medium):
    _, root = medium
    records = read_labels(root / "labels.train")
    meta = json.loads((root / "meta.json").read_text())
    assert meta["duplicate_groups"]
    for group in meta["duplicate_groups"]:
        assert len({records[name]["text"] for name in group}) == 1
        assert len({records[name]["signer"] for name in group}) == len(group)  # 4 signers >= 3


def test_alignment_spans_cover_each_clip(medium):
    cfg, root = medium
    meta = json.loads((root / "meta.json").read_text())
    vocabulary = [g["name"] for g in meta["glosses"]]
    for records in labels(root).values():
        for name, rec in records.items():
            arr = np.load(root / "features" / f"{name}.npy")
            assert arr.dtype in (np.float16, np.float32) and arr.shape[1] == cfg.feature_dim
            assert rec["length"] == arr.shape[0]
            spans = rec["alignment"]
            assert spans[0][1] == 0 and spans[-1][2] == rec["length"]
            assert all(prev[2] == nxt[1] for prev, nxt in zip(spans, spans[1:]))
            durations = [end - start for _, start, end in spans]
            assert cfg.min_gloss_frames <= min(durations) <= max(durations) <= cfg.max_gloss_frames
            assert [vocabulary[g] for g, _, _ in spans] == rec["gloss"].split()


def test_twins_are_much_closer_than_random_glosses_in_the_data(medium):
    """Per-gloss templates estimated from one signer's clips: twins nearly coincide."""
    _, root = medium
    meta = json.loads((root / "meta.json").read_text())
    vocabulary = [g["name"] for g in meta["glosses"]]
    segments: dict[int, list[np.ndarray]] = {}
    for name, rec in read_labels(root / "labels.train").items():
        if rec["signer"] != 0:
            continue
        arr = np.load(root / "features" / f"{name}.npy").astype(np.float32)
        for g, start, end in rec["alignment"]:
            frames = np.linspace(start, end - 1, 8).round().astype(int)  # duration-normalised
            segments.setdefault(g, []).append(arr[frames])
    template = {g: np.mean(s, axis=0) for g, s in segments.items() if len(s) >= 2}
    ids = sorted(template)
    pair_distances = [
        np.linalg.norm(template[a] - template[b]) for a, b in itertools.combinations(ids, 2)
    ]
    median = float(np.median(pair_distances))
    twins = [(vocabulary.index(a), vocabulary.index(b)) for a, b in meta["confusable_pairs"]]
    measured = [(a, b) for a, b in twins if a in template and b in template]
    assert measured, "no twin pair has enough clips of signer 0"
    for a, b in measured:
        assert np.linalg.norm(template[a] - template[b]) < 0.3 * median
    twin_set = {frozenset(p) for p in twins}
    unrelated = [p for p in itertools.combinations(ids, 2) if frozenset(p) not in twin_set]
    assert min(np.linalg.norm(template[a] - template[b]) for a, b in unrelated) > 0.5 * median


def test_translation_reorders_and_adds_function_words(medium):
    assert translate(["MORGEN", "NORD", "REGEN"]) == "morgen regnet es im norden"
    assert translate(["NORD", "REGEN", "STARK"]) == "im norden regnet es stark"
    assert translate(["GEWITTER", "NICHT"]) == "es gibt keine gewitter"
    assert translate(["HEUTE", "SUED", "WARM", "STARK"]) == "heute wird es im sueden sehr warm"
    assert translate(["TEMPERATUR", "GLEICH"]) == "die temperaturen bleiben gleich"
    assert translate(["OST", "ZEHN", "GRAD", "UND", "SONNE"]) == (
        "im osten werden bis zu zehn grad erwartet und die sonne scheint"
    )
    with pytest.raises(ValueError, match="ungrammatical"):
        translate(["REGEN", "NORD"])
    _, root = medium
    records = [r for split in labels(root).values() for r in split.values()]
    for rec in records:
        assert translate(rec["gloss"].split()) == rec["text"]  # a function of the glosses
        assert rec["text"] != rec["gloss"].lower()
    gloss_words = {g.lower() for rec in records for g in rec["gloss"].split()}
    with_function_words = [set(r["text"].split()) - gloss_words for r in records]
    assert all(with_function_words)  # every sentence has words no gloss spells


def test_dev_and_test_are_mostly_new_sentences(medium):
    cfg, root = medium
    splits = labels(root)
    train_texts = {r["text"] for r in splits["train"].values()}
    train_words = {w for t in train_texts for w in t.split()}
    for split in ("dev", "test"):
        texts = [r["text"] for r in splits[split].values()]
        seen = sum(t in train_texts for t in texts) / len(texts)
        assert abs(seen - cfg.eval_seen_rate) <= 1 / len(texts)
        assert {w for t in texts for w in t.split()} <= train_words  # learnable vocabulary


def test_loads_through_build_split(medium):
    cfg, root = medium
    data = DataConfig(layout=Layout.synthetic, modality=Modality.features, synthetic=cfg)
    for split in SPLITS:
        ds = build_split(data, split)
        records = read_labels(root / f"labels.{split}")
        assert len(ds) == len(records) and ds.names == list(records)
        sample = ds[3]
        rec = records[sample["name"]]
        assert sample["inputs"].shape == (rec["length"], cfg.feature_dim)
        assert sample["text"] == rec["text"]


def test_frames_are_rendered_beside_the_features(tmp_path):
    cfg = small(tmp_path, num_train=6, num_dev=2, num_test=2, image_size=16)
    root = ensure_synthetic(cfg, Modality.features)
    assert not (root / "frames").exists()  # frames only when asked for
    assert ensure_synthetic(cfg, Modality.frames) == root
    from PIL import Image

    for name, rec in read_labels(root / "labels.train").items():
        files = sorted((root / "frames" / name).iterdir())
        assert [f.name for f in files] == [
            f"images{t:04d}.png" for t in range(1, rec["length"] + 1)
        ]
        images = np.stack([np.asarray(Image.open(f)) for f in files])
        assert images.shape == (rec["length"], 16, 16, 3) and images.dtype == np.uint8
        assert np.abs(np.diff(images.astype(int), axis=0)).mean() > 1  # the hands move
    data = DataConfig(modality=Modality.frames, resize=18, crop=16, augment=False, synthetic=cfg)
    sample = build_split(data, "dev")[0]
    length = read_labels(root / "labels.dev")[sample["name"]]["length"]
    assert sample["inputs"].shape == (length, 3, 16, 16)


def test_cache_is_reused_and_ignores_stale_temporary_folders(tmp_path):
    cfg = small(tmp_path)
    root = cache_root(cfg)
    stale = root.parent / f".{root.name}.tmp-12345-deadbeef"
    (stale / "features").mkdir(parents=True)
    (stale / "labels.train").write_bytes(b"half written")
    other = root.parent / ".0123456789ab.tmp-12345-deadbeef"  # another config's, maybe in progress
    other.mkdir()
    assert ensure_synthetic(cfg, Modality.features) == root
    assert not stale.exists() and (root / "meta.json").is_file()
    assert other.is_dir()  # only this dataset's own leftovers are removed
    assert len(read_labels(root / "labels.train")) == cfg.num_train
    stamp = (root / "meta.json").stat().st_mtime_ns
    assert ensure_synthetic(cfg, Modality.features) == root
    assert (root / "meta.json").stat().st_mtime_ns == stamp  # reused, not regenerated


def test_failed_generation_leaves_no_dataset(tmp_path, monkeypatch):
    cfg = small(tmp_path)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(synthetic, "render_features", broken)
    with pytest.raises(OSError, match="disk full"):
        ensure_synthetic(cfg, Modality.features)
    assert [p.name for p in cache_root(cfg).parent.iterdir()] == [f".{cache_root(cfg).name}.lock"]
    monkeypatch.undo()
    assert (ensure_synthetic(cfg, Modality.features) / "meta.json").is_file()


def test_concurrent_callers_share_one_generation(tmp_path, monkeypatch):
    cfg = small(tmp_path)
    calls, generate = [], synthetic._generate_dataset

    def counted(*args):
        calls.append(1)
        return generate(*args)

    monkeypatch.setattr(synthetic, "_generate_dataset", counted)
    roots: list[Path] = []

    def call() -> None:
        roots.append(ensure_synthetic(cfg, "features"))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(roots) == 3 and len(set(roots)) == 1
    leftovers = [p.name for p in roots[0].parent.iterdir() if ".tmp-" in p.name]
    assert leftovers == [] and len(read_labels(roots[0] / "labels.dev")) == cfg.num_dev


def test_folder_without_meta_is_refused(tmp_path):
    cfg = small(tmp_path)
    cache_root(cfg).mkdir(parents=True)
    with pytest.raises(DataError, match="meta.json"):
        ensure_synthetic(cfg, Modality.features)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (dict(confusable_rate=1.5), "confusable_rate"),
        (dict(min_glosses=5, max_glosses=3), "min_glosses"),
        (dict(num_glosses=3), "num_glosses"),
        (dict(num_glosses=12, confusable_rate=0.9), "confusable_rate"),  # no room for twins
        (dict(min_glosses=2, max_glosses=2, num_train=2000), "max_glosses"),  # too few sentences
    ],
)
def test_bad_values_raise_naming_the_key(tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=f"data.synthetic.{key}"):
        ensure_synthetic(small(tmp_path, **overrides), Modality.features)


@pytest.mark.parametrize(
    "name, modality", [("synthetic", "features"), ("synthetic_frames", "frames")]
)
def test_data_configs_merge_onto_the_schema(name, modality):
    yaml = OmegaConf.load(CONFIG_DIR / "data" / f"{name}.yaml")
    data = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), yaml))
    assert data.layout is Layout.synthetic and data.modality is Modality(modality)
    assert (data.name, data.language, data.lang_code) == ("synthetic", "de", "de_DE")
    defaults = SyntheticConfig()  # the YAML documents the real defaults
    for key in yaml.synthetic:
        assert getattr(data.synthetic, key) == getattr(defaults, key), key


def test_cli_generates_and_prints_stats(tmp_path, capsys):
    main([f"cache_dir={tmp_path}", "num_train=20", "num_dev=4", "num_test=4"])
    out = capsys.readouterr().out
    assert "generated" in out and "'train': 20" in out and "rate duplicate" in out
    main([f"cache_dir={tmp_path}", "num_train=20", "num_dev=4", "num_test=4"])
    assert "reused" in capsys.readouterr().out


def test_cache_dir_default_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SCL_SLT_CACHE", str(tmp_path / "env"))
    plain = cache_root(SyntheticConfig())  # a plain dataclass still holds ${oc.env:...}
    omega = cache_root(as_synthetic_config(OmegaConf.structured(SyntheticConfig)))
    assert plain == omega and plain.parent == tmp_path / "env" / "synthetic"
    reseeded = cache_root(SyntheticConfig(seed=1))
    assert reseeded.parent == plain.parent and reseeded.name != plain.name
