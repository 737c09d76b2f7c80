"""Generation on every transformers version pyproject allows, and on a blown-up model.

transformers moved the decoder's KV cache under us (tuples -> Cache objects; the keyword
`past_key_values` -> `cache`, whose old name warns on every call in 5.24 and goes in 5.40), so
these tests run our decoder calls with transformers' deprecation warnings turned into errors,
check the cached beam search token for token against the uncached one, and check the cache
reordering of beam search whatever cache type the installed version returns. The same tests run
against the lowest supported versions in `scripts/check_lowest_versions.sh` (the `slow` test at
the end). Non-finite logits must stop beam search with a `FloatingPointError` naming the step
and the hypotheses, not fail later inside the bookkeeping.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from tiny_models import FEATURE_DIM, TEXTS, train_tokenizer

from scl_slt.config import DataConfig, ModelConfig, SignEmbeddingConfig
from scl_slt.models.builder import build_model
from scl_slt.models.slt import CACHE_KEYWORD, beam_search, new_kv_cache, reorder_kv_cache
from scl_slt.models.tokenizer import SLTTokenizer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tok() -> SLTTokenizer:
    return train_tokenizer()


def sharp_model(tok, eos_bias: float = 1.0, decoder_layers: int = 1):
    """A tiny model whose decoder has sharp, input-dependent distributions (a freshly
    initialised one echoes one token), so beams differ, reorder and end at different lengths."""
    cfg = ModelConfig(
        d_model=16,
        encoder_layers=1,
        decoder_layers=decoder_layers,
        attention_heads=2,
        ffn_dim=32,
        max_position_embeddings=64,
    )
    cfg.sign_embedding = SignEmbeddingConfig(feature_dim=FEATURE_DIM, hidden=12, kernel=5)
    torch.manual_seed(4)
    model = build_model(cfg, DataConfig(modality="features"), tok).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.decoder.named_parameters():
            if "layers" in name and p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen))
        embedding = model.decoder.decoder.embed_tokens.weight
        embedding.copy_(torch.randn(embedding.shape, generator=gen) * 0.3)
        model.decoder.final_logits_bias[0, tok.eos_id] = eos_bias
    return model


def make_inputs(lengths, seed=5):
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(lengths), max(lengths), FEATURE_DIM)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randn(n, FEATURE_DIM, generator=gen)
    return x, torch.tensor(lengths)


# ------------------------------------------------------------- deprecations as errors
class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def transformers_deprecations_are_errors():
    """FutureWarning / DeprecationWarning raised from transformers' modules, or naming its cache
    keyword wherever they are attributed, become errors; other libraries' own warnings keep
    their default handling, so an unrelated deprecation inside torch cannot make this flaky.
    transformers also announces some deprecations by logging them once per process
    (`logger.warning_once`, e.g. reading `output.past_key_values` in 5.24): the once-cache is
    cleared and the messages that say "deprecated" are collected, to be asserted empty."""
    clear_once = getattr(getattr(logging.Logger, "warning_once", None), "cache_clear", None)
    if clear_once is not None:
        clear_once()
    hf_logger = logging.getLogger("transformers")
    records, level = _Records(), hf_logger.level
    hf_logger.addHandler(records)
    hf_logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning):
                warnings.filterwarnings("error", category=category, module=r"transformers\.")
                warnings.filterwarnings(
                    "error", r".*\b(past_key_values|cache_params)\b", category=category
                )
            yield records
    finally:
        hf_logger.removeHandler(records)
        hf_logger.setLevel(level)


def deprecation_notices(records: _Records) -> list[str]:
    return [m for m in records.messages if "deprecat" in m.lower()]


@pytest.mark.skipif(
    CACHE_KEYWORD != "cache", reason="the installed transformers still takes `past_key_values`"
)
def test_the_harness_catches_the_old_cache_keyword(tok):
    """The check below can fail: the spelling this project used before (`past_key_values=`,
    `output.past_key_values`) is caught on a transformers that deprecates it."""
    decoder = sharp_model(tok).decoder.decoder
    ids, memory = torch.tensor([[2, 5]]), torch.randn(1, 3, 16)
    with transformers_deprecations_are_errors(), pytest.raises(FutureWarning, match="cache"):
        decoder(input_ids=ids, encoder_hidden_states=memory, past_key_values=None)
    with transformers_deprecations_are_errors() as records:
        out = decoder(input_ids=ids, encoder_hidden_states=memory, use_cache=True)
        assert out.past_key_values is not None
    assert deprecation_notices(records)


def test_our_decoder_calls_raise_no_deprecation_warning(tok):
    """Training forward, cached and uncached beam search and greedy decoding: no deprecation
    from transformers, on whichever version is installed."""
    model = sharp_model(tok)
    x, lens = make_inputs([9, 6, 3])
    ids, mask = tok.encode_targets(TEXTS[:3])
    with transformers_deprecations_are_errors() as records:
        with torch.no_grad():
            out = model(x, lens, ids, mask)
        assert out.logits is not None
        for num_beams in (1, 3):
            for use_cache in (True, False):
                model.generate(x, lens, num_beams=num_beams, max_length=6, use_cache=use_cache)
    assert deprecation_notices(records) == []


# ------------------------------------------------------------------ cache semantics
@pytest.mark.parametrize("num_beams", [1, 4])
def test_cached_generation_equals_uncached_token_for_token(tok, num_beams):
    model = sharp_model(tok, eos_bias=0.0)
    x, lens = make_inputs([9, 6, 3, 7], seed=7)
    with torch.no_grad():
        _, _, memory, memory_mask = model.encode_video(x, lens)
        results = [
            beam_search(
                model.decoder,
                memory,
                memory_mask,
                model.special,
                num_beams,
                max_length=12,
                length_penalty=1.0,
                use_cache=use_cache,
                return_scores=True,
            )
            for use_cache in (True, False)
        ]
    (cached, cached_scores), (uncached, uncached_scores) = results
    assert cached.tolist() == uncached.tolist()
    torch.testing.assert_close(cached_scores, uncached_scores, rtol=0, atol=1e-5)
    lengths = (cached != tok.pad_id).sum(1)
    assert lengths.max() > 4  # long enough for the cache (and its reordering) to matter
    assert len({tuple(row) for row in cached.tolist()}) > 1  # not a degenerate decoder


def test_reordered_cache_continues_like_the_reordered_prefix(tok):
    """`reorder_kv_cache` on whatever cache the installed transformers returns (tuples or a
    Cache object): a step after reordering equals the uncached decoder on the reordered
    prefixes, with rows repeated and dropped as beam search does."""
    decoder = sharp_model(tok, decoder_layers=2).decoder
    gen = torch.Generator().manual_seed(1)
    memory = torch.randn(4, 5, 16, generator=gen)  # (N, Tv, D)
    memory_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2] * 2)  # (N, Tv)
    prefix = torch.randint(4, tok.vocab_size, (4, 3), generator=gen)  # (N, t)
    rows = torch.tensor([2, 0, 0, 3])  # row 1 dropped, row 0 twice
    nxt = torch.randint(4, tok.vocab_size, (4, 1), generator=gen)
    with torch.no_grad():
        _, cache = decoder(prefix, None, memory, memory_mask, new_kv_cache(), True)
        cache = reorder_kv_cache(cache, rows)
        cached, _ = decoder(nxt, None, memory[rows], memory_mask[rows], cache, True)
        full, _ = decoder(
            torch.cat([prefix[rows], nxt], dim=1), None, memory[rows], memory_mask[rows]
        )
    torch.testing.assert_close(cached[:, -1], full[:, -1], rtol=1e-5, atol=1e-5)


def test_tuple_cache_is_reordered_row_by_row():
    """The tuple branch (transformers up to 4.51), also on versions that never return one."""
    gen = torch.Generator().manual_seed(0)
    layers = tuple(
        tuple(torch.randn(4, 2, 3, 5, generator=gen) for _ in range(4)) for _ in range(2)
    )
    rows = torch.tensor([3, 3, 1, 0])
    reordered = reorder_kv_cache(layers, rows)
    for old, new in zip(layers, reordered):
        for a, b in zip(old, new):
            assert torch.equal(b, a[rows])


# ----------------------------------------------------------------- non-finite logits
@pytest.mark.parametrize("use_cache", [True, False])
def test_nan_weights_stop_beam_search_with_a_named_error(tok, use_cache):
    model = sharp_model(tok)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    x, lens = make_inputs([9, 6])
    with pytest.raises(FloatingPointError) as err:
        model.generate(x, lens, num_beams=3, max_length=6, use_cache=use_cache)
    message = str(err.value)
    assert "decoding step 0 " in message and "6 of 6 hypotheses" in message
    assert "visual encoder output is non-finite too" in message


def test_nan_decoder_with_finite_encoder_says_so(tok):
    model = sharp_model(tok)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.fill_(float("nan"))
    x, lens = make_inputs([9, 6])
    with pytest.raises(FloatingPointError, match="6 of 6 hypotheses.*output is finite"):
        model.generate(x, lens, num_beams=3, max_length=6)


def test_non_finite_input_names_only_its_hypotheses(tok):
    """One clip of NaN features: the three beams of that sample, not the other sample's."""
    model = sharp_model(tok)
    x, lens = make_inputs([9, 6])
    x[1, :6] = float("nan")
    with pytest.raises(FloatingPointError, match=r"step 0 .* 3 of 6 hypotheses \(\d+ NaN"):
        model.generate(x, lens, num_beams=3, max_length=6)


@pytest.mark.parametrize("use_cache", [True, False])
def test_logits_that_blow_up_mid_sequence_name_the_step(tok, use_cache):
    """An infinite position embedding first reached at step 2 (positions 0 and 1 hold
    `</s> [lang]`; MBart's learned positions are offset by 2)."""
    model = sharp_model(tok, eos_bias=-1e4)  # no hypothesis ends before the last step
    with torch.no_grad():
        model.decoder.decoder.embed_positions.weight[2 + 1 + 2] = float("inf")
    x, lens = make_inputs([9, 6])
    with pytest.raises(FloatingPointError, match="decoding step 2 .* 6 of 6 hypotheses"):
        model.generate(x, lens, num_beams=3, max_length=8, use_cache=use_cache)


# ------------------------------------------------------------ lowest supported versions
@pytest.mark.slow
def test_lowest_supported_versions_pass_the_model_tests():
    """`pytest -m slow`: scripts/check_lowest_versions.sh installs the dependency floors of
    pyproject.toml into a throwaway directory (pip, needs the package index) and runs the model
    and generation tests against them."""
    script = REPO / "scripts" / "check_lowest_versions.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=3600
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
