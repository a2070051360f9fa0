"""The mixture family: several families at once on one background."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from ..scene_base import _sigmoid
from .base import Structure
from .boundaries import CrackScene, InclusionsScene
from .patterns import GradientScene, StripesScene


@dataclasses.dataclass(frozen=True)
class MixtureScene(Structure):
    """Several families at once on one background: a patch of stripes, inclusions, cracks and point defects on
    a gradient, each drawn with its family's defaults from a seed this one draws, and scaled by ``contrast``.

    Parameters
    ----------
    n_inclusions, n_cracks, n_defects : int
        How many of each.
    patch_radius : float
        Radius (um) of the disc, centred in the central half of the field, that the stripes fill (rim sharpness
        0.01 um).
    contrast : float
        Factor on every family's offsets (keeps the sum inside the training ranges).

    Labels: one per combination of the families' labels (mixed radix, the gradient's defect cores first).
    """

    name: ClassVar[str] = "mixture"
    n_inclusions: int = 1
    n_cracks: int = 1
    n_defects: int = 3
    patch_radius: float = 1.0
    contrast: float = 0.55

    @property
    def n_labels(self):
        return int(np.prod([part.n_labels for part in self.parts_]))

    def _draw_features(self, rng):
        if not self.patch_radius > 0 or not self.contrast > 0:
            raise ValueError("need patch_radius > 0 (um) and contrast > 0")
        seeds = rng.integers(2 ** 32, size=4)
        quiet = {"field_of_view": self.field_of_view, "background_strain": 0.0, "background_omega": 0.0,
                 "background_chi": 0.0}
        self._set(parts_=(GradientScene(seed=int(seeds[0]), n_defects=self.n_defects, **quiet),
                          StripesScene(seed=int(seeds[1]), **quiet),
                          InclusionsScene(seed=int(seeds[2]), n_inclusions=self.n_inclusions, **quiet),
                          CrackScene(seed=int(seeds[3]), n_cracks=self.n_cracks, **quiet)),
                  patch_centre_=rng.uniform(-0.25, 0.25, 2) * self.field_of_view)

    def _patch(self, x, y) -> np.ndarray:
        return self.patch_radius - np.hypot(x - self.patch_centre_[0], y - self.patch_centre_[1])

    def offsets(self, x, y):
        gradient, stripes, inclusions, crack = (part.offsets(x, y) for part in self.parts_)
        stripes *= _sigmoid(self._patch(x, y) / 0.01)[:, None]
        return self.contrast * (gradient + stripes + inclusions + crack)

    def regions(self, x, y):
        labels = [part.regions(x, y) for part in self.parts_]
        labels[1] = np.where(self._patch(x, y) > 0, labels[1], 0)
        out, scale = np.zeros(len(x), dtype=np.int64), 1
        for part, label in zip(self.parts_, labels):
            out += scale * label
            scale *= part.n_labels
        return out

    def point_features(self):
        return self.parts_[0].point_features()
