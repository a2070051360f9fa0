"""LiveMaps: the per-run analysis state that plans and plots read while the callback writes.

Thread-safe: the analysis worker appends, plans and plots read snapshots. A plan waits for the analysis with a
future from :meth:`LiveMaps.when` (awaited in a RunEngine ``wait_for`` message, so the RunEngine stays
responsive); code outside the RunEngine may block in :meth:`LiveMaps.wait_for`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from ..estimates import OK, PARAMETERS, Estimates, usable

#: Per-point fields held for every run (besides positions and seq_num): the estimates, their std (NaN where a frame
#: failed; kept where its status is a warning such as ``edge``) and the background (counts/pixel, NaN when not
#: estimated).
FIELDS = PARAMETERS + tuple(p + "_std" for p in PARAMETERS) + ("background", "background_std")


class RunMap:
    """Results of one run: positions (um) and per-point estimates, in the order the frames arrived.

    Attributes
    ----------
    uid : the raw run's start uid.
    motors : motor (readback) names, slowest first, as in the start document.
    shape, extents, snaking : the grid description of a rectilinear scan (None for other paths).
    """

    def __init__(self, uid: str, motors: list[str], shape=None, extents=None, snaking=None):
        self.uid = uid
        self.motors = list(motors)
        self.shape = tuple(shape) if shape else None
        self.extents = [tuple(e) for e in extents] if extents else None
        self.snaking = list(snaking) if snaking else [False] * len(self.shape or ())
        self.expected = int(np.prod(self.shape)) if self.shape else None
        self._seq = []
        self._pos = []
        self._values = {f: [] for f in FIELDS}
        self._status = []
        self._features: list[np.ndarray] = []  # per-point frame descriptors, when the analysis computes them
        self._extra: dict[str, dict[int, float]] = {}  # field -> {point index: value}
        self.received = 0  # frames handed to the analysis (analysed or not)
        self.skipped = 0  # frames dropped by the back-pressure policy
        self.errors = 0  # frames lost to an unexpected exception inside the analysis
        self.rejected_by_reason: Counter = Counter()  # frames refused at the door (malformed, duplicate, ...)
        self.done = False

    @property
    def rejected(self) -> int:
        """Frames refused at the analysis' door (see :attr:`rejected_by_reason`)."""
        return sum(self.rejected_by_reason.values())

    @property
    def accounted(self) -> int:
        """Frames analysed (ok, warned or flagged), skipped, lost to errors or rejected: ``received`` once caught up."""
        return len(self._seq) + self.skipped + self.errors + self.rejected

    # ------------------------------------------------------------------ writing (analysis side)
    def _append(self, seq_nums, positions, est: Estimates, features=None) -> None:
        """Append N points, all fields together or none (raises ValueError before any change if the
        lengths disagree)."""
        n = len(seq_nums)
        seq = np.asarray(seq_nums, dtype=np.int64).reshape(n)
        pos = np.asarray(positions, dtype=float).reshape(n, len(self.motors))
        values = {f: np.asarray(getattr(est, f), dtype=float).reshape(n) for f in FIELDS}
        status = np.asarray(est.status, dtype=object).reshape(n)
        if features is not None:
            features = np.asarray(features, dtype=float).reshape(n, -1)
            self._features.extend(features)
        self._seq.extend(seq.tolist())
        self._pos.extend(pos.tolist())
        for f in FIELDS:
            self._values[f].extend(values[f].tolist())
        self._status.extend(status.tolist())

    def set_extra(self, key: str, seq_nums, values) -> None:
        """Attach another per-point field (e.g. texture labels) to stored points, by seq_num (all or none:
        KeyError before any change for a seq_num not stored)."""
        index = {s: i for i, s in enumerate(self._seq)}
        rows = [index[int(s)] for s in seq_nums]
        self._extra.setdefault(key, {}).update(zip(rows, values))

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self._seq)

    def scattered(self) -> dict[str, np.ndarray]:
        """Snapshot of every point: ``seq_num``, one array per motor (um), the estimates, ``status``."""
        out = {"seq_num": np.asarray(self._seq, dtype=int)}
        pos = np.asarray(self._pos, dtype=float).reshape(len(self._seq), len(self.motors))
        for i, m in enumerate(self.motors):
            out[m] = pos[:, i]
        out.update({f: np.asarray(v, dtype=float) for f, v in self._values.items()})
        for key, column in self._extra.items():
            out[key] = np.array([column.get(i, np.nan) for i in range(len(self._seq))])
        out["status"] = np.asarray(self._status, dtype=object)
        return out

    def features(self) -> np.ndarray:
        """(N, k) frame descriptors of the analysed points (N = len(self)); (N, 0) when none are computed."""
        if len(self._features) != len(self._seq):
            return np.zeros((len(self._seq), 0))
        return np.array(self._features, dtype=float).reshape(len(self._seq), -1)

    def status_counts(self) -> dict[str, int]:
        """Number of analysed points per status (ok, warnings such as ``edge``, failures)."""
        return dict(Counter(str(s) for s in self._status))

    def gridded(self, field: str) -> np.ndarray:
        """A field on the scan grid (shape of the start document), NaN where not (yet) measured or flagged.

        Row-major over the motors (slowest first); snaked rows are put back in place. ``"status"`` gives
        :func:`status_value` per point (1 ok, 0.5 a warning, 0 flagged).
        """
        if not self.shape:
            raise ValueError(f"run {self.uid[:8]} is not a rectilinear grid scan; use scattered()")
        points = self.scattered()
        values = points[field].astype(float) if field != "status" else status_value(points["status"])
        grid = np.full(int(np.prod(self.shape)), np.nan)
        index = self._grid_index(points["seq_num"] - 1)
        keep = (index >= 0) & (index < grid.size)
        grid[index[keep]] = values[keep]
        return grid.reshape(self.shape)

    def _grid_index(self, flat: np.ndarray) -> np.ndarray:
        """Map the order of acquisition onto row-major grid indices (undoing snaking)."""
        if len(self.shape) != 2 or not any(self.snaking[1:]):
            return flat
        rows, cols = np.divmod(flat, self.shape[1])
        cols = np.where(rows % 2 == 1, self.shape[1] - 1 - cols, cols)
        return rows * self.shape[1] + cols

    def axes(self) -> list[np.ndarray]:
        """Motor positions (um) along each grid axis, from the start document's extents."""
        if not self.shape or not self.extents:
            raise ValueError(f"run {self.uid[:8]} has no grid extents")
        return [np.linspace(lo, hi, n) for (lo, hi), n in zip(self.extents, self.shape)]


