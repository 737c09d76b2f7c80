"""translate_loader / score_rows / write_predictions with a fake model that follows the
``generate`` contract, and the 2-process gather (gloo) against the single-process result."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scl_slt.config import GenerationConfig
from scl_slt.data.batching import Collator
from scl_slt.data.dataset import SignDataset
from scl_slt.eval import translation as evaluation
from scl_slt.eval.metrics import compute_metrics, read_lines
from scl_slt.eval.translation import (
    build_eval_loader,
    evaluation_meta,
    gather_rows,
    override_generation,
    score_rows,
    translate_loader,
    write_predictions,
)

REFERENCES = [
    "und nun die wettervorhersage für morgen",
    "tiefer luftdruck bestimmt unser wetter",
    "im norden regnet es",
    "morgen wird es sonnig",
    "im süden schneit es",
    "heute nacht frost",
    "am tag wolken",
]
# What the fake model "translates" each sample into (words outside the vocabulary are left out).
HYPOTHESES = [
    "und nun die wettervorhersage für morgen",
    "luftdruck bestimmt unser wetter",
    "im norden regnet es heute",
    "morgen es sonnig",
    "",
    "heute nacht frost",
    "am tag wolken und regen",
]
# The tokenizer knows only part of the words, so references decoded from ids would show <unk>.
VOCAB = sorted({w for h in HYPOTHESES for w in h.split()})


class FakeTokenizer:
    """Word-level tokenizer with the SLTTokenizer interface (encode_targets / decode)."""

    pad_id, eos_id, lang_id, unk_id = 0, 1, 2, 3

    def __init__(self, words: list[str]):
        self.words = ["<pad>", "</s>", "de_DE", "<unk>", *words]
        self.ids = {w: i for i, w in enumerate(self.words)}

    def word_ids(self, text: str) -> list[int]:
        return [self.ids.get(w, self.unk_id) for w in text.split()]

    def encode_targets(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [[self.lang_id, *self.word_ids(t), self.eos_id] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids, ids != self.pad_id

    def decode(self, ids: torch.Tensor) -> list[str]:
        out = []
        for row in ids.tolist():
            words = []
            for i in row:
                if i == self.eos_id:
                    break
                if i not in (self.pad_id, self.lang_id):
                    words.append(self.words[i])
            out.append(" ".join(words))
        return out


class FakeModel(torch.nn.Module):
    """Follows ``generate(inputs, input_lengths, num_beams, max_length, length_penalty)``.

    Each clip's frames carry its sample id in feature 0; the output is that sample's scripted
    hypothesis, independent of the other samples in the batch (as a real model's would be).
    """

    def __init__(self, tokenizer: FakeTokenizer, hypotheses: list[str]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.scripts = [tokenizer.word_ids(h) for h in hypotheses]
        self.tokenizer = tokenizer
        self.calls: list[dict] = []

    def generate(self, inputs, input_lengths, num_beams, max_length, length_penalty):
        self.calls.append(
            dict(
                training=self.training,
                grad=torch.is_grad_enabled(),
                num_beams=num_beams,
                max_length=max_length,
                length_penalty=length_penalty,
                batch=inputs.shape[0],
            )
        )
        tok = self.tokenizer
        seqs = []
        for b in range(inputs.shape[0]):
            n = int(input_lengths[b])
            assert torch.all(inputs[b, n:] == 0), "padding frames must be zero"
            sample = int(inputs[b, 0, 0].item())
            seqs.append([tok.lang_id, *self.scripts[sample][: max_length - 2], tok.eos_id])
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), tok.pad_id, dtype=torch.long, device=inputs.device)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s, device=inputs.device)
        return ids  # (B, L)


class MemorySource:
    """Clip source: (T, 3) features, feature 0 = sample id, T = the record's length."""

    def load(self, record, train, seed=None):
        clip = torch.full((record["length"], 3), 0.5)
        clip[:, 0] = float(record["sample"])
        return clip


def make_dataset() -> SignDataset:
    records = [
        {"name": f"dev/clip-{i}", "text": text, "length": 2 + i % 3, "sample": i}
        for i, text in enumerate(REFERENCES)
    ]
    return SignDataset(records, MemorySource(), max_frames=16, split="dev")


def expected_rows() -> list[dict]:
    return [
        {"index": i, "name": f"dev/clip-{i}", "hypothesis": h, "reference": r}
        for i, (h, r) in enumerate(zip(HYPOTHESES, REFERENCES))
    ]


# ------------------------------------------------------------------------ single process
def test_translate_loader_follows_the_contract():
    tok = FakeTokenizer(VOCAB)
    model = FakeModel(tok, HYPOTHESES)
    model.train()
    loader = build_eval_loader(make_dataset(), Collator(tok), batch_size=3)
    entered = []

    @contextlib.contextmanager
    def autocast():
        entered.append(True)
        yield

    generation = GenerationConfig(num_beams=3, max_length=12, length_penalty=0.7)
    rows = translate_loader(model, loader, tok, generation, "cpu", autocast=autocast)

    assert rows == expected_rows()
    # References are the raw strings: decoding the batch's text_ids would give <unk> words.
    assert "<unk>" in tok.decode(tok.encode_targets(REFERENCES)[0])[1]
    assert [c["batch"] for c in model.calls] == [3, 3, 1] and len(entered) == 3
    for call in model.calls:
        assert (call["num_beams"], call["max_length"], call["length_penalty"]) == (3, 12, 0.7)
        assert call["training"] is False and call["grad"] is False
    assert model.training, "the model's previous mode is restored"


def test_max_length_reaches_the_model():
    tok = FakeTokenizer(VOCAB)
    loader = build_eval_loader(make_dataset(), Collator(tok), batch_size=4)
    rows = translate_loader(
        FakeModel(tok, HYPOTHESES), loader, tok, GenerationConfig(max_length=4), "cpu"
    )
    assert [r["hypothesis"] for r in rows] == [" ".join(h.split()[:2]) for h in HYPOTHESES]


def test_score_rows_scores_the_gathered_rows():
    tok = FakeTokenizer(VOCAB)
    loader = build_eval_loader(make_dataset(), Collator(tok), batch_size=2)
    rows = translate_loader(FakeModel(tok, HYPOTHESES), loader, tok, GenerationConfig(), "cpu")
    metrics = score_rows(rows, "de")
    assert rows == expected_rows()
    assert metrics == compute_metrics(HYPOTHESES, REFERENCES, "de")
    assert 0 < metrics["bleu4"] < 100


def test_gather_rows_drops_sampler_repeats_and_sorts(monkeypatch):
    rows = expected_rows()
    rank0, rank1 = [rows[i] for i in (0, 2, 4, 6)], [rows[i] for i in (1, 3, 5)]
    repeat = dict(rows[0], hypothesis="a different beam result")
    monkeypatch.setattr(evaluation, "all_gather_object", lambda obj: [rank0, rank1 + [repeat]])
    assert gather_rows(rank0) == rows  # first occurrence (rank order) wins

    wrong = dict(rows[0], name="dev/other-clip")
    monkeypatch.setattr(evaluation, "all_gather_object", lambda obj: [rank0, rank1 + [wrong]])
    with pytest.raises(RuntimeError, match="dev/other-clip"):
        gather_rows(rank0)


def test_whitespace_in_hypotheses_is_collapsed():
    tok = FakeTokenizer(VOCAB)
    tok.decode = lambda ids: ["und\tnun\n die  wetter"] * ids.shape[0]
    loader = build_eval_loader(make_dataset(), Collator(tok), batch_size=7)
    rows = translate_loader(FakeModel(tok, HYPOTHESES), loader, tok, GenerationConfig(), "cpu")
    assert {r["hypothesis"] for r in rows} == {"und nun die wetter"}


def test_override_generation():
    base = GenerationConfig(num_beams=8, max_length=100, length_penalty=1.0)
    assert override_generation(base) == base
    assert override_generation(base, num_beams=1, length_penalty=0.5) == GenerationConfig(
        num_beams=1, max_length=100, length_penalty=0.5
    )
    with pytest.raises(ValueError, match="num_beams"):
        override_generation(base, num_beams=0)


# ------------------------------------------------------------------------------ writing
def test_write_predictions_round_trip(tmp_path):
    rows = expected_rows()
    metrics = compute_metrics(HYPOTHESES, REFERENCES, "de")
    meta = evaluation_meta("test", "runs/x/checkpoints/best", GenerationConfig(), "de")
    out = write_predictions(tmp_path / "eval", rows, metrics, meta)

    assert sorted(os.listdir(out)) == [
        "hypotheses.txt",
        "metrics.json",
        "predictions.tsv",
        "references.txt",
    ]
    tsv = (out / "predictions.tsv").read_text(encoding="utf-8").splitlines()
    assert tsv[0] == "name\thypothesis\treference"
    assert [line.split("\t") for line in tsv[1:]] == [
        [r["name"], r["hypothesis"], r["reference"]] for r in rows
    ]
    hyps, refs = read_lines(out / "hypotheses.txt"), read_lines(out / "references.txt")
    assert hyps == HYPOTHESES and refs == REFERENCES  # the empty hypothesis keeps its line
    assert compute_metrics(hyps, refs, "de") == metrics

    record = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert record["metrics"] == {k: v for k, v in metrics.items() if k != "bleu_signature"}
    assert record["bleu_signature"] == metrics["bleu_signature"]
    assert record["num_samples"] == 7
    assert record["meta"]["split"] == "test"
    assert record["meta"]["split_purpose"].startswith("final evaluation only")
    assert record["meta"]["checkpoint"] == "runs/x/checkpoints/best"
    assert record["meta"]["generation"] == {
        "num_beams": 8,
        "max_length": 100,
        "length_penalty": 1.0,
    }
    assert record["meta"]["token_level"] == "word"


def test_write_predictions_rejects_what_the_files_cannot_hold(tmp_path):
    rows = expected_rows()
    rows[2]["reference"] = "zwei\tspalten"
    with pytest.raises(ValueError, match="dev/clip-2"):
        write_predictions(tmp_path, rows, {}, {})
    with pytest.raises(ValueError, match="no prediction rows"):
        write_predictions(tmp_path, [], {}, {})
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------- two processes
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    try:
        tok = FakeTokenizer(VOCAB)
        loader = build_eval_loader(make_dataset(), Collator(tok), batch_size=2)
        local = [int(i) for i in loader.sampler]  # this rank's share, padded by the sampler
        rows = translate_loader(FakeModel(tok, HYPOTHESES), loader, tok, GenerationConfig(), "cpu")
        metrics = score_rows(rows, "de")
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"local": local, "metrics": metrics, "rows": rows}, f)
    finally:
        dist.destroy_process_group()


