"""Collate and loader: samples into a batch, and the DataLoader that hands batches over.

Batch contract (what ``Collator`` returns; every stage, the tracker and evaluation rely on it):

    indices        LongTensor (B,)        position of each sample in its split
    names          list[str]
    texts          list[str]              raw reference strings, never re-decoded
    inputs         FloatTensor (B, T, D) features, or (B, T, 3, H, W) frames, zero-padded in
                   time: ByteTensor pixels 0..255 (data.frames_uint8, default; the model's sign
                   embedding normalises them) or FloatTensor already ImageNet-normalised
    colour         FloatTensor (B, 2, 3)  only with augmented uint8 frames: each clip's colour
                   change as per-channel gain and bias, applied by the sign embedding with the
                   normalisation (``frames.normalise_frames``); pass it to the model
    input_lengths  LongTensor (B,)
    video_frames   LongTensor (B,)        each clip's frames as loaded, before subsampling to
                   data.max_frames (SignCL's margin is in these); input_lengths when not given
    text_ids       LongTensor (B, L)      tokenizer.encode_targets(texts): [lang] ... </s>, padded
    text_mask      BoolTensor (B, L)

Question-based SLT (``data.assist``, ``questions.py``): when the samples carry a ``question``,
the batch also has

    questions      list[str]              the raw question strings (or gloss sequences)
    question_ids   LongTensor (B, Lq)     ``encode_questions``: [lang] ... </s>, padded
    question_mask  BoolTensor (B, Lq)

encoded as *source* text the way mBART-50 encodes an encoder input in the dataset's language,
``[lang_code] tokens </s>`` (its ``src_lang`` convention), which is exactly
``tokenizer.encode_targets``: the questions are in the target language, and the text encoder
reads the same format. A batch whose samples carry no question has none of these keys (batches
without QB-SLT are unchanged); a batch mixing samples with and without one is an error (a
split's records either all carry a question or none does).

A sample the dataset skipped (``data.on_bad_sample=skip``, see ``dataset.py``) arrives as None and
is dropped: the batch is smaller, but there is still exactly one batch per sampler batch, so
every rank steps the same number of times. A batch whose samples all failed collates to
**None**; the loop must skip that step on every rank together, e.g.
``if distributed.any_rank(batch is None): continue`` before the forward pass.

Reproducible workers: pass ``worker_init_fn=worker_init_fn, generator=loader_generator(seed,
rank)`` to a DataLoader, so augmentation drawn from torch's per-worker RNG repeats across runs.
"""

from __future__ import annotations

import collections
import copy
import math
import os
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from .labels import DataError

_NUMPY_DTYPES = {torch.float32: np.float32, torch.uint8: np.uint8}


def _numpy_copyable(batch: torch.Tensor, clips: list[torch.Tensor]) -> bool:
    """Whether the batch and its clips are CPU tensors of one dtype numpy handles."""
    return batch.dtype in _NUMPY_DTYPES and all(
        t.dtype == batch.dtype and t.device.type == "cpu" for t in (batch, *clips)
    )


