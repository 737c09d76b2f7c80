"""SLTTokenizer: target layout, exact round trips (German and Chinese), save/load, mBART-50 path."""

from __future__ import annotations

import gzip
import pickle
import unicodedata
from pathlib import Path

import pytest
import torch
from tokenizers import normalizers

from scl_slt.config import DataConfig, ModelConfig
from scl_slt.eval.metrics import compute_metrics
from scl_slt.models.builder import build_tokenizer
from scl_slt.models.tokenizer import (
    SLTTokenizer,
    TokenizerError,
    restoration_map,
    train_tiny_backend,
)

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

GERMAN = [
    "und nun die wettervorhersage für morgen donnerstag den zwölften august",
    "im süden können gewitter auftreten",
    "mancherorts regnet es auch länger und ergiebig",
    "am tag vierzehn bis zweiundzwanzig grad",
]
CHINESE = ["你们好！", "今天天气很好，我们去公园吧。", "我 喜欢 NBA", "他在2012年来过。"]


def _real_texts(dataset: str) -> dict[str, list[str]]:
    folder = SHARED_DATA / dataset
    if not (folder / "labels.train").is_file():
        pytest.skip(f"real annotation files not found in {folder}")
    texts = {}
    for split in ("train", "dev", "test"):
        with gzip.open(folder / f"labels.{split}", "rb") as f:
            texts[split] = [r["text"] for r in pickle.load(f).values()]
    return texts


def test_encode_targets_layout_and_padding():
    tok = SLTTokenizer.train(GERMAN, "de", "de_DE", vocab_size=120)
    ids, mask = tok.encode_targets([GERMAN[1], GERMAN[0]])
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape
    pieces = tok.tokenize([GERMAN[1], GERMAN[0]])
    for row, (piece_ids, row_mask) in enumerate(zip(pieces, mask)):
        n = len(piece_ids) + 2
        assert ids[row, :n].tolist() == [tok.lang_id, *piece_ids, tok.eos_id]
        assert row_mask.tolist() == [True] * n + [False] * (ids.shape[1] - n)
        assert (ids[row, n:] == tok.pad_id).all()
    # mBART-50's fixed special ids and a real language code
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.backend.id_to_token(tok.lang_id) == "de_DE"
    assert tok.vocab_size == tok.backend.get_vocab_size()


@pytest.mark.parametrize("language,code,texts", [("de", "de_DE", GERMAN), ("zh", "zh_CN", CHINESE)])
def test_round_trip_is_exact(language, code, texts):
    tok = SLTTokenizer.train(texts, language, code, vocab_size=60)
    ids, _ = tok.encode_targets(texts)
    assert tok.decode(ids) == texts
    assert tok.unk_id not in ids.tolist()


def test_chinese_is_character_level():
    tok = SLTTokenizer.train(CHINESE * 5, "zh", "zh_CN", vocab_size=500)
    for text, pieces in zip(CHINESE, tok.tokenize(CHINESE)):
        # every token covers one character (or the space marker), no merges across characters
        tokens = [tok.backend.id_to_token(i) for i in pieces]
        assert all(len(t) == 1 for t in tokens), tokens
        assert len(pieces) == len(text)


def test_decode_generated_rows():
    tok = SLTTokenizer.train(GERMAN, "de", "de_DE", vocab_size=120)
    body = tok.tokenize([GERMAN[1]])[0]
    generated = [*body, tok.eos_id, tok.pad_id, tok.pad_id]  # what generate() returns
    with_prefix = [tok.eos_id, tok.lang_id, *body, tok.eos_id, *body]  # text after </s> ignored
    assert tok.decode([generated, with_prefix]) == [GERMAN[1], GERMAN[1]]
    assert tok.decode(torch.tensor([[tok.eos_id, tok.pad_id]])) == [""]


def test_save_load_identical(tmp_path):
    tok = SLTTokenizer.train(CHINESE, "zh", "zh_CN", vocab_size=60)
    tok.save(tmp_path / "tok")
    again = SLTTokenizer.load(tmp_path / "tok")
    for name in ("pad_id", "eos_id", "lang_id", "vocab_size", "special_ids", "language"):
        assert getattr(again, name) == getattr(tok, name)
    a, _ = tok.encode_targets(CHINESE)
    b, _ = again.encode_targets(CHINESE)
    assert torch.equal(a, b)
    assert again.decode(b) == CHINESE


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(TokenizerError, match="xx_YY"):
        SLTTokenizer.train(GERMAN, "de", "xx_YY", vocab_size=60)
    with pytest.raises(TokenizerError, match="slt_tokenizer.json"):
        SLTTokenizer.load(tmp_path)
    (tmp_path / "slt_tokenizer.json").write_text("{not json")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(TokenizerError, match=str(tmp_path)):
        SLTTokenizer.load(tmp_path)


