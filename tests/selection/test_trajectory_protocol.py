"""The trajectory protocols against the definitions, on synthetic snapshot sets: ``delta=span``
(the interval changes δ; endpoints does not), ``start_epoch`` for every delta method and the
categories, and the warning when the first snapshot carries no spread."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import scl_slt.selection.pair_scores.trajectory as scoring
from scl_slt import score
from scl_slt.selection.tracker import SnapshotTracker, snapshots_dir
from scl_slt.selection.trajectory import CATEGORIES, categorize, trajectory_delta
from scl_slt.selection.trajectory_report import first_snapshot_spread, negative_spread
from scl_slt.selection.trajectory_window import trajectory_window

N, EPOCHS = 6, 20
RNG = np.random.default_rng(0)
# Each pair follows its own curve s(t) = a (1 - exp(-t / 4)) + b t + c sin(t): the change over the
# first few epochs differs from the change over the whole run and varies with the time scale.
A, B, C = RNG.normal(size=(3, N, N))


def curve(t: float) -> np.ndarray:
    """The similarity of every pair at epoch t, straight from the definition of the curves."""
    return A * (1 - np.exp(-t / 4)) + B * 0.05 * t + C * 0.3 * np.sin(t)


def tracked_epochs(interval: int, epochs: int = EPOCHS) -> list[int]:
    """The tracker's rule, written out: epoch 0, every interval, and the last epoch."""
    return sorted({0, *range(interval, epochs + 1, interval), epochs})


def delta_of(interval: int, method: str, **options) -> np.ndarray:
    epochs = tracked_epochs(interval)
    window = trajectory_window(epochs, method, **options)
    return trajectory_delta((curve(e) for e in epochs), window)


def test_the_tracker_rule_written_here_matches_the_tracker(tmp_path):
    for interval in (1, 5, 7, 10):
        tracker = SnapshotTracker(tmp_path, interval, EPOCHS, {})
        assert [e for e in range(EPOCHS + 1) if tracker.due(e)] == tracked_epochs(interval)


def test_span_follows_its_definition_and_the_interval_changes_it():
    K = 2
    spans = {}
    for interval in (1, 5, 10):
        spans[interval] = delta_of(interval, "span", span_snapshots=K)
        expected = curve(K * interval) - curve(0)  # S^(0 + K * interval) - S^0
        np.testing.assert_allclose(spans[interval], expected, atol=1e-5)
    for a, b in ((1, 5), (1, 10), (5, 10)):
        assert np.abs(spans[a] - spans[b]).max() > 0.1, (a, b)


def test_endpoints_gives_the_same_delta_at_every_interval():
    ends = {interval: delta_of(interval, "endpoints") for interval in (1, 5, 10)}
    np.testing.assert_allclose(ends[1], curve(EPOCHS) - curve(0), atol=1e-5)
    assert np.array_equal(ends[1], ends[5]) and np.array_equal(ends[5], ends[10])


@pytest.mark.parametrize("start_epoch, first", [(5, 5), (3, 5), (0, 0)])
def test_start_epoch_for_every_delta_method(start_epoch, first):
    """interval 5: snapshots 0, 5, 10, 15, 20; the first used is the earliest >= start_epoch."""
    epochs = tracked_epochs(5)
    used = [e for e in epochs if e >= first]
    ends = delta_of(5, "endpoints", start_epoch=start_epoch)
    np.testing.assert_allclose(ends, curve(EPOCHS) - curve(first), atol=1e-5)
    span = delta_of(5, "span", start_epoch=start_epoch, span_snapshots=2)
    np.testing.assert_allclose(span, curve(first + 10) - curve(first), atol=1e-5)
    slope = delta_of(5, "slope", start_epoch=start_epoch)
    stacked = np.stack([curve(e) for e in used]).reshape(len(used), -1)
    expected = np.polyfit(np.asarray(used, float), stacked, 1)[0].reshape(N, N)
    np.testing.assert_allclose(slope, expected, atol=1e-5)


def test_window_errors_name_the_option():
    epochs = tracked_epochs(10)  # 0, 10, 20
    with pytest.raises(ValueError, match=r"span_snapshots=3.*0 \+ 3 x 10 = 30.*too short"):
        trajectory_window(epochs, "span", span_snapshots=3)
    with pytest.raises(ValueError, match=r"span_snapshots=2.*10 \+ 2 x 10 = 30"):
        trajectory_window(epochs, "span", start_epoch=10, span_snapshots=2)
    with pytest.raises(ValueError, match="start_epoch=15 leaves 1 snapshot"):
        trajectory_window(epochs, "endpoints", start_epoch=15)
    with pytest.raises(ValueError, match="span_snapshots=2 applies to delta=span only"):
        trajectory_window(epochs, "slope", span_snapshots=2)
    with pytest.raises(ValueError, match="delta=span needs span_snapshots"):
        trajectory_window(epochs, "span")
    # The run's tracker.interval wins over the spacing of the first two snapshots.
    assert trajectory_window([0, 3, 6, 9], "span", span_snapshots=2, interval=3).last_epoch == 6


