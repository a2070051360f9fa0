"""Has a new texture appeared? ``texture_change(reference, current)`` between two maps of one sample.

The reference map's points are clustered (:class:`TextureClassifier`); a point of the current map is *novel*
when its distance to the nearest reference cluster (standardised by the reference) is beyond what the
reference's own points reach, and at least one of its neighbours on the map is novel too (a texture is a
region, not a lone noisy frame). A new texture is declared when novel points cover at least
``coverage_threshold`` of the current map, or when the current points of a known texture have moved
(centroid shift) by at least ``shift_threshold`` of that texture's radius.

The features here use plain centred windows (``edge_preserving=False``), unlike the labels of
:class:`~nanopilot.texture.TextureCallback`: for detection, a point whose window reaches into a new texture is
evidence of it, which makes a nucleus a few scan points across stand out (its rim is novel too). The
reference's k-means is likewise fitted without the classifier's test that clusters are regions of the map:
here it only models where the reference's points lie, and a finer split (e.g. the points along domain walls)
models that more tightly.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .classifier import NOT_ENOUGH_DATA, OK, TextureClassifier
from .features import TextureFeatures, neighbours, texture_features


@dataclasses.dataclass
class TextureChange:
    """The answer of :func:`texture_change`.

    Attributes
    ----------
    changed : bool
        A new texture appeared (``score >= 1``); always False when ``status`` is not ``"ok"``.
    score : float
        ``max(new_coverage / coverage_threshold, max_shift / shift_threshold)``; >= 1 means changed.
    new_coverage : float
        Fraction (0-1) of the current map's valid points that are novel.
    max_shift : float
        Largest centroid shift of a reference texture, in units of its radius.
    novel : array (N,) of bool
        Novel points of the current map, in its order (``seq_num``).
    seq_num : array (N,)
        Raw seq_num of the current map's points.
    status : str
        ``"ok"`` or ``"not_enough_data"`` (too few valid points in either map).
    reason : str
        One line for a person (and for a plan's decision record).
    """

    changed: bool
    score: float
    new_coverage: float
    max_shift: float
    novel: np.ndarray
    seq_num: np.ndarray
    status: str
    reason: str


def _features(run, **kwargs) -> TextureFeatures:
    return run if isinstance(run, TextureFeatures) else texture_features(run, **kwargs)


def _positions(run, n: int) -> np.ndarray:
    if isinstance(run, TextureFeatures) or not run.motors:
        return np.arange(n, dtype=float)[:, None]
    points = run.scattered()
    return np.column_stack([points[m] for m in run.motors[::-1][:2]])


def texture_change(reference, current, *, coverage_threshold: float = 0.01, shift_threshold: float = 1.0,
                   novelty_quantile: float = 0.99, novelty_factor: float = 1.5, n_neighbours: int = 8,
                   classifier: TextureClassifier | None = None, **feature_kwargs) -> TextureChange:
    """Score whether a new texture appeared in ``current`` relative to ``reference``.

    Parameters
    ----------
    reference, current : nanopilot.callbacks.RunMap or TextureFeatures
        Two maps of the same sample region (e.g. quick maps at successive temperatures), analysed with the
        same estimator and the same ``frame_features``.
    coverage_threshold : float
        Fraction (0-1) of novel points that declares a new texture.
    shift_threshold : float
        Centroid shift of a reference texture (in units of its radius) that declares a change.
    novelty_quantile, novelty_factor : float
        A point is novel beyond ``novelty_factor`` times the ``novelty_quantile`` quantile of the reference
        points' distances to their clusters.
    n_neighbours : int
        Neighbourhood of the feature statistics and of the "novel neighbour" rule.
    classifier : TextureClassifier, optional
        Unfitted classifier to cluster the reference with (default ``TextureClassifier()``).
    **feature_kwargs
        Passed to :func:`texture_features` (default here ``edge_preserving=False``, see the module docstring).

    Returns
    -------
    TextureChange

    Notes
    -----
    The false-alarm rate of the defaults, measured by ``benchmarks/texture.py`` on noisy maps of an unchanged
    sample, is printed there.
    """
    feature_kwargs = {"edge_preserving": False, **feature_kwargs}
    ref = _features(reference, n_neighbours=n_neighbours, **feature_kwargs)
    cur = _features(current, n_neighbours=n_neighbours, **feature_kwargs)
    novel = np.zeros(len(cur), bool)
    if not (ref.X.shape[1] and cur.X.shape[1]):  # e.g. every frame of a map flagged
        return TextureChange(False, 0.0, 0.0, 0.0, novel, cur.seq_num, NOT_ENOUGH_DATA,
                             "not enough data: a map has no valid point (every frame flagged or no estimates)")
    if ref.names != cur.names:
        raise ValueError(f"the maps have different features ({len(ref.names)} vs {len(cur.names)} columns): "
                         "analyse both with the same estimator and frame_features")
    model = classifier if classifier is not None else TextureClassifier()
    model.set_params(feature_weights=ref.weights, feature_scale=ref.scale).fit(ref.X)
    valid = np.isfinite(cur.X).all(axis=1) if cur.X.shape[1] else np.zeros(len(cur), bool)
    if model.status_ != OK or valid.sum() < model.min_points:
        return TextureChange(False, 0.0, 0.0, 0.0, novel, cur.seq_num, NOT_ENOUGH_DATA,
                             f"not enough data: {int(valid.sum())} valid current points, reference model "
                             f"{model.status_} (need {model.min_points} valid points in each map)")
    ref_distance = np.nanmin(model.transform(ref.X), axis=1)
    limit = novelty_factor * np.nanquantile(ref_distance, novelty_quantile)
    distance = model.transform(cur.X)
    nearest = np.argmin(np.where(np.isfinite(distance), distance, np.inf), axis=1)
    far = valid & (np.nanmin(np.where(valid[:, None], distance, np.inf), axis=1) > limit)
    if far.any():
        index = cur.neighbours if cur.neighbours is not None else neighbours(_positions(current, len(cur)),
                                                                             n_neighbours)
        novel = far & far[index[:, 1:]].any(axis=1)
    new_coverage = float(novel.sum() / valid.sum())
    shifts = []
    Z, centres = model.standardise(cur.X), model.standardise(model.cluster_centers_)
    for i in range(model.n_clusters_):
        members = valid & ~far & (nearest == i)
        if members.sum() >= 5:  # a centroid of fewer points is mostly noise
            radius = max(model.cluster_radius_[i], 1e-12)
            shifts.append(float(np.linalg.norm(Z[members].mean(axis=0) - centres[i]) / radius))
    max_shift = float(max(shifts, default=0.0))
    score = max(new_coverage / coverage_threshold, max_shift / shift_threshold)
    changed = bool(score >= 1.0)
    reason = (f"{'new texture' if changed else 'no new texture'}: {100 * new_coverage:.1f}% novel points "
              f"(threshold {100 * coverage_threshold:.1f}%), largest centroid shift {max_shift:.2f} radii "
              f"(threshold {shift_threshold:.2f}), {model.n_clusters_} reference texture(s)")
    return TextureChange(changed, float(score), new_coverage, max_shift, novel, cur.seq_num, OK, reason)
