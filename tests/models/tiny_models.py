"""What the model tests share: a few German sentences, the feature width of their clips, and the
tiny tokenizer trained on them."""

from __future__ import annotations

from scl_slt.models.tokenizer import SLTTokenizer

TEXTS = [
    "im süden können gewitter auftreten",
    "und nun die wettervorhersage für morgen",
    "morgen regen im norden",
    "am tag vierzehn grad",
]
FEATURE_DIM = 6


def train_tokenizer() -> SLTTokenizer:
    return SLTTokenizer.train(TEXTS, "de", "de_DE", vocab_size=60)