def test_negative_spread_equals_numpy_on_the_off_diagonal():
    S = RNG.normal(0.5, 0.01, size=(40, 40)).astype(np.float16)
    off = S.astype(np.float64)[~np.eye(40, dtype=bool)]
    got = negative_spread(S, block_rows=7)
    assert got["std"] == pytest.approx(off.std(), rel=1e-6)
    q25, q75 = np.quantile(off, [0.25, 0.75])
    assert got["iqr"] == pytest.approx(q75 - q25, rel=1e-6)


def narrow_and_wide(first_std: float):
    """A first snapshot with negatives of std ``first_std`` around 0.3, a last one of std 0.2;
    positives far above both."""
    rng = np.random.default_rng(1)
    first = 0.3 + first_std * rng.standard_normal((30, 30))
    last = 0.2 * rng.standard_normal((30, 30))
    np.fill_diagonal(first, 5.0)
    np.fill_diagonal(last, 5.0)
    return first, last


def test_spread_warning_triggers_with_both_figures(caplog):
    first, last = narrow_and_wide(0.001)
    with caplog.at_level(logging.WARNING):
        record = first_snapshot_spread(first, last, 0, 80)
    assert record["low_spread"] and record["std_ratio"] < 0.02
    assert "start_epoch" in record["advice"] and "threshold=per_snapshot" in record["advice"]
    message = caplog.records[-1].getMessage()
    assert caplog.records[-1].levelno == logging.WARNING
    assert f"{record['first']['std']:.4g}" in message and f"{record['last']['std']:.4g}" in message


def test_spread_warning_stays_quiet_with_spread(caplog):
    first, last = narrow_and_wide(0.15)
    with caplog.at_level(logging.WARNING):
        record = first_snapshot_spread(first, last, 0, 80)
    assert not record["low_spread"] and record["advice"] is None and 0.5 < record["std_ratio"]
    assert not caplog.records


def test_one_sided_first_snapshot_warns_with_the_share(caplog):
    """Spread as large as the last snapshot's, but all of it below the last median."""
    rng = np.random.default_rng(2)
    first, last = -1 + 0.2 * rng.standard_normal((30, 30)), 0.2 * rng.standard_normal((30, 30))
    neg = ~np.eye(30, dtype=bool)
    share = np.mean(first[neg] > np.median(last[neg]))  # pairs H at the start, from the definition
    with caplog.at_level(logging.WARNING):
        record = first_snapshot_spread(first, last, 0, 80, categories=categorize(first, last))
    assert record["one_sided"] and not record["low_spread"] and share < 0.1
    assert record["first_high_share"] == pytest.approx(share)
    assert f"{100 * share:.1f} %" in caplog.records[-1].getMessage()
    caplog.clear()
    first = 0.2 * rng.standard_normal((30, 30))  # the same band as the last: no warning
    with caplog.at_level(logging.WARNING):
        record = first_snapshot_spread(first, last, 0, 80, categories=categorize(first, last))
    assert not record["one_sided"] and not record["low_spread"] and not caplog.records
    # Split at its own median, the first snapshot cannot be one-sided: not checked.
    cats = categorize(-1 + first, last, "per_snapshot")
    assert first_snapshot_spread(-1 + first, last, 0, 80, categories=cats)["one_sided"] is False


# ------------------------------------------------------------------- through score_run / the CLI
class Encoder(nn.Module):
    """Minimal model contract for the tracker (one token per side); the scores are replaced."""

    def forward(self, inputs, input_lengths, text_ids=None, text_mask=None, **_):
        ones = torch.ones(len(inputs), 1, dtype=torch.bool)
        v = torch.nn.functional.normalize(inputs[:, :1], dim=-1)
        return SimpleNamespace(video_proj=v, video_proj_mask=ones, text_proj=v, text_proj_mask=ones)


def collate(items):
    return {
        "indices": torch.tensor([i for i, _ in items]),
        "names": [f"clip-{i}" for i, _ in items],
        "texts": [f"text {i}" for i, _ in items],
        "inputs": torch.stack([x for _, x in items]),
        "input_lengths": torch.ones(len(items), dtype=torch.long),
        "text_ids": torch.ones(len(items), 1, dtype=torch.long),
        "text_mask": torch.ones(len(items), 1, dtype=torch.bool),
    }


