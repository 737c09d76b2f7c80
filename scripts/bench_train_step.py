"""The paper-scale training step, measured: plain and best configurations side by side.

What is measured: the paper's model (mBART-large-50 dimensions, 12 + 12 layers, d 1024, with
LoRA r16/a32 on the visual encoder and the decoder, the frozen text encoder, ResNet-18 over
224 x 224 frames or 512-d features, built from config with random weights: timing and memory
do not depend on the weights' values) on batches whose clips have the real frame counts of
``../shared/data/<dataset>/labels.train`` (capped at ``data.max_frames``, and at
``--max-frames`` where given) and the real target sentences. Per stage: stage 1 (contrastive +
translation), stage 2 (translation only, text branch dropped) and beam-8 decoding, each split
into data (collating the batch and moving it to the device), forward, backward and optimiser
(gradient clipping + AdamW). The data part is what the main process does (collate, the copy to
the device), plus, for plain's float32 frames, the normalisation a loader worker would do in
parallel in training (so the ratio is printed with and without it). Two configurations run on
the same batches, their steps interleaved so that load from other processes hits both alike:

* plain: fp32, AdamW as a loop over the parameters, eager, no checkpointing, channels-first
  ResNet, float32 frames (normalised while the batch is built, as ``data.frames_uint8=false``);
* best: bf16 autocast where the device computes bf16 natively (CUDA; a CPU with AVX512-BF16 or
  AMX), AdamW fused (CUDA) / foreach (CPU) (``stage.optimizer_impl=auto``), channels-last
  ResNet, uint8 frames (normalised by the model on its device); ``--checkpointing`` and
  ``--compile`` add activation checkpointing and ``torch.compile`` of the layers.

Memory: on CUDA the allocator's peak during the step; on the CPU the peak resident set during
the step above the resident set before it (``/proc/self/statm`` sampled every 2 ms). Then a
computed estimate at the paper's batch sizes: parameters, gradients and AdamW state of the
trainable parameters, and the activations autograd keeps for backward (``memory_estimate.py``).

    python scripts/bench_train_step.py [--device auto] [--dataset phoenix14t] [--mode frames]
        [--stages 1,2,decode] [--batch N] [--steps N] [--vocab trimmed|full] [--checkpointing]
        [--compile] [--configs plain,best] [--max-frames N] [--tiny]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_estimate import estimate_memory, print_estimate  # noqa: E402
from step_measure import Clock, PeakMemory, native_bf16  # noqa: E402

from scl_slt.config import ModelConfig, compose_config  # noqa: E402
from scl_slt.data.batching import Collator  # noqa: E402
from scl_slt.data.frames import normalise_frames  # noqa: E402
from scl_slt.data.labels import read_labels  # noqa: E402
from scl_slt.losses import output_contrastive_loss, translation_loss  # noqa: E402
from scl_slt.models import builder  # noqa: E402
from scl_slt.models.speed_options import apply_speed_options, compile_regions  # noqa: E402
from scl_slt.models.tokenizer import MBART50_LANG_CODES, SLTTokenizer  # noqa: E402
from scl_slt.models.vocab_trim import estimate_kept_tokens, kept_token_ids  # noqa: E402
from scl_slt.training.optim import build_optimizer  # noqa: E402
from scl_slt.training.runtime import batch_to_device  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LANGUAGES = {"phoenix14t": ("de", "de_DE"), "csl_daily": ("zh", "zh_CN")}
PARTS = ("data", "forward", "backward", "optimiser")


# ------------------------------------------------------------------------------- data
def load_corpus(dataset: str) -> tuple[list[dict], list[str]]:
    """Train records (name, text, length) and every split's texts (for the vocabulary)."""
    folder = SHARED / dataset
    splits = {s: read_labels(folder / f"labels.{s}") for s in ("train", "dev", "test")}
    texts = [r["text"] for records in splits.values() for r in records.values()]
    return list(splits["train"].values()), texts


def vocabulary(texts: list[str], language: str, model_cfg: ModelConfig) -> tuple[int, str]:
    """The trimmed vocabulary's size: exact with mBART-50's tokenizer in the local cache, else
    the tokenizer-free estimate (``vocab_trim.estimate_kept_tokens``)."""
    try:
        backend = builder.load_pretrained_tokenizer(model_cfg.mbart_path).backend_tokenizer
    except (OSError, ValueError):
        count = estimate_kept_tokens(texts, language)
        unit = "characters" if language == "zh" else "words"
        how = f"estimated: distinct {unit} of all splits + 57 specials (no mBART-50 tokenizer here)"
        return count, how
    return len(kept_token_ids(backend, texts)), "exact: mBART-50 tokenizer over all splits"


