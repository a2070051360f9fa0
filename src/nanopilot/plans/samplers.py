"""Baseline samplers for adaptive maps: pure ask/tell objects (numpy, scipy, scikit-learn; no Bluesky).

The shape every sampler shares (that of the plans' decision agents):

``ask(n)`` -> (k, 2) array of positions x, y (um), k <= n; empty when the sampler has nothing more to propose.
``tell(points, values)``: points (k, 2) in um, values a mapping field name -> (k,) array (extra keys, such as
    ``strain_std`` or ``status``, are ignored by those that do not use them; a non-finite value is a failed
    measurement: the point counts as measured, its value is not used).
``reconstruct()`` -> {field: (n, n) array}: the map on the fine raster, rows = y, rebuilt the best way for it.

Candidates are the points of a fine raster (:class:`~nanopilot.agents.steering.Lattice`); a sampler never
proposes a point twice. The SLADS-like sampler is in :mod:`.slads`.

:class:`RasterSampler`  a uniform raster of a given number of points (what a scientist does instead).
:class:`RandomSampler`  uniformly random points.
:class:`GPSampler`      Gaussian-process uncertainty sampling (as gpCAM's variance acquisition), scikit-learn.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import linalg
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

from ..agents.steering import Lattice, reconstruct, snake_order

FIELDS = ("strain", "omega", "chi")


class LatticeSampler:
    """Shared bookkeeping: the measured lattice points, their values, and the candidates left.

    Parameters
    ----------
    lattice : the fine raster (um).
    fields : the fields the sampler reads and reconstructs.
    """

    def __init__(self, lattice: Lattice, fields: Sequence[str] = FIELDS):
        if not isinstance(lattice, Lattice) or lattice.n < 2:
            raise ValueError(f"lattice must be a steering.Lattice of at least 2 x 2 points, got {lattice!r}")
        self.lattice, self.fields = lattice, tuple(fields)
        self.measured_ = np.zeros((lattice.n, lattice.n), bool)  # [j, i] (rows = y)
        self.indices_: list[tuple[int, int]] = []  # (i, j) in the order told
        self.values_: dict[str, list[float]] = {f: [] for f in self.fields}

    def __len__(self) -> int:
        return len(self.indices_)

    def positions(self, indices) -> np.ndarray:
        """(k, 2) x, y (um) of lattice indices (i, j)."""
        return np.array([self.lattice.position(ij) for ij in indices], dtype=float).reshape(-1, 2)

    def tell(self, points, values: Mapping[str, np.ndarray]) -> None:
        """Record measured points ((k, 2) um, on the lattice) and their values (field -> (k,))."""
        points = np.asarray(points, dtype=float).reshape(-1, 2)
        ii, jj = self.lattice.index(points[:, 0], points[:, 1])
        if ((ii < 0) | (jj < 0) | (ii >= self.lattice.n) | (jj >= self.lattice.n)).any():
            raise ValueError("told points must lie inside the sampler's lattice (um)")
        missing = [f for f in self.fields if f not in values]
        if missing:
            raise ValueError(f"values lack the field(s) {missing}; give {list(self.fields)}")
        for f in self.fields:
            column = np.asarray(values[f], dtype=float).reshape(-1)
            if len(column) != len(points):
                raise ValueError(f"{len(points)} points but {len(column)} values of {f}")
            self.values_[f].extend(column.tolist())
        self.indices_.extend(zip(ii.tolist(), jj.tolist()))
        self.measured_[jj, ii] = True

    def measured(self) -> dict[tuple[int, int], dict[str, float]]:
        """{(i, j): {field: value}}, the layout :func:`~nanopilot.agents.steering.reconstruct` takes."""
        return {ij: {f: self.values_[f][k] for f in self.fields} for k, ij in enumerate(self.indices_)}

    def candidates(self) -> np.ndarray:
        """(c, 2) lattice indices (i, j) not measured yet."""
        jj, ii = np.nonzero(~self.measured_)
        return np.stack([ii, jj], axis=1)

    def known(self, field: str) -> tuple[np.ndarray, np.ndarray]:
        """(m, 2) indices (i, j) and (m,) values of the points with a finite value of ``field``."""
        values = np.array(self.values_[field], dtype=float)
        keep = np.isfinite(values)
        return np.array(self.indices_, dtype=float).reshape(-1, 2)[keep], values[keep]

    def reconstruct(self) -> dict[str, np.ndarray]:
        """Range-clipped cubic interpolation on the points' triangulation (:func:`steering.reconstruct`)."""
        measured = self.measured()
        return {f: reconstruct(self.lattice, measured, f) for f in self.fields}


