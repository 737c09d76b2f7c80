"""Training memory at the paper's batch sizes, computed (``bench_train_step.py``'s last table).

Parameters (fp32), the gradients and AdamW state (two fp32 moments) of the trainable
parameters, and the activations autograd keeps for backward, per configuration. Activations are
counted, not guessed: every tensor saved for backward during a forward (``saved_tensors_hooks``;
distinct storages, parameters left out, bf16 copies of weights under autocast included), plus,
with activation checkpointing, the inputs each checkpointed region keeps for its recompute. The
count is taken on small inputs and scaled to a paper batch:

* ResNet-18 (frames): counted for 2 and 4 frames -> bytes per frame (and a per-step constant:
  autocast's weight copies) x the valid frames of a batch (the ResNet never sees padding):
  batch size x mean clip length (real lengths, capped at data.max_frames);
* the rest (temporal block, encoders, decoder, losses): counted on one and two samples padded
  to the expected longest clip and sentence of a paper batch (drawn from the real lengths),
  -> per-sample bytes x batch size + the constant.

With a checkpointed ResNet the largest region's recompute (all the batch's frames at once) is
added as "recompute peak". Left out: other transient buffers of a forward or backward (an MBart
layer's recompute, gradients in flight, the logits' softmax during the loss), the allocator's
fragmentation, and the CUDA context: add ~10-20 % and ~0.5 GiB on a GPU.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from scl_slt.config import Modality
from scl_slt.losses import output_contrastive_loss, translation_loss
from scl_slt.models.speed_options import RESNET_STAGES, transformer_layers

GIB = 2**30


@contextlib.contextmanager
def counting_saved(model: torch.nn.Module, checkpointed_regions: list[torch.nn.Module]):
    """Bytes kept for backward by the forwards inside the block (``total[0]``)."""
    skip = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: set[int] = set()
    total = [0]

    def count(t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr and ptr not in skip and ptr not in seen:
            seen.add(ptr)
            total[0] += storage.nbytes()

    def pack(t):
        count(t)
        return t

    def region_input(module, args, kwargs):
        if module.training and torch.is_grad_enabled():
            first = args[0] if args else next(iter(kwargs.values()))
            count(first)

    handles = [
        m.register_forward_pre_hook(region_input, with_kwargs=True) for m in checkpointed_regions
    ]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield total
    finally:
        for h in handles:
            h.remove()


def checkpointed_regions(model) -> tuple[list, list]:
    """(transformer layers, ResNet regions) that checkpoint themselves in ``model``."""
    layers = [m for m in transformer_layers(model) if "forward" in m.__dict__]
    backbone, se = model.sign_embedding.backbone, model.sign_embedding
    resnet = []
    if backbone is not None and se.checkpoint_backbone:
        resnet = [backbone.conv1, *(getattr(backbone, n) for n in RESNET_STAGES)]
    return layers, resnet


def resnet_bytes(variant, n_frames: int, image: int, device, counter=None) -> int:
    """Bytes the ResNet keeps for backward over ``n_frames`` frames (into ``counter`` when
    given: an open ``counting_saved``)."""
    se = variant.model.sign_embedding
    _, regions = checkpointed_regions(variant.model)
    frames = torch.randint(0, 256, (1, n_frames, 3, image, image), dtype=torch.uint8)
    if not variant.uint8:
        frames = frames.float()
    frames = frames.to(device)
    mask = torch.ones(1, n_frames, dtype=torch.bool, device=device)
    counting = (
        contextlib.nullcontext(counter) if counter else counting_saved(variant.model, regions)
    )
    with counting as total, variant.autocast(device):
        out = se.per_frame(frames, mask)
    del out
    return total[0]


def largest_region_per_frame(variant, image: int, device) -> float:
    """With a checkpointed ResNet: bytes per frame of its largest region's internals, which
    backward recomputes for all the batch's frames at once (BatchNorm takes its statistics
    over them, so a region cannot run on fewer): the transient on top of what is kept."""
    se = variant.model.sign_embedding
    backbone = se.backbone
    regions = [backbone.conv1, *(getattr(backbone, n) for n in RESNET_STAGES)]
    sizes = {}
    se.checkpoint_backbone = False
    try:
        for n_frames in (2, 4):
            marks: list[int] = []
            with counting_saved(variant.model, []) as total:

                def mark(*_, marks=marks, total=total) -> None:
                    marks.append(total[0])

                handles = [r.register_forward_pre_hook(mark) for r in regions]
                resnet_bytes(variant, n_frames, image, device, total)
                marks.append(total[0])
            for h in handles:
                h.remove()
            sizes[n_frames] = np.diff(marks)
    finally:
        se.checkpoint_backbone = True
    return float(np.max((sizes[4] - sizes[2]) / 2))


@contextlib.contextmanager
def features_view(model, feature_dim: int):
    """The model reading (B, T, 512) vectors in place of frames: everything after the ResNet."""
    se = model.sign_embedding
    saved = se.backbone, se.modality, se.feature_dim
    se.backbone, se.modality, se.feature_dim = None, Modality.features, feature_dim
    try:
        yield
    finally:
        se.backbone, se.modality, se.feature_dim = saved


def rest_bytes(variant, stage: str, batch: int, frames: int, tokens: int, tokenizer, device):
    model = variant.model
    layers, _ = checkpointed_regions(model)
    width = 512 if model.sign_embedding.backbone is not None else model.sign_embedding.feature_dim
    inputs = torch.randn(batch, frames, width, device=device)
    lengths = torch.full((batch,), frames, device=device)
    ids = torch.full((batch, tokens), 5, dtype=torch.long, device=device)
    mask = torch.ones(batch, tokens, dtype=torch.bool, device=device)
    ids[:, 0] = tokenizer.lang_id
    with features_view(model, width), counting_saved(model, layers) as total:
        with variant.autocast(device):
            out = model(inputs, lengths, ids, mask, with_text=stage == "1")
            loss = translation_loss(out.logits, ids, mask, 0.2)
        if stage == "1":
            loss = loss + output_contrastive_loss(out, "cico", 0.07)
    del out, loss
    return total[0]


def expected_max(values: list[int], batch: int, draws: int = 2000) -> int:
    """The mean longest of ``batch`` values drawn at random (a padded batch's length)."""
    rng = np.random.default_rng(0)
    return int(np.mean(rng.choice(values, size=(draws, batch)).max(axis=1)))


def estimate_memory(
    variants, mode: str, tokenizer, paper_batch: dict, lengths, token_lengths, image: int, device
) -> dict:
    """Per stage: parameter, gradient and AdamW bytes, and each variant's activation bytes
    (the models still hold stage 1's text branch; stage 2 runs without it)."""
    model = variants[0].model
    text = sum(p.numel() for m in (model.text_encoder, model.similarity) for p in m.parameters())
    similarity_trained = sum(p.numel() for p in model.similarity.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    found = {"shapes": {}}
    for stage in ("1", "2"):
        batch = paper_batch[stage]
        params = total - (text if stage == "2" else 0)
        grads = trained - (similarity_trained if stage == "2" else 0)
        frames_max = expected_max(lengths, batch)
        tokens_max = expected_max(token_lengths, batch)
        valid_frames = batch * float(np.mean(lengths))
        found["shapes"][stage] = (frames_max, tokens_max, valid_frames if mode == "frames" else 0)
        entry = {"parameters": 4 * params, "gradients": 4 * grads, "AdamW state": 8 * grads}
        for v in variants:
            v.model.train()
            one = rest_bytes(v, stage, 1, frames_max, tokens_max, tokenizer, device)
            two = rest_bytes(v, stage, 2, frames_max, tokens_max, tokenizer, device)
            constant = 2 * one - two  # what does not grow with the batch
            acts = (two - one) * batch + constant
            if mode == "frames":
                f2 = resnet_bytes(v, 2, image, device)  # 2 and 4: BatchNorm needs > 1 value
                f4 = resnet_bytes(v, 4, image, device)
                per_frame = (f4 - f2) / 2
                acts += per_frame * valid_frames + (f2 - 2 * per_frame)
                constant += f2 - 2 * per_frame
                entry[f"{v.name}: ResNet per frame"] = per_frame
            entry[f"{v.name}: of which constant"] = constant
            entry[f"activations ({v.name})"] = acts
            if mode == "frames" and v.model.sign_embedding.checkpoint_backbone:
                largest = largest_region_per_frame(v, image, device) * valid_frames
                entry[f"recompute peak ({v.name})"] = largest
        found[stage] = entry
    return found


def print_estimate(found: dict, paper_batch: dict) -> None:
    print(
        "\nmemory at the paper's batch sizes, COMPUTED (not measured): fp32 weights; "
        "activations = tensors saved for backward, counted and scaled (memory_estimate.py)"
    )
    for stage in ("1", "2"):
        frames_max, tokens_max, valid = found["shapes"][stage]
        entry = found[stage]
        resnet = f", {valid:.0f} valid frames through the ResNet" if valid else ""
        print(
            f"stage {stage}, batch {paper_batch[stage]} (padded to {frames_max} frames and "
            f"{tokens_max} tokens{resnet}):"
        )
        fixed = entry["parameters"] + entry["gradients"] + entry["AdamW state"]
        for key, value in entry.items():
            unit = (
                f"{value / 2**20:10.1f} MiB" if "per frame" in key else f"{value / GIB:10.2f} GiB"
            )
            print(f"  {key:28s}{unit}")
        for key in [k for k in entry if k.startswith("activations")]:
            name = key[len("activations (") : -1]
            peak = entry.get(f"recompute peak ({name})", 0)  # transient, in backward
            print(f"  {'total (' + name + ')':28s}{(fixed + entry[key] + peak) / GIB:10.2f} GiB")