def test_build_tokenizer_trains_and_saves(tmp_path):
    model_cfg = ModelConfig(vocab_size=80)
    data_cfg = DataConfig(language="de", lang_code="de_DE")
    tok = build_tokenizer(model_cfg, data_cfg, GERMAN, out_dir=tmp_path / "tokenizer")
    again = SLTTokenizer.load(tmp_path / "tokenizer")
    assert again.decode(again.encode_targets(GERMAN)[0]) == GERMAN
    assert tok.source == again.source == "tiny"
    # a saved SLTTokenizer directory can be given as model.tokenizer_path
    reused = build_tokenizer(ModelConfig(tokenizer_path=str(tmp_path / "tokenizer")), data_cfg, [])
    assert torch.equal(reused.encode_targets(GERMAN)[0], tok.encode_targets(GERMAN)[0])


@pytest.mark.parametrize(
    "dataset,language,code", [("phoenix14t", "de", "de_DE"), ("csl_daily", "zh", "zh_CN")]
)
def test_round_trip_on_real_annotations(dataset, language, code):
    texts = _real_texts(dataset)
    tok = SLTTokenizer.train(texts["train"], language, code, vocab_size=400)
    ids, mask = tok.encode_targets(texts["train"])
    decoded = tok.decode(ids)
    wrong = [(t, d) for t, d in zip(texts["train"], decoded) if t != d]
    assert not wrong, wrong[:5]
    assert tok.unk_id not in ids[mask].tolist()
    # dev/test texts whose characters the train set covers come back exactly too
    known = set("".join(texts["train"]))
    covered = [t for t in texts["dev"] + texts["test"] if set(t) <= known]
    assert covered and tok.decode(tok.encode_targets(covered)[0]) == covered
    if language == "zh":
        assert " " not in "".join(decoded)


# ----------------------------------------------------------- a normalising (mBART-like) tokenizer
def _nfkc_backend(texts: list[str], language: str):
    """A tokenizer that normalises like mBART-50 (NFKC before encoding), its vocabulary learnt
    on the normalised texts, so full-width punctuation encodes fine but decodes as ASCII."""
    backend = train_tiny_backend([unicodedata.normalize("NFKC", t) for t in texts], language, 400)
    backend.normalizer = normalizers.NFKC()
    return backend


def test_decoding_restores_the_characters_the_normaliser_changed(tmp_path):
    backend = _nfkc_backend(CHINESE, "zh")
    restore = restoration_map(backend, CHINESE)
    assert restore == {"!": "！", ",": "，"}  # "。" has no NFKC form; ASCII text is untouched
    plain = SLTTokenizer(backend, "zh_CN", "zh", "mbart")
    tok = SLTTokenizer(backend, "zh_CN", "zh", "mbart", restore)
    ids, _ = tok.encode_targets(CHINESE)
    assert plain.decode(ids) == ["你们好!", "今天天气很好,我们去公园吧。", *CHINESE[2:]]
    assert tok.decode(ids) == CHINESE
    tok.save(tmp_path / "tok")
    again = SLTTokenizer.load(tmp_path / "tok")
    assert again.restore == restore and again.decode(ids) == CHINESE


def test_restoration_map_leaves_forms_the_texts_use_themselves_and_spaces():
    texts = ["a,b，c", "d,e", "x\u3000y", "１２ and 12 12"]  # "," is the texts' own more often
    backend = _nfkc_backend(texts, "de")
    assert restoration_map(backend, texts) == {}
    assert restoration_map(train_tiny_backend(texts, "de", 100), texts) == {}  # no normaliser


def test_real_csl_daily_references_survive_a_normalising_tokenizer():
    """With an NFKC tokenizer, dev/test references (characters covered by train) decode back
    to themselves, so character-level BLEU against the raw references is 100; without the map
    most of them lose their full-width punctuation."""
    texts = _real_texts("csl_daily")
    backend = _nfkc_backend(texts["train"], "zh")
    restore = restoration_map(backend, texts["train"])
    assert {",": "，", "?": "？", "!": "！"}.items() <= restore.items()
    known = set("".join(texts["train"]))
    covered = [t for t in texts["dev"] + texts["test"] if set(t) <= known]
    assert len(covered) > 1500
    ids, _ = SLTTokenizer(backend, "zh_CN", "zh", "mbart", restore).encode_targets(covered)
    decoded = SLTTokenizer(backend, "zh_CN", "zh", "mbart", restore).decode(ids)
    assert decoded == covered
    assert compute_metrics(decoded, covered, "zh")["bleu4"] == pytest.approx(100.0)
    damaged = SLTTokenizer(backend, "zh_CN", "zh", "mbart").decode(ids)
    assert sum(d != t for d, t in zip(damaged, covered)) > len(covered) // 2
    assert compute_metrics(damaged, covered, "zh")["bleu4"] < 90.0
