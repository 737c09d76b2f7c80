"""Each speed option against the plain path on a tiny frames model (ResNet-18 over 16x16 uint8
frames, a 1+1-layer MBart with LoRA, dropout on): the same loss, gradients, buffers and, after
a few optimizer steps (with stage.grad_clip's clipping), weights.

Tolerances, and why (each compares whole tensors: |ours - plain| <= rel |plain| + atol, 2-norm):
activation checkpointing recomputes the very same operations (dropout's RNG state replayed),
only the gradient sums over a layer's input come in another order: 1e-6 relative, BatchNorm
buffers exactly; channels-last and compiled regions take the same sums in another order, and
a random ResNet's gradient through train-mode BatchNorm is ill-conditioned: first loss 1e-5,
gradients 2e-2 overall, weights after 3 steps 1e-5 (``assert_equal_to_rounding`` says why;
SGD, as AdamW would turn rounding-sized gradients into lr-sized steps: ``run_steps``); bf16
autocast is looser by nature (see its test). Optimizer implementations:
``tests/training/test_optimizer_impl.py``.
"""

from __future__ import annotations

import copy
import time
from collections import Counter

import pytest
import torch

from scl_slt.config import DataConfig, ModelConfig, SignEmbeddingConfig
from scl_slt.losses import output_contrastive_loss, translation_loss
from scl_slt.models.builder import build_model
from scl_slt.models.speed_options import apply_speed_options, compile_regions
from scl_slt.models.tokenizer import SLTTokenizer

TEXTS = ["morgen regen im norden", "am tag vierzehn grad", "im süden gewitter", "neun grad"]
LENGTHS = [7, 4, 9]  # frames per clip; padded to 9


@pytest.fixture(scope="module")
def tok() -> SLTTokenizer:
    return SLTTokenizer.train(TEXTS, "de", "de_DE", vocab_size=60)


def model_cfg(**options) -> ModelConfig:
    cfg = ModelConfig(
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        attention_heads=2,
        ffn_dim=32,
        max_position_embeddings=64,
        dropout=0.1,  # on: checkpointing must replay the same dropout masks
        **options,
    )
    cfg.sign_embedding = SignEmbeddingConfig(pretrained="none", hidden=12, kernel=5)
    cfg.lora.enabled, cfg.lora.r, cfg.lora.alpha = True, 4, 8  # frozen base + LoRA, as the paper
    cfg.similarity.proj_dim = 8
    return cfg


def make_model(tok, **options):
    torch.manual_seed(0)  # the same initial weights for every variant
    return build_model(model_cfg(**options), DataConfig(modality="frames"), tok).train()


def batch(tok, seed=1, size=16):
    gen = torch.Generator().manual_seed(seed)
    frames = torch.zeros(len(LENGTHS), max(LENGTHS), 3, size, size, dtype=torch.uint8)
    for i, n in enumerate(LENGTHS):
        shape = (n, 3, size, size)
        frames[i, :n] = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    colour = torch.stack([torch.tensor([[1.1, 0.9, 1.0], [0.1, -0.1, 0.0]])] * len(LENGTHS))
    ids, mask = tok.encode_targets(TEXTS[: len(LENGTHS)])
    return frames, torch.tensor(LENGTHS), ids, mask, colour


def stage1_loss(model, data, autocast_dtype=None):
    """Stage 1's loss (contrastive + translation) under the given autocast, as the stage runs it."""
    frames, lengths, ids, mask, colour = data
    with torch.autocast(
        "cpu", dtype=autocast_dtype or torch.bfloat16, enabled=bool(autocast_dtype)
    ):
        out = model(frames, lengths, ids, mask, colour=colour)
        translation = translation_loss(out.logits, ids, mask, 0.2)
    contrastive = output_contrastive_loss(out, "cico", 0.07)
    return contrastive + translation


def run_steps(model, tok, steps=3, autocast_dtype=None, optimizer="adamw"):
    """Losses, first-step gradients, and the weights and buffers after `steps` optimizer steps.

    AdamW divides each gradient by its own running magnitude, so where a gradient is ~0 it
    turns rounding noise into an lr-sized step (the sign of noise): two paths that differ by
    rounding only are compared over several steps with SGD, which carries the rounding along
    without amplifying it; exactly equal paths with AdamW."""
    trained = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adamw":
        optimizer = torch.optim.AdamW(trained, lr=1e-3)
    else:
        optimizer = torch.optim.SGD(trained, lr=1e-3)
    losses, grads = [], None
    for step in range(steps):
        torch.manual_seed(100 + step)  # the same dropout draws for every variant
        loss = stage1_loss(model, batch(tok, seed=step), autocast_dtype)
        loss.backward()
        if grads is None:
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        torch.nn.utils.clip_grad_norm_(trained, 1.0)  # as the stages do (stage.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return losses, grads, weights, buffers


@pytest.fixture(scope="module")
def plain(tok):
    return run_steps(make_model(tok), tok)


