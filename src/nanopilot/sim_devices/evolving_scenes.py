"""Scenes the environment changes: :class:`CoolingScene` (a stripe nanotexture that forms on cooling, with
hysteresis) and :class:`GrowthScene` (a film that grows while the shutter is open, relaxing past a critical
thickness). Both read the sample's state (:class:`~.scene_base.SampleState`: temperature, deposited thickness,
texture coverage); ``make_scene`` and the other scenes are in :mod:`.scenes`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from .scene_base import Scene, _smooth_field, _smooth_modes

__all__ = ["CoolingScene", "GrowthScene"]


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
