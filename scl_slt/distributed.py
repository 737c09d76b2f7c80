"""Process-group helpers. Everything here degrades to a single process when torch.distributed
is not initialised, so library code can call it unconditionally."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_from_env(device_type: str) -> bool:
    """Initialise the default process group when launched by torchrun (WORLD_SIZE > 1).

    Returns True when a group was created. NCCL on CUDA, gloo otherwise.
    """
    if is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Gather a picklable object from every rank (rank order); [obj] in one process."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s object on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


T = TypeVar("T")


def on_main_process(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only; if it fails there, raise the same error on every rank (instead
    of the other ranks hanging at the next collective). Returns fn's result on every rank; the
    broadcast doubles as the barrier (no rank goes on before rank 0 has finished)."""
    result, error = None, None
    if is_main_process():
        try:
            result = fn()
        except Exception as e:
            if not is_initialized():
                raise
            error = e
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return result


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over ranks (in place); unchanged in one process."""
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank if `flag` is True on any rank (for agreeing on skips and stops)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(t).item() > 0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the gradient of its own slice summed over ranks.

    Every rank's loss may depend on every rank's features, so d(sum_r loss_r)/d(x_q) is the sum
    of the gradients all ranks computed for slice q. An all_reduce of the full gradient followed
    by taking this rank's slice gives exactly that, on every backend (gloo has no reduce_scatter).
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank = dist.get_rank()
        out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(out, tensor.contiguous())
        return torch.stack(out)  # (W, *tensor.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank]


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks of the default process group whose backward is the same sum.

    Every rank's loss depends on the reduced value, so the gradient of the sum of all ranks'
    losses with respect to one rank's input is the sum over ranks of the output gradients.
    Equivalent to `torch.distributed.nn.functional.all_reduce`, which recent torch deprecates
    with a warning on every call.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


def all_reduce_sum_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the ranks of the default process group, differentiable: the
    gradient reaching each rank's input is the sum over ranks of the output gradients (what
    synchronised batch statistics need)."""
    return _AllReduceSum.apply(tensor)


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """(W, *shape) stack of every rank's tensor (same shape on all ranks); gradients flow back
    to each rank's own input as the sum over ranks of the gradients of its slice. One process:
    tensor[None]."""
    if not is_initialized():
        return tensor.unsqueeze(0)
    return _GatherWithGrad.apply(tensor)


def all_gather_padded(tensor: torch.Tensor, with_grad: bool = False) -> tuple[torch.Tensor, list]:
    """Concatenate every rank's (B_r, T_r, ...) tensor along dim 0 in rank order.

    B_r and T_r may differ across ranks (uneven last batches, variable token lengths): each
    tensor is zero-padded to (max B, max T, ...) for the collective, then the batch padding is
    cut off. Returns the (sum B_r, max T, ...) tensor and the list of B_r. Bool tensors are
    gathered as uint8 (gloo has no bool collectives) and returned as bool. With `with_grad`, the
    gradient reaches each rank's input as in `all_gather_with_grad`.
    """
    if tensor.dim() < 2:
        raise ValueError(f"all_gather_padded: expected (B, T, ...), got {tuple(tensor.shape)}")
    if not is_initialized():
        return tensor, [tensor.shape[0]]
    local = torch.tensor(tensor.shape[:2], dtype=torch.long, device=tensor.device)
    shapes = [torch.empty_like(local) for _ in range(get_world_size())]
    dist.all_gather(shapes, local)
    sizes = [int(s[0]) for s in shapes]
    max_b, max_t = max(sizes), max(int(s[1]) for s in shapes)
    is_bool = tensor.dtype == torch.bool
    x = tensor.to(torch.uint8) if is_bool else tensor
    pad = [0, 0] * (x.dim() - 2) + [0, max_t - x.shape[1], 0, max_b - x.shape[0]]
    x = torch.nn.functional.pad(x, pad)  # (max B, max T, ...)
    if with_grad:
        stacked = all_gather_with_grad(x)  # (W, max B, max T, ...)
    else:
        parts = [torch.empty_like(x) for _ in range(get_world_size())]
        dist.all_gather(parts, x.contiguous())
        stacked = torch.stack(parts)
    out = torch.cat([stacked[r, :b] for r, b in enumerate(sizes)])  # (sum B_r, max T, ...)
    return (out.bool() if is_bool else out), sizes