def raster_indices(n: int, points: int) -> list[tuple[int, int]]:
    """Lattice indices (i, j) of the uniform raster of about ``points`` points on an n x n lattice: m x m or
    m x (m + 1) points, whichever product is nearest, as evenly spaced as lattice points allow, corners included."""
    if not 4 <= points <= n * n:
        raise ValueError(f"a raster needs 4 .. {n * n} points, got {points}")
    shapes = [(m, k) for m in range(2, n + 1) for k in (m, m + 1) if k <= n]
    mx, my = min(shapes, key=lambda s: (abs(s[0] * s[1] - points), s[0] * s[1]))
    xs, ys = (np.unique(np.rint(np.linspace(0, n - 1, m)).astype(int)) for m in (my, mx))
    return [(int(i), int(j)) for j in ys for i in xs]


class RasterSampler(LatticeSampler):
    """A uniform raster of about ``points`` points (:func:`raster_indices`), proposed in snake order.

    Reconstruction: the base's range-clipped cubic (on tuning seed 3 of the eight families of
    ``benchmarks/steering.py``, 33 x 33, at 10%, 20% and 27% of the points, its RMS error near features was
    5.24 / 11.19 / 7.23 times the full raster's in strain / omega / chi, against 5.47 / 11.47 / 7.43 for bilinear
    interpolation on the raster).
    """

    def __init__(self, lattice: Lattice, points: int, fields: Sequence[str] = FIELDS):
        super().__init__(lattice, fields)
        self.plan_ = snake_order(raster_indices(lattice.n, int(points)))

    def ask(self, n: int) -> np.ndarray:
        todo = [ij for ij in self.plan_ if not self.measured_[ij[1], ij[0]]]
        return self.positions(todo[:max(int(n), 0)])


class RandomSampler(LatticeSampler):
    """Uniformly random lattice points without repetition (seeded); reconstruction as the base's."""

    def __init__(self, lattice: Lattice, fields: Sequence[str] = FIELDS, seed: int | None = None):
        super().__init__(lattice, fields)
        self.rng = np.random.default_rng(seed)

    def ask(self, n: int) -> np.ndarray:
        candidates = self.candidates()
        pick = self.rng.choice(len(candidates), min(max(int(n), 0), len(candidates)), replace=False)
        return self.positions(candidates[pick])


