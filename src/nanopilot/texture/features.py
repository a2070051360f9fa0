"""Per-point texture features: network outputs, their neighbourhood statistics, a compact frame descriptor.

Feature set (one row per scan point, in this column order; see :func:`texture_features`):

``estimate``        strain, omega (deg), chi (deg)[, thickness (angstrom)]: the estimator's outputs; a
                    parameter the estimator does not give (all NaN) is left out.
``local_mean``      the same parameters averaged over a window of ``n_neighbours`` + 1 nearest scan points.
``local_spread``    their standard deviation over that window (high in stripes and other fine patterns).
``local_gradient``  the magnitude of their least-squares plane gradient over the window (per um).
``frame``           :func:`frame_descriptor` of the detector frame, when the analysis computed it.

The window of a point's local statistics is edge-preserving (``edge_preserving=True``, the default; see
:func:`neighbourhood`): of the windows that contain the point (its own, of itself and its nearest scan points,
and those of its neighbours), the one a plane fits best. A point next to a boundary between two regions
(a domain wall) is then described by the region it belongs to, not by a window straddling the boundary: with
plain centred windows the boundary points get a mixed local mean and a high spread and gradient, and k-means
makes false textures of them, one or two scan points wide along every wall. Inside a pattern finer than the
window (stripes of a period of a few scan points) every window spans the pattern, so its spread stays high.

Every column is later standardised by :class:`~nanopilot.texture.TextureClassifier` and multiplied by the
weight of its group (:data:`GROUP_WEIGHTS`), so a group's influence on the clustering does not depend on how
many columns it has. The estimate-derived columns are standardised in units of their noise, measured on the
map itself (the robust spread, 1.4826 x median absolute deviation, of each point from its local mean; per um
for gradients), not of their spread over the map, and not from the estimator's ``*_std`` (which it may not
give or get wrong): a parameter that only carries noise (e.g. a uniform thickness) then stays small instead
of being blown up to unit variance, where k-means would split its smoothed noise into false textures.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.neighbors import NearestNeighbors

from ..estimates import PARAMETERS, usable

#: Default weight of each feature group (applied after standardisation, divided by sqrt(columns in group)).
GROUP_WEIGHTS = {"estimate": 1.0, "local_mean": 1.0, "local_spread": 0.5, "local_gradient": 0.5, "frame": 1.0}


def frame_descriptor(frames, bins: int = 8) -> np.ndarray:
    """A compact, count-level independent descriptor of detector frames (usable as ``frame_features``).

    Parameters
    ----------
    frames : array (N, H, W)
        Detector frames (counts); rows are detector y, columns detector x.
    bins : int
        Number of bins of each projected profile (H and W must be multiples of it).

    Returns
    -------
    array (N, 2 * bins + 1)
        The column profile (intensity along detector x, which strain and omega move) and the row profile
        (detector y, which chi moves), each binned to ``bins`` values and divided by the frame's total counts,
        then log10 of the total counts (thickness sets the brightness). NaN rows for frames without counts
        or with non-finite or negative values.

    Notes
    -----
    Costs about 2 H W additions per frame: negligible beside the network.
    """
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 3 or frames.shape[1] % bins or frames.shape[2] % bins:
        raise ValueError(f"frames must be (N, H, W) with H and W multiples of bins={bins}, got {frames.shape}")
    n, h, w = frames.shape
    columns = frames.sum(axis=1).reshape(n, bins, w // bins).sum(axis=2)
    rows = frames.sum(axis=2).reshape(n, bins, h // bins).sum(axis=2)
    total = columns.sum(axis=1)
    good = np.isfinite(total) & (total > 0) & (frames.reshape(n, -1).min(axis=1) >= 0)
    out = np.full((n, 2 * bins + 1), np.nan)
    t = total[good, None]
    out[good] = np.hstack([columns[good] / t, rows[good] / t, np.log10(t)])
    return out


def neighbours(positions, n_neighbours: int = 8) -> np.ndarray:
    """Indices (N, k) of each point and its nearest scan points, the point itself first; k = min(n_neighbours
    + 1, N) (the window of :func:`neighbourhood`). ``positions`` (N, D) in um."""
    positions = np.asarray(positions, dtype=float)
    positions = positions.reshape(len(positions), -1)
    k = max(1, min(n_neighbours + 1, len(positions)))
    if len(positions) == 0:
        return np.zeros((0, k), dtype=np.intp)
    index = NearestNeighbors(n_neighbors=k).fit(positions).kneighbors(positions, return_distance=False)
    rows = np.arange(len(index))[:, None]
    absent = ~(index == rows).any(axis=1)  # coincident positions: make sure the point itself is in, first
    index[absent, -1] = np.flatnonzero(absent)
    return np.take_along_axis(index, np.argsort(index != rows, axis=1, kind="stable"), axis=1)


def neighbourhood(positions, values, n_neighbours: int = 8, *, edge_preserving: bool = False, scale=None,
                  index=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local mean, spread and gradient magnitude of per-point values over a window of nearest neighbours.

    Parameters
    ----------
    positions : array (N, D)
        Scan positions (um), D = 1 or 2.
    values : array (N, P)
        Per-point values; rows with a NaN are left out of their neighbours' statistics.
    n_neighbours : int
        Neighbours besides the point itself (8: the 3 x 3 window of a square grid).
    edge_preserving : bool
        False: the window of each point is the point and its ``n_neighbours`` nearest scan points. True: of
        the windows that contain the point (its own and those of its neighbours), the one whose values a
        plane fits best: the smallest RMS residual of the least-squares plane, summed in quadrature over the
        parameters in units of ``scale`` (a Kuwahara-type choice; on a square grid, among the 3 x 3 windows
        within the point's 5 x 5 surroundings). A point next to a boundary (a step no plane fits) then gets
        the statistics of its own side; within a pattern finer than a window, every window spans the
        pattern. A smooth variation (a gradient, a long-wavelength wave) fits a plane in every window, so it
        is not pulled towards plateaus, as choosing the window of smallest spread would do.
    scale : array (P,), optional
        Noise of each parameter, to add the misfits of parameters of different units in the edge-preserving
        choice; default :func:`noise_scale` of the values.
    index : array (N, k) of int, optional
        :func:`neighbours` of the positions, when already computed.

    Returns
    -------
    mean, spread, gradient : arrays (N, P)
        Mean and standard deviation over the window, and the magnitude of the least-squares plane gradient
        (value units per um). NaN where fewer than 2 valid points are near.
    """
    positions = np.asarray(positions, dtype=float).reshape(len(values), -1)
    values = np.asarray(values, dtype=float)
    n, p = values.shape
    nan = np.full((n, p), np.nan)
    if n < 2 or n_neighbours < 1:
        return nan, nan.copy(), nan.copy()
    if index is None:
        index = neighbours(positions, n_neighbours)
    mean, spread, gradient, misfit = _window_statistics(positions, values, index)
    if edge_preserving:
        scale = noise_scale(values, mean, index.shape[1] - 1) if scale is None else np.asarray(scale, float)
        mean, spread, gradient = _most_homogeneous(index, scale, mean, spread, gradient, misfit)
    return mean, spread, gradient