def test_two_process_gather_equals_single_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # 7 samples on 2 ranks: rank 1 gets sample 0 a second time as padding.
    assert results[0]["local"] == [0, 2, 4, 6] and results[1]["local"] == [1, 3, 5, 0]

    tok = FakeTokenizer(VOCAB)
    single_loader = build_eval_loader(make_dataset(), Collator(tok), batch_size=2)
    single_rows = translate_loader(
        FakeModel(tok, HYPOTHESES), single_loader, tok, GenerationConfig(), "cpu"
    )
    single_metrics = score_rows(single_rows, "de")
    for result in results:
        assert result["rows"] == single_rows
        assert result["metrics"] == single_metrics  # exactly, not approximately
    # Scoring each rank's share separately and averaging would not give the corpus score.
    shares = [[r for r in single_rows if r["index"] in set(res["local"])] for res in results]
    per_rank = [
        compute_metrics([r["hypothesis"] for r in s], [r["reference"] for r in s], "de")["bleu4"]
        for s in shares
    ]
    assert sum(per_rank) / 2 != pytest.approx(single_metrics["bleu4"])


# ------------------------------------------------------------------------- entry point
def test_run_config_round_trip_and_checkpoint_tag(tmp_path):
    from omegaconf import OmegaConf

    from scl_slt.config import TrainConfig, to_container
    from scl_slt.eval.evaluator import checkpoint_tag
    from scl_slt.rundir.layout import load_run_config

    saved = TrainConfig(run_dir=str(tmp_path))
    saved.model.generation.num_beams = 3
    saved.stage.init_from = str(tmp_path / "deleted-stage1-run")  # training-only, may be gone
    OmegaConf.save(OmegaConf.create(to_container(saved)), tmp_path / "config.yaml")
    loaded = load_run_config(tmp_path)
    assert loaded.model.generation.num_beams == 3 and loaded.data.language == "de"
    saved.data.language = "fr"
    OmegaConf.save(OmegaConf.create(to_container(saved)), tmp_path / "config.yaml")
    with pytest.raises(ValueError, match="data.language"):
        load_run_config(tmp_path)
    (tmp_path / "config.yaml").write_text("model:\n  no_such_key: 1\n")
    with pytest.raises(ValueError, match="no_such_key"):
        load_run_config(tmp_path)
    assert checkpoint_tag("best") == "best"
    assert checkpoint_tag(str(tmp_path / "checkpoints" / "epoch-0003")) == "epoch-0003"


