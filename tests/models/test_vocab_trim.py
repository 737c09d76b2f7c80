"""Vocabulary trimming and pretrained loading, on a small random MBart and a small
SentencePiece-based mBART-50-style tokenizer built here (nothing downloaded)."""

from __future__ import annotations

import json

import pytest
import torch

from scl_slt.config import DataConfig, ModelConfig, SignEmbeddingConfig
from scl_slt.data.labels import write_labels
from scl_slt.models.builder import build_model, build_tokenizer, load_pretrained_mbart
from scl_slt.models.tokenizer import MBART50_LANG_CODES, SLTTokenizer
from scl_slt.models.vocab_trim import (
    MBART50_ADDED_TOKENS,
    TrimError,
    estimate_kept_tokens,
    trim_backend,
    trim_mbart,
    verify_trimmed,
)
from scl_slt.trim_vocab import main as trim_main

CORPUS = {
    "train": [
        "im süden können gewitter auftreten",
        "morgen scheint im norden die sonne",
        "die temperaturen steigen auf zwölf grad",
        "今天天气很好",
    ],
    "dev": ["in der nacht können schauer fallen", "我们去公园"],
    "test": ["am wochenende wird es überall wärmer", "他在2012年来过"],
}
# The SentencePiece model also sees text outside the corpus, so trimming has pieces to drop.
OTHER = [
    "le temps sera ensoleillé demain matin",
    "questo è un esempio di testo italiano",
    "przykładowe zdanie po polsku żółć",
    "быстрая коричневая лиса прыгает",
    "東京は雨が降っています",
]


