"""contrastive_loss across 2 gloo processes equals the single-process loss on the global batch,
and DDP's averaged gradients equal the single-process gradients."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from scl_slt import distributed
from scl_slt.config import SimilarityConfig
from scl_slt.losses import contrastive_loss
from scl_slt.models.similarity import SimilarityHead, pairwise_similarity

TAU = 0.07
ENC_DIM = 12


class HeadWithScale(nn.Module):
    """Returns the logit scale from forward, as the model does, so DDP sees it used."""

    def __init__(self, method: str):
        super().__init__()
        torch.manual_seed(0)
        self.head = SimilarityHead(SimilarityConfig(method=method, proj_dim=8), ENC_DIM).double()

    def forward(self, video, video_mask, text, text_mask):
        return (*self.head(video, video_mask, text, text_mask), self.head.scale())


def global_batch(video_lengths, text_lengths):
    g = torch.Generator().manual_seed(1)
    n = len(video_lengths)
    video = torch.randn(n, max(video_lengths), ENC_DIM, generator=g, dtype=torch.float64)
    text = torch.randn(n, max(text_lengths), ENC_DIM, generator=g, dtype=torch.float64)
    video_mask = torch.arange(video.shape[1])[None] < torch.tensor(video_lengths)[:, None]
    text_mask = torch.arange(text.shape[1])[None] < torch.tensor(text_lengths)[:, None]
    return video, video_mask, text, text_mask


def rank_share(batch, rows):
    """This rank's rows, padding cut to its own longest sample (token lengths differ by rank)."""
    video, video_mask, text, text_mask = (x[rows] for x in batch)
    t_max, l_max = int(video_mask.sum(1).max()), int(text_mask.sum(1).max())
    return video[:, :t_max], video_mask[:, :t_max], text[:, :l_max], text_mask[:, :l_max]


def loss_and_grads(model, batch, method, keys):
    v, vm, t, tm, scale = model(*batch)
    loss = contrastive_loss(v, vm, t, tm, scale, method, TAU, text_keys=keys)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def worker(rank, world, port, cases):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        torch.set_num_threads(1)
        assert distributed.get_world_size() == 2 and distributed.get_rank() == rank
        for method, video_lengths, text_lengths, split, keys in cases:
            batch = global_batch(video_lengths, text_lengths)
            rows = slice(0, split) if rank == 0 else slice(split, len(video_lengths))
            local = rank_share(batch, rows)
            local_keys = None if keys is None else keys[rows]
            ddp = nn.parallel.DistributedDataParallel(HeadWithScale(method))
            loss, grads = loss_and_grads(ddp, local, method, local_keys)

            # Reference: one process, the whole global batch, no collective involved.
            single = HeadWithScale(method)
            ref_loss = single_process_loss(*single(*batch), method, keys)
            ref_loss.backward()

            torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-10, atol=1e-12)
            for name, p in single.named_parameters():
                torch.testing.assert_close(grads[f"module.{name}"], p.grad, rtol=1e-8, atol=1e-12)
    finally:
        dist.destroy_process_group()


def single_process_loss(v, vm, t, tm, scale, method, keys):
    """Plain one-process InfoNCE on the global batch, written without contrastive_loss."""
    logits = scale * pairwise_similarity(v, vm, t, tm, method, TAU)  # (B, B)
    if keys is not None:
        same = torch.tensor([[a == b for b in keys] for a in keys])
        drop = same & ~torch.eye(len(keys), dtype=torch.bool)
        logits = logits.masked_fill(drop, float("-inf"))
    target = torch.arange(len(v))
    ce = torch.nn.functional.cross_entropy
    return (ce(logits, target) + ce(logits.T, target)) / 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CASES = {
    "cico_even": ("cico", [3, 5, 2, 4, 6, 1], [4, 2, 5, 3, 2, 6], 3, None),
    "cico_uneven_with_duplicates": (
        "cico",
        [2, 6, 3, 4, 1],
        [5, 1, 3, 2, 4],
        3,
        ["a", "b", "a", "c", "b"],
    ),
    "mean_even": ("mean", [3, 5, 2, 4], [4, 2, 5, 3], 2, None),
}


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built in")
def test_two_rank_loss_and_ddp_gradients_equal_single_process():
    # One spawn runs every case (process start-up dominates the run time).
    mp.spawn(worker, args=(2, free_port(), list(CASES.values())), nprocs=2, join=True)