def _compose(overrides: list[str]):

    from scl_slt.config import compose_config

    return compose_config("evaluate", overrides)


def test_evaluate_config_is_checked_before_any_work(tmp_path):
    from hydra.errors import ConfigCompositionException

    from scl_slt.config import ConfigError
    from scl_slt.eval.evaluator import validate_evaluate

    cfg = validate_evaluate(_compose([f"run_dir={tmp_path}", "num_beams=2"]))
    assert (cfg.checkpoint, cfg.split, cfg.num_beams) == ("best", "test", 2)
    with pytest.raises(ConfigCompositionException):
        _compose([f"run_dir={tmp_path}", "bogus=1"])
    with pytest.raises(ConfigError, match="run_dir: required"):
        validate_evaluate(_compose([]))
    for override, message in (
        ("split=valid", "split: expected one of"),
        ("batch_size=0", "batch_size"),
        ("num_beams=0", "num_beams"),
        ("retrieval.fine_k=0", "retrieval.fine_k"),
    ):
        with pytest.raises(ConfigError, match=message):
            validate_evaluate(_compose([f"run_dir={tmp_path}", override]))
    with pytest.raises(ConfigCompositionException):  # names the key and the allowed values
        _compose([f"run_dir={tmp_path}", "retrieval.duplicates=sometimes"])
    cfg = validate_evaluate(_compose([f"run_dir={tmp_path}", "retrieval.duplicates=hit"]))
    assert cfg.retrieval.duplicates.value == "hit" and cfg.retrieval.fine_k is None


