"""TextureClassifier: k-means over standardised per-point features, with labels that keep their meaning.

A label names a texture, not a k-means cluster index: each time the model is refitted (more points, the next
map of a temperature series) the new clusters are matched to every texture seen so far (Hungarian assignment
on centre distances), a match keeps its label, and a cluster that matches none gets the next unused label.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import MiniBatchKMeans
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from .cluster_checks import fewest_interior, separation

#: Label of a point without a texture (flagged frame, NaN features, or a model without enough data).
UNLABELLED = -1
#: Status values of :attr:`TextureClassifier.status_`.
OK = "ok"
NOT_ENOUGH_DATA = "not_enough_data"


class TextureClassifier(ClusterMixin, BaseEstimator):
    """k-means texture classification of scan points (scikit-learn estimator).

    Parameters
    ----------
    n_clusters : int or (int, int)
        A fixed number of textures, or the inclusive range (lo, hi) to choose it from. The choice: the largest
        k in the range whose k-means clusters are all

        - distinct: pairwise separated, along the line through each pair's centres, by at least
          ``min_separation`` pooled standard deviations (the two halves of a single Gaussian blob give about
          2.7, in any dimension), and
        - regions of the map, when :meth:`fit` is given the points' ``neighbours`` on the map: at least
          ``min_interior`` interior points each, i.e. points whose whole window (the point and its
          neighbours) is in the cluster. A texture covers an area; a line one or two scan points wide (the
          points along a domain wall, which differ from the domains on both sides) or a speck (a point
          defect) has no interior, and its points go to the nearest texture instead of making a false one.
          Limitation: the two states of stripes a few scan points wide have no interior either, so on maps
          with patterns finer than the window this test rejects them (and every k that separates them):
          fit without ``neighbours`` there (``TextureCallback(regions=False)``, the default).

        lo when no k >= 2 is.
    feature_weights : array (d,), optional
        Multiplies each standardised column (e.g. :attr:`TextureFeatures.weights`); default all 1.
    feature_scale : array (d,), optional
        Fixed scale of each column (e.g. :attr:`TextureFeatures.scale`, the noise level); where NaN or not
        given, the column's standard deviation at the first fit.
    min_points : int
        Fewer valid (all-finite) rows than this, or than the number of clusters, is "not enough data".
    min_separation : float
        Pairwise separation (pooled standard deviations) that distinct textures must have (see ``n_clusters``).
    min_interior : int or None
        Interior points (whole window in the cluster) that each texture must have when ``fit`` is given
        ``neighbours`` (see ``n_clusters``); None: the window's size (9 for 8 neighbours: a texture then
        spans at least about 5 x 5 scan points of a grid).
    match_factor : float
        A new cluster keeps a known texture's label when their centres are closer than ``match_factor`` times
        the root sum of squares of their radii (RMS member distance to the centre, standardised units).
    batch_size, n_init : int
        Passed to :class:`sklearn.cluster.MiniBatchKMeans`.
    random_state : int or None
        Seed of k-means.

    Attributes
    ----------
    mean_, scale_ : arrays (d,)
        Standardisation (feature units): ``feature_scale`` where given, else learned at the first fit with
        enough data; kept afterwards, so that distances, radii and labels are comparable over a series of maps.
    cluster_centers_ : array (n_clusters_, d)
        Cluster centres in feature units (the units of X).
    cluster_labels_ : array (n_clusters_,)
        Stable texture label of each cluster.
    cluster_radius_ : array (n_clusters_,)
        RMS distance of a cluster's members to its centre (standardised, weighted units).
    n_clusters_ : int
        Number of clusters of the current model (0 without enough data).
    labels_ : array (N,)
        Texture label of each row of the last fit (:data:`UNLABELLED` for rows with NaN).
    separations_ : dict
        Smallest pairwise separation of each k tried by the last automatic choice.
    interiors_ : dict
        Fewest interior points of a cluster, for each k tried by the last automatic choice (only when ``fit``
        was given ``neighbours``).
    textures_ : dict
        Every texture seen so far: label -> (centre (d,) standardised, radius).
    status_ : str
        :data:`OK` or :data:`NOT_ENOUGH_DATA` for the last fit.
    """

    def __init__(self, n_clusters=(1, 8), *, feature_weights=None, feature_scale=None, min_points: int = 20,
                 min_separation: float = 4.0, min_interior: int | None = None, match_factor: float = 1.0,
                 batch_size: int = 1024, n_init: int = 3, random_state=0):
        self.n_clusters = n_clusters
        self.feature_weights = feature_weights
        self.feature_scale = feature_scale
        self.min_points = min_points
        self.min_separation = min_separation
        self.min_interior = min_interior
        self.match_factor = match_factor
        self.batch_size = batch_size
        self.n_init = n_init
        self.random_state = random_state

    # ------------------------------------------------------------------ helpers
    def _range(self) -> tuple[int, int]:
        k = self.n_clusters
        lo, hi = (k, k) if np.isscalar(k) else tuple(k)
        if not (1 <= int(lo) <= int(hi)):
            raise ValueError(f"n_clusters must be an int >= 1 or a range (lo, hi) with 1 <= lo <= hi, got {k!r}")
        return int(lo), int(hi)

    def _check(self, X) -> tuple[np.ndarray, np.ndarray]:
        X = np.asarray(X, dtype=float)
        if X.ndim != 2:
            raise ValueError(f"X must be a 2-D (points, features) array, got shape {X.shape}")
        if hasattr(self, "n_features_in_") and X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features; this classifier was fitted with {self.n_features_in_}")
        return X, np.isfinite(X).all(axis=1) if X.shape[1] else np.zeros(len(X), bool)

    def standardise(self, X) -> np.ndarray:
        """Standardised, weighted features: ``(X - mean_) / scale_ * weights`` (N, d)."""
        check_is_fitted(self, "mean_")
        X, _ = self._check(X)
        return (X - self.mean_) / self.scale_ * self._weights

    def _kmeans(self, k: int, Z: np.ndarray) -> MiniBatchKMeans:
        return MiniBatchKMeans(n_clusters=k, batch_size=self.batch_size, n_init=self.n_init,
                               random_state=self.random_state).fit(Z)

    def _choose(self, Z: np.ndarray, window: np.ndarray | None = None) -> MiniBatchKMeans:
        """k-means with a fixed k, or with the largest k of the range whose clusters are all pairwise separated
        by at least ``min_separation`` (see :func:`separation`) and, given each row's ``window`` on the map,
        all have at least ``min_interior`` interior points (see :func:`fewest_interior`); lo when none is."""
        lo, hi = self._range()
        hi = max(lo, min(hi, len(Z) // 2))
        self.separations_, self.interiors_ = {}, {}
        if lo == hi:
            return self._kmeans(lo, Z)
        if window is not None:
            min_interior = window.shape[1] if self.min_interior is None else self.min_interior
        best = None
        for k in range(max(lo, 2), hi + 1):
            model = self._kmeans(k, Z)
            members = model.predict(Z)
            self.separations_[k] = separation(Z, model.cluster_centers_, members)
            region = True
            if window is not None:
                self.interiors_[k] = fewest_interior(members, window, k)
                region = self.interiors_[k] >= min_interior
            if self.separations_[k] >= self.min_separation and region:
                best = model
        return best if best is not None else self._kmeans(lo, Z)

    def _set_model(self, Z: np.ndarray, centres: np.ndarray, members: np.ndarray) -> None:
        k = len(centres)
        radius = np.array([np.sqrt(((Z[members == i] - centres[i]) ** 2).sum(axis=1).mean())
                           if (members == i).any() else 0.0 for i in range(k)])
        self.cluster_radius_ = radius
        self.cluster_centers_ = centres / self._weights * self.scale_ + self.mean_
        self._centres = centres
        self.n_clusters_ = k

    def _match(self, sizes: np.ndarray) -> None:
        """Give each cluster the label of the known texture it matches, or a new label (biggest first)."""
        labels = np.full(self.n_clusters_, UNLABELLED)
        known = sorted(self.textures_)
        if known:
            centres = np.array([self.textures_[t][0] for t in known])
            radii = np.array([self.textures_[t][1] for t in known])
            cost = cdist(self._centres, centres)
            for i, j in zip(*linear_sum_assignment(cost)):
                if cost[i, j] <= self.match_factor * np.hypot(self.cluster_radius_[i], radii[j]):
                    labels[i] = known[j]
        for i in sorted(np.flatnonzero(labels == UNLABELLED), key=lambda i: -sizes[i]):
            labels[i] = self.next_label_
            self.next_label_ += 1
        self.cluster_labels_ = labels
        for i, label in enumerate(labels):
            self.textures_[int(label)] = (self._centres[i].copy(), float(self.cluster_radius_[i]))

    # ------------------------------------------------------------------ estimator API
    def fit(self, X, y=None, neighbours=None):
        """Cluster the rows of X (N, d); rows with any NaN are left unlabelled.

        Keeps the standardisation of the first fit and the labels of known textures (see the class docstring).
        With fewer valid rows than ``min_points``, sets ``status_`` to :data:`NOT_ENOUGH_DATA`, removes the
        current clusters (known textures are remembered) and labels nothing.

        Parameters
        ----------
        X : array (N, d)
            Features (e.g. :attr:`TextureFeatures.X`).
        y : ignored
        neighbours : array (N, k) of int, optional
            Rows of X in each row's window on the map (e.g. :attr:`TextureFeatures.neighbours`): the
            automatic choice of the number of textures then also requires every texture to be a region of
            the map (see ``n_clusters``). Rows with NaN features in a window are left out of it.
        """
        X, valid = self._check(X)
        window = None
        if neighbours is not None:
            neighbours = np.asarray(neighbours)
            if neighbours.ndim != 2 or len(neighbours) != len(X) or not np.issubdtype(neighbours.dtype, np.integer):
                raise ValueError(f"neighbours must be an (N, k) integer array of rows of X (N = {len(X)}), "
                                 f"got shape {neighbours.shape} and dtype {neighbours.dtype}")
            if len(X) and ((neighbours < 0) | (neighbours >= len(X))).any():
                raise ValueError("neighbours holds row indices outside X")
            position = np.cumsum(valid) - 1  # the rows of X[valid]; -1 for rows left out
            window = np.where(valid[neighbours], position[neighbours], -1)[valid]
        lo, _ = self._range()
        if not hasattr(self, "textures_"):
            self.textures_, self.next_label_ = {}, 0
        self.labels_ = np.full(len(X), UNLABELLED)
        if valid.sum() < max(self.min_points, lo, 1):
            self.status_, self.n_clusters_ = NOT_ENOUGH_DATA, 0
            self.cluster_centers_ = np.zeros((0, X.shape[1]))
            self.cluster_labels_ = self.cluster_radius_ = np.zeros(0)
            self.n_features_in_ = X.shape[1]
            return self
        if not hasattr(self, "mean_"):
            weights = np.ones(X.shape[1]) if self.feature_weights is None else np.asarray(self.feature_weights, float)
            if weights.shape != (X.shape[1],):
                raise ValueError(f"feature_weights has shape {weights.shape}; X has {X.shape[1]} features")
            self.n_features_in_, self._weights = X.shape[1], weights
            self.mean_ = X[valid].mean(axis=0)
            scale = X[valid].std(axis=0)
            if self.feature_scale is not None:
                fixed = np.asarray(self.feature_scale, dtype=float)
                if fixed.shape != (X.shape[1],):
                    raise ValueError(f"feature_scale has shape {fixed.shape}; X has {X.shape[1]} features")
                scale = np.where(np.isfinite(fixed) & (fixed > 0), fixed, scale)
            self.scale_ = np.where(scale > 1e-12 * (np.abs(self.mean_) + 1e-300), scale, 1.0)
        Z = self.standardise(X[valid])
        with threadpool_limits(1):  # small problems: OpenMP threads only contend (10-50x slower on busy cores)
            self._kmeans_model = self._choose(Z, window)
        members = self._kmeans_model.predict(Z)
        self._set_model(Z, self._kmeans_model.cluster_centers_, members)
        self._match(np.bincount(members, minlength=self.n_clusters_))
        self.status_ = OK
        self.labels_[valid] = self.cluster_labels_[members]
        return self

    def partial_fit(self, X, y=None):
        """Update the current clusters with a batch of rows (streaming): MiniBatchKMeans.partial_fit.

        The number of clusters stays fixed, so labels never change meaning here; a texture that appears in
        the stream is found by the next :meth:`fit`. Without a model yet, this is :meth:`fit`.
        """
        if getattr(self, "status_", NOT_ENOUGH_DATA) != OK:
            return self.fit(X)
        X, valid = self._check(X)
        Z = self.standardise(X[valid])
        if len(Z) == 0:
            return self
        with threadpool_limits(1):
            self._kmeans_model.partial_fit(Z)
        centres = self._kmeans_model.cluster_centers_
        self.cluster_centers_ = centres / self._weights * self.scale_ + self.mean_
        self._centres = np.array(centres)
        for i, label in enumerate(self.cluster_labels_):
            self.textures_[int(label)] = (self._centres[i].copy(), float(self.cluster_radius_[i]))
        return self

    def transform(self, X) -> np.ndarray:
        """Distances (N, n_clusters_) of each row to each cluster centre (standardised units; NaN rows NaN)."""
        check_is_fitted(self, "status_")
        X, valid = self._check(X)
        out = np.full((len(X), self.n_clusters_), np.nan)
        if self.n_clusters_ and valid.any():
            out[valid] = cdist(self.standardise(X[valid]), self._centres)
        return out

    def predict(self, X) -> np.ndarray:
        """Texture label (N,) of each row: the label of the nearest cluster; :data:`UNLABELLED` for rows with
        NaN and for every row when the last fit had not enough data."""
        distance = self.transform(X)
        labels = np.full(len(distance), UNLABELLED)
        if self.n_clusters_:
            valid = np.isfinite(distance).all(axis=1)
            labels[valid] = self.cluster_labels_[np.argmin(distance[valid], axis=1)]
        return labels
