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
