"""AdamW groups, warmup + cosine schedule (against a naive reference), the guarded step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scl_slt.training.optim import (
    GuardedStep,
    NonFiniteLossError,
    build_optimizer,
    build_scheduler,
    parameter_groups,
    schedule_steps,
)


def naive_lr(step: int, base: float, warmup: int, total: int, floor: float) -> float:
    """Written out case by case: linear ramp to base over `warmup` steps, then half a cosine."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    t = min(t, 1.0)
    return base * floor + (base - base * floor) * (1 + math.cos(math.pi * t)) / 2


@pytest.mark.parametrize("warmup,total,floor", [(0, 10, 0.0), (3, 12, 0.1), (5, 5, 0.0)])
def test_schedule_matches_naive_reference(warmup, total, floor):
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, lr=0.5, weight_decay=0.0)
    sched = build_scheduler(opt, warmup, total, floor)
    seen = []
    for _ in range(total + 2):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [naive_lr(s, 0.5, warmup, total, floor) for s in range(total + 2)]
    assert seen == pytest.approx(expected, abs=1e-12)
    if warmup < total:  # the decay ends at the floor (warmup == total: no decay phase)
        assert seen[total] == pytest.approx(0.5 * floor)


def test_schedule_state_round_trip():
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, 1.0, 0.0)
    sched = build_scheduler(opt, 2, 10, 0.0)
    for _ in range(4):
        opt.step()
        sched.step()
    opt2 = build_optimizer(model, 1.0, 0.0)
    sched2 = build_scheduler(opt2, 2, 10, 0.0)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.get_last_lr() == sched.get_last_lr()
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_schedule_steps_counts_short_last_window():
    assert schedule_steps(10, 3, 2, 0.5) == (2, 8)  # ceil(10/3)=4 per epoch
    assert schedule_steps(8, 1, 3, 0.0) == (0, 24)


def test_parameter_groups_skip_frozen_and_do_not_decay_vectors():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    decay, no_decay = parameter_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 4  # two biases of the linears + LayerNorm weight and bias
    assert all(p is not model[2].weight for g in (decay, no_decay) for p in g["params"])


def _guarded(mode="error", clip=1.0, max_in_row=2):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_scheduler(opt, 0, 100, 0.0)
    guard = GuardedStep(model, opt, sched, clip, mode, max_in_row, torch.device("cpu"))
    return model, opt, sched, guard


def test_guarded_step_clips_like_naive_reference():
    model, opt, sched, guard = _guarded(clip=0.5)
    x = torch.randn(4, 3) * 10
    loss = model(x).pow(2).mean()
    guard.observe(loss, ["a", "b", "c", "d"])
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
    before = [p.detach().clone() for p in model.parameters()]
    outcome = guard.finish(step=0, stop_requested=False)
    assert outcome.stepped and outcome.grad_norm == pytest.approx(norm, rel=1e-6)
    scale = min(1.0, 0.5 / (norm + 1e-6))
    for p, b, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), b - 0.1 * g * scale)
        assert p.grad is None  # zeroed for the next window


def test_guarded_step_error_mode_names_step_rank_and_samples():
    model, *_, guard = _guarded()
    loss = model(torch.randn(2, 3)).sum() * float("nan")
    guard.observe(loss, ["clip_7", "clip_9"])
    loss.backward()
    with pytest.raises(NonFiniteLossError, match=r"step 12.*rank 0.*clip_7.*clip_9"):
        guard.finish(step=12, stop_requested=False)


def test_guarded_step_skip_mode_skips_counts_and_stops():
    model, opt, sched, guard = _guarded(mode="skip", max_in_row=2)
    before = [p.detach().clone() for p in model.parameters()]

    def window(bad: bool):
        loss = model(torch.randn(2, 3)).sum() * (float("inf") if bad else 1.0)
        guard.observe(loss, ["s0", "s1"])
        loss.backward()

    window(bad=True)
    out = guard.finish(step=0, stop_requested=True)
    assert not out.stepped and out.stop_requested
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert sched.last_epoch == 0  # the schedule did not advance either
    window(bad=False)
    assert guard.finish(step=1, stop_requested=False).stepped
    assert guard.state_dict() == {"skipped_in_row": 0, "skipped_total": 1}
    window(bad=True)
    guard.finish(step=2, stop_requested=False)
    window(bad=True)
    with pytest.raises(NonFiniteLossError, match="2 non-finite steps in a row"):
        guard.finish(step=3, stop_requested=False)


def test_finite_loss_with_nonfinite_gradient_is_caught():
    model, *_, guard = _guarded(mode="error")
    x = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=False)
    loss = (model(x).abs() + 1).sqrt().sum() + 0.0 * model.weight.sum()
    guard.observe(loss, ["only"])
    loss.backward()
    model.weight.grad[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="gradient norm nan over samples"):
        guard.finish(step=5, stop_requested=False)


def test_skip_mode_puts_batchnorm_statistics_back():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = GuardedStep(model, opt, build_scheduler(opt, 0, 10, 0.0), 1.0, "skip", 3, "cpu")
    before = [b.clone() for b in model.buffers()]
    x = torch.randn(5, 3)
    x[2, 0] = float("nan")  # one bad sample poisons the batch statistics of its forward
    loss = model(x).sum()
    guard.observe(loss, [f"s{i}" for i in range(5)], x)
    loss.backward()
    assert not torch.isfinite(model[1].running_mean).all()
    outcome = guard.finish(step=0, stop_requested=False)
    assert not outcome.stepped
    assert all(torch.equal(b, a) for b, a in zip(model.buffers(), before))


