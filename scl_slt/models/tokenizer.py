"""SLTTokenizer: one interface over mBART-50's tokenizer and the tiny trained one.

Both are a `tokenizers.Tokenizer` underneath, so encoding, decoding and saving share one code
path. The mBART-50 one comes from a local path through `builder.build_tokenizer` (the only place
that calls `from_pretrained`); the tiny one is trained here on the training sentences with the
same special tokens and language codes, so the model and generation code never branch on which
tokenizer they were given.

Target layout (mBART-50 convention): `[lang_code] tokens </s>`, right-padded with `<pad>`.

Normalisation: mBART-50's tokenizer normalises text before encoding (NFKC-like), so it can never
output some characters of the references: CSL-Daily's full-width `，？！` come back as `,?!`, and
character-level scores against the raw references would count every one as an error. The
tokenizer therefore keeps a **restoration map** built from the training texts
(`restoration_map`: normalised form -> the dataset's own character, where the dataset writes the
original form more often than the normalised one) and `decode` applies it, so decoded text is in
the references' own characters. It is saved with the tokenizer; a tokenizer without a
normaliser (the tiny one) has an empty map.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

log = logging.getLogger(__name__)

BOS, PAD, EOS, UNK = "<s>", "<pad>", "</s>", "<unk>"
SPECIAL_TOKENS = (BOS, PAD, EOS, UNK)  # ids 0..3, as in mBART-50 (fairseq order)
WORD_BOUNDARY = "\u2581"  # "▁", SentencePiece's space marker (mBART-50 uses it too)

# The 52 language codes of mBART-50, in its vocabulary order.
MBART50_LANG_CODES = (
    "ar_AR", "cs_CZ", "de_DE", "en_XX", "es_XX", "et_EE", "fi_FI", "fr_XX", "gu_IN", "hi_IN",
    "it_IT", "ja_XX", "kk_KZ", "ko_KR", "lt_LT", "lv_LV", "my_MM", "ne_NP", "nl_XX", "ro_RO",
    "ru_RU", "si_LK", "tr_TR", "vi_VN", "zh_CN", "af_ZA", "az_AZ", "bn_IN", "fa_IR", "he_IL",
    "hr_HR", "id_ID", "ka_GE", "km_KH", "mk_MK", "ml_IN", "mn_MN", "mr_IN", "pl_PL", "ps_AF",
    "pt_XX", "sv_SE", "sw_KE", "ta_IN", "te_IN", "th_TH", "tl_XX", "uk_UA", "ur_PK", "xh_ZA",
    "gl_ES", "sl_SI",
)  # fmt: skip

BACKEND_FILE = "tokenizer.json"
META_FILE = "slt_tokenizer.json"


class TokenizerError(ValueError):
    """A tokenizer file or setting is unusable; the message names it."""


def _char_level(language: str) -> bool:
    """Chinese targets are scored per character, so the tiny tokenizer works per character."""
    return language == "zh"


def restoration_map(backend: Tokenizer, texts: Sequence[str]) -> dict[str, str]:
    """Normalised form -> original character, for the characters of `texts` that the backend's
    normaliser changes (e.g. NFKC's "，" -> ","), where the texts use the original more often
    than the normalised form itself (so decoding should restore it). Forms that are only
    whitespace are never restored; of several originals with one form, the most frequent wins."""
    if backend.normalizer is None:
        return {}
    chars = Counter("".join(texts))
    joined = "\n".join(texts)
    restore: dict[str, str] = {}
    for char, count in chars.most_common():  # most frequent first: it wins a shared form
        form = backend.normalizer.normalize_str(char)
        if form == char or not form.strip() or form in restore:
            continue
        if joined.count(form) < count:
            restore[form] = char
    return restore


def train_tiny_backend(texts: Sequence[str], language: str, vocab_size: int) -> Tokenizer:
    """A small BPE tokenizer over `texts` with mBART-50's specials and language codes.

    Words are marked with "▁" (Metaspace) so decoding restores spaces exactly. For `zh` every
    character is its own pre-token, so no merge crosses characters and no space is invented on
    decoding (the vocabulary is the character set). `vocab_size` bounds the BPE merges; every
    character of the training texts is kept even if that exceeds it.
    """
    if not texts:
        raise TokenizerError("cannot train a tokenizer on zero training texts")
    backend = Tokenizer(models.BPE(unk_token=UNK))
    if _char_level(language):
        metaspace = pre_tokenizers.Metaspace(WORD_BOUNDARY, prepend_scheme="never", split=True)
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [metaspace, pre_tokenizers.Split(Regex("."), behavior="isolated")]
        )
        backend.decoder = decoders.Metaspace(WORD_BOUNDARY, prepend_scheme="never", split=True)
    else:
        backend.pre_tokenizer = pre_tokenizers.Metaspace(
            WORD_BOUNDARY, prepend_scheme="always", split=True
        )
        backend.decoder = decoders.Metaspace(WORD_BOUNDARY, prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    backend.train_from_iterator(list(texts), trainer)
    backend.add_special_tokens(list(MBART50_LANG_CODES))
    return backend


class SLTTokenizer:
    """Target-side tokenizer of the translation model (see the module docstring).

    `decode` is the exact inverse of `encode_targets` on every text whose characters the
    vocabulary covers (all training texts of the tiny tokenizer). With mBART-50's normaliser the
    `restore` map (see the module docstring) brings back the characters it changes.
    """

    def __init__(
        self,
        backend: Tokenizer,
        lang_code: str,
        language: str,
        source: str,
        restore: Mapping[str, str] | None = None,
    ):
        self.backend = backend
        self.restore = dict(restore or {})  # normalised form -> the references' character
        self.backend.no_padding()
        self.backend.no_truncation()
        self.language = language
        self.source = source  # "tiny" (trained here) or "mbart" (mBART-50 or a trimmed copy)
        self.lang_code = lang_code
        self.bos_id = self._require_id(BOS)
        self.pad_id = self._require_id(PAD)
        self.eos_id = self._require_id(EOS)
        self.unk_id = self._require_id(UNK)
        self.lang_id = self._require_id(lang_code)
        added = backend.get_added_tokens_decoder()  # id -> AddedToken
        self.special_ids = sorted(i for i, token in added.items() if token.special)
        if self.lang_id not in self.special_ids:
            raise TokenizerError(f"language code {lang_code!r} is not a special token")

    def _require_id(self, token: str) -> int:
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            codes = [c for c in MBART50_LANG_CODES if self.backend.token_to_id(c) is not None]
            raise TokenizerError(
                f"token {token!r} is not in the tokenizer vocabulary "
                f"(language codes present: {', '.join(codes) or 'none'})"
            )
        return token_id

    # ------------------------------------------------------------------ construction
    @classmethod
    def train(
        cls, texts: Sequence[str], language: str, lang_code: str, vocab_size: int
    ) -> SLTTokenizer:
        """The tiny tokenizer, trained on the training sentences."""
        backend = train_tiny_backend(texts, language, vocab_size)
        restore = restoration_map(backend, texts)
        tokenizer = cls(backend, lang_code, language, source="tiny", restore=restore)
        log.info(
            "trained tiny tokenizer on %d texts: vocabulary %d (%s)",
            len(texts),
            tokenizer.vocab_size,
            "characters" if _char_level(language) else "BPE",
        )
        return tokenizer

    def save(self, directory: str | os.PathLike) -> None:
        """Write `tokenizer.json` and `slt_tokenizer.json` so `load` restores it exactly."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / BACKEND_FILE))
        meta = {
            "lang_code": self.lang_code,
            "language": self.language,
            "source": self.source,
            "restore": self.restore,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SLTTokenizer:
        directory = Path(directory)
        meta_path, backend_path = directory / META_FILE, directory / BACKEND_FILE
        for path in (meta_path, backend_path):
            if not path.is_file():
                raise TokenizerError(
                    f"tokenizer file missing: {path} (written by SLTTokenizer.save)"
                )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            backend = Tokenizer.from_file(str(backend_path))
        except Exception as e:  # json and tokenizers errors alike (tokenizers raises Exception)
            raise TokenizerError(f"cannot read tokenizer in {directory}: {e}") from e
        for key in ("lang_code", "language", "source"):
            if key not in meta:
                raise TokenizerError(f"{meta_path}: key {key!r} missing")
        restore = meta.get("restore", {})  # absent in tokenizers saved before the map existed
        if not isinstance(restore, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in restore.items()
        ):
            raise TokenizerError(f"{meta_path}: 'restore' must map strings to strings")
        return cls(backend, meta["lang_code"], meta["language"], meta["source"], restore)

    @staticmethod
    def is_saved_in(directory: str | os.PathLike) -> bool:
        return (Path(directory) / META_FILE).is_file()

    # ---------------------------------------------------------------------- use
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text without any special token."""
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def encode_targets(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """`[lang_code] tokens </s>` per text, right-padded: ids (B, L) long, mask (B, L) bool."""
        rows = [[self.lang_id, *ids, self.eos_id] for ids in self.tokenize(texts)]
        length = max((len(r) for r in rows), default=0)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)  # (B, L)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)  # (B, L)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        return ids, mask

    def _content(self, row: list[int]) -> list[int]:
        """The sentence tokens of one row: after any leading specials, up to the first </s>."""
        specials = set(self.special_ids)
        start = 0
        while start < len(row) and row[start] in specials:
            start += 1
        end = row.index(self.eos_id, start) if self.eos_id in row[start:] else len(row)
        return [t for t in row[start:end] if t not in specials]

    def decode(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        """Texts of a batch of ids: target rows, generated rows, with or without the prefix;
        characters the normaliser changed are restored (``restore``)."""
        rows = ids.tolist() if isinstance(ids, torch.Tensor) else [list(r) for r in ids]
        texts = self.backend.decode_batch(
            [self._content(r) for r in rows], skip_special_tokens=True
        )
        if not self.restore:
            return texts
        forms = sorted(self.restore, key=len, reverse=True)  # longer forms first: "..." before "."
        restored = []
        for text in texts:
            for form in forms:
                text = text.replace(form, self.restore[form])
            restored.append(text)
        return restored

    def __repr__(self) -> str:
        return (
            f"SLTTokenizer(source={self.source}, language={self.language}, "
            f"lang_code={self.lang_code}, vocab_size={self.vocab_size})"
        )