@pytest.fixture(scope="module")
def plain_sgd(tok):
    return run_steps(make_model(tok), tok, optimizer="sgd")


def assert_close(a: dict, b: dict, rel: float, atol: float) -> None:
    """Every tensor of ``b`` within ``rel * |a| + atol`` of ``a``'s, in the 2-norm of the
    whole tensor: elementwise bars fail on entries that are themselves rounding-sized, and a
    tensor whose values are all near zero (an attention key's gradient, a bias one step from
    zero) needs the absolute part."""
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name].double(), b[name].double()
        error, scale = (y - x).norm().item(), x.norm().item()
        assert error <= rel * scale + atol, (name, error, scale)


def overall_error(a: dict, b: dict) -> float:
    """|b - a| / |a| over all tensors together (2-norm)."""
    x = torch.cat([a[n].double().flatten() for n in a])
    y = torch.cat([b[n].double().flatten() for n in a])
    return ((y - x).norm() / x.norm()).item()


def assert_equal_to_rounding(plain: tuple, ours: tuple) -> None:
    """A path that computes the plain one's sums in another order (channels-last, compiled
    kernels), over 3 clipped SGD steps: the first loss to 1e-5; gradients to 2e-2 overall;
    later losses to 2e-3; weights to 1e-5 and BatchNorm buffers to 1e-4 overall.

    Why the gradient bar is loose: a random ResNet's gradient through train-mode BatchNorm is
    ill-conditioned, so fp32 rounding shows up at the 1e-3..1e-2 level whatever the layout.
    Measured against the same network in float64: the plain (NCHW) fp32 gradient is off by up
    to 7e-3 (128 x 128 frames, 4 of them), the channels-last one by up to 6e-3 (32 x 32, 20
    frames) while the two forwards agree to 6e-6; between the two paths here, up to 1.6e-2
    (1 thread) and 4e-5 (2 threads). The weights after the steps stay within 7e-7."""
    losses, grads, weights, buffers = ours
    assert losses[0] == pytest.approx(plain[0][0], rel=1e-5)
    assert losses == pytest.approx(plain[0], rel=2e-3)
    assert grads.keys() == plain[1].keys()
    assert overall_error(plain[1], grads) < 2e-2
    assert overall_error(plain[2], weights) < 1e-5
    assert overall_error(plain[3], buffers) < 1e-4


def test_every_trained_part_gets_gradients_in_the_plain_path(plain):
    _, grads, _, _ = plain
    assert any(n.startswith("sign_embedding.backbone.") for n in grads)
    assert any("lora_" in n and n.startswith("visual_encoder.") for n in grads)
    assert any("lora_" in n and n.startswith("decoder.") for n in grads)


def test_activation_checkpointing_matches_the_plain_path_in_fp32(tok, plain):
    model = make_model(tok, activation_checkpointing=True)
    assert model.sign_embedding.checkpoint_backbone
    losses, grads, weights, buffers = run_steps(model, tok)
    assert losses == pytest.approx(plain[0], rel=1e-6)
    assert_close(plain[1], grads, rel=1e-6, atol=1e-8)  # summed in another order
    assert_close(plain[2], weights, rel=1e-6, atol=1e-8)
    # BatchNorm ran twice per step (forward, recompute) but its statistics moved once
    assert_close(plain[3], buffers, rel=0.0, atol=0.0)


def test_checkpointing_recomputes_the_layers_in_backward(tok):
    """What makes it save memory: the layers run again during backward (and only the ones that
    train: the frozen text encoder runs once, without gradient)."""
    model = make_model(tok, activation_checkpointing=True)
    calls: Counter[str] = Counter()
    watched = {
        "visual": model.visual_encoder.encoder.layers[0].self_attn,
        "decoder": model.decoder.decoder.layers[0].encoder_attn,
        "text": model.text_encoder.layers[0].self_attn,
        "resnet stem": model.sign_embedding.backbone.bn1,
        # a region stops its recompute once backward has what it needs: watch an early module
        "resnet stage": model.sign_embedding.backbone.layer3[0].bn1,
    }
    for name, module in watched.items():
        module.register_forward_hook(lambda *_, name=name: calls.update([name]))
    loss = stage1_loss(model, batch(tok))
    assert set(calls.values()) == {1}
    loss.backward()
    assert calls == {n: 1 if n == "text" else 2 for n in watched}


def test_channels_last_matches_the_plain_path_to_rounding(tok, plain_sgd):
    model = make_model(tok, channels_last=True)
    conv = model.sign_embedding.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert_equal_to_rounding(plain_sgd, run_steps(model, tok, optimizer="sgd"))


def test_both_options_together_match_the_plain_path(tok, plain_sgd):
    model = make_model(tok, activation_checkpointing=True, channels_last=True)
    assert_equal_to_rounding(plain_sgd, run_steps(model, tok, optimizer="sgd"))


