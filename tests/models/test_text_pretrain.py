"""Text pretraining of the tiny MBart (models/text_pretrain.py) and its check (text_probe.py).

The noise is checked against its definition (span lengths, masked share, kept words in order,
sentence permutation); one tiny pretraining run (seconds) is shared by the tests of the saved
folder: it loads as ``model.mbart_path`` does, the same seed gives the same weights, a run
stopped half-way resumes to the very same weights, and the frozen encoder learnt something the
random one lacks (near-identical sentences closer than random pairs, better retrieval).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from scl_slt.config import ConfigError, PretrainTextConfig, compose_config
from scl_slt.config_checks import validate_pretrain_text, validate_train
from scl_slt.models import text_pretrain as tp
from scl_slt.models.builder import build_model, build_tokenizer
from scl_slt.models.text_probe import (
    encode_rows,
    format_probe,
    near_identical_pairs,
    probe_folder,
)
from scl_slt.models.tokenizer import SLTTokenizer
from scl_slt.selection.pair_scores.text import (
    NEAR_IDENTICAL_TFIDF,
    pair_similarity,
    tfidf_vectors,
)

PLACES = ["im norden", "im süden", "im westen", "im osten", "an der küste", "in den bergen"]
WEATHER = ["regnet es", "scheint die sonne", "gibt es gewitter", "schneit es", "ist es neblig"]
TIMES = ["heute", "morgen", "am abend", "in der nacht", "am wochenende"]
EXTRAS = ["", "vereinzelt", "meist", "kräftig"]


def weather_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Short German weather sentences from a small grammar: repeats and one-word variants."""
    rng = np.random.default_rng(seed)
    combos = list(itertools.product(TIMES, WEATHER, EXTRAS, PLACES))
    picks = rng.integers(len(combos), size=n)
    return [" ".join(w for w in combos[i] if w) for i in picks]


def pretrain_cfg(out_dir, corpus, *extra: str) -> PretrainTextConfig:
    overrides = [f"pretrain.out_dir={out_dir}", f"pretrain.corpus={corpus}",
                 "model.vocab_size=120", "model.dropout=0.0", "pretrain.steps=160",
                 "pretrain.batch_size=32", "pretrain.warmup_steps=10", "pretrain.lr=3e-3",
                 "pretrain.checkpoint_every=40", "pretrain.log_every=40"]  # fmt: skip
    overrides += list(extra)
    return validate_pretrain_text(compose_config("pretrain_text", overrides))


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "texts.txt"
    path.write_text("\n".join(weather_corpus()) + "\n", encoding="utf-8")
    return path


SHORT = ("pretrain.steps=30", "pretrain.checkpoint_every=10")  # the determinism and resume runs


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, corpus_file):
    """A shorter run to repeat: (config, texts, record)."""
    cfg = pretrain_cfg(tmp_path_factory.mktemp("short") / "text_model", corpus_file, *SHORT)
    texts = tp.corpus_texts(cfg)
    return cfg, texts, tp.pretrain_text(cfg, texts, torch.device("cpu"))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, corpus_file):
    """One tiny pretraining run: (config, texts, record)."""
    cfg = pretrain_cfg(tmp_path_factory.mktemp("run") / "text_model", corpus_file)
    texts = tp.corpus_texts(cfg)
    return cfg, texts, tp.pretrain_text(cfg, texts, torch.device("cpu"))


# ------------------------------------------------------------------------------------ noise
def _words(n: int) -> list[list[int]]:
    return [[100 + i] for i in range(n)]  # one token per word, ids 100..


def test_span_mask_covers_the_share_keeps_order_and_draws_poisson_spans():
    rng = np.random.default_rng(0)
    one_mask_gaps = []
    for _ in range(300):
        out = tp.span_mask(_words(60), rng, mask_id=1, ratio=0.35, lam=3.5)
        kept = [t - 100 for t in out if t != 1]
        assert kept == sorted(kept)  # unmasked words in their order
        assert 60 - len(kept) == round(0.35 * 60)  # exactly the share of words masked
        # a gap between kept words holding exactly one <mask> is one span: its length is sampled
        bounds = [-1, *kept, 60]
        marks = [i for i, t in enumerate(out) if t != 1]
        positions = [-1, *marks, len(out)]
        for (a, b), (p, q) in zip(itertools.pairwise(bounds), itertools.pairwise(positions)):
            if q - p - 1 == 1:
                one_mask_gaps.append(b - a - 1)
    assert abs(np.mean(one_mask_gaps) - 3.5) < 0.3  # Poisson(3.5), the last span cut to fit
    assert 0 in one_mask_gaps  # length-0 spans insert a <mask>


