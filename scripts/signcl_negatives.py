"""How many training clips get SignCL negatives, before and after the margin fix (issue 18).

    python scripts/signcl_negatives.py [--data ../shared/data] [--max-frames 300]

Reads the real label files (frame counts and target sentences; no video) of PHOENIX-2014-T and
CSL-Daily and prints, per dataset, the share of training clips with no negative pair:

- before: the margin max(10, T' / tokens x 2.3) taken in *feature steps* (T' = the clip's steps
  after the sign embedding's two ceil-mode stride-2 pools, from at most --max-frames frames) with
  the text counted in subword tokens of the tiny tokenizer trained on the split (vocabulary 400,
  both special tokens included), no cap: negatives need a gap > 2 x margin <= T' - 1;
- after: ``losses.signcl_loss``: the margin in video frames, words counted as words (characters
  for Chinese), converted to steps once, capped so every clip of >= 3 steps has negatives.

It also prints how often the margin sits at the floor of 10 frames and how often the cap binds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from scl_slt.data.labels import read_labels
from scl_slt.losses import signcl_margin_frames, spoken_units
from scl_slt.models.sign_embedding import downsampled_lengths
from scl_slt.models.tokenizer import SLTTokenizer

DATASETS = {"phoenix14t": ("de", "de_DE"), "csl_daily": ("zh", "zh_CN")}


def shares(records: list[dict], language: str, lang_code: str, max_frames: int) -> dict:
    texts = [r["text"] for r in records]
    frames = torch.tensor([int(r["length"]) for r in records])
    steps = downsampled_lengths(frames.clamp(max=max_frames))  # (N,) T'
    tokenizer = SLTTokenizer.train(texts, language, lang_code, vocab_size=400)
    tokens = torch.tensor([len(ids) + 2 for ids in tokenizer.tokenize(texts)])
    old_margin = torch.clamp(steps.double() / tokens * 2.3, min=10.0)
    old_none = (steps - 1).double() <= 2 * old_margin
    words = torch.tensor([spoken_units(t, language) for t in texts])
    margin_frames = signcl_margin_frames(frames, words)
    margin_steps = margin_frames * steps.double() / frames.double()
    cap = (steps.double() - 2).clamp(min=0) / 2
    new_margin = torch.minimum(margin_steps, cap)
    new_none = (steps - 1).double() <= 2 * new_margin
    return {
        "clips": len(records),
        "before_no_negatives": float(old_none.double().mean()),
        "before_at_floor": float((steps.double() / tokens * 2.3 <= 10.0).double().mean()),
        "after_no_negatives": float(new_none.double().mean()),
        "after_at_floor": float((frames.double() / words * 2.3 <= 10.0).double().mean()),
        "after_cap_binds": float((margin_steps > cap).double().mean()),
        "median_margin_frames": float(margin_frames.median()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data"))
    parser.add_argument("--max-frames", type=int, default=300)
    args = parser.parse_args()
    for name, (language, lang_code) in DATASETS.items():
        path = Path(args.data) / name / "labels.train"
        if not path.is_file():
            print(f"{name}: no {path}, skipped")
            continue
        s = shares(list(read_labels(path).values()), language, lang_code, args.max_frames)
        print(
            f"{name} train ({s['clips']} clips): no negatives before {100 * s['before_no_negatives']:.1f} %"
            f" (margin at the floor {100 * s['before_at_floor']:.1f} %), after"
            f" {100 * s['after_no_negatives']:.2f} % (margin at the 10-frame floor"
            f" {100 * s['after_at_floor']:.1f} %, cap binds {100 * s['after_cap_binds']:.1f} %,"
            f" median margin {s['median_margin_frames']:.1f} frames)"
        )


if __name__ == "__main__":
    main()
