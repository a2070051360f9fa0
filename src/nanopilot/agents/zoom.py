"""Zoomed maps around a new texture, for :func:`~nanopilot.plans.find_texture_temperature`: one map among several in
a run (:class:`MapView`), quick-map grids, the window around the new texture (:func:`novel_window`), the
transition extrapolated from the texture's radius (:func:`onset_from_radius`) and the next bracketing temperature
(:func:`next_probe`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .steering import snake_order

#: Side of a fallback zoom window, in spacings of the map it is drawn on (see :func:`novel_window`).
WINDOW_SPACINGS = 4


class MapView:
    """The points of one map inside a run that holds several (a contiguous range of primary seq_nums).

    Quacks like :class:`~nanopilot.callbacks.RunMap` for :func:`~nanopilot.texture.texture_change`:
    ``motors``, ``scattered()`` and ``features()`` restricted to seq_nums ``first..last`` (inclusive).
    """

    def __init__(self, run, first: int, last: int):
        self.run, self.first, self.last = run, int(first), int(last)
        self.motors = run.motors

    def _keep(self) -> np.ndarray:
        seq = np.asarray(self.run.scattered()["seq_num"])
        return (seq >= self.first) & (seq <= self.last)

    def scattered(self) -> dict[str, np.ndarray]:
        keep = self._keep()
        return {k: v[keep] for k, v in self.run.scattered().items()}

    def features(self) -> np.ndarray:
        keep = self._keep()
        features = self.run.features()
        return features[keep] if features.shape[1] else np.zeros((int(keep.sum()), 0))

    def __len__(self) -> int:
        return int(self._keep().sum())


def grid_points(x_range, y_range, n: int) -> list[tuple[float, float]]:
    """An ``n x n`` grid over the region (um), in snake order (short stage moves)."""
    xs, ys = np.linspace(*x_range, n), np.linspace(*y_range, n)
    return [(float(xs[i]), float(ys[j])) for i, j in snake_order([(i, j) for j in range(n) for i in range(n)])]


def novel_window(view: MapView, novel: np.ndarray, window: tuple, n: int, region: tuple,
                 max_spacings: float | None = None) -> tuple | None:
    """The square window (um) around the largest connected patch of novel points of an ``n x n`` map.

    Parameters
    ----------
    view : the map (positions of its points, in the order of ``novel``).
    novel : (n * n,) bool, the novel points (:attr:`~nanopilot.texture.TextureChange.novel`).
    window : ((x0, x1), (y0, y1)) the map's region (um).
    n : points per side of the map.
    region : ((x0, x1), (y0, y1)) the plan's region (um); the window is shifted to stay inside it.
    max_spacings : largest side of the window in map spacings (None: no limit).

    Returns
    -------
    ((x0, x1), (y0, y1)) in um: the patch's bounding box grown by one map spacing on each side and made
    square (the texture nearer the transition covers less than the patch, around the same nuclei); with
    ``max_spacings``, a larger patch (the textures of several nuclei run together, or widened by the
    neighbourhood features) is zoomed on around its densest point, the one with the most novel neighbours.
    None when no point is novel.
    """
    points = view.scattered()
    xy = np.column_stack([points[m] for m in view.motors[::-1][:2]])
    (x0, x1), (y0, y1) = window
    spacing = np.array([(x1 - x0) / (n - 1), (y1 - y0) / (n - 1)])
    index = np.rint((xy - [x0, y0]) / spacing).astype(int)
    grid = np.zeros((n, n), bool)
    keep = np.asarray(novel, bool) & (index >= 0).all(axis=1) & (index < n).all(axis=1)
    grid[index[keep, 1], index[keep, 0]] = True
    labels, count = ndimage.label(grid, structure=np.ones((3, 3)))
    if not count:
        return None
    largest = 1 + int(np.argmax(ndimage.sum(grid, labels, range(1, count + 1))))
    patch = labels == largest
    rows, cols = np.nonzero(patch)
    low = np.array([cols.min(), rows.min()]) * spacing + [x0, y0] - spacing
    high = np.array([cols.max(), rows.max()]) * spacing + [x0, y0] + spacing
    side, centre = float((high - low).max()), (low + high) / 2
    if max_spacings is not None and side > max_spacings * spacing.max():
        density = np.where(patch, ndimage.convolve(patch.astype(int), np.ones((3, 3), int), mode="constant"), -1)
        row, col = np.unravel_index(np.argmax(density), density.shape)
        side, centre = max_spacings * float(spacing.max()), np.array([col, row]) * spacing + [x0, y0]
    (rx0, rx1), (ry0, ry1) = region
    side = min(side, rx1 - rx0, ry1 - ry0)
    centre = np.clip(centre, [rx0 + side / 2, ry0 + side / 2], [rx1 - side / 2, ry1 - side / 2])
    return tuple((float(c - side / 2), float(c + side / 2)) for c in centre)


def onset_from_radius(history: Sequence[tuple], cooling: bool, min_spread: float = 0.0) -> tuple[float, float]:
    """The transition temperature (K) extrapolated to zero radius of the new texture.

    Model: the new texture grows outward from nuclei with a radius proportional to the undercooling. The
    radius of a zoomed map that showed it (the radius of a disc of its novel area, um) is linear in
    temperature; the line through the zoomed map nearest the transition (the finest window) and the next
    nearest at least ``min_spread`` K from it (else the farthest) is extrapolated to zero radius: two radii
    measured close together give a poor slope.

    Parameters
    ----------
    history : (temperature K, changed, score, new coverage 0-1, radius um) per quick map; the radius is NaN
        for the maps of the whole region (their coarse spacing does not resolve it).
    cooling : the search goes down in temperature.
    min_spread : the least temperature difference (K) wanted between the two radii of the line.

    Returns
    -------
    (float, float): the estimate (K) and the radius' growth (um per K of undercooling); NaN, NaN when the
    radii do not support a line (fewer than two temperatures, or a radius not growing with the undercooling).
    """
    sign = -1.0 if cooling else 1.0
    seen = {}
    for t, is_changed, _, _, radius in history:
        if is_changed and radius > 0:
            seen.setdefault(float(t), []).append(float(radius))
    if len(seen) < 2:
        return math.nan, math.nan
    nearest = sorted(((t, float(np.mean(r))) for t, r in seen.items()), key=lambda tr: sign * tr[0])
    (t1, r1), rest = nearest[0], nearest[1:]
    t2, r2 = next(((t, r) for t, r in rest if abs(t - t1) >= min_spread), rest[-1])
    slope = (r2 - r1) / (t2 - t1)
    return (float(t1 - r1 / slope), float(abs(slope))) if sign * slope > 0 else (math.nan, math.nan)


def next_probe(unchanged: float, changed: float, onset: float, tolerance: float) -> tuple[float, bool]:
    """The next bracketing temperature (K) between the ``unchanged`` and ``changed`` ends (further apart than
    ``tolerance``), and whether it is a closing probe, one expected to show the texture within the tolerance
    of the unchanged end.

    Without an ``onset`` estimate (NaN): the bracket's middle. With one: half the tolerance on the unchanged
    side of it (expected unchanged; the next probe then closes the bracket); when that is too near an end of
    the bracket, the probe that closes the bracket at that end (0.9 of the tolerance from it).
    """
    if not math.isfinite(onset):
        return (unchanged + changed) / 2, False
    sign = 1.0 if changed > unchanged else -1.0  # from the unchanged end toward the changed one
    width, half, margin = abs(changed - unchanged), tolerance / 2, 0.1 * tolerance
    distance = sign * (onset - unchanged)  # the onset's distance from the unchanged end, toward the changed end
    if distance - half < margin:  # at the unchanged end or beyond it
        return unchanged + sign * 0.9 * tolerance, True
    if distance + half > width - margin:  # at the changed end
        return changed - sign * 0.9 * tolerance, False
    return unchanged + sign * (distance - half), False