def noise_scale(values, mean, n_neighbours: int = 8) -> np.ndarray:
    """Noise (P,) of each column of ``values`` (N, P), measured on the map: the robust spread (1.4826 x the
    median absolute deviation) of each point from the ``mean`` of its centred window of ``n_neighbours`` + 1
    points (:func:`neighbourhood` without ``edge_preserving``), corrected for the point's own share of that
    mean; NaN for a column without finite values."""
    with np.errstate(invalid="ignore"):
        residual = np.abs(np.asarray(values, float) - mean) / np.sqrt(n_neighbours / (n_neighbours + 1.0))
        return 1.4826 * np.array([np.nanmedian(r) if np.isfinite(r).any() else np.nan for r in residual.T])


def _most_homogeneous(index, scale, mean, spread, gradient, misfit):
    """The statistics of the window with the smallest standardised plane-fit misfit among those containing
    each point."""
    n = len(index)
    with np.errstate(invalid="ignore", divide="ignore"):
        cost = ((misfit / np.where(scale > 0, scale, np.nan)) ** 2).sum(axis=1)
    cost = np.where(np.isfinite(cost), cost, np.inf)
    contains = (index[index] == np.arange(n)[:, None, None]).any(axis=2)  # window of index[i, j] holds i
    contains[:, 0] = True
    candidates = np.where(contains, cost[index], np.inf)
    best = index[np.arange(n), np.argmin(candidates, axis=1)]
    best = np.where(np.isfinite(candidates).any(axis=1), best, np.arange(n))
    return mean[best], spread[best], gradient[best]


def _window_statistics(positions, values, index):
    """Mean, spread, plane-gradient magnitude and plane-fit misfit (RMS residual) (N, P) over each row's window
    ``index`` (N, k)."""
    local = values[index]  # (N, k, P), the point itself first
    valid = np.isfinite(local).all(axis=2)  # (N, k)
    count = valid.sum(axis=1)
    filled = np.where(valid[..., None], local, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=1) / count[:, None]
        spread = np.sqrt((np.where(valid[..., None], local - mean[:, None], 0.0) ** 2).sum(axis=1) / count[:, None])
        dx = (positions[index] - positions[:, None]) * valid[..., None]  # (N, k, D)
        dv = np.where(valid[..., None], local - mean[:, None], 0.0)
        dx = dx - dx.sum(axis=1, keepdims=True) / count[:, None, None] * valid[..., None]
        normal = np.einsum("nkd,nke->nde", dx, dx) + 1e-12 * np.eye(dx.shape[2])
        slope = np.linalg.solve(normal, np.einsum("nkd,nkp->ndp", dx, dv))  # (N, D, P)
        misfit = np.where(valid[..., None], dv - np.einsum("nkd,ndp->nkp", dx, slope), 0.0)
        misfit = np.sqrt((misfit ** 2).sum(axis=1) / count[:, None])
    gradient = np.sqrt((slope ** 2).sum(axis=1))
    few = count < 2
    for arr in (mean, spread, gradient, misfit):
        arr[few] = np.nan
    return mean, spread, gradient, misfit