def test_no_masking_at_ratio_zero_and_sentences_permuted():
    sentences = [_words(2), [[200], [201]], [[300]]]  # three sentences
    rng = np.random.default_rng(1)
    orders = set()
    for _ in range(60):
        out = tp.noise_text(sentences, rng, 1, ratio=0.0, lam=3.5, permute=True)
        assert sorted(out) == [100, 101, 200, 201, 300]
        orders.add(tuple(out))
    assert len(orders) == 6  # every order of three sentences, each kept whole
    once = tp.noise_text([_words(4)], rng, 1, ratio=0.0, lam=3.5, permute=True)
    assert once == [100, 101, 102, 103]


def test_split_sentences():
    assert tp.split_sentences("es regnet. dann sonne! wind?", "de") == [
        "es regnet.", "dann sonne!", "wind?"
    ]  # fmt: skip
    assert tp.split_sentences("und nun das wetter", "de") == ["und nun das wetter"]
    assert tp.split_sentences("今天下雨。明天晴！", "zh") == ["今天下雨。", "明天晴！"]


def test_tokenizer_is_the_tiny_one_plus_mask():
    texts = weather_corpus(100)
    data = OmegaConf.to_object(compose_config("pretrain_text", ["pretrain.out_dir=x"])).data
    tiny = SLTTokenizer.train(texts, "de", "de_DE", 120)
    tok = tp.pretrain_tokenizer(texts, data, 120)
    assert tok.vocab_size == tiny.vocab_size + 1
    assert tok.tokenize(texts) == tiny.tokenize(texts)
    assert tok.backend.token_to_id(tp.MASK) in tok.special_ids  # never generated


# ----------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "override, key",
    [
        ("pretrain.corpus=/no/such/file.txt", "pretrain.corpus"),
        ("pretrain.mask_ratio=1.5", "pretrain.mask_ratio"),
        ("pretrain.steps=0", "pretrain.steps"),
        ("model.mbart_path=/tmp", "model.mbart_path"),
        ("pretrain.warmup_steps=9999", "pretrain.warmup_steps"),
    ],
)
def test_bad_config_is_named_before_work(override, key):
    cfg = compose_config("pretrain_text", ["pretrain.out_dir=x", override])
    with pytest.raises(ConfigError, match=key):
        validate_pretrain_text(cfg)


def test_missing_corpus_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrain.corpus"):
        tp.read_corpus(tmp_path / "absent.txt")


# -------------------------------------------------------------------------------- the run
def test_folder_loads_as_mbart_path_does(pretrained):
    cfg, texts, _ = pretrained
    out = cfg.pretrain.out_dir
    train = validate_train(
        compose_config("train", ["model=tiny_pretrained", f"model.mbart_path={out}"])
    )
    tokenizer = build_tokenizer(train.model, train.data, texts)
    assert tokenizer.tokenize(texts) == SLTTokenizer.load(out).tokenize(texts)
    model = build_model(train.model, train.data, tokenizer)
    weights = load_file(f"{out}/model.safetensors")
    enc = {k.removeprefix("model.encoder."): v for k, v in weights.items() if ".encoder." in k}
    shared = weights["model.shared.weight"]
    for name, tensor in model.text_encoder.state_dict().items():
        expected = shared if name == "embed_tokens.weight" else enc[name]
        assert torch.equal(tensor, expected), name
    for name, tensor in model.visual_encoder.encoder.state_dict().items():
        assert torch.equal(tensor, enc[name]), name  # the visual encoder starts from it too
    dec = {k.removeprefix("model.decoder."): v for k, v in weights.items() if ".decoder." in k}
    for name, tensor in model.decoder.decoder.state_dict().items():
        assert torch.equal(tensor, shared if name == "embed_tokens.weight" else dec[name]), name
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())  # LoRA off: trains fully


def test_folder_also_loads_with_autotokenizer(pretrained):
    from transformers import AutoTokenizer

    cfg, texts, _ = pretrained
    hf = AutoTokenizer.from_pretrained(cfg.pretrain.out_dir, local_files_only=True)
    ours = SLTTokenizer.load(cfg.pretrain.out_dir)
    assert hf(texts[0], add_special_tokens=False)["input_ids"] == ours.tokenize(texts[:1])[0]


def test_loss_falls(pretrained):
    losses = pretrained[2]["losses"]
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:10])


def test_pretrained_encoder_beats_its_random_init(pretrained):
    cfg, texts, _ = pretrained
    result = probe_folder(cfg.pretrain.out_dir, texts, n_sentences=200, n_pairs=500)
    print(format_probe(result))
    pre, rnd = result["pretrained"], result["random_init"]
    assert pre["near_identical"]["pairs"] >= 20
    assert pre["identical"]["mean_cosine"] == pytest.approx(1.0, abs=1e-5)
    gap = pre["near_minus_random"]
    assert gap > 0.1  # near-identical sentences clearly closer than random pairs
    assert gap > rnd["near_minus_random"]
    assert pre["retrieval"]["r1"] > rnd["retrieval"]["r1"] + 0.05


