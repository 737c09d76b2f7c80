"""Which snapshots a similarity trajectory uses, and the weights that turn them into δ.

``DeltaMethod`` names the protocols (``endpoints``, ``slope``, ``span``); ``trajectory_window``
picks the first and last snapshot used (a later start with ``start_epoch``, a span of
``span_snapshots`` tracker intervals); ``delta_weights`` gives δ as a weighted sum of the
snapshots' similarity matrices, which ``trajectory.trajectory_delta`` accumulates block by block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from ..config import ConfigError


class DeltaMethod(str, Enum):
    """How a pair's trajectory becomes one score (``trajectory_window`` says which snapshots).

    - ``endpoints``: ``S^last - S^first``, the paper's default. Only two snapshots enter, so the
      tracker's interval cannot change it (the interval ablation would be a re-run).
    - ``slope``: least-squares slope of ``S^k`` against the epoch over every snapshot used; the
      interval only changes which points of the same curve the line is fitted to.
    - ``span``: ``S^(t0 + K * interval) - S^t0`` with ``K = span_snapshots`` and ``t0`` the first
      snapshot used. The protocol of the interval ablation: a trajectory is K steps of the
      tracker, so the interval sets how much of training δ covers (K = 4: epochs 0-4 at interval
      1, 0-20 at 5, 0-40 at 10). Chosen over "the snapshots around the curriculum's progress"
      because it keeps δ one static matrix (the curriculum is unchanged) and has one reading:
      the interval is the time scale of the change a pair is ranked by. The run must reach
      ``t0 + K * interval``, else ``trajectory_window`` refuses naming ``span_snapshots``.
    """

    endpoints = "endpoints"  # S^last - S^first
    slope = "slope"  # least-squares slope of S^k against the snapshot epoch
    span = "span"  # S^(t0 + span_snapshots * interval) - S^t0


@dataclass(frozen=True)
class TrajectoryWindow:
    """The snapshots a trajectory uses: indices ``first..last`` into the run's snapshot list.

    δ reads only these snapshots, and the H/L categories compare ``first`` with ``last``.
    """

    epochs: tuple[float, ...]  # every snapshot epoch of the run
    first: int
    last: int
    method: DeltaMethod
    start_epoch: float = 0
    span_snapshots: int | None = None
    interval: float | None = None  # snapshot spacing (span only)

    @property
    def first_epoch(self) -> float:
        return self.epochs[self.first]

    @property
    def last_epoch(self) -> float:
        return self.epochs[self.last]

    def record(self) -> dict[str, Any]:
        """What pair_scores.json and trajectory/summary.json say about the protocol."""
        used = self.epochs[self.first : self.last + 1]
        return {
            "delta": self.method.value,
            "start_epoch": self.start_epoch,
            "span_snapshots": self.span_snapshots,
            "interval": self.interval,
            "first_epoch": self.first_epoch,
            "last_epoch": self.last_epoch,
            "epochs_used": list(used) if self.method is DeltaMethod.slope else [used[0], used[-1]],
        }


def _number(x: float) -> float:
    """An int when the value is whole (epochs print as 0, 5, not 0.0, 5.0), else a float."""
    return int(x) if float(x).is_integer() else float(x)


def trajectory_window(
    epochs: Sequence[float],
    method: DeltaMethod | str = DeltaMethod.endpoints,
    start_epoch: float = 0,
    span_snapshots: int | None = None,
    interval: float | None = None,
) -> TrajectoryWindow:
    """Which snapshots a trajectory uses; a bad option is a ConfigError naming it
    (``start_epoch``, ``span_snapshots``) and the snapshot epochs.

    The first snapshot used is the earliest at or after ``start_epoch`` (0: the one before the
    first update). ``endpoints`` and ``slope`` run from there to the last snapshot; ``span`` to the
    snapshot at ``first + span_snapshots * interval``. ``interval`` is the tracker's (the run's
    ``tracker.interval``); None infers it as the spacing of the run's first two snapshots, which
    the tracker takes at epoch 0 and at the first interval.
    """
    method = DeltaMethod(method)
    e = tuple(_number(x) for x in epochs)
    if len(e) < 2:
        raise ValueError(f"a trajectory needs at least two snapshots, got epochs {list(e)}")
    if not all(b > a for a, b in zip(e, e[1:])):
        raise ValueError(f"snapshot epochs must be strictly increasing, got {list(e)}")
    if start_epoch < 0:
        raise ConfigError(f"start_epoch must be >= 0, got {start_epoch}")
    if span_snapshots is not None and method is not DeltaMethod.span:
        raise ConfigError(f"span_snapshots={span_snapshots} applies to delta=span only")
    later = [k for k, x in enumerate(e) if x >= start_epoch]
    if len(later) < 2:
        raise ConfigError(
            f"start_epoch={start_epoch} leaves {len(later)} snapshot(s) of epochs {list(e)}: a "
            "trajectory needs two"
        )
    first, last = later[0], len(e) - 1
    if method is DeltaMethod.span:
        if span_snapshots is None or span_snapshots < 1:
            raise ConfigError(f"delta=span needs span_snapshots >= 1, got {span_snapshots}")
        interval = _number(e[1] - e[0] if interval is None else interval)
        if interval <= 0:
            raise ValueError(f"the snapshot interval must be positive, got {interval}")
        target = e[first] + span_snapshots * interval
        if target not in e:
            raise ConfigError(
                f"span_snapshots={span_snapshots}: delta=span needs a snapshot at epoch "
                f"{e[first]:g} + {span_snapshots} x {interval:g} = {target:g}, but the snapshots "
                f"are at epochs {[f'{x:g}' for x in e]} (the run is too short for this span: "
                "train longer, or lower span_snapshots or start_epoch)"
            )
        last = e.index(target)
    return TrajectoryWindow(e, first, last, method, start_epoch, span_snapshots, interval)


def delta_weights(
    epochs: Sequence[float] | TrajectoryWindow,
    method: DeltaMethod | str = DeltaMethod.endpoints,
) -> np.ndarray:
    """delta = sum_k w_k S^k over all snapshots; zero outside the window.

    ``endpoints`` and ``span``: -1 at the window's first snapshot, +1 at its last. ``slope``: the
    LSQ slope of y_k against e_k over the window, sum_k (e_k - mean e) y_k / sum_k (e_k - mean
    e)^2, linear in the S^k, so it accumulates one snapshot at a time. Plain epochs mean the
    window of ``trajectory_window(epochs, method)`` (no later start, no span).
    """
    window = epochs if isinstance(epochs, TrajectoryWindow) else trajectory_window(epochs, method)
    e = np.asarray(window.epochs, dtype=np.float64)
    w = np.zeros(len(e))
    if window.method is DeltaMethod.slope:
        used = slice(window.first, window.last + 1)
        centred = e[used] - e[used].mean()
        w[used] = centred / np.sum(centred**2)
    else:
        w[window.first], w[window.last] = -1.0, 1.0
    return w
