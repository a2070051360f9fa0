"""The pure decision logic of :func:`steered_map`: bisection of the edges that cross structure.

The scan region is a lattice of ``fine x fine`` points (the full fine raster). After a coarse raster, the measured
points are triangulated (Delaunay, in lattice steps). An edge's *interest* is the largest change of any analysed
field between its two ends in units of that field's noise (from the network's uncertainty), plus a bonus where the
ends' texture labels differ and where an end's frame is not ok (flagged, or a warning such as ``edge``, whose value
is used as well). The edges above a threshold are bisected (the lattice point nearest their middle is measured),
those that leave the largest squared error first (interest squared times length). A wall is thereby bracketed by
pairs of lattice neighbours along its whole length, a few points per crossing rather than filled cells, and the
triangulation then puts it where the measurements do; an edge inside a smooth region is refined only when the
field changes across it by more than the threshold. :func:`reconstruct` rebuilds the map on the fine raster.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import interpolate, spatial

FIELDS = ("strain", "omega", "chi", "thickness")
#: interest (noise units) added to an edge whose ends' texture labels differ, or one of whose frames is not ok
#: (flagged, or with a warning such as ``edge``: its value counts, and its neighbourhood is measured more densely)
BOUNDARY_INTEREST = 10.0
FLAGGED_INTEREST = 5.0
#: share of the budget the coarse raster takes at most when its spacing is chosen (:func:`coarse_step_for`):
#: the rest goes to bisection (tuning seeds 0-3, 33 x 33 at 10%: spacing 8 (23%) left 0.91 times the error of 4 (74%))
COARSE_SHARE = 0.4
#: methods of :func:`reconstruct`
RECONSTRUCTIONS = ("cubic", "linear", "nearest")


@dataclasses.dataclass(frozen=True)
class Lattice:
    """The fine raster: ``n x n`` points from (x0, y0) to (x1, y1) (um)."""

    x0: float
    x1: float
    y0: float
    y1: float
    n: int

    @property
    def step(self) -> tuple[float, float]:
        return (self.x1 - self.x0) / (self.n - 1), (self.y1 - self.y0) / (self.n - 1)

    def position(self, ij) -> tuple[float, float]:
        """(x, y) in um of lattice index (i = column, j = row)."""
        i, j = ij
        dx, dy = self.step
        return self.x0 + i * dx, self.y0 + j * dy

    def index(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Nearest lattice indices (i, j) of positions (um)."""
        dx, dy = self.step
        return (np.rint((np.asarray(x) - self.x0) / dx).astype(int),
                np.rint((np.asarray(y) - self.y0) / dy).astype(int))


def collect_points(run, lattice: Lattice, x_key: str, y_key: str) -> dict:
    """The analysed points of a run (anything with ``scattered()``: a RunMap, a PointTable) keyed by lattice index
    (i, j); a point measured twice keeps its latest result: {(i, j): {field: value, "status": ..., ...}}."""
    points = run.scattered()
    ii, jj = lattice.index(points[x_key], points[y_key])
    fields = [k for k in points if k not in ("seq_num", x_key, y_key)]
    return {key: {f: points[f][k] for f in fields} for k, key in enumerate(zip(ii.tolist(), jj.tolist()))}


def coarse_points(n: int, step: int) -> list[tuple[int, int]]:
    """Lattice indices (i, j) of the coarse raster: every ``step`` lattice steps, corners included."""
    if step < 1 or (n - 1) % step:
        raise ValueError(f"the fine raster ({n} points per side) must be a whole number of coarse steps of "
                         f"{step}: choose fine = k * {step} + 1")
    return [(i, j) for j in range(0, n, step) for i in range(0, n, step)]


