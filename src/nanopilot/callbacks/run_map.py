"""RunMap: one run's analysed points as a columnar table (preallocated numpy arrays, cheap snapshots).

Filled by :class:`~nanopilot.callbacks.live_maps.LiveMaps` from the analysis run's documents (and texture labels
from the texture run's); read by plans, plots, the texture stage and the page.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..estimates import OK, PARAMETERS, usable

#: Per-point fields held for every run (besides positions and seq_num): the estimates, their std (NaN where a frame
#: failed; kept where its status is a warning such as ``edge``) and the background (counts/pixel, NaN when not
#: estimated).
FIELDS = PARAMETERS + tuple(p + "_std" for p in PARAMETERS) + ("background", "background_std")


class RunMap:
    """Results of one run: positions (um) and per-point estimates, in the order the analysis reported them.

    Attributes
    ----------
    uid : the raw run's start uid.
    motors : motor (readback) names, slowest first, as in the analysis run's start document.
    shape, extents, snaking : the grid description of a rectilinear scan (None for other paths).
    taken : frames of the raw run the analysis takes (counted from the raw run's documents, when the maps see them).
    received, skipped, errors, rejected_by_reason : the analysis' own counts (from its progress documents).
    done : the analysis run, and every run derived from it (texture), has ended.
    """

    def __init__(self, uid: str, motors: list[str] = (), shape=None, extents=None, snaking=None):
        self.uid = uid
        self._n = 0
        self._seq = np.zeros(0, dtype=np.int64)
        self.describe(motors, shape, extents, snaking)
        self._values = {f: np.zeros(0) for f in FIELDS}
        self._status = np.zeros(0, dtype=object)
        self._features: np.ndarray | None = None  # (capacity, k) frame descriptors, when the analysis sends them
        self._row: dict[int, int] = {}  # seq_num -> row
        self._extra: dict[str, np.ndarray] = {}  # per-point fields of later stages (e.g. texture), NaN where unset
        self._early: dict[str, dict[int, float]] = {}  # extra values that came before their points
        self.taken = 0
        self.received = 0
        self.skipped = 0
        self.errors = 0
        self.rejected_by_reason: Counter = Counter()
        self.done = False

    def describe(self, motors, shape=None, extents=None, snaking=None) -> None:
        """Set the motors and the grid description (from the analysis run's start document; the motors only
        while no point is stored)."""
        if self._n == 0:
            self.motors = list(motors)
            self._pos = np.zeros((len(self._seq), len(self.motors)))
        self.shape = tuple(shape) if shape else None
        self.extents = [tuple(e) for e in extents] if extents else None
        self.snaking = list(snaking) if snaking else [False] * len(self.shape or ())
        self.expected = int(np.prod(self.shape)) if self.shape else None

    @property
    def rejected(self) -> int:
        """Frames refused at the analysis' door (see :attr:`rejected_by_reason`)."""
        return sum(self.rejected_by_reason.values())

    @property
    def accounted(self) -> int:
        """Frames analysed (ok, warned or flagged), skipped, lost to errors or rejected: ``received`` once caught up."""
        return self._n + self.skipped + self.errors + self.rejected

    # ------------------------------------------------------------------ writing (LiveMaps, under its lock)
    def append(self, seq_nums, positions, values: dict, status, features=None) -> None:
        """Append N points: ``seq_nums`` (N,), ``positions`` (N, n_motors) um, ``values`` {field: (N,)} (missing
        fields NaN), ``status`` (N,), ``features`` (N, k) or None. All or nothing: ValueError before any change if
        the lengths disagree."""
        seq = np.asarray(seq_nums, dtype=np.int64).reshape(-1)
        n = len(seq)
        pos = np.asarray(positions, dtype=float).reshape(n, len(self.motors))
        cols = {f: np.asarray(values[f], dtype=float).reshape(n) if f in values else np.full(n, np.nan)
                for f in FIELDS}
        status = np.asarray(status, dtype=object).reshape(n)
        if features is not None:
            features = np.asarray(features, dtype=float).reshape(n, -1)
        self._reserve(self._n + n, features)
        rows = slice(self._n, self._n + n)
        self._seq[rows], self._pos[rows], self._status[rows] = seq, pos, status
        for f in FIELDS:
            self._values[f][rows] = cols[f]
        if features is not None and self._features is not None and features.shape[1] == self._features.shape[1]:
            self._features[rows] = features
        self._row.update(zip(seq.tolist(), range(self._n, self._n + n)))
        self._n += n
        for key, early in self._early.items():
            for s in set(early) & set(seq.tolist()):
                self._extra[key][self._row[s]] = early.pop(s)

    def _reserve(self, size: int, features) -> None:
        """Grow every column to hold ``size`` points (doubling, so appends cost O(1) on average)."""
        if self._features is None and features is not None and self._n == 0:
            self._features = np.zeros((len(self._seq), features.shape[1]))
        if size <= len(self._seq):
            return
        capacity = max(size, 2 * len(self._seq), 64)

        def grow(a, fill):
            out = np.full((capacity, *a.shape[1:]), fill, dtype=a.dtype)
            out[:self._n] = a[:self._n]
            return out

        self._seq, self._pos, self._status = grow(self._seq, 0), grow(self._pos, np.nan), grow(self._status, None)
        self._values = {f: grow(v, np.nan) for f, v in self._values.items()}
        self._extra = {k: grow(v, np.nan) for k, v in self._extra.items()}
        if self._features is not None:
            self._features = grow(self._features, np.nan)

    def set_extra(self, key: str, seq_nums, values) -> None:
        """Set another per-point field (e.g. texture labels) by seq_num; values for points not stored yet are kept
        and applied when they arrive."""
        column = self._extra.get(key)
        if column is None:
            column = self._extra[key] = np.full(len(self._seq), np.nan)
        for s, v in zip(np.asarray(seq_nums).tolist(), np.asarray(values, dtype=float).tolist()):
            row = self._row.get(int(s))
            if row is None:
                self._early.setdefault(key, {})[int(s)] = v
            else:
                column[row] = v

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return self._n

    def scattered(self) -> dict[str, np.ndarray]:
        """Snapshot (copies) of every point: ``seq_num``, one array per motor (um), the estimates, the extra fields
        (e.g. ``texture``, NaN where not set), ``status``."""
        n = self._n
        out = {"seq_num": self._seq[:n].astype(int)}
        for i, m in enumerate(self.motors):
            out[m] = self._pos[:n, i].copy()
        out.update({f: v[:n].copy() for f, v in self._values.items()})
        out.update({k: v[:n].copy() for k, v in self._extra.items()})
        out["status"] = self._status[:n].copy()
        return out

    def features(self) -> np.ndarray:
        """(N, k) frame descriptors of the analysed points (N = len(self)); (N, 0) when none are sent."""
        if self._features is None:
            return np.zeros((self._n, 0))
        return self._features[:self._n].copy()

    def status_counts(self) -> dict[str, int]:
        """Number of analysed points per status (ok, warnings such as ``edge``, failures)."""
        return dict(Counter(str(s) for s in self._status[:self._n]))

    def gridded(self, field: str) -> np.ndarray:
        """A field on the scan grid (shape of the start document), NaN where not (yet) measured or flagged.

        Row-major over the motors (slowest first); snaked rows are put back in place. ``"status"`` gives
        :func:`status_value` per point (1 ok, 0.5 a warning, 0 flagged).
        """
        if not self.shape:
            raise ValueError(f"run {self.uid[:8]} is not a rectilinear grid scan; use scattered()")
        n = self._n
        if field == "status":
            values = status_value(self._status[:n])
        elif field in self.motors:
            values = self._pos[:n, self.motors.index(field)]
        else:
            values = (self._extra[field] if field in self._extra else self._values[field])[:n]
        grid = np.full(int(np.prod(self.shape)), np.nan)
        index = self._grid_index(self._seq[:n] - 1)
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
