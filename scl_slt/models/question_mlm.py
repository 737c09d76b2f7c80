"""Masked language modelling on the question text: SSL-SSAW's self-supervised term.

SSL-SSAW (arXiv 2509.14036) has the question encoder predict masked question tokens next to the
translation loss, so the question's representation is trained on the task's own text rather than
only through the decoder's gradient. Three pieces:

- ``mask_question_tokens``: BERT-style choice of the positions. Per sample, ``ceil(ratio * n)``
  (at least 1) of its n maskable tokens (valid and not special: language code, ``</s>``, pad
  never) are chosen uniformly with the caller's generator, so a seeded run masks the same
  positions again (resume, any number of workers). Every chosen token becomes ``mask_id``: no
  80/10/10 random/keep split. The split exists to soften the gap between pretraining on masked
  text and fine-tuning on clean text; here the MLM term trains alongside translation on the same
  model and the paper specifies nothing more, so the plain form is kept (one less knob to ablate).
- ``MLMHead``: dense + GELU + LayerNorm, then a projection onto the vocabulary tied to the
  question encoder's token embedding when given (BERT's head), with its own bias.
- ``mlm_loss``: the mean cross-entropy over the chosen positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # label of positions the loss skips (torch's cross-entropy default)
_CEIL_SLACK = 1e-6  # ceil(0.14 * 50) must be 7, not 8 from 7.000000000000001


def mask_question_tokens(
    ids: torch.Tensor,
    mask: torch.Tensor,
    ratio: float,
    mask_id: int,
    special_ids: set[int],
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose the MLM positions of question ids (B, L) with validity mask (B, L) bool.

    Returns ``masked_ids`` (B, L) (``mask_id`` at the chosen positions, ``ids`` elsewhere) and
    ``labels`` (B, L) (the original id at the chosen positions, ``IGNORE_INDEX`` elsewhere). A
    sample without any maskable token gets no label. ``ratio`` is in (0, 1]; the random draws
    come from ``generator`` (on its own device) and nothing else.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if ids.shape != mask.shape:
        raise ValueError(f"ids {tuple(ids.shape)} and mask {tuple(mask.shape)} disagree")
    specials = torch.tensor(sorted(special_ids), dtype=ids.dtype, device=ids.device)  # (S,)
    maskable = mask.bool() & ~torch.isin(ids, specials)  # (B, L)
    n = maskable.sum(dim=1)  # (B,)
    count = torch.ceil(n.double() * ratio - _CEIL_SLACK).long().clamp(min=1)  # (B,)
    count = torch.minimum(count, n)  # (B,) 0 for a sample with nothing maskable
    # A uniform subset of each row's maskable tokens: i.i.d. uniform keys in [0, 1), the rest at
    # 2 so they sort last; the `count` smallest keys of a row are chosen.
    keys = torch.rand(ids.shape, generator=generator, device=generator.device)  # (B, L)
    keys = keys.to(ids.device).masked_fill(~maskable, 2.0)  # (B, L)
    rank = keys.argsort(dim=1).argsort(dim=1)  # (B, L) position of each key in its row's order
    chosen = (rank < count[:, None]) & maskable  # (B, L)
    masked_ids = ids.masked_fill(chosen, mask_id)  # (B, L)
    labels = ids.masked_fill(~chosen, IGNORE_INDEX)  # (B, L)
    return masked_ids, labels


class MLMHead(nn.Module):
    """Hidden states (B, L, d) -> vocabulary logits (B, L, V): dense + GELU + LayerNorm, then a
    projection, tied to ``tied_embedding``'s weight when given, with its own bias.

    A tied embedding is referenced, not registered: its owner (the question encoder) holds it,
    so the weight appears once in the state dict and in the hand-off contract, and moves with
    its owner. A head built without one owns a ``(V, d)`` projection.
    """

    def __init__(
        self, d_model: int, vocab_size: int, tied_embedding: nn.Embedding | None = None
    ) -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        if tied_embedding is not None:
            if tuple(tied_embedding.weight.shape) != (vocab_size, d_model):
                raise ValueError(
                    f"tied embedding {tuple(tied_embedding.weight.shape)} does not match "
                    f"(vocab_size, d_model) = ({vocab_size}, {d_model})"
                )
            self._tied = (tied_embedding,)  # a tuple keeps it out of the module tree
            self.weight = None
        else:
            self._tied = ()
            self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
            nn.init.normal_(self.weight, std=d_model**-0.5)

    def projection(self) -> torch.Tensor:
        """The (V, d) output projection: the tied embedding's weight or the head's own."""
        return self._tied[0].weight if self._tied else self.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.dense(hidden)))  # (B, L, d)
        return F.linear(h, self.projection(), self.bias)  # (B, L, V)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (B, L, V) over the labelled positions of labels (B, L).

    0 when nothing is labelled, still through the graph (a summed cross-entropy of zero terms),
    so every parameter behind the logits gets a (zero) gradient and DDP's reducer is not left
    waiting; no host sync on the label count. Computed in float32 whatever the logits' dtype.
    """
    total = F.cross_entropy(
        logits.float().flatten(0, -2),  # (B * L, V)
        labels.flatten(),  # (B * L,)
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    count = (labels != IGNORE_INDEX).sum().clamp(min=1)  # scalar
    return total / count
