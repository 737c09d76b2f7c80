"""scl-slt: Selective Contrastive Learning for gloss-free sign language translation."""

__version__ = "0.1.0"
