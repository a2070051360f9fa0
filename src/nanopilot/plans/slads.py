"""A SLADS-like sampler: measure where the expected reduction in distortion (ERD) is largest.

After Godaliyadda et al., "A framework for dynamic image sampling based on supervised learning", IEEE Trans.
Comput. Imaging 4, 1 (2018) (SLADS), and Zhang et al., "SLADS-Net" (2018). The ERD of an unmeasured point is
regressed on local features of the measurements: the reconstruction's gradients along x and y, the spread of the
neighbouring measurements about the reconstruction, the distance to the nearest measurement and the local
density of measurements (:func:`erd_features`). The regression is trained on fully known training images:
random masks at several densities, and for points outside a mask the approximate reduction in distortion of
measuring them (:func:`reduction_in_distortion`). Reconstruction: the inverse-square-distance weighted mean of
the nearest measurements, as in SLADS. Several fields are handled together, each in units of its noise.

Adaptations, stated: the distortion is the sum over fields of |error| / noise; the training measurements carry
Gaussian noise of the given scales; a batch is chosen in a few groups (features recomputed between groups, with
the picks entered at their reconstructed value as SLADS' group-wise sampling does), and inside a group a pick
excludes the points nearer to it than its nearest measurement.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import spatial
from sklearn.linear_model import Ridge
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from .samplers import FIELDS, LatticeSampler, raster_indices
from ..agents.steering import Lattice, snake_order

#: Measurements the reconstruction and the spread feature use around a point.
NEIGHBOURS = 10
#: Radius (lattice steps) of the disc the density feature counts measurements in.
DENSITY_RADIUS = 3.0
#: The reduction in distortion's window: a Gaussian of standard deviation (distance to the nearest
#: measurement) / WINDOW_FACTOR, over the points the new measurement would become the nearest of (SLADS' c).
WINDOW_FACTOR = 2.0
#: Sampling densities of the training masks.
TRAINING_DENSITIES = (0.05, 0.1, 0.2, 0.35)


def idw(known: np.ndarray, values: np.ndarray, query: np.ndarray, k: int = NEIGHBOURS):
    """Inverse-square-distance weighted mean of the k nearest known points: (estimates (q, F), distances (q, k),
    neighbour indices (q, k), weights (q, k)); known (m, 2) and query (q, 2) in lattice steps, values (m, F)."""
    k = min(k, len(known))
    distance, index = spatial.cKDTree(known).query(query, k=k)
    distance, index = distance.reshape(len(query), k), index.reshape(len(query), k)
    weight = 1.0 / np.maximum(distance, 1e-6) ** 2
    weight /= weight.sum(axis=1, keepdims=True)
    return np.einsum("qk,qkf->qf", weight, values[index]), distance, index, weight


def erd_features(n: int, known: np.ndarray, values: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(c, 5) features of candidate lattice points (i, j): |d/dx|, |d/dy| of the reconstruction, the weighted
    spread of the neighbours about it (fields summed; values in noise units), the distance to the nearest
    measurement and the density of measurements within :data:`DENSITY_RADIUS` (steps)."""
    jj, ii = np.mgrid[0:n, 0:n]
    grid = idw(known, values, np.c_[ii.ravel(), jj.ravel()].astype(float))[0].reshape(n, n, -1)
    gy, gx = np.gradient(grid, axis=(0, 1))
    ci, cj = candidates[:, 0].astype(int), candidates[:, 1].astype(int)
    estimate, distance, index, weight = idw(known, values, candidates.astype(float))
    spread = np.sqrt(np.einsum("qk,qkf->qf", weight, (values[index] - estimate[:, None, :]) ** 2)).sum(axis=1)
    count = spatial.cKDTree(known).query_ball_point(candidates.astype(float), DENSITY_RADIUS, return_length=True)
    return np.stack([np.abs(gx[cj, ci]).sum(axis=1), np.abs(gy[cj, ci]).sum(axis=1), spread, distance[:, 0],
                     count / (np.pi * DENSITY_RADIUS ** 2)], axis=1)


def reduction_in_distortion(truth: np.ndarray, known: np.ndarray, values: np.ndarray,
                            candidates: np.ndarray) -> np.ndarray:
    """(c,) approximate reduction in distortion of measuring each candidate (SLADS' training target).

    truth (n, n, F) in noise units; distortion D = sum over fields of |truth - reconstruction|; RD(s) = the sum
    of D exp(-|r - s|^2 / 2 sigma^2) over the points r that s would be nearer to than their nearest measurement,
    sigma = (distance from s to its nearest measurement) / :data:`WINDOW_FACTOR`.
    """
    n = truth.shape[0]
    jj, ii = np.mgrid[0:n, 0:n]
    estimate, distance = idw(known, values, np.c_[ii.ravel(), jj.ravel()].astype(float))[:2]
    error = np.abs(truth.reshape(n * n, -1) - estimate).sum(axis=1).reshape(n, n)
    nearest = distance[:, 0].reshape(n, n)
    out = np.empty(len(candidates))
    for k, (i, j) in enumerate(candidates.astype(int)):
        sigma = max(nearest[j, i], 1.0) / WINDOW_FACTOR
        r = int(np.ceil(3 * sigma))
        j0, j1, i0, i1 = max(j - r, 0), min(j + r + 1, n), max(i - r, 0), min(i + r + 1, n)
        d2 = (jj[j0:j1, i0:i1] - j) ** 2 + (ii[j0:j1, i0:i1] - i) ** 2
        closer = d2 < nearest[j0:j1, i0:i1] ** 2
        closer[j - j0, i - i0] = True
        out[k] = (np.exp(-d2 / (2 * sigma ** 2)) * error[j0:j1, i0:i1])[closer].sum()
    return out