@dataclasses.dataclass
class TextureFeatures:
    """The feature matrix of one map.

    Attributes
    ----------
    X : array (N, d)
        Features in their own units; a row with any NaN (flagged frame) gets no texture label.
    names : list of str
        Column names, e.g. ``local_spread:strain``, ``frame:3``.
    weights : array (d,)
        Weight of each column after standardisation (its group's weight / sqrt(columns in the group)).
    scale : array (d,)
        Noise scale of each column (its units), NaN where unknown (the classifier then uses the spread).
    seq_num : array (N,)
        Raw-run seq_num of each row.
    neighbours : array (N, k) of int, optional
        Rows of each row's window on the map, itself first (:func:`neighbours`); for the classifier's test
        that a texture is a region of the map (``TextureClassifier.fit(X, neighbours=...)``).
    """

    X: np.ndarray
    names: list[str]
    weights: np.ndarray
    scale: np.ndarray
    seq_num: np.ndarray
    neighbours: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.X)


def texture_features(run, *, n_neighbours: int = 8, group_weights: dict[str, float] | None = None,
                     use_frames: bool = True, edge_preserving: bool = True) -> TextureFeatures:
    """Build the texture feature matrix of a map (see the module docstring for the feature set).

    Parameters
    ----------
    run : nanopilot.callbacks.RunMap
        The map: estimates and positions of every analysed point, and frame descriptors when the analysis
        was given ``frame_features`` (e.g. :func:`frame_descriptor`). Points with a warning status (``edge``)
        count with their values, as in the maps (a texture whose tilts reach a trained range's end stays on the
        map, and the temperature plan's change test sees it); flagged points get no label.
    n_neighbours : int
        Neighbourhood size of the local statistics (nearest scan points besides the point itself).
    group_weights : dict, optional
        Weights per feature group, overriding :data:`GROUP_WEIGHTS`; a weight of 0 drops the group.
    use_frames : bool
        Include the frame descriptors when the map has them.
    edge_preserving : bool
        Local statistics over the most homogeneous window containing each point (see :func:`neighbourhood`).

    Returns
    -------
    TextureFeatures
    """
    weights = {**GROUP_WEIGHTS, **(group_weights or {})}
    unknown = sorted(set(weights) - set(GROUP_WEIGHTS))
    if unknown:
        raise ValueError(f"unknown feature groups {unknown}; the groups are {sorted(GROUP_WEIGHTS)}")
    points = run.scattered()
    n = len(points["seq_num"])
    ok = usable(points["status"])  # ok or a warning (e.g. edge): the value stands
    names = [p for p in PARAMETERS if np.isfinite(points[p][ok]).any()]
    values = np.column_stack([np.where(ok, points[p], np.nan) for p in names]) if names else np.zeros((n, 0))
    motors = run.motors[::-1][:2]  # fast axis (x) first
    positions = np.column_stack([points[m] for m in motors]) if motors else np.arange(n, dtype=float)[:, None]
    index = neighbours(positions, n_neighbours) if n else np.zeros((0, 1), dtype=np.intp)
    if n < 2 or n_neighbours < 1:
        mean = spread = gradient = misfit = np.full(values.shape, np.nan)
    else:
        mean, spread, gradient, misfit = _window_statistics(positions, values, index)
    noise = noise_scale(values, mean, n_neighbours)  # the noise of each parameter, from the map itself
    if edge_preserving and n >= 2 and n_neighbours >= 1:
        mean, spread, gradient = _most_homogeneous(index, noise, mean, spread, gradient, misfit)
    blocks = {"estimate": values, "local_mean": mean, "local_spread": spread, "local_gradient": gradient}
    step = _step(positions)
    scales = {"estimate": noise, "local_mean": noise, "local_spread": noise, "local_gradient": noise / step}
    frames = run.features() if use_frames else np.zeros((n, 0))
    if frames.shape[1]:
        blocks["frame"] = np.where(ok[:, None], frames, np.nan)
    columns, column_names, column_weights, column_scales = [], [], [], []
    for group, block in blocks.items():
        if weights[group] <= 0 or block.shape[1] == 0:
            continue
        columns.append(block)
        labels = names if group != "frame" else [str(i) for i in range(block.shape[1])]
        column_names += [f"{group}:{label}" for label in labels]
        column_weights += [weights[group] / np.sqrt(block.shape[1])] * block.shape[1]
        column_scales += list(scales.get(group, np.full(block.shape[1], np.nan)))
    X = np.hstack(columns) if columns else np.zeros((n, 0))
    return TextureFeatures(X=X, names=column_names, weights=np.asarray(column_weights),
                           scale=np.asarray(column_scales, dtype=float), seq_num=points["seq_num"],
                           neighbours=index)


def _step(positions: np.ndarray) -> float:
    """Median distance (um) from a point to its nearest neighbour (1.0 with fewer than 2 points)."""
    if len(positions) < 2:
        return 1.0
    distance = NearestNeighbors(n_neighbors=2).fit(positions).kneighbors(positions)[0][:, 1]
    step = float(np.median(distance))
    return step if step > 0 else 1.0
