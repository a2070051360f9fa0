"""Ground truth on a raster, for benchmarks and tests: the truth maps, the label walls and the feature mask."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .sample import SimSample


def label_walls(labels: np.ndarray) -> np.ndarray:
    """(ny, nx) bool: raster points whose label differs from a 4-neighbour's (both sides of every wall)."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, bool)
    across_x, across_y = labels[:, 1:] != labels[:, :-1], labels[1:, :] != labels[:-1, :]
    out[:, 1:] |= across_x
    out[:, :-1] |= across_x
    out[1:, :] |= across_y
    out[:-1, :] |= across_y
    return out


def raster_steps(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(dx, dy) (um) of a regular raster x, y (2-D, rows = y, as from ``np.meshgrid``); ValueError otherwise."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 2 or x.shape != y.shape or min(x.shape) < 2:
        raise ValueError(f"x and y must be one 2-D raster (rows = y) of at least 2 x 2 points, got {x.shape}, "
                         f"{y.shape}")
    dx, dy = x[0, 1] - x[0, 0], y[1, 0] - y[0, 0]
    if not (dx > 0 and dy > 0 and np.allclose(np.diff(x, axis=1), dx) and np.allclose(np.diff(y, axis=0), dy)):
        raise ValueError("x and y must be a regular raster with increasing steps (np.meshgrid of two linspaces)")
    return float(dx), float(dy)


def feature_mask(sample: SimSample, x: np.ndarray, y: np.ndarray, distance: float) -> np.ndarray:
    """(ny, nx) bool: the raster points within ``distance`` (um) of a feature of the sample's scene.

    Features: the walls between labels (walls, rims, cracks, stripe walls, defect cores; the raster points on
    both sides of a label change, so the mask reaches about half a step beyond ``distance``) and the scene's
    point features (:meth:`~nanopilot.sim_devices.scene_base.Scene.point_features`, e.g. defects).
    x, y: a regular raster (um, rows = y).
    """
    dx, dy = raster_steps(x, y)
    if not distance >= 0:
        raise ValueError(f"distance must be >= 0 (um), got {distance!r}")
    walls = label_walls(sample.labels(x, y))
    near = np.zeros(x.shape, bool)
    if walls.any():
        near = ndimage.distance_transform_edt(~walls, sampling=(dy, dx)) <= distance
    for px, py in sample.scene.point_features():
        near |= np.hypot(x - px, y - py) <= distance
    return near