def coarse_step_for(n: int, budget: int, share: float = COARSE_SHARE) -> int:
    """The finest coarse spacing (lattice steps) that divides ``n - 1`` and whose raster takes at most ``share`` of
    ``budget`` points, else the coarsest (the corners)."""
    steps = [k for k in range(1, n) if (n - 1) % k == 0]
    return next((k for k in steps if ((n - 1) // k + 1) ** 2 <= share * budget), steps[-1])


def noise_scales(values: dict[str, np.ndarray], stds: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-field noise scale: the median of the network's std, else a robust spread of the values."""
    scales = {}
    for field, v in values.items():
        s = stds.get(field)
        s = np.nanmedian(s) if s is not None and np.isfinite(s).any() else np.nan
        if not np.isfinite(s) or s <= 0:
            finite = v[np.isfinite(v)]
            s = 1.4826 * np.median(np.abs(finite - np.median(finite))) if finite.size else np.nan
        if np.isfinite(s) and s > 0:
            scales[field] = float(s)
    return scales


def lattice_edges(keys: np.ndarray) -> np.ndarray:
    """(E, 2) index pairs into ``keys`` ((m, 2) lattice indices): the edges of their Delaunay triangulation
    (on a line: consecutive points along it)."""
    if len(keys) < 2:
        return np.zeros((0, 2), int)
    try:
        simplices = spatial.Delaunay(keys).simplices
    except spatial.QhullError:  # all points on a line
        order = np.lexsort(keys.T[::-1])
        return np.sort(np.stack([order[:-1], order[1:]], axis=1), axis=1)
    pairs = np.concatenate([simplices[:, [0, 1]], simplices[:, [1, 2]], simplices[:, [0, 2]]])
    return np.unique(np.sort(pairs, axis=1), axis=0)


def edge_interest(measured: dict, scales: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The measured points' triangulation edges and their interest (see the module notes).

    Returns (keys (m, 2) lattice indices of the points, sorted, edges (E, 2) into keys,
    interest (E,) in noise units: the largest change of any field across the edge over its noise scale, plus
    :data:`BOUNDARY_INTEREST` where the ends' texture labels differ and :data:`FLAGGED_INTEREST` where an end's
    status is not ok; a field not finite at an end does not count).
    """
    order = sorted(measured)  # one triangulation whatever order the points came in (a square's diagonal is a tie)
    keys = np.array(order, dtype=float).reshape(-1, 2)
    edges = lattice_edges(keys)
    points = [measured[ij] for ij in order]
    interest = np.zeros(len(edges))
    for field, scale in scales.items():
        v = np.array([p.get(field, np.nan) for p in points], dtype=float) / scale
        jump = np.abs(v[edges[:, 0]] - v[edges[:, 1]])
        interest = np.fmax(interest, np.where(np.isfinite(jump), jump, 0.0))
    labels = np.array([p.get("texture", -1) for p in points], dtype=float)
    labels = np.where(np.isfinite(labels), labels, -1)
    a, b = labels[edges[:, 0]], labels[edges[:, 1]]
    interest += BOUNDARY_INTEREST * ((a >= 0) & (b >= 0) & (a != b))
    flagged = np.array([p.get("status", "ok") != "ok" for p in points])
    interest += FLAGGED_INTEREST * (flagged[edges[:, 0]] | flagged[edges[:, 1]])
    return keys, edges, interest


def midpoint(a, b, taken) -> tuple[int, int] | None:
    """The lattice point nearest the middle of the edge a-b (lattice indices) that is neither end nor in
    ``taken`` (for a diagonal step, another corner of its square); None where there is none (the ends are
    neighbours along a row or a column, or the points between them are taken)."""
    mi, mj = (a[0] + b[0]) / 2, (a[1] + b[1]) / 2
    for c in ((math.floor(mi), math.floor(mj)), (math.ceil(mi), math.ceil(mj)),
              (math.floor(mi), math.ceil(mj)), (math.ceil(mi), math.floor(mj))):
        if c != tuple(a) and c != tuple(b) and c not in taken:
            return c
    return None


def choose_points(measured: dict, scales: dict[str, float], threshold: float,
                  most: int) -> tuple[list[tuple[int, int]], list[list[int]], float]:
    """The next points to measure: midpoints of the edges whose interest is above ``threshold``, in order of
    interest squared times length (the squared error of the lattice points the edge leaves unresolved), at
    most ``most``.

    Returns (points (i, j), their edges [i1, j1, i2, j2] in the same order, the largest interest of an edge
    that still has a free lattice point between its ends, 0 when none has).
    """
    keys, edges, interest = edge_interest(measured, scales)
    length = np.hypot(*(keys[edges[:, 0]] - keys[edges[:, 1]]).T) if len(edges) else np.zeros(0)
    priority = interest ** 2 * length
    taken, points, chosen, top = set(measured), [], [], 0.0
    for k in np.argsort(-priority, kind="stable"):
        a, b = tuple(keys[edges[k, 0]].astype(int).tolist()), tuple(keys[edges[k, 1]].astype(int).tolist())
        new = midpoint(a, b, taken)
        if new is None:
            continue
        top = max(top, float(interest[k]))
        if interest[k] <= threshold or len(points) >= most:
            continue
        taken.add(new)
        points.append(new)
        chosen.append([*a, *b])
    return points, chosen, top


def reconstruct(lattice: Lattice, measured: dict, field: str, method: str = "cubic") -> np.ndarray:
    """The field on the full fine raster (n, n) (rows = y) from the measured points.

    method : "cubic" (default): the piecewise-cubic C1 interpolant on the points' Delaunay triangulation
        (Clough-Tocher), clipped to the range of the three values of the triangle that holds each raster point,
        so that it is smooth where the field is smooth and never overshoots across a wall; "linear": linear on
        the triangulation; "nearest": the nearest measured point's value (for labels). Raster points outside
        the triangulation take the nearest point's value. Points whose value is not finite are left out.
    """
    if method not in RECONSTRUCTIONS:
        raise ValueError(f"method must be one of {RECONSTRUCTIONS}, got {method!r}")
    keys = np.array(list(measured), dtype=float).reshape(-1, 2)
    values = np.array([point.get(field, np.nan) for point in measured.values()], dtype=float)
    keys, values = keys[np.isfinite(values)], values[np.isfinite(values)]
    jj, ii = np.mgrid[0:lattice.n, 0:lattice.n]
    query = np.c_[ii.ravel(), jj.ravel()].astype(float)
    if len(values) == 0:
        return np.full((lattice.n, lattice.n), np.nan)
    nearest = interpolate.NearestNDInterpolator(keys, values)(query)
    if method == "nearest" or len(values) < 3:
        return nearest.reshape(lattice.n, lattice.n)
    try:
        triangulation = spatial.Delaunay(keys)
    except spatial.QhullError:  # all points on a line
        return nearest.reshape(lattice.n, lattice.n)
    simplex = triangulation.find_simplex(query)
    if method == "linear":
        grid = interpolate.LinearNDInterpolator(triangulation, values)(query)
    else:
        vertices = values[triangulation.simplices[simplex]]
        grid = np.clip(interpolate.CloughTocher2DInterpolator(triangulation, values)(query),
                       vertices.min(axis=1), vertices.max(axis=1))
    return np.where((simplex >= 0) & np.isfinite(grid), grid, nearest).reshape(lattice.n, lattice.n)


def snake_order(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Points ordered row by row (y), alternating direction in x: short stage moves."""
    rows: dict[int, list] = {}
    for p in points:
        rows.setdefault(p[1], []).append(p)
    out = []
    for n, j in enumerate(sorted(rows)):
        out.extend(sorted(rows[j], reverse=bool(n % 2)))
    return out
