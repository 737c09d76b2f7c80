"""MaskedBatchNorm1d with cross-rank statistics (`stage.sync_batchnorm`) against one process.

Two gloo processes each hold a different share of a padded global batch (own padding length,
one share with very few or no valid steps); the synchronised layer under DDP must give what one
process running the plain layer on the whole global batch gives.

Gradient bookkeeping. Rank r backpropagates its own loss L_r = sum(out_r * probe_r), and the
collectives' backward sums over ranks, so the gradient reaching rank r's input is
d(sum_s L_s)/dx_r, while DDP averages parameter gradients over the W ranks, i.e. they are
d(sum_s L_s)/dw / W. Since sum_s L_s is the same probe loss L on the global batch in one
process, the checks are: x_r.grad == dL/dx[rows of r], DDP weight/bias grads == dL/dw / W.

Tolerance: rtol = atol = 1e-5 (float32; the ranks sum the statistics in a different order;
the measured maximum absolute difference over all compared tensors was 6e-6).
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from scl_slt.config import SignEmbeddingConfig
from scl_slt.models.sign_embedding import MaskedBatchNorm1d, SignEmbedding
from scl_slt.training.runtime import Runtime, wrap_for_training

CHANNELS = 4
WORLD = 2
TOL = {"rtol": 1e-5, "atol": 1e-5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_layer(momentum: float | None, synced: bool) -> MaskedBatchNorm1d:
    """Same non-trivial affine parameters on every call."""
    layer = MaskedBatchNorm1d(CHANNELS, momentum=momentum)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 2.0, CHANNELS))
        layer.bias.copy_(torch.linspace(-1.0, 1.0, CHANNELS))
    layer.sync_across_ranks = synced
    return layer


def global_batch(lengths: list[int], seed: int):
    """x (B, C, T) with a large mean against its spread, zero padding; mask (B, T); probe."""
    g = torch.Generator().manual_seed(seed)
    t_max = max(lengths)
    mask = torch.arange(t_max)[None] < torch.tensor(lengths)[:, None]  # (B, T)
    x = torch.randn(len(lengths), CHANNELS, t_max, generator=g) * 3 + 20  # (B, C, T)
    x = x * mask[:, None]
    probe = torch.randn(x.shape, generator=g)  # (B, C, T) weights of the loss
    return x, mask, probe


def rank_share(x, mask, probe, rows: slice):
    """This rank's rows, padding cut to its own longest sample (at least one step)."""
    t = max(int(mask[rows].sum(1).max()), 1)
    return x[rows, :, :t], mask[rows, :t], probe[rows, :, :t]


def loss_and_input_grad(layer: nn.Module, x, mask, probe):
    x = x.clone().requires_grad_(True)
    out = layer(x, mask)  # (B, C, T)
    (out * probe).sum().backward()
    return out.detach(), x.grad


# (momentum, global lengths, rows of rank 0) - rank 1 holds the rest.
CASES = [
    (0.1, [7, 3, 5, 6, 1, 1], 4),  # rank 1: two valid steps
    (None, [4, 6, 2, 0], 3),  # rank 1: no valid step at all; cumulative running average
]
STEPS = 3


def worker(rank: int, port: int) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        torch.set_num_threads(1)
        for momentum, lengths, split in CASES:
            rows = slice(0, split) if rank == 0 else slice(split, len(lengths))
            ddp = nn.parallel.DistributedDataParallel(make_layer(momentum, synced=True))
            single = make_layer(momentum, synced=False)  # no collective: the reference
            per_rank = make_layer(momentum, synced=False)  # what sync_batchnorm=false gives
            for step in range(STEPS):
                x, mask, probe = global_batch(lengths, seed=10 * step + split)
                local = rank_share(x, mask, probe, rows)
                out, x_grad = loss_and_input_grad(ddp, *local)
                ref_out, ref_x_grad = loss_and_input_grad(single, x, mask, probe)
                t = local[0].shape[2]
                torch.testing.assert_close(out, ref_out[rows, :, :t], **TOL)
                torch.testing.assert_close(x_grad, ref_x_grad[rows, :, :t], **TOL)
                for name in ("weight", "bias"):
                    got = getattr(ddp.module, name).grad
                    torch.testing.assert_close(got, getattr(single, name).grad / WORLD, **TOL)
                ddp.zero_grad()
                single.zero_grad()
                if rank == 1 and local[1].sum() > 1:  # the check can fail: per-rank stats differ
                    unsynced, _ = loss_and_input_grad(per_rank, *local)
                    assert not torch.allclose(unsynced, ref_out[rows, :, :t], **TOL)
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                torch.testing.assert_close(getattr(ddp.module, name), getattr(single, name), **TOL)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built in")
def test_two_gloo_ranks_match_one_process_on_global_batch():
    mp.spawn(worker, args=(free_port(),), nprocs=WORLD, join=True)


