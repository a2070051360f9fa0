"""The pure decision logic of :func:`steered_map`: adaptive refinement of a square lattice (a quadtree).

The scan region is a lattice of ``fine x fine`` points (the full fine raster). A *cell* is a square of side
``h`` lattice steps whose four corners are measured. A cell's interest is the largest change across it (or curvature
next to it) of any analysed field in units of that field's noise (from the network's uncertainty), plus a bonus for a
texture boundary and for frames whose status is not ok (flagged, or a warning such as ``edge``, whose value is used
as well). The cells with the highest interest times side are split in four,
which measures their centres and edge midpoints; cells of side 1 are final. :func:`reconstruct` rebuilds the
map on the fine raster from the scattered points.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import interpolate, spatial

FIELDS = ("strain", "omega", "chi", "thickness")
#: interest of a cell whose corners disagree on the texture label, or hold a flagged frame (or one with a warning,
#: e.g. ``edge``: its value counts, and the points around it are measured more densely all the same)
BOUNDARY_INTEREST = 10.0
FLAGGED_INTEREST = 5.0
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


def coarse_cells(n: int, side: int) -> list[tuple[int, int, int]]:
    """Cells (i, j, side) tiling the lattice, with corners on multiples of ``side``."""
    if (n - 1) % side:
        raise ValueError(f"the fine raster ({n} points per side) must be a whole number of coarse cells of "
                         f"{side} steps: choose fine = k * {side} + 1")
    return [(i, j, side) for j in range(0, n - 1, side) for i in range(0, n - 1, side)]


def corners(cell) -> list[tuple[int, int]]:
    i, j, h = cell
    return [(i, j), (i + h, j), (i, j + h), (i + h, j + h)]


def split(cell) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """The four sub-cells of a cell and the lattice points they add (centre and edge midpoints)."""
    i, j, h = cell
    g = h // 2
    subcells = [(i, j, g), (i + g, j, g), (i, j + g, g), (i + g, j + g, g)]
    new = [(i + g, j), (i, j + g), (i + g, j + g), (i + h, j + g), (i + g, j + h)]
    return subcells, new


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


def cell_interest(cells, measured: dict, scales: dict[str, float]) -> np.ndarray:
    """Interest of each cell (see the module notes); ``measured[(i, j)]`` is a dict of field values,
    ``"status"`` and optionally ``"texture"``.

    A field's contrast in a cell is the larger of the change across its corners and half its curvature
    (:func:`_curvature`): equal corners can bracket a crest or a trough, which the second differences at both
    ends of an edge reveal.
    """
    out = np.zeros(len(cells))
    last = max(max(key) for key in measured) if measured else 0
    for k, cell in enumerate(cells):
        points = [measured[c] for c in corners(cell)]
        score = 0.0
        for field, scale in scales.items():
            v = np.array([p.get(field, np.nan) for p in points], dtype=float)
            if np.isfinite(v).sum() >= 2:
                score = max(score, (np.nanmax(v) - np.nanmin(v)) / scale)
            score = max(score, _curvature(cell, measured, field, last) / (2 * scale))
        labels = {p.get("texture") for p in points if p.get("texture") is not None and p.get("texture") >= 0}
        if len(labels) > 1:
            score += BOUNDARY_INTEREST
        if any(p["status"] != "ok" for p in points):
            score += FLAGGED_INTEREST
        out[k] = score
    return out


def _curvature(cell, measured: dict, field: str, last: int) -> float:
    """Curvature across a cell of side h: for each edge along x or y, the second differences at its two ends
    (``f(c - h e) - 2 f(c) + f(c + h e)``, with the measured points one side outside); where both have the same
    sign (a crest or a trough between them, not a wall next to the cell) the smaller magnitude. The largest over
    the four edges; 0 where no such pair is measured. At the region's border (lattice index 0 or ``last``), where
    no wall can lie outside, the one second difference inside is used."""
    i, j, h = cell
    largest = 0.0
    for (ai, aj), (bi, bj), (di, dj) in (((i, j), (i + h, j), (h, 0)), ((i, j + h), (i + h, j + h), (h, 0)),
                                         ((i, j), (i, j + h), (0, h)), ((i + h, j), (i + h, j + h), (0, h))):
        v = [measured.get((ai + s * di, aj + s * dj), {}).get(field, np.nan) for s in (-1, 0, 1, 2)]
        first, second = v[0] - 2 * v[1] + v[2], v[1] - 2 * v[2] + v[3]
        if np.isfinite(first) and np.isfinite(second) and first * second > 0:
            largest = max(largest, min(abs(first), abs(second)))
        elif min(ai - di, aj - dj) < 0 and np.isfinite(second):  # the edge starts at the region's border
            largest = max(largest, abs(second))
        elif max(bi + di, bj + dj) > last and np.isfinite(first):  # the edge ends at the region's border
            largest = max(largest, abs(first))
    return largest


def choose_cells(cells, interest: np.ndarray, measured: dict, budget_left: int, threshold: float,
                 max_cells: int) -> tuple[list, list[tuple[int, int]]]:
    """The cells to split this round and the new lattice points to measure, within ``budget_left`` points.

    Candidates are the cells of side > 1 with interest above ``threshold``; they are taken in order of
    interest times side (the reconstruction error a cell leaves scales with its size as well as its
    contrast: a large cell over a smooth gradient is refined before a small one on a wall it already
    brackets closely).
    """
    priority = interest * np.array([cell[2] for cell in cells], dtype=float)
    order = np.argsort(-priority, kind="stable")
    chosen, points, seen = [], [], set(measured)
    for k in order:
        cell = cells[k]
        if len(chosen) >= max_cells:
            break
        if interest[k] <= threshold or cell[2] < 2:
            continue
        _, new = split(cell)
        new = [p for p in new if p not in seen]
        if len(points) + len(new) > budget_left:
            break
        chosen.append(cell)
        points.extend(new)
        seen.update(new)
    return chosen, points


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