def train_erd(images: Sequence[np.ndarray], *, kind: str = "linear", densities=TRAINING_DENSITIES,
              per_mask: int = 200, seed: int | None = 0):
    """A fitted scikit-learn regressor from :func:`erd_features` to :func:`reduction_in_distortion`.

    images : training images (n, n, F), every field in units of its measurement noise (the measurements drawn
        from them get unit Gaussian noise).
    kind : "linear" (SLADS: least squares on the features and their second-order products, lightly ridged) or
        "net" (SLADS-Net: a two-layer perceptron, 50 units each).
    per_mask : candidates drawn per random mask.
    """
    if kind not in ("linear", "net"):
        raise ValueError(f"kind must be 'linear' or 'net', got {kind!r}")
    rng = np.random.default_rng(seed)
    X, y = [], []
    for image in images:
        n = image.shape[0]
        flat = image.reshape(n * n, -1)
        for density in densities:
            mask = rng.random(n * n) < density
            if mask.sum() < 4 or (~mask).sum() == 0:
                continue
            index = np.flatnonzero(mask)
            known = np.c_[index % n, index // n].astype(float)
            values = flat[index] + rng.normal(size=(len(index), flat.shape[1]))
            unmeasured = np.flatnonzero(~mask)
            pick = rng.choice(unmeasured, min(per_mask, len(unmeasured)), replace=False)
            candidates = np.c_[pick % n, pick // n]
            X.append(erd_features(n, known, values, candidates))
            y.append(reduction_in_distortion(image, known, values, candidates))
    if not X:
        raise ValueError("no training samples: give images of at least 4 x 4 points")
    if kind == "linear":
        model = make_pipeline(StandardScaler(), PolynomialFeatures(2), Ridge(alpha=1e-3))
    else:
        network = MLPRegressor(hidden_layer_sizes=(50, 50), max_iter=500, random_state=seed)
        model = make_pipeline(StandardScaler(), network)
    return model.fit(np.concatenate(X), np.concatenate(y))


class SLADSSampler(LatticeSampler):
    """Sample where the trained regressor's ERD is largest (see the module notes).

    Parameters
    ----------
    model : a regressor from :func:`train_erd` (trained on tuning images only).
    scales : each field's measurement noise (its units), e.g. the network's median std.
    n_initial : points of the initial uniform raster.
    groups : a batch is chosen in at most this many groups (features recomputed between them).
    """

    def __init__(self, lattice: Lattice, model, scales: dict[str, float], fields: Sequence[str] = FIELDS,
                 n_initial: int = 25, groups: int = 8):
        super().__init__(lattice, fields)
        missing = [f for f in self.fields if not scales.get(f, 0) > 0]
        if missing:
            raise ValueError(f"scales must give a positive noise level for {missing}")
        self.model, self.scales, self.groups = model, np.array([scales[f] for f in self.fields]), int(groups)
        self.initial_ = snake_order(raster_indices(lattice.n, max(int(n_initial), 4)))

    def _known(self) -> tuple[np.ndarray, np.ndarray]:
        """Indices (m, 2) and values (m, F) in noise units of the points with every field finite."""
        values = np.stack([self.values_[f] for f in self.fields], axis=1) / self.scales
        keep = np.isfinite(values).all(axis=1)
        return np.array(self.indices_, dtype=float).reshape(-1, 2)[keep], values[keep]

    def ask(self, n: int) -> np.ndarray:
        n = max(int(n), 0)
        todo = [ij for ij in self.initial_ if not self.measured_[ij[1], ij[0]]]
        if todo:
            return self.positions(todo[:n])
        known, values = self._known()
        free = ~self.measured_
        chosen: list[tuple[int, int]] = []
        size = max(1, -(-n // self.groups))
        while len(chosen) < n and free.any() and len(known):
            jj, ii = np.nonzero(free)
            candidates = np.stack([ii, jj], axis=1)
            features = erd_features(self.lattice.n, known, values, candidates)
            erd = self.model.predict(features)
            blocked, group = np.zeros(len(candidates), bool), []
            for k in np.argsort(-erd):
                if len(group) >= min(size, n - len(chosen)):
                    break
                if not blocked[k]:
                    group.append(k)
                    reach = max(features[k, 3], 1.0)
                    blocked |= np.hypot(*(candidates - candidates[k]).T) < reach
            picks = candidates[group]
            free[picks[:, 1], picks[:, 0]] = False
            chosen.extend((int(i), int(j)) for i, j in picks)
            values = np.vstack([values, idw(known, values, picks.astype(float))[0]])  # pseudo-measurements
            known = np.vstack([known, picks])
        return self.positions(chosen)

    def reconstruct(self):
        known, values = self._known()
        n = self.lattice.n
        jj, ii = np.mgrid[0:n, 0:n]
        grid = idw(known, values, np.c_[ii.ravel(), jj.ravel()].astype(float))[0] * self.scales
        return {f: grid[:, k].reshape(n, n) for k, f in enumerate(self.fields)}
