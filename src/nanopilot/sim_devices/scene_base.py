"""The base of every ground-truth scene (:class:`Scene`), the sample's state and the smooth random fields scenes
draw. The scenes themselves are in :mod:`.scenes`, :mod:`.evolving_scenes` and :mod:`.structures`."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np


@dataclasses.dataclass
class SampleState:
    """What the environment has done to the sample.

    Attributes
    ----------
    temperature : float
        Sample temperature (K).
    deposited : float
        Film thickness deposited since the start (angstrom).
    coverage : float
        Fraction (0-1) of the field of view covered by a low-temperature texture (``cooling`` scene).
    """

    temperature: float = 295.0
    deposited: float = 0.0
    coverage: float = 0.0


def _smooth_modes(rng: np.random.Generator, correlation_length: float, n_modes: int = 24) -> np.ndarray:
    """Random Fourier modes (n, 3: kx, ky in rad/um, phase) of a smooth field with the given length (um)."""
    angle = rng.uniform(0, 2 * np.pi, n_modes)
    k = rng.normal(2 * np.pi / correlation_length, 0.25 * 2 * np.pi / correlation_length, n_modes)
    return np.stack([k * np.cos(angle), k * np.sin(angle), rng.uniform(0, 2 * np.pi, n_modes)], axis=1)


def _smooth_field(x: np.ndarray, y: np.ndarray, modes: np.ndarray) -> np.ndarray:
    """A smooth random field bounded in (-1, 1): tanh of a unit-variance sum of random cosines."""
    phase = x[:, None] * modes[:, 0] + y[:, None] * modes[:, 1] + modes[:, 2]
    return np.tanh(np.sqrt(2.0 / len(modes)) * np.cos(phase).sum(axis=1))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@dataclasses.dataclass(frozen=True)
class Scene:
    """Base class: a named, seeded ground truth over the sample plane (positions in um).

    Subclasses define :meth:`fields` and :meth:`labels`; scenes that respond to temperature override
    :meth:`update`. ``field_of_view`` is the side (um) of the square region, centred on the origin, in which a
    scene places its features; the fields are defined over the whole plane.
    """

    name: ClassVar[str] = ""
    seed: int | None = None
    field_of_view: float = 4.0

    def __post_init__(self):
        if not self.field_of_view > 0:
            raise ValueError(f"field_of_view must be positive (um), got {self.field_of_view!r}")
        self._draw(np.random.default_rng(self.seed))

    def _set(self, **values):
        for key, value in values.items():
            object.__setattr__(self, key, value)

    def _draw(self, rng: np.random.Generator) -> None:
        """Make the scene's random draws (stored on the frozen instance with :meth:`_set`)."""

    def fields(self, x: np.ndarray, y: np.ndarray, state: SampleState) -> np.ndarray:
        """(N, 4) strain, omega (deg), chi (deg), thickness (angstrom) at flat position arrays x, y (um)."""
        raise NotImplementedError

    def labels(self, x: np.ndarray, y: np.ndarray, state: SampleState) -> np.ndarray:
        """(N,) integer ground-truth labels at flat position arrays x, y (um)."""
        raise NotImplementedError

    def update(self, state: SampleState, temperature: float) -> None:
        """Bring history-dependent state up to a new temperature (K); the default scene has none."""

    def point_features(self) -> np.ndarray:
        """(k, 2) x, y (um) of the scene's point features (defects), which its labels do not mark; none here."""
        return np.empty((0, 2))