def status_value(status) -> np.ndarray:
    """Per point 1.0 for ok, 0.5 for a warning (values kept, e.g. ``edge``), 0.0 for a failure (values NaN)."""
    status = np.asarray(status, dtype=object)
    return np.where(status == OK, 1.0, np.where(usable(status), 0.5, 0.0))


class LiveMaps:
    """All runs the analysis has seen, by raw-run uid; :attr:`current` is the latest.

    ``instrument`` and ``outputs`` describe the model that fills the maps (set by the analysis), so that
    plans can check the detector against it before anything moves.
    """

    def __init__(self, instrument=None, outputs: tuple[str, ...] = ()):
        self.instrument = instrument
        self.outputs = tuple(outputs)
        self._cond = threading.Condition()
        self._runs: dict[str, RunMap] = {}
        self._order: list[str] = []
        self._waiters: list[tuple[Callable[[LiveMaps], bool], Future]] = []

    def _changed(self) -> None:
        """Wake the blocking waiters and complete the futures whose condition now holds (lock held)."""
        self._cond.notify_all()
        pending = []
        for predicate, future in self._waiters:
            if future.done():  # cancelled by its waiter
                continue
            try:
                if predicate(self):
                    future.set_result(None)
                    continue
            except Exception as error:  # a broken condition fails its waiter, not the analysis
                future.set_exception(error)
                continue
            pending.append((predicate, future))
        self._waiters = pending

    def when(self, predicate: Callable[[LiveMaps], bool]) -> Future:
        """A future that completes (result None) as soon as ``predicate(maps)`` holds: now, or after the change
        of the maps that makes it hold. Never blocks; ``predicate`` runs under the maps' lock, in the thread that
        changed them. Cancel the future to withdraw the wait."""
        future = Future()
        with self._cond:
            self._waiters.append((predicate, future))
            self._changed()
        return future

    def begin_run(self, uid: str, motors, shape=None, extents=None, snaking=None) -> RunMap:
        with self._cond:
            run = RunMap(uid, motors, shape, extents, snaking)
            self._runs[uid] = run
            self._order.append(uid)
            self._changed()
            return run

    def add(self, uid: str, seq_nums, positions, estimates: Estimates, features=None) -> None:
        """Store analysed points of run ``uid`` (positions: (N, n_motors) um; features: (N, k) or None)."""
        with self._cond:
            self._runs[uid]._append(seq_nums, positions, estimates, features)
            self._changed()

    def count(self, uid: str, *, received: int = 0, skipped: int = 0, errors: int = 0) -> None:
        """Count frames received, skipped by back-pressure, or lost to errors."""
        with self._cond:
            run = self._runs[uid]
            run.received += received
            run.skipped += skipped
            run.errors += errors
            self._changed()

    def reject(self, uid: str, reason: str, n: int) -> None:
        """Count ``n`` frames of run ``uid`` received and refused at the door for ``reason``."""
        with self._cond:
            run = self._runs[uid]
            run.received += n
            run.rejected_by_reason[reason] += n
            self._changed()

    def end_run(self, uid: str) -> None:
        with self._cond:
            self._runs[uid].done = True
            self._changed()

    def update(self, uid: str, fn) -> None:
        """Run ``fn(run_map)`` under the lock (for writers of extra fields, e.g. texture labels)."""
        with self._cond:
            fn(self._runs[uid])
            self._changed()

    def __getitem__(self, uid: str) -> RunMap:
        with self._cond:
            return self._runs[uid]

    def __contains__(self, uid: str) -> bool:
        return uid in self._runs

    def __len__(self) -> int:
        return len(self._order)

    @property
    def current(self) -> RunMap | None:
        with self._cond:
            return self._runs[self._order[-1]] if self._order else None

    def caught_up(self, uid: str | None = None, n: int | None = None) -> bool:
        """Has run ``uid`` (default: current) accounted for ``n`` frames (default: all received)?

        A frame is accounted for once analysed, skipped, lost to an error or rejected (:attr:`RunMap.accounted`).
        False while the run is unknown.
        """
        with self._cond:
            run = self._runs.get(uid) if uid else (self._runs[self._order[-1]] if self._order else None)
            return run is not None and run.accounted >= (run.received if n is None else n)

    def wait_for(self, uid: str | None = None, n: int | None = None, timeout: float = 30.0) -> bool:
        """Block until :meth:`caught_up` (``uid``, ``n``); False on timeout. Not for plans: it would block the
        RunEngine (they wait with :func:`nanopilot.plans.waiting.wait_for_analysis`)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.caught_up(uid, n), timeout=timeout)