def test_entry_point_fails_early_and_leaves_no_hydra_folders(tmp_path):
    import subprocess
    import sys

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "scl_slt.evaluate", f"run_dir={tmp_path}/absent"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "absent/config.yaml is missing" in proc.stderr + proc.stdout
    assert list(cwd.iterdir()) == []  # no outputs/, .hydra/ or log file


# ------------------------------------------------------------- real (tiny) runs and models
def test_evaluate_stage1_checkpoint_equals_direct_generation(tiny_train_cfg):
    """A stage-1-shaped run (text branch in the checkpoint): what evaluate writes equals the
    model's own generate(), one sample at a time without padding, on the test split."""
    from pathlib import Path

    import yaml

    from scl_slt.config import RetrievalConfig, RetrievalOverrides, to_container
    from scl_slt.config_checks import validate_train
    from scl_slt.data.datasets import build_split
    from scl_slt.eval.evaluator import evaluate_run
    from scl_slt.eval.retrieval import protocol_metrics
    from scl_slt.models.builder import build_model, build_tokenizer
    from scl_slt.models.similarity import pairwise_similarity
    from scl_slt.rundir.checkpoint import save_checkpoint

    cfg = validate_train(tiny_train_cfg("stage=contrastive"))
    run_dir = Path(cfg.run_dir)
    train_texts = build_split(cfg.data, "train").texts
    tokenizer = build_tokenizer(cfg.model, cfg.data, train_texts, out_dir=run_dir / "tokenizer")
    torch.manual_seed(1)
    model = build_model(cfg.model, cfg.data, tokenizer).eval()
    assert model.text_encoder is not None and model.similarity is not None
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_container(cfg), sort_keys=False))
    save_checkpoint(run_dir / "checkpoints" / "step-000000001", model.state_dict())

    metrics = evaluate_run(run_dir, checkpoint="last", split="test", device="cpu", batch_size=4)

    test_set = build_split(cfg.data, "test", train=False)
    direct = []
    with torch.no_grad():
        for i in range(len(test_set)):
            clip = test_set[i]["inputs"]  # (T, D)
            ids = model.generate(
                clip[None], torch.tensor([clip.shape[0]]), num_beams=1, max_length=12,
                length_penalty=1.0,
            )  # fmt: skip
            direct.append(" ".join(tokenizer.decode(ids)[0].split()))
    out = run_dir / "eval" / "last" / "test"
    assert read_lines(out / "hypotheses.txt") == direct
    assert read_lines(out / "references.txt") == test_set.texts
    assert any(direct), "the untrained model should still emit tokens"
    assert metrics == compute_metrics(direct, test_set.texts, "de")

    # Stage 1 keeps the text branch: retrieval under the run's protocol (default: exclude,
    # fine_k 10) is in metrics.json with its protocol, equal to the protocol computed directly.
    written = json.loads((out / "metrics.json").read_text())["alignment"]
    similarity = (cfg.model.similarity.method, cfg.model.similarity.tau)
    with torch.no_grad():
        batch = Collator(tokenizer)([test_set[i] for i in range(len(test_set))])
        o = model(batch["inputs"], batch["input_lengths"], batch["text_ids"], batch["text_mask"])
        sim = pairwise_similarity(
            o.video_proj, o.video_proj_mask, o.text_proj, o.text_proj_mask, *similarity
        ).numpy()
    for duplicates, fine_k in (("exclude", 10), ("miss", 2)):
        if duplicates != "exclude":  # evaluate's override over the run's setting
            overrides = RetrievalOverrides(duplicates=duplicates, fine_k=fine_k)
            evaluate_run(run_dir, "last", "test", device="cpu", retrieval=overrides)
            written = json.loads((out / "metrics.json").read_text())["alignment"]
        protocol = RetrievalConfig(duplicates=duplicates, fine_k=fine_k)
        want = protocol_metrics(sim, test_set.texts, protocol, "de")
        assert written["retrieval_protocol"] == want["retrieval_protocol"]
        assert written["retrieval_protocol"]["duplicates"] == duplicates
        assert written["retrieval_protocol"]["fine_k_used"] == min(fine_k, 5)
        for key in ("v2t_r1", "t2v_r10", "v2t_medr", "fine_v2t_r1", "fine_t2v_r1", "fine_t2v_medr"):
            assert written[key] == pytest.approx(want[key], abs=1e-9), key
        assert ("fine_v2t_r5" in written) == (fine_k >= 5)

    # The weights really come from the checkpoint: another initialisation translates otherwise.
    torch.manual_seed(2)
    other = build_model(cfg.model, cfg.data, tokenizer)
    (run_dir / "checkpoints" / "step-000000001").rename(run_dir / "checkpoints" / "old")
    save_checkpoint(run_dir / "checkpoints" / "step-000000002", other.state_dict())
    evaluate_run(run_dir, checkpoint="last", split="test", device="cpu", batch_size=4)
    assert read_lines(out / "hypotheses.txt") != direct


