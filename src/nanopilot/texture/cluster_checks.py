"""The checks that k-means clusters are textures, used by :class:`~nanopilot.texture.classifier.TextureClassifier`'s
automatic choice of their number: pairwise separation of the clusters and their interior points on the map.
"""

from __future__ import annotations

import numpy as np


def separation(Z: np.ndarray, centres: np.ndarray, members: np.ndarray) -> float:
    """The smallest, over pairs of clusters, separation of their centres along the line joining them, in
    units of the pair's pooled standard deviation along that line (about 2.7 for the halves of one
    Gaussian blob, in any dimension)."""
    smallest = np.inf
    for i in range(len(centres)):
        for j in range(i + 1, len(centres)):
            gap = centres[j] - centres[i]
            distance = np.linalg.norm(gap)
            pair = (members == i) | (members == j)
            if distance == 0 or pair.sum() < 3:
                return 0.0
            t = (Z[pair] - centres[i]) @ (gap / distance)
            near = members[pair] == i
            pooled = np.sqrt((((t[near]) ** 2).sum() + ((t[~near] - distance) ** 2).sum()) / pair.sum())
            smallest = min(smallest, distance / max(pooled, 1e-300))
    return float(smallest)


def fewest_interior(members: np.ndarray, window: np.ndarray, k: int) -> int:
    """The fewest, over the k clusters, interior points: points whose window ``window`` (rows of
    ``members``, -1 outside it) holds only members of their own cluster."""
    inside = window >= 0
    labels = members[np.where(inside, window, 0)]
    interior = np.where(inside, labels == members[:, None], True).all(axis=1)
    return int(np.bincount(members[interior], minlength=k).min())
