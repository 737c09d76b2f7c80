"""Text pretraining of the tiny MBart: ``python -m scl_slt.pretrain_text pretrain.out_dir=<dir>``.

mBART-style denoising on a text corpus (``scl_slt/models/text_pretrain.py``), then the check of
what the frozen encoder learnt against its random initialisation (``models/text_probe.py``),
printed. Use the result in any experiment with ``model=tiny_pretrained model.mbart_path=<dir>``.
Rerunning on a finished folder with the same settings trains nothing and prints the check again;
an interrupted run (SIGTERM/SIGINT, exit 128 + N) continues from ``<dir>.work/`` when rerun.
Exit codes as ``python -m scl_slt.train``.
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from .config import register_configs
from .config_checks import validate_pretrain_text
from .models.text_pretrain import corpus_texts, pretrain_text
from .models.text_probe import format_probe, probe_folder
from .training.run_context import run_command
from .training.runtime import setup_runtime

register_configs()


@hydra.main(config_path="configs", config_name="pretrain_text", version_base=None)
def main(cfg: DictConfig) -> None:
    cfg = validate_pretrain_text(cfg)
    texts = corpus_texts(cfg)
    device = setup_runtime(cfg.device, "fp32").device
    record = pretrain_text(cfg, texts, device)
    p = cfg.pretrain
    result = probe_folder(p.out_dir, texts, cfg.seed, p.probe_sentences, p.probe_pairs)
    print(f"pretrained text model: {p.out_dir} ({record['steps']} steps, final loss "
          f"{sum(record['losses'][-50:]) / len(record['losses'][-50:]):.3f})")  # fmt: skip
    print(format_probe(result))
    print(json.dumps({"probe": result}, indent=None))
    print(f"use it with: model=tiny_pretrained model.mbart_path={p.out_dir}")


def cli() -> None:
    """``main`` under the exit-code rule (``training.run_context.run_command``)."""
    run_command(main)


if __name__ == "__main__":
    cli()
