"""SnapshotTracker: schedule, contents against a fake model, coverage checks, atomic writes,
fingerprints, refusal of mismatched snapshots, and sharded encoding under torch.distributed."""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from scl_slt.config import TrainConfig, to_container
from scl_slt.data.batching import Collator
from scl_slt.data.dataset import SignDataset
from scl_slt.selection import tracker as tracker_module
from scl_slt.selection.tracker import (
    SnapshotError,
    SnapshotTracker,
    estimate_snapshot_bytes,
    fingerprint_of,
    read_snapshot,
)
from scl_slt.selection.trajectory import SnapshotMismatchError, list_snapshots, load_snapshots

FEATURE_DIM, PROJ_DIM = 5, 4


class CharTokenizer:
    """encode_targets as the batch contract has it: [lang] chars </s> + padding."""

    def encode_targets(self, texts):
        rows = [[1] + [3 + (ord(c) % 50) for c in t] + [2] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for k, r in enumerate(rows):
            ids[k, : len(r)] = torch.tensor(r)
        return ids, ids != 0


class FakeModel(nn.Module):
    """Follows the model contract: projected, L2-normalised tokens with masks.

    Video: pairs of frames averaged (time / 2, like a downsampling block), projected. Text: an
    embedding of the ids. Dropout makes train mode visibly different from eval mode.
    """

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.video = nn.Linear(FEATURE_DIM, PROJ_DIM)
        self.text = nn.Embedding(60, PROJ_DIM)
        self.dropout = nn.Dropout(0.5)
        self.calls = []

    def forward(
        self,
        inputs,
        input_lengths,
        text_ids=None,
        text_mask=None,
        with_text=True,
        with_decoder=True,
        colour=None,  # the model contract: a clip's colour change (None outside augmentation)
    ):
        self.calls.append((with_text, with_decoder, torch.is_grad_enabled(), self.training))
        b, t, _ = inputs.shape
        t2 = (t + 1) // 2
        padded = F.pad(inputs, (0, 0, 0, 2 * t2 - t))  # (B, 2*T2, D)
        pooled = padded.view(b, t2, 2, FEATURE_DIM).mean(2)  # (B, T2, D)
        video_mask = torch.arange(t2)[None] < (input_lengths[:, None] + 1) // 2  # (B, T2)
        video = F.normalize(self.dropout(self.video(pooled)), dim=-1)  # (B, T2, d)
        text = F.normalize(self.dropout(self.text(text_ids)), dim=-1)  # (B, L, d)
        return SimpleNamespace(
            video_proj=video, video_proj_mask=video_mask, text_proj=text, text_proj_mask=text_mask
        )


class MemorySource:
    def __init__(self, clips):
        self.clips = clips

    def load(self, record, train, seed=None):
        return self.clips[record["name"]]


def make_dataset(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    records, clips = [], {}
    for i in range(n):
        name = f"train/clip-{i:02d}"
        length = 3 + (i * 5) % 7
        records.append(
            {"name": name, "text": f"sentence {i % 4} {'x' * (i % 3)}", "length": length}
        )
        clips[name] = torch.randn(length, FEATURE_DIM, generator=g)
    return SignDataset(records, MemorySource(clips), split="train")


def make_loader(dataset, batch_size=3):
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=Collator(CharTokenizer())
    )


def fingerprint(dataset, **changes):
    cfg = TrainConfig(run_dir="runs/test")
    for key, value in changes.items():
        obj = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            obj = getattr(obj, p)
        setattr(obj, leaf, value)
    return fingerprint_of(to_container(cfg), dataset.names)


def per_sample_reference(model, dataset):
    """The fake model run in eval mode on each sample alone: (video tokens, text tokens) each."""
    model.eval()
    collate = Collator(CharTokenizer())
    out = []
    with torch.no_grad():
        for k in range(len(dataset)):
            batch = collate([dataset[k]])
            o = model(
                batch["inputs"], batch["input_lengths"], batch["text_ids"], batch["text_mask"]
            )
            out.append((o.video_proj[0][o.video_proj_mask[0]], o.text_proj[0][o.text_proj_mask[0]]))
    return out


@pytest.mark.parametrize(
    "interval, total, expected",
    [
        (1, 6, [0, 1, 2, 3, 4, 5, 6]),
        (5, 23, [0, 5, 10, 15, 20, 23]),
        (5, 20, [0, 5, 10, 15, 20]),
        (10, 80, [0, 10, 20, 30, 40, 50, 60, 70, 80]),
        (10, 25, [0, 10, 20, 25]),
        (10, 4, [0, 4]),
    ],
)
def test_due_schedule(tmp_path, interval, total, expected):
    tracker = SnapshotTracker(tmp_path, interval, total, {})
    assert [e for e in range(total + 1) if tracker.due(e)] == expected
    with pytest.raises(ValueError, match="completed_epochs"):
        tracker.due(total + 1)


def test_bad_tracker_arguments(tmp_path):
    with pytest.raises(ValueError, match="interval"):
        SnapshotTracker(tmp_path, 0, 10, {})
    with pytest.raises(ValueError, match="total_epochs"):
        SnapshotTracker(tmp_path, 5, 0, {})


def test_snapshot_contents_equal_fake_model_outputs(tmp_path):
    dataset = make_dataset()
    model = FakeModel()
    model.train()
    fp = fingerprint(dataset)
    tracker = SnapshotTracker(tmp_path / "snapshots", 5, 20, fp)
    path = tracker.snapshot(model, make_loader(dataset), 5, device="cpu")
    assert path == tmp_path / "snapshots" / "epoch-0005"
    assert model.training, "the model's train mode is restored"
    assert all(c == (True, False, False, False) for c in model.calls), model.calls

    snap = read_snapshot(path)
    assert snap.epoch == 5 and snap.fingerprint == fp
    assert snap.names == dataset.names and snap.texts == dataset.texts
    assert snap.video_features.dtype == np.float16 and snap.text_features.dtype == np.float16
    reference = per_sample_reference(model, dataset)
    v_off = np.concatenate([[0], np.cumsum(snap.video_lengths)])
    t_off = np.concatenate([[0], np.cumsum(snap.text_lengths)])
    for k, (v_ref, t_ref) in enumerate(reference):
        assert snap.video_lengths[k] == (dataset.records[k]["length"] + 1) // 2
        v = snap.video_features[v_off[k] : v_off[k + 1]].astype(np.float32)
        t = snap.text_features[t_off[k] : t_off[k + 1]].astype(np.float32)
        np.testing.assert_allclose(v, v_ref.numpy(), atol=1e-3)
        np.testing.assert_allclose(t, t_ref.numpy(), atol=1e-3)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["num_samples"] == 7 and meta["dim"] == PROJ_DIM


def test_autocast_factory_is_used(tmp_path):
    dataset = make_dataset(4)
    entered = []

    class Recording:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            return False

    tracker = SnapshotTracker(tmp_path, 1, 2, fingerprint(dataset))
    tracker.snapshot(FakeModel(), make_loader(dataset, 2), 0, "cpu", autocast=Recording)
    assert len(entered) == 2  # one per batch


def test_every_sample_exactly_once(tmp_path):
    dataset = make_dataset()
    tracker = SnapshotTracker(tmp_path, 1, 2, fingerprint(dataset))
    # A loader missing a sample.
    partial = DataLoader(
        dataset, batch_size=3, sampler=[0, 1, 2, 4, 5, 6], collate_fn=Collator(CharTokenizer())
    )
    with pytest.raises(SnapshotError, match=r"exactly once; missing indices \[3\]"):
        tracker.snapshot(FakeModel(), partial, 0, "cpu")
    # A loader over another split (fewer samples): its names are not the fingerprinted ones.
    other = DataLoader(
        Subset(dataset, range(6)), batch_size=3, collate_fn=Collator(CharTokenizer())
    )
    with pytest.raises(SnapshotError, match="names do not match"):
        tracker.snapshot(FakeModel(), other, 0, "cpu")
    # A loader that repeats a sample.
    repeated = DataLoader(
        dataset,
        batch_size=3,
        sampler=[0, 1, 2, 3, 4, 5, 6, 2],
        collate_fn=Collator(CharTokenizer()),
    )
    with pytest.raises(SnapshotError, match="appears twice"):
        tracker.snapshot(FakeModel(), repeated, 0, "cpu")
    # A loader in another order: every sample once, but not the fingerprinted split order.
    shuffled = DataLoader(
        Subset(dataset, [1, 0, 2, 3, 4, 5, 6]), batch_size=3, collate_fn=Collator(CharTokenizer())
    )
    out = tracker.snapshot(FakeModel(), shuffled, 0, "cpu")  # indices place rows: order is fine
    assert read_snapshot(out).names == dataset.names
    assert list_snapshots(tmp_path) == [out]


def test_interrupted_write_is_not_a_snapshot(tmp_path, monkeypatch):
    dataset = make_dataset(5)
    tracker = SnapshotTracker(tmp_path, 1, 3, fingerprint(dataset))
    first = tracker.snapshot(FakeModel(), make_loader(dataset), 0, "cpu")

    real_write_json = tracker_module._write_json

    def crash_on_meta(path, obj):
        if path.name == "meta.json":
            raise OSError("disk full")
        real_write_json(path, obj)

    monkeypatch.setattr(tracker_module, "_write_json", crash_on_meta)
    with pytest.raises(OSError, match="disk full"):
        tracker.snapshot(FakeModel(), make_loader(dataset), 1, "cpu")
    monkeypatch.undo()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert any(name.startswith(".tmp-epoch-0001") for name in leftovers)
    assert not (tmp_path / "epoch-0001").exists()
    # A folder with a final name but no completion marker does not count either.
    shutil.copytree(first, tmp_path / "epoch-0002")
    os.remove(tmp_path / "epoch-0002" / "COMPLETE")
    assert list_snapshots(tmp_path) == [first]
    with pytest.raises(SnapshotError, match="not a complete snapshot"):
        read_snapshot(tmp_path / "epoch-0002")
    assert [s.epoch for s in load_snapshots(tmp_path)] == [0]


def test_retaking_a_snapshot_replaces_it(tmp_path):
    dataset = make_dataset(4)
    tracker = SnapshotTracker(tmp_path, 1, 3, fingerprint(dataset))
    tracker.snapshot(FakeModel(seed=0), make_loader(dataset), 1, "cpu")
    path = tracker.snapshot(FakeModel(seed=1), make_loader(dataset), 1, "cpu")
    snap = read_snapshot(path)
    expected = per_sample_reference(FakeModel(seed=1), dataset)[0][0].numpy()
    np.testing.assert_allclose(
        snap.video_features[: len(expected)].astype(np.float32), expected, atol=1e-3
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001"]


def test_fingerprint_parts():
    dataset = make_dataset(4)
    base = fingerprint(dataset)
    assert base == fingerprint(dataset)
    assert base["num_samples"] == 4
    assert fingerprint(dataset, **{"stage.lr": 3e-4}) == base  # optimiser: irrelevant
    assert fingerprint(dataset, **{"data.num_workers": 4}) == base  # loader workers: irrelevant
    tau = fingerprint(dataset, **{"model.similarity.tau": 0.1})
    assert tau["similarity"] != base["similarity"] and tau["model"] != base["model"]
    assert tau["data"] == base["data"]
    data = fingerprint(dataset, **{"data.max_frames": 100})
    assert data["data"] != base["data"] and data["model"] == base["model"]
    other_names = fingerprint_of(to_container(TrainConfig(run_dir="r")), dataset.names[::-1])
    assert other_names["names"] != base["names"]


def test_mismatched_snapshots_are_refused(tmp_path):
    dataset = make_dataset(5)
    good = SnapshotTracker(tmp_path / "a", 1, 3, fingerprint(dataset))
    first = good.snapshot(FakeModel(), make_loader(dataset), 0, "cpu")
    second = good.snapshot(FakeModel(), make_loader(dataset), 1, "cpu")
    assert [s.epoch for s in load_snapshots([second, first])] == [0, 1]

    other_cfg = SnapshotTracker(
        tmp_path / "b", 1, 3, fingerprint(dataset, **{"model.similarity.tau": 0.2})
    )
    changed = other_cfg.snapshot(FakeModel(), make_loader(dataset), 2, "cpu")
    with pytest.raises(SnapshotMismatchError) as err:
        load_snapshots([first, changed])
    message = str(err.value)
    assert str(first) in message and str(changed) in message and "similarity" in message

    smaller = make_dataset(4)
    other_split = SnapshotTracker(tmp_path / "c", 1, 3, fingerprint(smaller))
    fewer = other_split.snapshot(FakeModel(), make_loader(smaller), 2, "cpu")
    with pytest.raises(SnapshotMismatchError, match="5 vs 4 samples") as err:
        load_snapshots([first, fewer])
    assert str(fewer) in str(err.value)

    same_epoch = SnapshotTracker(tmp_path / "d", 1, 3, fingerprint(dataset))
    twin = same_epoch.snapshot(FakeModel(), make_loader(dataset), 0, "cpu")
    with pytest.raises(SnapshotMismatchError, match="share epoch 0"):
        load_snapshots([first, twin])


def test_corrupt_snapshot_is_reported(tmp_path):
    dataset = make_dataset(4)
    path = SnapshotTracker(tmp_path, 1, 3, fingerprint(dataset)).snapshot(
        FakeModel(), make_loader(dataset), 0, "cpu"
    )
    np.save(path / "video_lengths.npy", np.array([1, 1, 1, 1], dtype=np.int64))
    with pytest.raises(SnapshotError, match="video_features shape") as err:
        read_snapshot(path)
    assert str(path) in str(err.value)


def test_disk_estimate_for_phoenix14t():
    # 7,096 samples x (28 + 15) tokens x 256 dims x 2 bytes.
    assert estimate_snapshot_bytes(7096, 28, 15, 256) == 156_225_536


def _distributed_worker(rank, world, init_file, out_dir, result_file):
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        dataset = make_dataset(7)
        tracker = SnapshotTracker(out_dir, 1, 2, fingerprint(dataset))
        path = tracker.snapshot(FakeModel(), make_loader(dataset, 2), 1, "cpu")
        with open(f"{result_file}.{rank}", "w") as f:
            f.write(str(path))
    finally:
        torch.distributed.destroy_process_group()


def test_distributed_ranks_share_the_encoding(tmp_path):
    world = 2
    torch.multiprocessing.start_processes(
        _distributed_worker,
        args=(world, str(tmp_path / "init"), str(tmp_path / "snaps"), str(tmp_path / "result")),
        nprocs=world,
        start_method="spawn",
    )
    paths = {open(tmp_path / f"result.{r}").read() for r in range(world)}
    assert paths == {str(tmp_path / "snaps" / "epoch-0001")}
    snap = read_snapshot(tmp_path / "snaps" / "epoch-0001")
    dataset = make_dataset(7)
    assert snap.names == dataset.names
    reference = per_sample_reference(FakeModel(), dataset)
    expected_video = np.concatenate([v.numpy() for v, _ in reference])
    expected_text = np.concatenate([t.numpy() for _, t in reference])
    np.testing.assert_allclose(snap.video_features.astype(np.float32), expected_video, atol=1e-3)
    np.testing.assert_allclose(snap.text_features.astype(np.float32), expected_text, atol=1e-3)