def _empty_batch(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised batch buffer. In a DataLoader worker it is created in shared memory, as
    torch's default_collate does, so sending it to the main process copies nothing; elsewhere it
    comes from numpy, whose large allocations use transparent huge pages (far fewer page faults
    than torch's allocator for frame batches of hundreds of MB)."""
    if get_worker_info() is not None:
        storage = like._typed_storage()._new_shared(math.prod(shape), device=like.device)
        return like.new(storage).view(shape)
    if like.device.type == "cpu" and like.dtype in _NUMPY_DTYPES:
        return torch.from_numpy(np.empty(shape, dtype=_NUMPY_DTYPES[like.dtype]))
    return like.new_empty(shape)


def _write_through_shared_file(batch: torch.Tensor, clips: list[torch.Tensor]) -> bool:
    """``batch[i, :len(clip)] = clip`` written with ``os.pwrite`` into the shared-memory file of a
    batch that ``_empty_batch`` just created in a worker; False (nothing written) where the batch
    is no such file (another torch sharing strategy, no ``pwrite``, other dtypes).

    Why: writing through the memory map costs this process a page fault per 4 KiB page, about a
    third of a frame batch's worker -> main hand-off; a write to the file costs none. The padding
    needs no write: a new shared-memory file reads as zeros."""
    if (
        not hasattr(os, "pwrite")
        or torch.multiprocessing.get_sharing_strategy() != "file_descriptor"
        or not _numpy_copyable(batch, clips)
    ):
        return False
    fd = batch.untyped_storage()._share_fd_cpu_()[0]  # the file behind the fresh shared storage
    row_bytes = batch.stride(0) * batch.element_size()
    start = batch.storage_offset() * batch.element_size()
    for i, clip in enumerate(clips):
        data = memoryview(clip.contiguous().numpy()).cast("B")
        offset = start + i * row_bytes
        while data:  # pwrite may write less than asked
            written = os.pwrite(fd, data, offset)
            data, offset = data[written:], offset + written
    return True


# Worker -> main process hand-off through reused buffers (``BatchLoader``). A fresh
# shared-memory batch costs the worker a tmpfs page allocation per 4 KiB and the main process the
# mapping, page faults and freeing, together several times the copy itself; a worker therefore
# keeps its last few batch buffers and refills one once the main process has released it. Byte 0
# of a buffer's header is 1 from the moment the worker takes it until the main process has copied
# the batch out. Memory: up to 4 batch buffers per worker (CPU runs only: see BatchLoader).
_HEADER = 64  # bytes before the batch data (keeps float32 / int64 data aligned)
_RING_SIZE = 4  # buffers a worker keeps: DataLoader's prefetch of 2 batches, plus slack
_RELEASE = "_release"  # batch key of the header byte, popped by ``adopt_batch``


class _BufferRing:
    """The shared-memory batch buffers one worker process may refill."""

    def __init__(self, size: int = _RING_SIZE):
        self.buffers: collections.deque[torch.UntypedStorage] = collections.deque(maxlen=size)

    def take(self, nbytes: int) -> tuple[torch.Tensor, bool]:
        """(uint8 view of a whole buffer with at least ``nbytes`` after the header, marked taken;
        whether it is new). A new buffer reads as zeros; appending it drops the least recently
        used one from the ring (the main process keeps its own mapping while it needs one)."""
        for buffer in self.buffers:
            if buffer[0] == 0 and buffer.nbytes() - _HEADER >= nbytes:  # released, large enough
                self.buffers.remove(buffer)
                self.buffers.append(buffer)
                fresh = False
                break
        else:  # 25 % headroom: clip lengths vary from batch to batch
            buffer = torch.UntypedStorage._new_shared(_HEADER + nbytes + nbytes // 4)
            self.buffers.append(buffer)
            fresh = True
        raw = torch.empty(0, dtype=torch.uint8).set_(buffer)
        raw[0] = 1
        return raw, fresh


_ring: _BufferRing | None = None  # per process; only DataLoader workers create one


def _ring_batch(
    like: torch.Tensor, shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(batch buffer of ``shape``, its release byte, whether the buffer is new) from this
    worker's ring."""
    global _ring
    if _ring is None:
        _ring = _BufferRing()
    nbytes = math.prod(shape) * like.element_size()
    raw, fresh = _ring.take(nbytes)
    inputs = raw[_HEADER : _HEADER + nbytes].view(like.dtype).view(shape)
    return inputs, raw[:1], fresh


def adopt_batch(
    batch: dict[str, Any] | None, mapped: collections.deque | None = None
) -> dict[str, Any] | None:
    """A batch as received from a worker, with ``inputs`` in this process's own memory: a batch
    in a reused worker buffer is copied out and the buffer released to its worker.

    ``mapped`` (``BatchLoader``'s, bounded) keeps the buffers last copied from mapped in this
    process: torch's receiving side finds a buffer it still maps by its file and reuses the
    mapping, so a refilled buffer's next batch costs no mmap and no page faults."""
    if batch is None or _RELEASE not in batch:
        return batch
    release = batch.pop(_RELEASE)
    shared = batch["inputs"]
    inputs = _empty_batch(shared, tuple(shared.shape))  # not in a worker: private memory
    if shared.dtype in _NUMPY_DTYPES:  # one thread: a multi-threaded copy_ faulting in fresh
        np.copyto(inputs.numpy(), shared.numpy())  # pages runs several times slower
    else:
        inputs.copy_(shared)
    batch["inputs"] = inputs
    release.zero_()  # after the copy: the worker may now refill the buffer
    if mapped is not None:
        mapped.append(shared.untyped_storage())
    return batch


def _fill_batch(batch: torch.Tensor, clips: list[torch.Tensor]) -> None:
    """``batch[i] = clip`` zero-padded in time; numpy (one thread) where it can: torch's
    multi-threaded copy into freshly allocated pages runs several times slower."""
    if _numpy_copyable(batch, clips):
        out = batch.numpy()
        for i, clip in enumerate(clips):
            out[i, : clip.shape[0]] = clip.numpy()
            out[i, clip.shape[0] :] = 0
        return
    for i, clip in enumerate(clips):
        batch[i, : clip.shape[0]] = clip
        batch[i, clip.shape[0] :] = 0


def encode_questions(tokenizer: Any, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Questions as encoder input: ids (B, Lq) long, mask (B, Lq) bool (see the contract)."""
    return tokenizer.encode_targets(questions)


def _question_keys(tokenizer: Any, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """``questions``, ``question_ids``, ``question_mask`` when the samples carry questions."""
    asked = ["question" in s for s in samples]
    if not any(asked):
        return {}
    if not all(asked):
        without = [s["name"] for s in samples if "question" not in s]
        raise DataError(
            f"samples {without} carry no question while others of their batch do: a split's "
            "records either all carry one or none does (data.assist)"
        )
    questions = [s["question"] for s in samples]
    question_ids, question_mask = encode_questions(tokenizer, questions)  # (B, Lq) each
    return {"questions": questions, "question_ids": question_ids, "question_mask": question_mask}


class Collator:
    """Pads clips in time and tokenises target texts and questions (see the batch contract).

    ``reuse_buffers`` (set by ``BatchLoader``, which copies such batches out on arrival): in a
    DataLoader worker, batches are written into buffers the worker reuses; a plain DataLoader
    must not use it, or its batches' ``inputs`` would be overwritten."""

    def __init__(self, tokenizer: Any, reuse_buffers: bool = False):
        self.tokenizer = tokenizer
        self.reuse_buffers = reuse_buffers

    def __call__(self, samples: list[dict[str, Any] | None]) -> dict[str, Any] | None:
        samples = [s for s in samples if s is not None]  # skipped bad samples
        if not samples:
            return None
        lengths = torch.tensor([s["inputs"].shape[0] for s in samples], dtype=torch.long)  # (B,)
        first = samples[0]["inputs"]
        shape = (len(samples), int(lengths.max()), *first.shape[1:])  # (B, T, D) or (B, T, 3, H, W)
        clips = [s["inputs"] for s in samples]
        release, fresh_shared_file = None, get_worker_info() is not None  # see _empty_batch
        if fresh_shared_file and self.reuse_buffers:
            inputs, release, fresh_shared_file = _ring_batch(first, shape)
        else:
            inputs = _empty_batch(first, shape)
        if not (fresh_shared_file and _write_through_shared_file(inputs, clips)):
            _fill_batch(inputs, clips)
        texts = [s["text"] for s in samples]
        text_ids, text_mask = self.tokenizer.encode_targets(texts)
        batch = {
            "indices": torch.tensor([s["index"] for s in samples], dtype=torch.long),
            "names": [s["name"] for s in samples],
            "texts": texts,
            "inputs": inputs,
            "input_lengths": lengths,
            "video_frames": torch.tensor(
                [s.get("video_frames", s["inputs"].shape[0]) for s in samples], dtype=torch.long
            ),
            "text_ids": text_ids,
            "text_mask": text_mask,
        }
        with_colour = ["colour" in s for s in samples]
        if any(with_colour):
            if not all(with_colour):
                names = [s["name"] for s in samples]
                raise ValueError(f"samples {names}: some carry a colour change, some do not")
            batch["colour"] = torch.stack([s["colour"] for s in samples])  # (B, 2, 3)
        batch.update(_question_keys(self.tokenizer, samples))
        if release is not None:
            batch[_RELEASE] = release
        return batch


class BatchLoader(DataLoader):
    """The project's DataLoader: with workers and a ``Collator``, workers hand batches over in
    buffers they reuse, and each batch is copied out of its buffer as it arrives, so a loop sees
    ordinary tensors it may keep. The buffers save the worker a shared-memory page allocation
    and the main process the mapping and freeing, per batch (``scripts/bench_frames.py``).

    Not with ``pin_memory`` (the stages pin on CUDA): there the pinning thread copies batches
    already and its copies would never release a buffer; such loaders hand over fresh shared
    memory as DataLoader does."""

    def __init__(self, dataset: Dataset, *args: Any, **kwargs: Any):
        collate = kwargs.get("collate_fn")
        if (
            isinstance(collate, Collator)
            and kwargs.get("num_workers", 0) > 0
            and not kwargs.get("pin_memory", False)
        ):
            kwargs["collate_fn"] = copy.copy(collate)
            kwargs["collate_fn"].reuse_buffers = True
        super().__init__(dataset, *args, **kwargs)
        # as many buffers as the workers keep; an older one is unmapped here (and freed once its
        # worker has dropped it too)
        self._mapped: collections.deque = collections.deque(
            maxlen=max(1, self.num_workers) * _RING_SIZE
        )

    def __iter__(self):
        for batch in super().__iter__():
            yield adopt_batch(batch, self._mapped)


# ---------------------------------------------------------------------------------- seeding
def worker_init_fn(worker_id: int) -> None:
    """Seed numpy and ``random`` in a DataLoader worker from the seed torch gave that worker."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def loader_generator(seed: int, rank: int = 0) -> torch.Generator:
    """The DataLoader ``generator`` that makes worker seeds (and so augmentation) reproducible;
    different per rank so ranks do not augment in lock-step."""
    generator = torch.Generator()
    generator.manual_seed(seed * 1000003 + rank)
    return generator
