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
:class:`~.scene_base.Scene`, is in :mod:`.scene_base`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from .scene_base import SampleState, Scene, _sigmoid, _smooth_field, _smooth_modes
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


@dataclasses.dataclass(frozen=True)
class CoolingScene(Scene):
    """Uniform above a transition; below it a stripe nanotexture of two strain states forms, with hysteresis.

    Parameters
    ----------
    transition_temperature : float
        On cooling, the texture starts to form below this temperature (K).
    hysteresis : float
        On warming, the texture disappears only above ``transition_temperature + hysteresis`` (K).
    full_coverage_undercooling : float
        Undercooling below the transition (K) at which the texture covers the whole field of view;
        coverage grows linearly with undercooling up to it.
    uniform_strain : float
        Strain of the uniform high-temperature state.
    strain_split : float
        The two stripe states have strain ``uniform_strain +- strain_split``.
    stripe_tilt : float
        The two stripe states have omega ``+- stripe_tilt`` (deg).
    stripe_period : float
        Period of the stripes (um).
    stripe_angle : float
        Direction of the stripe wave vector from +x (deg).
    n_nuclei : int
        The texture grows outward from this many nucleation sites (drawn by the seed).
    thickness : float
        Film thickness (angstrom), uniform.

    Labels: 0 where the film is untextured, 1 and 2 for the two stripe states.
    """

    name: ClassVar[str] = "cooling"
    transition_temperature: float = 260.0
    hysteresis: float = 8.0
    full_coverage_undercooling: float = 20.0
    uniform_strain: float = 0.001
    strain_split: float = 0.0025
    stripe_tilt: float = 0.01
    stripe_period: float = 0.3
    stripe_angle: float = 30.0
    n_nuclei: int = 3
    thickness: float = 117.0

    def _draw(self, rng):
        if self.hysteresis < 0 or not self.full_coverage_undercooling > 0 or self.n_nuclei < 1:
            raise ValueError("need hysteresis >= 0 K, full_coverage_undercooling > 0 K and n_nuclei >= 1")
        half = self.field_of_view / 2
        nuclei = rng.uniform(-half, half, (self.n_nuclei, 2))
        gx, gy = np.meshgrid(np.linspace(-half, half, 65), np.linspace(-half, half, 65))
        reach = np.hypot(gx.ravel()[:, None] - nuclei[:, 0], gy.ravel()[:, None] - nuclei[:, 1]).min(axis=1).max()
        self._set(nuclei_=nuclei, reach_=reach, stripe_phase_=rng.uniform(0, 2 * np.pi))

    def update(self, state, temperature):
        if temperature >= self.transition_temperature + self.hysteresis:
            state.coverage = 0.0
        elif temperature < self.transition_temperature:
            undercooled = (self.transition_temperature - temperature) / self.full_coverage_undercooling
            state.coverage = max(state.coverage, min(1.0, undercooled))

    def _textured(self, x, y, state):
        distance = np.hypot(x[:, None] - self.nuclei_[:, 0], y[:, None] - self.nuclei_[:, 1]).min(axis=1)
        return distance <= state.coverage * self.reach_

    def _stripes(self, x, y):
        angle = np.deg2rad(self.stripe_angle)
        along = x * np.cos(angle) + y * np.sin(angle)
        return np.sin(2 * np.pi * along / self.stripe_period + self.stripe_phase_)

    def fields(self, x, y, state):
        wave = np.tanh(3.0 * self._stripes(x, y)) * self._textured(x, y, state)
        return np.stack([self.uniform_strain + self.strain_split * wave, self.stripe_tilt * wave,
                         np.zeros_like(x), np.full_like(x, self.thickness)], axis=1)

    def labels(self, x, y, state):
        return np.where(self._textured(x, y, state), np.where(self._stripes(x, y) >= 0, 1, 2), 0)


@dataclasses.dataclass(frozen=True)
class GrowthScene(Scene):
    """A film that grows while the shutter is open: coherent up to a critical thickness, then relaxing.

    Parameters
    ----------
    initial_thickness : float
        Thickness before any deposition (angstrom).
    critical_thickness : float or None
        Mean critical thickness (angstrom); None draws it from the seed, uniform in 120-200.
    growth_rate : float or None
        Deposition rate (angstrom/s) the beamline's deposition source is set to; None draws it from the seed,
        uniform in 0.5-2.
    coherent_strain : float
        Epitaxial strain of the coherent film; relaxation takes it toward zero as ``h_c / t``.
    mosaic_omega, mosaic_chi : float
        Tilt mosaicity (deg) reached when fully relaxed; it grows as ``1 - h_c / t``.
    critical_spread : float
        Relative spatial variation of the critical thickness (relaxation starts in patches).
    roughness : float
        Relative spatial variation of the thickness.
    correlation_length : float
        Length scale of the mosaic, roughness and critical-thickness fields (um).

    Labels: 0 where the film is coherent, 1 where it has relaxed.
    """

    name: ClassVar[str] = "growth"
    initial_thickness: float = 62.0
    critical_thickness: float | None = None
    growth_rate: float | None = None
    coherent_strain: float = -0.004
    mosaic_omega: float = 0.04
    mosaic_chi: float = 0.08
    critical_spread: float = 0.1
    roughness: float = 0.02
    correlation_length: float = 0.4

    def _draw(self, rng):
        values = {"critical_thickness": rng.uniform(120.0, 200.0), "growth_rate": rng.uniform(0.5, 2.0)}
        for key, drawn in values.items():
            given = getattr(self, key)
            if given is not None and not given > 0:
                raise ValueError(f"{key} must be positive, got {given!r}")
            self._set(**{key: drawn if given is None else float(given)})
        if not self.initial_thickness > 0:
            raise ValueError(f"initial_thickness must be positive (angstrom), got {self.initial_thickness!r}")
        self._set(**{f"{name}_modes_": _smooth_modes(rng, self.correlation_length)
                     for name in ("critical", "roughness", "omega", "chi")})

    def _local(self, x, y, state):
        thickness = (self.initial_thickness + state.deposited) * (
            1 + self.roughness * _smooth_field(x, y, self.roughness_modes_))
        critical = self.critical_thickness * (1 + self.critical_spread * _smooth_field(x, y, self.critical_modes_))
        return thickness, critical

    def fields(self, x, y, state):
        thickness, critical = self._local(x, y, state)
        relaxed = np.clip(1 - critical / thickness, 0.0, 1.0)
        return np.stack([self.coherent_strain * (1 - relaxed),
                         self.mosaic_omega * relaxed * _smooth_field(x, y, self.omega_modes_),
                         self.mosaic_chi * relaxed * _smooth_field(x, y, self.chi_modes_),
                         thickness], axis=1)

    def labels(self, x, y, state):
        thickness, critical = self._local(x, y, state)
        return (thickness > critical).astype(np.int64)


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