@dataclass
class Shapes:
    max_frames: int
    image: int
    feature_dim: int
    modality: str


def make_samples(records, rng, batch: int, shapes: Shapes, colour: bool) -> list[dict]:
    """``batch`` dataset items of random train clips, as ``SignDataset`` gives them: random
    features, or uint8 frames with (training) an augmentation's colour change; ``collate``
    turns them into either configuration's batch."""
    picked = rng.choice(len(records), size=batch, replace=False)
    samples = []
    for i in picked:
        record, n = records[i], min(records[i]["length"], shapes.max_frames)
        gen = torch.Generator().manual_seed(int(i))
        if shapes.modality == "features":
            inputs = torch.randn(n, shapes.feature_dim, generator=gen)
            samples.append(
                {"index": int(i), "name": record["name"], "inputs": inputs, "text": record["text"]}
            )
            continue
        frames = torch.randint(
            0, 256, (n, 3, shapes.image, shapes.image), generator=gen, dtype=torch.uint8
        )
        sample = {"index": int(i), "name": record["name"], "inputs": frames, "text": record["text"]}
        if colour:
            sample["colour"] = torch.tensor([[1.1, 0.9, 1.05], [0.05, -0.05, 0.0]])  # gain, bias
        samples.append(sample)
    return samples


# --------------------------------------------------------------------------- variants
@dataclass
class Variant:
    name: str
    model: torch.nn.Module
    dtype: torch.dtype | None  # autocast dtype
    optimizer_impl: str
    uint8: bool
    describe: str
    optimizer: torch.optim.Optimizer | None = None
    times: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    peaks: dict[str, list[float]] = field(default_factory=dict)

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)


def make_variants(model, names, device, args) -> list[Variant]:
    """plain runs ``model`` itself; best a copy of it (the same initial weights) with the
    speed options."""
    bf16, _ = native_bf16(device)
    frames = args.mode == "frames"
    variants = []
    for name in names:
        if name == "plain":
            v = Variant(
                "plain",
                model,
                None,
                "plain",
                False,
                "fp32, AdamW loop, eager" + ", NCHW ResNet, float32 frames" * frames,
            )
        else:
            best = copy.deepcopy(model) if "plain" in names else model
            apply_speed_options(best, args.checkpointing, channels_last=True)
            if args.compile:
                compile_regions(best)
            impl = "fused" if device.type == "cuda" else "foreach"
            what = [
                ("bf16 autocast" if bf16 else "fp32 (no native bf16)"),
                f"AdamW {impl}",
                *(["NHWC ResNet", "uint8 frames"] if frames else []),
            ]
            what += ["checkpointing"] * args.checkpointing + ["compiled"] * args.compile
            v = Variant(
                "best", best, torch.bfloat16 if bf16 else None, "auto", True, ", ".join(what)
            )
        variants.append(v)
    return variants


def collate(variant: Variant, samples: list[dict], collator: Collator, device: torch.device):
    """The batch on the device: uint8 frames (and colour) as they come, or float32 frames, the
    colour change and normalisation done while loading (``data.frames_uint8=false``)."""
    if not variant.uint8 and samples[0]["inputs"].dtype == torch.uint8:
        samples = [
            {
                **{k: v for k, v in s.items() if k != "colour"},
                "inputs": normalise_frames(s["inputs"], s.get("colour")),
            }
            for s in samples
        ]
    return batch_to_device(collator(samples), device)


