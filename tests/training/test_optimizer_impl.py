"""``stage.optimizer_impl`` against the plain AdamW loop, and the speed options end to end.

Tolerances: foreach on the CPU runs the plain loop's arithmetic tensor by tensor, so the
weights are equal bit for bit (``auto`` is foreach off CUDA, which keeps the CPU default's
results unchanged); fused computes each update in one kernel with its own rounding: 1e-6
relative after several steps. The stage runs check that the config keys reach the model and
the optimizer, and that a run with them trains as the plain one does (activation checkpointing
and foreach: 1e-6; channels-last: see the test) and writes the same checkpoint keys.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf.errors import OmegaConfBaseException

from scl_slt.rundir.checkpoint import load_weights
from scl_slt.rundir.layout import read_metrics
from scl_slt.stages import run_stage
from scl_slt.training.optim import build_optimizer, optimizer_flags
from scl_slt.training.resume import resume_config_differences


def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(11, 32), torch.nn.LayerNorm(32), torch.nn.GELU(), torch.nn.Linear(32, 5)
    )


def train(net: torch.nn.Module, impl: str, steps: int = 6) -> list[torch.Tensor]:
    """Weights after ``steps`` AdamW steps (decay and no-decay groups, as the stages build
    them) on fixed random batches."""
    optimizer = build_optimizer(net, lr=1e-2, weight_decay=0.01, impl=impl)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = net(torch.randn(8, 11, generator=gen)).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in net.parameters()]


@pytest.fixture(scope="module")
def plain_weights() -> list[torch.Tensor]:
    return train(tiny_net(), "plain")


def test_auto_is_fused_on_cuda_and_foreach_elsewhere():
    assert optimizer_flags("auto", torch.device("cuda")) == {"fused": True}
    assert optimizer_flags("auto", torch.device("cpu")) == {"foreach": True}
    assert optimizer_flags("plain", torch.device("cuda")) == {"foreach": False}
    with pytest.raises(ValueError, match="stage.optimizer_impl"):
        optimizer_flags("fast", torch.device("cpu"))


@pytest.mark.parametrize("impl", ["foreach", "auto"])
def test_foreach_equals_the_plain_loop_bit_for_bit_on_the_cpu(impl, plain_weights):
    ours = train(tiny_net(), impl)
    assert all(torch.equal(a, b) for a, b in zip(plain_weights, ours))


def test_fused_equals_the_plain_loop_to_rounding(plain_weights):
    try:
        ours = train(tiny_net(), "fused")
    except ValueError as e:  # torch < 2.4 has no fused AdamW on the CPU
        pytest.skip(f"fused AdamW unavailable on the CPU here: {e}")
    for a, b in zip(plain_weights, ours):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


@pytest.mark.gpu
def test_fused_equals_foreach_to_rounding_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    reference = train(tiny_net().cuda(), "foreach")  # torch's CUDA default before the key
    ours = train(tiny_net().cuda(), "auto")  # fused
    for a, b in zip(reference, ours):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_speed_keys_are_free_to_change_on_resume():
    saved = {"stage": {"lr": 1e-4}, "model": {"d_model": 64}}  # a run from before the keys
    current = copy.deepcopy(saved)
    current["stage"].update(optimizer_impl="fused", compile=True)
    current["model"].update(activation_checkpointing=True, channels_last=True)
    assert resume_config_differences(saved, current) == []
    current["stage"]["lr"] = 2e-4  # what is trained still refuses
    assert resume_config_differences(saved, current) == ["stage.lr: 0.0001 -> 0.0002"]


def test_unknown_optimizer_impl_fails_naming_the_key(tiny_train_cfg):
    with pytest.raises((ConfigCompositionException, OmegaConfBaseException)) as err:
        tiny_train_cfg("stage.optimizer_impl=fast")
    assert "optimizer_impl" in str(err.value) + str(err.value.__cause__ or "")


FRAMES = (
    "data=synthetic_frames",
    "data.synthetic.image_size=16",
    "data.resize=18",
    "data.crop=16",
    "stage.eval_every=0",
    "stage.max_steps=3",
)


def _losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir, "train")]


def test_a_stage_with_the_speed_options_trains_as_the_plain_one(tiny_train_cfg, tmp_path):
    plain = run_stage(tiny_train_cfg(*FRAMES, f"run_dir={tmp_path / 'plain'}"))
    same_sums = run_stage(  # the same arithmetic, recomputed or regrouped
        tiny_train_cfg(
            *FRAMES,
            f"run_dir={tmp_path / 'same'}",
            "model.activation_checkpointing=true",
            "stage.optimizer_impl=foreach",
        )
    )
    nhwc = run_stage(
        tiny_train_cfg(*FRAMES, f"run_dir={tmp_path / 'nhwc'}", "model.channels_last=true")
    )
    reference = _losses(plain["run_dir"])
    assert len(reference) == 3
    assert _losses(same_sums["run_dir"]) == pytest.approx(reference, rel=1e-6)
    a, b = load_weights(plain["last_checkpoint"]), load_weights(same_sums["last_checkpoint"])
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-6, atol=1e-7, msg=name)
    # channels-last sums convolutions in another order: the first loss to rounding; AdamW then
    # turns rounding-sized gradients into lr-sized steps (the sign of noise), so later losses
    # agree to 1e-3
    losses = _losses(nhwc["run_dir"])
    assert losses[0] == pytest.approx(reference[0], rel=1e-5)
    assert losses == pytest.approx(reference, rel=1e-3)
    assert load_weights(nhwc["last_checkpoint"]).keys() == a.keys()


def test_a_compiled_stage_runs_and_keeps_the_checkpoint_keys(tiny_train_cfg, tmp_path):
    try:
        probe = torch.nn.Linear(2, 2)
        probe.compile()
        probe(torch.randn(1, 2))
    except Exception as e:  # noqa: BLE001 - no compiler toolchain, an old torch...
        pytest.skip(f"torch.compile does not work on this machine: {e}"[:300])
    # features: the MBart layers only; a dev evaluation (beam search) through them at the end
    over = (
        "stage=translate",
        "stage.eval_every=1",
        "stage.max_steps=2",
        "model.generation.num_beams=2",
    )
    plain = run_stage(tiny_train_cfg(*over, f"run_dir={tmp_path / 'plain'}"))
    compiled = run_stage(tiny_train_cfg(*over, f"run_dir={tmp_path / 'c'}", "stage.compile=true"))
    losses = _losses(compiled["run_dir"])
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    # compiled dropout draws other masks (same distribution): close, not step-for-step equal
    assert losses == pytest.approx(_losses(plain["run_dir"]), rel=0.05)
    assert "bleu4" in compiled["dev_metrics"]
    keys = load_weights(compiled["last_checkpoint"]).keys()
    assert keys == load_weights(plain["last_checkpoint"]).keys()