# ------------------------------------------------ round 2: messages name causes, not innocents
def test_error_message_states_lr_and_norm_and_names_only_nonfinite_inputs():
    model, *_, guard = _guarded()
    x = torch.randn(3, 3)
    loss = model(x).sum() * float("nan")  # one loss over the batch: all three are implicated
    guard.observe(loss, ["a", "b", "c"], x)
    loss.backward()
    with pytest.raises(NonFiniteLossError) as err:
        guard.finish(step=4, stop_requested=False)
    message = str(err.value)
    assert message.startswith("non-finite loss at step 4: lr 0.1, gradient norm non-finite (nan)")
    assert "all 3 samples of a micro-batch implicated together" in message
    assert "'a'" not in message and "'b'" not in message  # innocents are not listed
    assert "the model itself produced the non-finite values" in message

    x[1, 2] = float("inf")
    loss = model(x).sum()
    guard.observe(loss, ["a", "b", "c"], x)
    loss.backward()
    with pytest.raises(NonFiniteLossError) as err:
        guard.finish(step=5, stop_requested=False)
    message = str(err.value)
    assert "non-finite inputs: ['b'] (in a micro-batch of 3)" in message
    assert "'a'" not in message and "model itself" not in message


def test_message_recalls_the_last_update():
    model, *_, guard = _guarded(mode="skip", max_in_row=3)
    loss = model(torch.randn(2, 3)).pow(2).sum()
    guard.observe(loss, ["s0", "s1"])
    loss.backward()
    norm = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    assert guard.finish(step=7, stop_requested=False).stepped
    loss = model(torch.randn(2, 3)).sum() * float("nan")
    guard.observe(loss, ["s2", "s3"])
    loss.backward()
    guard.finish(step=8, stop_requested=False)
    assert guard.describe_streak() == (
        f"1 step(s) in a row skipped as non-finite since the update of step 7 (lr 0.1, "
        f"gradient norm {norm:.4g})"
    )


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_update_that_overflows_the_weights_is_named_in_either_mode(mode):
    from scl_slt.training.optim import NonFiniteWeightsError

    model, opt, _, guard = _guarded(mode=mode, clip=0.0)
    loss = model(torch.ones(1, 3)).sum()
    guard.observe(loss, ["x"])
    loss.backward()
    model.weight.grad.fill_(1e18)  # finite gradient (norm ~1.7e18) ...
    opt.param_groups[0]["lr"] = 1e30  # ... times a huge lr: the weights overflow to -inf
    with pytest.raises(NonFiniteWeightsError) as err:
        guard.finish(step=3, stop_requested=False)
    assert str(err.value).startswith(
        "the update of step 3 (lr 1e+30, gradient norm 1.732e+18) made 1 tensor(s): weight "
        "(3 of 3 values non-finite)"
    )


def test_check_weights_names_every_nonfinite_parameter_and_buffer():
    from scl_slt.training.optim import NonFiniteWeightsError, check_weights, nonfinite_tensors

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    check_weights(model, "clean")  # nothing to say
    with torch.no_grad():
        model[0].weight[1, :2] = float("nan")
        model[2].bias[0] = float("-inf")
        model[1].running_var[3] = float("inf")
    # Plain reference: every floating tensor of the state dict, counted one value at a time.
    expected = []
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            bad = sum(1 for v in tensor.flatten().tolist() if not math.isfinite(v))
            if bad:
                expected.append((name, bad, tensor.numel()))
    named = [*model.named_parameters(), *model.named_buffers()]
    assert sorted(nonfinite_tensors(named)) == sorted(expected)
    with pytest.raises(NonFiniteWeightsError) as err:
        check_weights(model, "dev evaluation")
    assert str(err.value).startswith(
        "dev evaluation: non-finite weights in 3 tensor(s): 0.weight (2 of 12 values "
        "non-finite), 2.bias (1 of 2 values non-finite), 1.running_var (1 of 4 values "
        "non-finite)"
    )


def test_loss_window_round_trip_and_merge_match_plain_means():
    from scl_slt.training.meters import LossMeter

    steps = [{"loss": 2.0, "ce": 1.5}, {"loss": 4.0, "ce": 0.5}, {"loss": 9.0, "ce": 3.0}]
    straight = LossMeter(torch.device("cpu"))
    first, second = LossMeter(torch.device("cpu")), LossMeter(torch.device("cpu"))
    for i, values in enumerate(steps):
        tensors = {k: torch.tensor(v) for k, v in values.items()}
        straight.add(tensors)
        (first if i < 2 else second).add(tensors)
    straight.stepped(0.25)
    first.stepped(0.25)
    restored = LossMeter(torch.device("cpu"))
    restored.load_state_dict(first.state_dict())  # a resume after step 2 ...
    restored.add({k: torch.tensor(v) for k, v in steps[2].items()})  # ... then step 3
    restored.stepped(0.25)
    plain = {k: sum(s[k] for s in steps) / len(steps) for k in steps[0]}
    assert restored.grad_norm == 0.25
    assert restored.means() == pytest.approx(plain) == straight.means()
    merged = LossMeter(torch.device("cpu"))  # two ranks' windows resumed on one
    merged.load_state_dict(LossMeter.merged([first.state_dict(), second.state_dict()]))
    assert merged.count == 3 and merged.means() == pytest.approx(plain)
    assert merged.count == 0 and merged.grad_norm is None  # means() starts a new window