class GPSampler(LatticeSampler):
    """Gaussian-process uncertainty sampling: one GP per field (scikit-learn, Matern (``nu``) plus white noise, on
    lattice-step coordinates), each point where the summed posterior variance (each field's in units of its
    fitted signal variance) is largest; a batch is chosen greedily, the variance updated after each pick (it does
    not depend on the values). The first ``n_initial`` points are a uniform raster.

    Parameters
    ----------
    n_initial : points of the initial raster.
    max_fit_points : the kernel's hyperparameters are fitted on at most this many points (a seeded random
        subset); the posterior then uses them all.
    nu : the Matern kernel's smoothness (0.5, 1.5, 2.5; np.inf: Gaussian). 1.5 was best on tuning seed 3 of the
        eight families of ``benchmarks/steering.py`` at 20% of 33 x 33 (RMS near features 5.6 / 11.0 / 7.2 x the full
        raster's, against 5.7 / 11.4 / 7.1 for 0.5 and 5.4 / 11.1 / 7.2 for 2.5: geometric means 6.00, 6.32, 6.03).
    seed : seeds that subset.

    Reconstruction: each GP's posterior mean on the lattice.
    """

    def __init__(self, lattice: Lattice, fields: Sequence[str] = FIELDS, n_initial: int = 25,
                 max_fit_points: int = 100, nu: float = 1.5, seed: int | None = None):
        super().__init__(lattice, fields)
        self.nu = float(nu)
        self.initial_ = snake_order(raster_indices(lattice.n, max(int(n_initial), 4)))
        self.max_fit_points = int(max_fit_points)
        self.rng = np.random.default_rng(seed)
        self.gps_: dict[str, GaussianProcessRegressor] = {}
        self.tuned_: dict[str, tuple] = {}  # field -> (kernel, points it was tuned on)

    def _fit(self) -> None:
        """Fit each field's GP: hyperparameters on a subset whenever the points have doubled since they
        were last tuned, the posterior on every point."""
        for f in self.fields:
            X, v = self.known(f)
            if len(v) < 4:
                continue
            tuned, count = self.tuned_.get(f, (None, 0))
            if tuned is None or len(v) >= 2 * count:
                kernel = (ConstantKernel(1.0, (1e-3, 1e3))
                          * Matern(length_scale=4.0, length_scale_bounds=(0.5, 200.0), nu=self.nu)
                          + WhiteKernel(0.1, (1e-4, 1.0)))
                subset = self.rng.choice(len(v), min(len(v), self.max_fit_points), replace=False)
                with warnings.catch_warnings():  # a length or noise at its bound is an answer, not a failure
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    tuned = GaussianProcessRegressor(kernel, normalize_y=True).fit(X[subset], v[subset]).kernel_
                self.tuned_[f] = (tuned, len(v))
            self.gps_[f] = GaussianProcessRegressor(tuned, normalize_y=True, optimizer=None).fit(X, v)

    def ask(self, n: int) -> np.ndarray:
        n = max(int(n), 0)
        todo = [ij for ij in self.initial_ if not self.measured_[ij[1], ij[0]]]
        if todo:
            return self.positions(todo[:n])
        candidates = self.candidates()
        if n == 0 or len(candidates) == 0:
            return np.empty((0, 2))
        self._fit()
        cands = candidates.astype(float)
        terms = [self._posterior(gp, cands) for gp in self.gps_.values()]
        if not terms:
            return self.positions(candidates[self.rng.choice(len(candidates), min(n, len(candidates)), False)])
        chosen = []
        for _ in range(min(n, len(candidates))):
            k = int(np.argmax(sum(t["variance"] / t["signal"] for t in terms)))
            chosen.append(k)
            for t in terms:  # the posterior once the pick is measured (rank-one updates)
                cov = t["kernel"](cands, cands[k:k + 1])[:, 0] - t["V"].T @ t["V"][:, k]
                for u in t["updates"]:
                    cov -= u * u[k]
                u = cov / np.sqrt(t["variance"][k] + t["noise"])
                t["updates"].append(u)
                t["variance"] = np.maximum(t["variance"] - u ** 2, 0.0)
                t["variance"][chosen] = 0.0
        return self.positions(candidates[chosen])

    @staticmethod
    def _posterior(gp: GaussianProcessRegressor, candidates: np.ndarray) -> dict:
        """A fitted GP's posterior variance at the candidates (c,) and what its updates need: V = L^-1 K(X, c),
        the noise-free kernel, the signal and noise variances (all in the GP's normalised units)."""
        product, white = gp.kernel_.k1, gp.kernel_.k2
        signal = product.k1.constant_value
        V = linalg.solve_triangular(gp.L_, product(gp.X_train_, candidates), lower=True)
        return {"variance": np.maximum(signal - (V ** 2).sum(axis=0), 0.0), "V": V, "kernel": product,
                "signal": signal, "noise": white.noise_level, "updates": []}

    def reconstruct(self):
        self._fit()
        jj, ii = np.mgrid[0:self.lattice.n, 0:self.lattice.n]
        query = np.c_[ii.ravel(), jj.ravel()].astype(float)
        out = {}
        for f in self.fields:
            if f in self.gps_:
                out[f] = self.gps_[f].predict(query).reshape(self.lattice.n, self.lattice.n)
            else:
                out[f] = np.full((self.lattice.n, self.lattice.n), np.nan)
        return out