def test_bf16_autocast_stays_near_the_fp32_path(tok):
    """bf16 autocast (``precision=bf16``, with channels-last) is a looser match by nature, on
    stage 2's loss: the loss within 0.1 %; the decoder's gradient (next to the loss) cosine >
    0.98; the whole gradient's cosine > 0.5: the layers far from the loss in a random network
    get gradients that are small differences of large terms, which 8 mantissa bits blur
    (measured: loss equal to 1e-6, decoder 0.996, overall 0.75, ResNet 0.74).

    32 x 32 frames, not 16: on the CPU (torch 2.14, oneDNN) a bf16 convolution whose input is
    1 x 1 with stride 2 (ResNet's layer4 on 16 x 16 frames) now and then returns garbage
    (~1e30) in its weight gradient, once in ~15 steps, fp32 never; 224 x 224 frames never
    reach that shape."""

    def first_gradient(model, autocast_dtype):
        frames, lengths, ids, mask, colour = batch(tok, size=32)
        torch.manual_seed(100)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_dtype is not None):
            out = model(frames, lengths, ids, mask, with_text=False, colour=colour)
            loss = translation_loss(out.logits, ids, mask, 0.2)
        loss.backward()
        return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = first_gradient(make_model(tok, channels_last=True), torch.bfloat16)
    ref_loss, ref = first_gradient(make_model(tok), None)
    assert loss == pytest.approx(ref_loss, rel=1e-3)

    def cosine(names):  # in float64: the squared norms of tiny gradients underflow in float32
        a = torch.cat([ref[n].flatten() for n in names]).double()
        b = torch.cat([grads[n].flatten() for n in names]).double()
        return (a @ b / (a.norm() * b.norm())).item()

    assert grads.keys() == ref.keys()
    assert cosine([n for n in ref if n.startswith("decoder.")]) > 0.98
    assert cosine(list(ref)) > 0.5


def test_checkpointing_is_off_in_evaluation_and_generation(tok):
    model = make_model(tok, activation_checkpointing=True).eval()
    reference = make_model(tok).eval()
    frames, lengths, _, _, _ = batch(tok)
    with torch.no_grad():
        ours = model.generate(frames, lengths, num_beams=2, max_length=6)
        theirs = reference.generate(frames, lengths, num_beams=2, max_length=6)
    assert torch.equal(ours, theirs)


def test_a_copied_model_checkpoints_its_own_layers(tok, plain):
    """The checkpointing forward is bound to its layer; a deep copy (the benchmark's plain and
    best variants) must run the copy's weights, not the original's."""
    original = make_model(tok, activation_checkpointing=True)
    copied = copy.deepcopy(original)
    with torch.no_grad():
        for p in original.parameters():
            p.add_(1.0)  # the original moves away; the copy must not follow
    losses, _, _, _ = run_steps(copied, tok, steps=1)
    assert losses == pytest.approx(plain[0][:1], rel=1e-6)


def test_options_leave_parameter_names_and_state_dict_unchanged(tok):
    plain_keys = list(make_model(tok).state_dict())
    model = make_model(tok)
    apply_speed_options(model, activation_checkpointing=True, channels_last=True)
    assert list(model.state_dict()) == plain_keys


def _compile_works() -> str | None:
    """None when torch.compile runs here, else why not (no C++ toolchain, an old torch...)."""
    try:
        layer = torch.nn.Linear(4, 4)
        layer.compile()
        layer(torch.randn(2, 4)).sum().backward()
    except Exception as e:  # noqa: BLE001 - any failure means: not on this machine
        return f"{type(e).__name__}: {e}"[:200]
    return None


def test_compiled_regions_match_the_plain_path(tok, plain_sgd):
    reason = _compile_works()
    if reason is not None:
        pytest.skip(f"torch.compile does not work on this machine: {reason}")
    from torch._inductor import config as inductor_config

    model = make_model(tok)
    assert compile_regions(model) == 3 + 4  # a layer of each MBart stack, 4 ResNet stages
    start = time.perf_counter()
    # Compiled dropout draws its masks with its own generator (same distribution, other
    # masks); eager's draws make the two paths comparable step by step.
    with inductor_config.patch(fallback_random=True):
        ours = run_steps(model, tok, optimizer="sgd")
    elapsed = time.perf_counter() - start
    assert list(model.state_dict()) == list(make_model(tok).state_dict())
    assert_equal_to_rounding(plain_sgd, ours)
    assert elapsed < 600, f"compiling took {elapsed:.0f} s"


@pytest.mark.slow  # ~60 s on 2 CPU cores: compiling the checkpointed regions
def test_compiled_and_checkpointed_regions_match_the_plain_path(tok, plain_sgd):
    reason = _compile_works()
    if reason is not None:
        pytest.skip(f"torch.compile does not work on this machine: {reason}")
    from torch._inductor import config as inductor_config

    model = make_model(tok, activation_checkpointing=True, channels_last=True)
    compile_regions(model)
    with inductor_config.patch(fallback_random=True):
        assert_equal_to_rounding(plain_sgd, run_steps(model, tok, optimizer="sgd"))
