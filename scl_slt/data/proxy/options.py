"""The options of a proxy build: everything that changes the files it writes.

They are the command's options (``python -m scl_slt.data.proxy --help``), not part of a training
config: a training run reads the finished folder like any GFSLT-style feature dataset. The exact
options are written into the folder's ``meta.json``; a later build into the same folder with other
options is refused, one with the same options reuses it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ...config import ConfigError

BUILDER_VERSION = 1  # bump when the output for given options and labels changes


@dataclass(frozen=True)
class ProxyOptions:
    seed: int = 0
    # clips kept per split (None: all), chosen from the seed, kept in file order: whole groups of
    # clips sharing a sentence (subset_by="sentence", keeps the duplicates) or single clips
    subset_by: str = "sentence"
    max_train: int | None = None
    max_dev: int | None = None
    max_test: int | None = None
    feature_dim: int = 64
    # clip length: None ("auto") = the record's real frame count / frame_stride (rounded up);
    # a number N = N frames per gloss on average (the real count is then ignored)
    frames_per_gloss: int | None = None
    frame_stride: int = 1
    # each gloss's typical duration, drawn in this range; a clip's frames are shared among its
    # glosses in proportion to these (times a per-clip jitter)
    min_gloss_frames: int = 6
    max_gloss_frames: int = 10
    duration_jitter: float = 0.2  # std of the per-clip log-normal factor on each gloss duration
    # signers when the names carry no signer id (PHOENIX); CSL-Daily names carry one (P....)
    num_signers: int = 9
    noise: float = 0.15  # per-frame Gaussian noise
    signer_shift: float = 0.3  # strength of each signer's linear style transform and offset
    confusable_rate: float = 0.2  # share of the vocabulary's glosses that have a twin
    confusable_distance: float = 0.1  # twin distance as a share of a random pair's distance

    def check(self) -> None:
        """Value checks; raises ConfigError naming the command-line option."""
        # fmt: off
        checks = [
            ("max_train", all(n is None or n >= 1
                              for n in (self.max_train, self.max_dev, self.max_test)),
             "--max-train/--max-dev/--max-test must be >= 1"),
            ("subset_by", self.subset_by in ("sentence", "clip"), "must be sentence | clip"),
            ("feature_dim", self.feature_dim >= 1, "must be >= 1"),
            ("frames_per_gloss", self.frames_per_gloss is None or self.frames_per_gloss >= 1,
             "must be 'auto' or >= 1"),
            ("frame_stride", self.frame_stride >= 1, "must be >= 1"),
            ("frame_stride", self.frames_per_gloss is None or self.frame_stride == 1,
             "applies to real frame counts only (--frames-per-gloss auto)"),
            ("min_gloss_frames", 1 <= self.min_gloss_frames <= self.max_gloss_frames,
             "need 1 <= --min-gloss-frames <= --max-gloss-frames"),
            ("duration_jitter", self.duration_jitter >= 0, "must be >= 0"),
            ("num_signers", self.num_signers >= 1, "must be >= 1"),
            ("noise", self.noise >= 0, "must be >= 0"),
            ("signer_shift", self.signer_shift >= 0, "must be >= 0"),
            ("confusable_rate", 0 <= self.confusable_rate <= 1, "must be in [0, 1]"),
            ("confusable_distance", 0 <= self.confusable_distance <= 0.4,
             "must be in [0, 0.4] (twins are near-identical)"),
        ]
        # fmt: on
        for key, ok, message in checks:
            if not ok:
                option = "--" + key.replace("_", "-")
                raise ConfigError(f"{option}: {message}, got {getattr(self, key)!r}")

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "builder_version": BUILDER_VERSION}

    def max_clips(self, split: str) -> int | None:
        return {"train": self.max_train, "dev": self.max_dev, "test": self.max_test}[split]