def test_same_seed_same_weights_and_finished_folder_is_kept(short_run, tmp_path, corpus_file):
    cfg, texts, record = short_run
    again = pretrain_cfg(tmp_path / "again", corpus_file, *SHORT)
    assert tp.pretrain_text(again, texts, torch.device("cpu"))["losses"] == record["losses"]
    a = load_file(f"{cfg.pretrain.out_dir}/model.safetensors")
    b = load_file(f"{again.pretrain.out_dir}/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the same settings again: nothing is trained (the folder is left as it is)
    weights = Path(again.pretrain.out_dir) / "model.safetensors"
    before = weights.stat().st_mtime_ns
    tp.pretrain_text(again, texts, torch.device("cpu"))
    assert weights.stat().st_mtime_ns == before
    other = pretrain_cfg(
        tmp_path / "again", corpus_file, *SHORT, "seed=1"
    )  # other settings: refused
    with pytest.raises(ConfigError, match="pretrain.overwrite"):
        tp.pretrain_text(other, texts, torch.device("cpu"))


def test_interrupted_run_resumes_to_the_same_weights(short_run, tmp_path, corpus_file,
                                                     monkeypatch):  # fmt: skip
    cfg, texts, record = short_run
    resumed = pretrain_cfg(tmp_path / "resumed", corpus_file, *SHORT)
    real_loss, calls = tp.denoising_loss, {"n": 0}

    def crash_at_step_25(*args):
        calls["n"] += 1
        if calls["n"] == 26:
            raise RuntimeError("killed")
        return real_loss(*args)

    monkeypatch.setattr(tp, "denoising_loss", crash_at_step_25)
    with pytest.raises(RuntimeError, match="killed"):
        tp.pretrain_text(resumed, texts, torch.device("cpu"))
    assert not (tmp_path / "resumed").exists()  # nothing under the final name
    work = tmp_path / "resumed.work"
    assert (work / "checkpoints" / "step-000000020").is_dir()
    monkeypatch.setattr(tp, "denoising_loss", real_loss)
    assert tp.pretrain_text(resumed, texts, torch.device("cpu"))["losses"] == record["losses"]
    a = load_file(f"{cfg.pretrain.out_dir}/model.safetensors")
    b = load_file(f"{resumed.pretrain.out_dir}/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not work.exists()


# ------------------------------------------------------------------------------------ probe
def test_near_identical_pairs_match_a_plain_pairwise_scan():
    texts = sorted(set(weather_corpus(150)))
    found = {tuple(p) for p in near_identical_pairs(texts, "de").tolist()}
    tfidf = tfidf_vectors(texts, "de")
    i, j = np.triu_indices(len(texts), k=1)
    sims = pair_similarity(tfidf, i, j)  # sparse row dot products, another code path
    expected = {
        (a, b) for a, b, s in zip(i.tolist(), j.tolist(), sims) if s >= NEAR_IDENTICAL_TFIDF
    }
    assert found == expected and len(found) > 10


def test_encoding_ignores_padding_and_batch_neighbours(pretrained):
    cfg, texts, _ = pretrained
    tok = SLTTokenizer.load(cfg.pretrain.out_dir)
    model = tp.new_text_model(cfg.model, tok, 0)
    rows = tok.tokenize([texts[0], "morgen " * 20])
    alone = encode_rows(model.model.encoder, rows[:1], tok)
    padded = encode_rows(model.model.encoder, rows, tok)[:1]
    np.testing.assert_allclose(alone, padded, atol=1e-5)
    assert np.linalg.norm(alone) == pytest.approx(1.0, abs=1e-5)


PHOENIX_LABELS = Path(__file__).resolve().parents[2] / "../shared/data/phoenix14t"


@pytest.mark.skipif(
    not (PHOENIX_LABELS / "labels.train").is_file(), reason="no ../shared/data/phoenix14t labels"
)
def test_default_corpus_is_the_train_split_targets():
    cfg = validate_pretrain_text(
        compose_config(
            "pretrain_text",
            [
                "pretrain.out_dir=x",
                "data=phoenix14t",
                "data.layout=gfslt",
                f"data.labels_dir={PHOENIX_LABELS}",
            ],  # fmt: skip
        )
    )
    texts = tp.corpus_texts(cfg)
    assert len(texts) == 7096 and all(t == t.strip() and t for t in texts)


def test_required_folders_are_named():
    with pytest.raises(ConfigError, match="pretrain.out_dir"):
        validate_pretrain_text(compose_config("pretrain_text", []))
    with pytest.raises(ConfigError, match="model.mbart_path"):
        validate_train(compose_config("train", ["model=tiny_pretrained"]))
