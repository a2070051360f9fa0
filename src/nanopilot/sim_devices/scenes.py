"""Ground-truth scenes: the film's strain, tilts and thickness over the sample plane.

A scene is a frozen set of parameters plus the random draws its seed makes; it maps sample-plane positions
(x, y in um) and the sample's state (temperature, deposited thickness, texture coverage) to the four film
parameters the forward model takes. Every scene keeps its fields inside the published training ranges
(strain +-0.005, omega +-0.05 deg, chi +-0.1 deg, thickness 60-300 angstrom) for its default parameters.

Scenes (``make_scene(name, seed, **parameters)``):

``published``  :class:`PublishedScene`, a sinusoidal strain wave with sigmoidal tilt steps.
``domains``    :class:`DomainsScene`, Voronoi structural domains separated by walls, plus point defects.
``cooling``    :class:`CoolingScene`, a stripe nanotexture that forms below a transition temperature, with hysteresis.
``growth``     :class:`GrowthScene`, a growing film, coherent up to a critical thickness, then relaxing.

and the structure families of :mod:`.structures` (``inclusions``, ``walls``, ``stripes``, ``gradient``,
``crack``, ``mixture``), made to test steering on kinds of structure it was not designed on. The base class,
:class:`~.scene_base.Scene`, is in :mod:`.scene_base`; the cooling and growth scenes in :mod:`.evolving_scenes`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from .evolving_scenes import CoolingScene, GrowthScene
from .scene_base import SampleState, Scene, _sigmoid
from .structures import STRUCTURES

__all__ = ["SCENES", "CoolingScene", "DomainsScene", "GrowthScene", "PublishedScene", "SampleState", "Scene",
           "make_scene"]


@dataclasses.dataclass(frozen=True)
class PublishedScene(Scene):
    """A sinusoidal strain wave with sigmoidal tilt steps, like the simulated scan of Luo et al. (2025).

    Parameters
    ----------
    strain_amplitude : float
        Amplitude of the strain wave (dimensionless).
    wavelength : float
        Period of the strain wave (um).
    wave_angle : float
        Direction of the wave vector from +x (deg).
    omega_step, chi_step : float
        Half-heights of the omega step along x and the chi step along y (deg): the tilt goes from -step to +step.
    step_width : float
        Width of the sigmoidal steps (um).
    thickness : float
        Film thickness (angstrom), uniform.

    The seed draws the wave's phase and the step positions (within the central half of the field of view).
    Labels: ``2 * (beyond the omega step) + (beyond the chi step)``, i.e. 0-3.
    """

    name: ClassVar[str] = "published"
    strain_amplitude: float = 0.003
    wavelength: float = 1.5
    wave_angle: float = 0.0
    omega_step: float = 0.03
    chi_step: float = 0.06
    step_width: float = 0.1
    thickness: float = 117.0

    def _draw(self, rng):
        quarter = self.field_of_view / 4
        self._set(phase_=rng.uniform(0, 2 * np.pi), omega_step_x_=rng.uniform(-quarter, quarter),
                  chi_step_y_=rng.uniform(-quarter, quarter))

    def fields(self, x, y, state):
        angle = np.deg2rad(self.wave_angle)
        along = x * np.cos(angle) + y * np.sin(angle)
        strain = self.strain_amplitude * np.sin(2 * np.pi * along / self.wavelength + self.phase_)
        omega = self.omega_step * (2 * _sigmoid((x - self.omega_step_x_) / self.step_width) - 1)
        chi = self.chi_step * (2 * _sigmoid((y - self.chi_step_y_) / self.step_width) - 1)
        return np.stack([strain, omega, chi, np.full_like(x, self.thickness)], axis=1)

    def labels(self, x, y, state):
        return 2 * (x > self.omega_step_x_).astype(np.int64) + (y > self.chi_step_y_)


@dataclasses.dataclass(frozen=True)
class DomainsScene(Scene):
    """Structural domains (a Voronoi tessellation) separated by strained walls, plus point defects.

    Parameters
    ----------
    n_domains : int
        Number of domains; their centres are drawn uniformly over the field of view.
    strain_spread, omega_spread, chi_spread : float
        Domain states: strains evenly spaced over +-strain_spread (shuffled), tilts uniform in
        +-omega_spread, +-chi_spread (deg).
    wall_width : float
        Half-width of the domain walls (um).
    wall_strain : float
        Extra strain at the centre of a wall.
    n_defects : int
        Number of point defects, drawn uniformly over the field of view.
    defect_radius : float
        Gaussian radius of a defect's field (um).
    defect_strain, defect_tilt : float
        Peak strain and peak radial tilt (deg) of a defect's dilation field.
    thickness : float
        Film thickness (angstrom), uniform.

    Labels: the domain index 0 .. n_domains - 1 (point defects do not change it).
    """

    name: ClassVar[str] = "domains"
    n_domains: int = 5
    strain_spread: float = 0.0025
    omega_spread: float = 0.03
    chi_spread: float = 0.06
    wall_width: float = 0.05
    wall_strain: float = 0.001
    n_defects: int = 6
    defect_radius: float = 0.08
    defect_strain: float = 0.0012
    defect_tilt: float = 0.015
    thickness: float = 117.0

    def _draw(self, rng):
        if self.n_domains < 1 or self.n_defects < 0:
            raise ValueError(f"need n_domains >= 1 and n_defects >= 0, got {self.n_domains}, {self.n_defects}")
        half = self.field_of_view / 2
        strains = np.linspace(-self.strain_spread, self.strain_spread, self.n_domains) if self.n_domains > 1 \
            else np.zeros(1)
        self._set(
            centres_=rng.uniform(-half, half, (self.n_domains, 2)),
            states_=np.stack([rng.permutation(strains),
                              rng.uniform(-self.omega_spread, self.omega_spread, self.n_domains),
                              rng.uniform(-self.chi_spread, self.chi_spread, self.n_domains)], axis=1),
            defects_=rng.uniform(-half, half, (self.n_defects, 2)),
        )

    def _distances(self, x, y):
        return np.hypot(x[:, None] - self.centres_[:, 0], y[:, None] - self.centres_[:, 1])

    def fields(self, x, y, state):
        distance = self._distances(x, y)
        order = np.argsort(distance, axis=1)
        out = np.empty((len(x), 4))
        out[:, :3] = self.states_[order[:, 0]]
        out[:, 3] = self.thickness
        if self.n_domains > 1:
            nearest = np.take_along_axis(distance, order[:, :2], axis=1)
            to_wall = 0.5 * (nearest[:, 1] - nearest[:, 0])
            out[:, 0] += self.wall_strain * np.exp(-(to_wall / self.wall_width) ** 2)
        dx = x[:, None] - self.defects_[:, 0]
        dy = y[:, None] - self.defects_[:, 1]
        bump = np.exp(-(dx ** 2 + dy ** 2) / (2 * self.defect_radius ** 2))
        out[:, 0] += self.defect_strain * bump.sum(axis=1)
        out[:, 1] += self.defect_tilt * (bump * dx / self.defect_radius).sum(axis=1)
        out[:, 2] += self.defect_tilt * (bump * dy / self.defect_radius).sum(axis=1)
        return out

    def labels(self, x, y, state):
        return np.argmin(self._distances(x, y), axis=1)

    def point_features(self):
        return self.defects_.copy()


SCENES: dict[str, type[Scene]] = {**{cls.name: cls for cls in (PublishedScene, DomainsScene, CoolingScene,
                                                                GrowthScene)}, **STRUCTURES}


def make_scene(name: str, seed: int | None = None, **parameters) -> Scene:
    """The scene called ``name`` (one of :data:`SCENES`), seeded, with any of its parameters overridden."""
    if name not in SCENES:
        raise ValueError(f"unknown scene {name!r}; choose one of {sorted(SCENES)}")
    cls = SCENES[name]
    allowed = sorted(f.name for f in dataclasses.fields(cls) if f.name != "seed")
    unknown = sorted(set(parameters) - set(allowed))
    if unknown:
        raise ValueError(f"scene {name!r} has no parameter(s) {unknown}; its parameters are {allowed}")
    return cls(seed=seed, **parameters)