# ------------------------------------------------------------------------ in one process
@pytest.fixture
def one_rank_group():
    """A 1-rank gloo group on CPU, so the synchronised code path runs in this process."""
    assert not dist.is_initialized(), "a process group leaked from another test"
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def run_steps(layer: MaskedBatchNorm1d, lengths: list[int]):
    """Outputs, input and parameter gradients of a few training steps, then the buffers."""
    results = []
    for step in range(STEPS):
        x, mask, probe = global_batch(lengths, seed=step)
        out, x_grad = loss_and_input_grad(layer, x, mask, probe)
        results += [out, x_grad, layer.weight.grad.clone(), layer.bias.grad.clone()]
        layer.zero_grad()
    return results + [layer.running_mean, layer.running_var, layer.num_batches_tracked]


def test_flag_without_process_group_changes_nothing():
    assert not dist.is_initialized()
    synced, plain = make_layer(0.1, synced=True), make_layer(0.1, synced=False)
    for got, want in zip(run_steps(synced, [5, 2, 4]), run_steps(plain, [5, 2, 4])):
        assert torch.equal(got, want)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_synced_path_in_one_rank_group_matches_plain(one_rank_group, momentum):
    synced, plain = make_layer(momentum, synced=True), make_layer(momentum, synced=False)
    for got, want in zip(run_steps(synced, [6, 1, 3]), run_steps(plain, [6, 1, 3])):
        torch.testing.assert_close(got, want, **TOL)


def test_synced_path_rejects_a_single_valid_step(one_rank_group):
    x, mask, _ = global_batch([1, 0], seed=0)
    with pytest.raises(ValueError, match="more than 1 valid step"):
        make_layer(0.1, synced=True)(x, mask)


def test_eval_mode_uses_running_stats(one_rank_group):
    layer = make_layer(0.1, synced=True)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
        layer.running_var.copy_(torch.tensor([4.0, 0.25, 1.0, 9.0]))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    x, mask, _ = global_batch([5, 2, 4], seed=3)
    out = layer.eval()(x, mask)
    scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)  # (C,)
    ref = (x - layer.running_mean[:, None]) * scale[:, None] + layer.bias[:, None]  # (B, C, T)
    torch.testing.assert_close(out, ref * mask[:, None], **TOL)
    for name, value in layer.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed in eval mode"


def test_wrap_for_training_flags_masked_layers_in_one_rank_gloo_group(one_rank_group):
    def model() -> nn.ModuleDict:
        torch.manual_seed(0)
        cfg = SignEmbeddingConfig(feature_dim=6, hidden=8, kernel=3)
        return nn.ModuleDict(
            {"embedding": SignEmbedding(cfg, "features", 10), "frames_bn": nn.BatchNorm2d(3)}
        )

    runtime = Runtime(device=torch.device("cpu"), dtype=None, rank=0, world_size=1)
    untouched = wrap_for_training(model(), runtime, sync_batchnorm=False)
    plain_keys = list(untouched.state_dict())
    assert not any(getattr(m, "sync_across_ranks", False) for m in untouched.modules())

    wrapped = wrap_for_training(model(), runtime, sync_batchnorm=True)
    masked = [m for m in wrapped.modules() if isinstance(m, MaskedBatchNorm1d)]
    assert len(masked) == 2 and all(m.sync_across_ranks for m in masked)
    assert type(wrapped["frames_bn"]) is nn.BatchNorm2d  # SyncBatchNorm only on CUDA
    assert list(wrapped.state_dict()) == plain_keys  # the flag is no parameter or buffer
    assert list(masked[0].state_dict()) == list(nn.BatchNorm1d(8).state_dict())