def test_evaluate_a_trained_translate_run(tiny_train_cfg):
    from pathlib import Path

    from scl_slt.config_checks import validate_train
    from scl_slt.data.datasets import build_split
    from scl_slt.eval.evaluator import evaluate_run
    from scl_slt.rundir.checkpoint import resolve_checkpoint
    from scl_slt.rundir.layout import read_metrics
    from scl_slt.stages import run_stage

    cfg = tiny_train_cfg("stage=translate", "stage.epochs=1")
    run_dir = Path(run_stage(cfg)["run_dir"])
    best = resolve_checkpoint(run_dir, "best")

    # The best-on-dev checkpoint re-evaluated on dev gives what training logged for it.
    dev = evaluate_run(run_dir, checkpoint="best", split="dev", device="cpu", batch_size=4)
    logged = read_metrics(run_dir, "dev")[-1]
    assert {k: logged[k] for k in dev} == dev

    test = evaluate_run(run_dir, checkpoint=str(best), split="test", device="cpu")
    out = run_dir / "eval" / best.name / "test"
    record = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    hyps, refs = read_lines(out / "hypotheses.txt"), read_lines(out / "references.txt")
    assert refs == build_split(validate_train(cfg).data, "test", train=False).texts
    assert compute_metrics(hyps, refs, "de") == test
    assert record["metrics"] == {k: v for k, v in test.items() if k != "bleu_signature"}
    assert record["meta"]["checkpoint"] == str(best)
    assert record["meta"]["split_purpose"].startswith("final evaluation only")
    assert record["meta"]["generation"]["num_beams"] == 1
