"""The base of the structure families: a smooth random background plus the family's features."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from ..scene_base import Scene, _smooth_field, _smooth_modes


@dataclasses.dataclass(frozen=True)
class Structure(Scene):
    """Base of the families: a smooth background plus the family's features (:meth:`offsets`, :meth:`regions`).

    Parameters
    ----------
    background_strain, background_omega, background_chi : float
        Peak-to-peak size of the background (dimensionless, deg, deg): half of it a linear gradient across the
        field of view in a direction the seed draws, half a smooth random field.
    background_length : float
        Correlation length of the smooth random field (um).
    thickness : float
        Film thickness (angstrom), uniform.
    """

    background_strain: float = 0.0006
    background_omega: float = 0.008
    background_chi: float = 0.016
    background_length: float = 1.5
    thickness: float = 117.0
    #: One more than the largest label :meth:`regions` gives.
    n_labels: ClassVar[int] = 1

    def _draw(self, rng):
        self._set(background_modes_=[_smooth_modes(rng, self.background_length) for _ in range(3)],
                  background_angles_=rng.uniform(0, 2 * np.pi, 3))
        self._draw_features(rng)

    def _draw_features(self, rng: np.random.Generator) -> None:
        """The family's own random draws."""

    def background(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(N, 3) strain, omega, chi of the background at flat positions (um)."""
        out = np.empty((len(x), 3))
        sizes = (self.background_strain, self.background_omega, self.background_chi)
        for k, (size, modes, angle) in enumerate(zip(sizes, self.background_modes_, self.background_angles_)):
            along = (x * np.cos(angle) + y * np.sin(angle)) / self.field_of_view
            out[:, k] = size * (0.5 * along + 0.25 * _smooth_field(x, y, modes))
        return out

    def offsets(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(N, 3) strain, omega (deg), chi (deg) the features add to the background at flat positions (um)."""
        return np.zeros((len(x), 3))

    def regions(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(N,) labels 0 .. n_labels - 1 at flat positions (um)."""
        return np.zeros(len(x), dtype=np.int64)

    def fields(self, x, y, state):
        out = np.empty((len(x), 4))
        out[:, :3] = self.background(x, y) + self.offsets(x, y)
        out[:, 3] = self.thickness
        return out

    def labels(self, x, y, state):
        return self.regions(x, y)


def _signs(rng, n) -> np.ndarray:
    """Random signs (+-1.0) of shape n."""
    return rng.choice([-1.0, 1.0], n)