def tracked_run(run_dir, matrices: dict[int, np.ndarray], monkeypatch):
    """Snapshots at the given epochs, with ``score_snapshot`` writing the given matrices as S^k."""
    n = next(iter(matrices.values())).shape[0]
    items = [(i, torch.randn(1, 3)) for i in range(n)]
    tracker = SnapshotTracker(snapshots_dir(run_dir), 1, max(matrices), {"k": 1})
    loader = DataLoader(items, batch_size=4, collate_fn=collate)
    for epoch in matrices:
        tracker.snapshot(Encoder(), loader, epoch, "cpu")

    def fake_score(snapshot, scores_dir, *args, **kwargs):
        path = scores_dir / f"S-{snapshot.path.name}.npy"
        np.save(path, matrices[snapshot.epoch].astype(np.float16))
        return path

    monkeypatch.setattr(scoring, "score_snapshot", fake_score)


def test_score_run_start_epoch_moves_the_categories_and_records_the_spread(tmp_path, monkeypatch):
    first, last = narrow_and_wide(0.001)
    middle = narrow_and_wide(0.2)[0]
    tracked_run(tmp_path, {0: first, 2: middle, 4: last}, monkeypatch)
    scoring.score_run(tmp_path, device="cpu")
    summary = json.loads((tmp_path / "trajectory" / "summary.json").read_text())
    assert summary["first_snapshot_spread"]["low_spread"]
    assert summary["window"]["epochs_used"] == [0, 4]

    scoring.score_run(tmp_path, device="cpu", start_epoch=1, threshold="per_snapshot")
    summary = json.loads((tmp_path / "trajectory" / "summary.json").read_text())
    spread = summary["first_snapshot_spread"]
    assert not spread["low_spread"] and spread["first_epoch"] == 2
    S2, S4 = (m.astype(np.float16).astype(np.float64) for m in (middle, last))
    neg = ~np.eye(30, dtype=bool)
    t2, t4 = np.median(S2[neg]), np.median(S4[neg])
    counts = dict.fromkeys(CATEGORIES, 0)
    for i, j in zip(*np.nonzero(neg)):
        counts[("H" if S2[i, j] > t2 else "L") + "->" + ("H" if S4[i, j] > t4 else "L")] += 1
    assert summary["counts"] == counts
    np.testing.assert_allclose(np.load(tmp_path / "pair_scores.npy"), S4 - S2, atol=2e-3)
    record = json.loads((tmp_path / "pair_scores.json").read_text())
    assert record["window"]["first_epoch"] == 2 and record["window"]["start_epoch"] == 1
    assert categorize(middle, last, "per_snapshot").counts == counts


def test_cli_span_and_its_errors(tmp_path, monkeypatch, capsys):
    mats = {e: curve(e)[:5, :5] for e in (0, 1, 2, 3)}
    tracked_run(tmp_path, mats, monkeypatch)
    # Too short a run for the span: refused before any snapshot is scored.
    assert score.main([f"run_dir={tmp_path}", "delta=span", "span_snapshots=4"]) == 2
    assert "span_snapshots=4" in capsys.readouterr().err
    assert not (tmp_path / "scores").exists()
    assert score.main([f"run_dir={tmp_path}", "delta=span", "span_snapshots=2"]) == 0
    assert "epochs [0, 2]" in capsys.readouterr().out
    expected = (mats[2] - mats[0]).astype(np.float16)
    np.testing.assert_allclose(np.load(tmp_path / "pair_scores.npy"), expected, atol=2e-3)
    for args, key in (
        (["delta=span"], "span_snapshots"),
        (["delta=span", "span_snapshots=4"], "span_snapshots=4"),
        (["delta=slope", "span_snapshots=1"], "span_snapshots"),
        (["start_epoch=-1"], "start_epoch"),
        (["start_epoch=3"], "start_epoch=3"),
    ):
        assert score.main([f"run_dir={tmp_path}", *args]) == 2, args  # a user's error
        assert key in capsys.readouterr().err, args


def test_pipeline_passes_the_protocol_options_and_checks_them():
    from scl_slt.stages.pipeline import split_arguments

    cfg, rest = split_arguments(["delta=span", "span_snapshots=2", "start_epoch=3", "seed=1"])
    assert (cfg.delta, cfg.span_snapshots, cfg.start_epoch, rest) == ("span", 2, 3, ["seed=1"])
    for args in (["delta=span"], ["span_snapshots=2"], ["delta=span", "span_snapshots=0"]):
        with pytest.raises(ValueError, match="span_snapshots"):
            split_arguments(args)
    with pytest.raises(ValueError, match="start_epoch"):
        split_arguments(["start_epoch=-1"])