@pytest.fixture(scope="module")
def mbart_dir(tmp_path_factory):
    """save_pretrained directory: a random tiny MBart + an mBART-50-style tokenizer."""
    import sentencepiece as spm
    from transformers import MBart50Tokenizer, MBartConfig, MBartForConditionalGeneration

    root = tmp_path_factory.mktemp("mbart50")
    spm_dir, out = root / "spm", root / "model"
    spm_dir.mkdir()
    texts = [t for split in CORPUS.values() for t in split] + OTHER + ["你们好！"]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * 10),
        model_prefix=str(spm_dir / "sentencepiece.bpe"),
        vocab_size=150,
        model_type="unigram",
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    tokenizer = MBart50Tokenizer.from_pretrained(str(spm_dir))
    tokenizer.save_pretrained(out)
    config = MBartConfig(
        vocab_size=len(tokenizer),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=24,
        decoder_ffn_dim=24,
        max_position_embeddings=64,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    torch.manual_seed(0)
    model = MBartForConditionalGeneration(config)
    model.generation_config.forced_bos_token_id = tokenizer.convert_tokens_to_ids("de_DE")
    with torch.no_grad():
        model.final_logits_bias.normal_()  # non-zero, so cutting it wrongly would show
    model.save_pretrained(out)
    return out


def _slt(path, lang_code="de_DE") -> SLTTokenizer:
    return build_tokenizer(ModelConfig(mbart_path=str(path)), DataConfig(lang_code=lang_code), [])


def test_trimmed_model_and_tokenizer_are_exact(mbart_dir, tmp_path):
    out = tmp_path / "trimmed"
    report = trim_mbart(str(mbart_dir), CORPUS, out, lang_code="de_DE")
    full, trimmed = _slt(mbart_dir), _slt(out)
    kept = json.loads((out / "kept_token_ids.json").read_text())
    assert report["kept_vocab"] == len(kept) == trimmed.vocab_size < full.vocab_size
    assert report["texts"] == {"train": 4, "dev": 2, "test": 2}
    assert not list(out.glob("*.model"))  # no stale untrimmed SentencePiece file
    for code in MBART50_LANG_CODES:  # every language code survives
        assert trimmed.backend.token_to_id(code) is not None
    assert kept[trimmed.lang_id] == full.lang_id
    for texts in CORPUS.values():
        ids, mask = trimmed.encode_targets(texts)
        assert trimmed.decode(ids) == texts
        assert trimmed.unk_id not in ids[mask].tolist()
        for f_ids, t_ids in zip(full.tokenize(texts), trimmed.tokenize(texts)):
            assert [kept[i] for i in t_ids] == f_ids  # same segmentation, renumbered

    full_model, small = load_pretrained_mbart(str(mbart_dir)), load_pretrained_mbart(str(out))
    assert full_model.generation_config.forced_bos_token_id == full.lang_id
    assert small.generation_config.forced_bos_token_id == trimmed.lang_id
    texts = CORPUS["train"]
    f_ids, f_mask = full.encode_targets(texts)
    t_ids, t_mask = trimmed.encode_targets(texts)
    index = torch.tensor(kept)
    with torch.no_grad():
        full_logits = full_model.eval()(
            input_ids=f_ids, attention_mask=f_mask, decoder_input_ids=f_ids
        ).logits
        small_logits = small.eval()(
            input_ids=t_ids, attention_mask=t_mask, decoder_input_ids=t_ids
        ).logits
    torch.testing.assert_close(small_logits, full_logits[..., index])


def test_mbart_decoding_restores_what_its_normaliser_changes(mbart_dir):
    """mBART-50's own normaliser (sentencepiece nmt_nfkc) writes "！" as "!"; with training
    texts that use "！", decoding gives the references' character back."""
    texts = CORPUS["train"] + ["你们好！"]
    plain = build_tokenizer(ModelConfig(mbart_path=str(mbart_dir)), DataConfig(), [])
    tok = build_tokenizer(ModelConfig(mbart_path=str(mbart_dir)), DataConfig(), texts)
    assert plain.restore == {} and tok.restore == {"!": "！"}
    ids, _ = tok.encode_targets(["你们好！"])
    assert plain.decode(ids) == ["你们好!"] and tok.decode(ids) == ["你们好！"]


def test_texts_decoding_cannot_restore_fail_unless_allowed(mbart_dir, tmp_path):
    restorable = dict(CORPUS, train=CORPUS["train"] + ["你们好！"])  # NFKC turns "！" into "!"
    report = trim_mbart(str(mbart_dir), restorable, tmp_path / "restored", lang_code="zh_CN")
    assert report["restored_by_decoding"] == {"!": "！"}
    assert report["normalised_by_full_tokenizer"] == 0
    # "!" is the corpus's own more often than "！": decoding keeps "!", the text changes
    ambiguous = dict(CORPUS, train=CORPUS["train"] + ["你们好！", "und! nun!"])
    with pytest.raises(TrimError, match="normalised.*你们好！"):
        trim_mbart(str(mbart_dir), ambiguous, tmp_path / "strict", lang_code="zh_CN")
    report = trim_mbart(
        str(mbart_dir), ambiguous, tmp_path / "lenient", lang_code="zh_CN", allow_normalization=True
    )
    assert report["normalised_by_full_tokenizer"] == 1 and report["restored_by_decoding"] == {}


def test_check_catches_a_trimmed_tokenizer_that_loses_characters(mbart_dir):
    """The bug seen in peers' trimmed tokenizers: "können" coming back as "knnen"."""
    full = _slt(mbart_dir)
    used = {i for ids in full.tokenize([t for s in CORPUS.values() for t in s]) for i in ids}
    lossy = sorted(
        (used - {i for i in used if "ö" in full.backend.id_to_token(i)})
        | set(full.backend.get_added_tokens_decoder())
    )
    broken = SLTTokenizer(trim_backend(full.backend, lossy), "de_DE", "de", "mbart")
    with pytest.raises(TrimError, match="können"):
        verify_trimmed(full, broken, lossy, CORPUS)


def test_cli_with_label_files_and_text_files(mbart_dir, tmp_path, capsys):
    labels = tmp_path / "labels"
    for split, texts in CORPUS.items():
        write_labels(
            labels / f"labels.{split}",
            {f"{split}/{i}": {"name": f"{split}/{i}", "text": t} for i, t in enumerate(texts)},
        )
    out = tmp_path / "from_labels"
    assert (
        trim_main(["--mbart", str(mbart_dir), "--labels-dir", str(labels), "--out", str(out)]) == 0
    )
    assert json.loads((out / "trim_report.json").read_text())["texts"]["dev"] == 2
    assert "model.mbart_path=" in capsys.readouterr().out
    bad = tmp_path / "train.txt"
    bad.write_text("\n".join(CORPUS["train"] + ["你们好！", "und! nun!"]) + "\n", encoding="utf-8")
    args = ["--mbart", str(mbart_dir), "--texts", str(bad), "--out", str(tmp_path / "bad")]
    assert trim_main(args + ["--lang-code", "zh_CN"]) == 1
    assert "FAILED" in capsys.readouterr().err
    assert trim_main(args + ["--lang-code", "zh_CN", "--allow-normalization"]) == 0


def _small_model_cfg(path) -> ModelConfig:
    cfg = ModelConfig(mbart_path=str(path), dropout=0.0)
    cfg.sign_embedding = SignEmbeddingConfig(feature_dim=6, hidden=8)
    cfg.lora.r, cfg.lora.alpha = 4, 8
    cfg.similarity.proj_dim = 8
    return cfg


def test_build_model_from_a_pretrained_directory_is_faithful(mbart_dir, tmp_path):
    tokenizer = _slt(mbart_dir)
    model = build_model(_small_model_cfg(mbart_dir), DataConfig(), tokenizer).eval()
    hf = load_pretrained_mbart(str(mbart_dir)).eval()
    texts = CORPUS["train"]
    ids, mask = tokenizer.encode_targets(texts)
    with torch.no_grad():
        ours = model.encode_text(ids, mask)
        theirs = hf.model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(ours, theirs * mask[..., None])
        # the decoder (LoRA B = 0 at start) is mBART's decoder + LM head over the video memory
        x = torch.randn(len(texts), 9, 6)
        lengths = torch.tensor([9, 8, 5, 3])
        out = model(x, lengths, ids, mask)
        memory, memory_mask = out.video_tokens, out.video_mask
        decoder_inputs = torch.cat([torch.full((len(texts), 1), 2), ids[:, :-1]], 1)
        decoder_inputs = decoder_inputs.masked_fill(~mask, tokenizer.pad_id)
        reference = hf(
            encoder_outputs=(memory,),
            attention_mask=memory_mask,
            decoder_input_ids=decoder_inputs,
            decoder_attention_mask=mask,
        ).logits
    torch.testing.assert_close(out.logits[mask], reference[mask], atol=1e-5, rtol=1e-4)
    visual = model.visual_encoder.encoder.state_dict()
    for key, value in hf.model.encoder.state_dict().items():
        if key.startswith("embed_tokens"):
            continue
        lora_key = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(visual.get(key, visual.get(lora_key)), value), key


def test_vocabulary_mismatch_and_missing_model_are_clear_errors(mbart_dir, monkeypatch):
    tiny_tokenizer = SLTTokenizer.train(CORPUS["train"], "de", "de_DE", vocab_size=40)
    with pytest.raises(ValueError, match="vocabulary"):
        build_model(_small_model_cfg(mbart_dir), DataConfig(), tiny_tokenizer)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="(?s)nothing is downloaded.*hf download"):
        load_pretrained_mbart("scl-slt-tests/no-such-model")


def test_estimate_without_the_tokenizer_counts_words_or_characters_plus_kept_specials():
    assert MBART50_ADDED_TOKENS == 57  # <s> <pad> </s> <unk>, 52 language codes, <mask>
    assert estimate_kept_tokens(["regen im norden", "im süden"], "de") == 4 + 57
    assert estimate_kept_tokens(["今天天气很好", "今天 好"], "zh") == 5 + 57  # 今天气很好