def train_step(variant: Variant, samples, stage: str, collator, device, clip: float) -> Clock:
    clock, model = Clock(device), variant.model
    clock.start()
    inputs, lengths, ids, mask, colour = collate(variant, samples, collator, device)
    clock.lap("data")
    with variant.autocast(device):
        out = model(inputs, lengths, ids, mask, with_text=stage == "1", colour=colour)
        loss = translation_loss(out.logits, ids, mask, 0.2)
    if stage == "1":
        loss = loss + output_contrastive_loss(out, "cico", 0.07)
    clock.lap("forward")
    loss.backward()
    del out, loss
    clock.lap("backward")
    trained = [p for p in model.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(trained, clip)
    variant.optimizer.step()
    variant.optimizer.zero_grad(set_to_none=True)
    clock.lap("optimiser")
    return clock


def decode_step(variant: Variant, samples, collator, device, max_length: int) -> Clock:
    clock = Clock(device)
    clock.start()
    inputs, lengths, _, _, _ = collate(variant, samples, collator, device)
    clock.lap("data")
    with torch.no_grad(), variant.autocast(device):
        variant.model.generate(inputs, lengths, num_beams=8, max_length=max_length)
    clock.lap("forward")
    return clock


def run_stage(stage, variants, records, shapes, collator, device, args, rng) -> None:
    """Warm-up, then ``args.steps`` timed steps, the variants alternating first and second."""
    batch = args.batch[stage]
    for v in variants:
        v.model.train(stage != "decode")
        if stage != "decode":
            v.optimizer = build_optimizer(v.model, 1e-4, 0.01, v.optimizer_impl)
    for step in range(args.warmup + args.steps):
        seed = int(rng.integers(2**31))
        order = variants if step % 2 == 0 else variants[::-1]
        for v in order:
            samples = make_samples(
                records, np.random.default_rng(seed), batch, shapes, stage != "decode"
            )
            with PeakMemory(device) as memory:
                if stage == "decode":
                    clock = decode_step(v, samples, collator, device, args.decode_max_length)
                else:
                    clock = train_step(v, samples, stage, collator, device, 1.0)
            if step >= args.warmup:
                for part, seconds in clock.parts.items():
                    v.times.setdefault(stage, {}).setdefault(part, []).append(seconds)
                v.peaks.setdefault(stage, []).append(memory.extra)
            elif step == 0:
                compiling = ", compiling" if args.compile and v.name == "best" else ""
                seconds = sum(clock.parts.values())
                print(
                    f"  {stage}: {v.name} first step (warm-up{compiling}) {seconds:.1f} s",
                    flush=True,
                )
    for v in variants:
        v.optimizer = None


def report(stage: str, variants: list[Variant], batch: int, device: torch.device) -> None:
    what = {
        "1": "stage 1 (contrastive + translation)",
        "2": "stage 2 (translation)",
        "decode": "beam-8 decoding",
    }[stage]
    memory = "peak CUDA alloc. above start" if device.type == "cuda" else "peak RSS above start"
    print(f"\n{what}, batch {batch}: median of the timed steps, seconds")
    print(
        f"{'config':8s}{'samples/s':>11s}{'step':>9s}"
        + "".join(f"{p:>11s}" for p in PARTS)
        + f"   {memory}"
    )
    rows = {}
    for v in variants:
        med = {p: float(np.median(v.times[stage][p])) for p in v.times[stage]}
        step = sum(med.values())
        rows[v.name] = (batch / step, max(v.peaks[stage]), step - med["data"])
        cells = "".join(f"{med[p]:11.3f}" if p in med else f"{'-':>11s}" for p in PARTS)
        print(
            f"{v.name:8s}{batch / step:11.3f}{step:9.2f}{cells}   "
            f"{max(v.peaks[stage]) / 2**30:.2f} GiB"
        )
    if {"plain", "best"} <= rows.keys():
        speed = rows["best"][0] / rows["plain"][0]
        compute = rows["plain"][2] / rows["best"][2]  # without data: loader workers overlap it
        mem = rows["best"][1] / max(rows["plain"][1], 1)
        print(
            f"best / plain: samples/s x{speed:.2f} (without the data part x{compute:.2f}), "
            f"peak memory x{mem:.2f}"
        )


# ------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dataset", default="phoenix14t", choices=sorted(LANGUAGES))
    p.add_argument("--mode", default="frames", choices=["frames", "features"])
    p.add_argument("--stages", default="1,2,decode")
    p.add_argument("--batch", type=int, help="default: the paper's (16 / 8) on CUDA, 1 on CPU")
    p.add_argument("--decode-batch", type=int, help="default: 16 on CUDA, 1 on CPU")
    p.add_argument("--steps", type=int, help="timed steps after warm-up (CUDA 10, CPU 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--vocab", default="trimmed", choices=["trimmed", "full"])
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--configs", default="plain,best")
    p.add_argument("--max-frames", type=int, help="cap below data.max_frames (CPU default 16)")
    p.add_argument("--decode-max-length", type=int, help="default: the config's (CPU 20)")
    p.add_argument("--no-estimate", action="store_true", help="skip the memory estimate")
    p.add_argument("--tiny", action="store_true", help="the tiny model (tests: seconds)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def resolve_defaults(args: argparse.Namespace) -> tuple[torch.device, dict, dict]:
    """Device, the composed stage configs and the paper's batch sizes; fills the defaults that
    depend on the device (paper batch sizes on CUDA; batch 1, short clips on the CPU)."""
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    model_name = "tiny" if args.tiny else "mbart_large_50"
    cfgs = {
        stage: compose_config(
            "train", [f"data={args.dataset}", f"model={model_name}", f"stage={name}"]
        )
        for stage, name in (("1", "contrastive"), ("2", "translate"))
    }
    cfg = cfgs["1"]
    paper_batch = {stage: c.stage.batch_size for stage, c in cfgs.items()}
    args.batch = {s: args.batch or (paper_batch[s] if cuda else 1) for s in paper_batch}
    args.batch["decode"] = args.decode_batch or (cfg.stage.eval_batch_size if cuda else 1)
    args.steps = args.steps or (10 if cuda else 1 if args.tiny else 3)
    cap = args.max_frames or (cfg.data.max_frames if cuda else 8 if args.tiny else 16)
    args.max_frames = min(cap, cfg.data.max_frames)
    generation = cfg.model.generation.max_length
    args.decode_max_length = args.decode_max_length or (
        5 if args.tiny else generation if cuda else 20
    )
    return device, cfgs, paper_batch


def build(args, cfg, tokenizer, vocab: int) -> torch.nn.Module:
    """The paper-scale model with random weights (``--tiny``: the tiny model of tiny.yaml)."""
    model_cfg: ModelConfig = OmegaConf.to_object(cfg.model)
    if not args.tiny:
        return builder.build_paper_scale_model(model_cfg, args.mode, tokenizer, vocab)
    model_cfg.vocab_size = vocab
    data_cfg = OmegaConf.to_object(cfg.data)
    data_cfg.modality = args.mode
    return builder.build_model(model_cfg, data_cfg, tokenizer)


def main(argv=None) -> None:
    args = parse_args(argv)
    device, cfgs, paper_batch = resolve_defaults(args)
    cfg = cfgs["1"]
    language, lang_code = LANGUAGES[args.dataset]
    records, texts = load_corpus(args.dataset)
    if args.tiny:
        vocab, how = cfg.model.vocab_size + len(MBART50_LANG_CODES), "the tiny model's"
    else:
        vocab, how = vocabulary(texts, language, OmegaConf.to_object(cfg.model))
    # BPE merges and 4 specials, then mBART-50's 52 language codes: `vocab` rows in all
    bpe = vocab - len(MBART50_LANG_CODES)
    tokenizer = SLTTokenizer.train([r["text"] for r in records], language, lang_code, bpe)
    vocab = max(vocab, tokenizer.vocab_size)
    if args.vocab == "full":
        vocab = builder.MBART_LARGE_50_VOCAB
    bf16, bf16_how = native_bf16(device)
    shapes = Shapes(
        args.max_frames,
        32 if args.tiny else cfg.data.crop,
        cfg.model.sign_embedding.feature_dim,
        args.mode,
    )
    capped = "" if args.max_frames == cfg.data.max_frames else ", capped here: --max-frames"
    size = f" at {shapes.image}x{shapes.image}" if args.mode == "frames" else ""
    print(
        f"device {device} ({bf16_how}: native bf16 {'yes' if bf16 else 'no'}), torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads\n"
        f"{args.dataset}: {len(records)} train clips; a clip's frames: min(its length, "
        f"{args.max_frames}) (data.max_frames={cfg.data.max_frames}{capped}); {args.mode}{size}\n"
        f"vocabulary {vocab:,} ({args.vocab}; trimmed size {how}); targets tokenised by a "
        f"BPE tokenizer of the trimmed size trained on the train texts"
    )
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model = build(args, cfg, tokenizer, vocab).to(device)
    counts = builder.count_parameters(model)
    print(
        f"model {'tiny' if args.tiny else 'paper-scale'}, random weights "
        f"({time.perf_counter() - start:.0f} s to build): {counts['total']:,} parameters, "
        f"{counts['trainable']:,} trainable"
    )
    variants = make_variants(model, args.configs.split(","), device, args)
    for v in variants:
        print(f"  {v.name}: {v.describe}")
    print(
        f"steps: {args.warmup} warm-up + {args.steps} timed per stage and configuration; "
        f"decoding: random weights never end a hypothesis early, so every decode runs "
        f"max_length={args.decode_max_length} steps"
    )
    estimate = None
    if not args.no_estimate:  # first: it needs stage 1's text branch
        lengths = [min(r["length"], cfg.data.max_frames) for r in records]
        token_lengths = [len(ids) + 2 for ids in tokenizer.tokenize(texts)]
        estimate = estimate_memory(
            variants,
            args.mode,
            tokenizer,
            paper_batch,
            lengths,
            token_lengths,
            shapes.image,
            device,
        )
    collator, rng = Collator(tokenizer), np.random.default_rng(args.seed)
    for stage in [s for s in ("1", "2", "decode") if s in args.stages.split(",")]:
        if stage != "1":
            for v in variants:
                v.model.drop_text_branch()
        run_stage(stage, variants, records, shapes, collator, device, args, rng)
        report(stage, variants, args.batch[stage], device)
    if estimate is not None:
        print_estimate(estimate, paper_batch)


if __name__ == "__main__":
    main()
