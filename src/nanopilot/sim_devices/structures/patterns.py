"""Families without walls between regions: stripes of varying period, gradients with point defects."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from ..scene_base import _smooth_field, _smooth_modes
from .base import Structure, _signs


@dataclasses.dataclass(frozen=True)
class StripesScene(Structure):
    """Two-state stripe domains whose period grows linearly across the field, gently bent.

    Parameters
    ----------
    min_period, max_period : float
        Period (um) at the two ends of the field's diagonal, along a stripe normal the seed draws (which end is
        the fine one too); constant beyond.
    wall_width : float
        Width of the walls between stripes (um): the state is tanh(distance from the wall / wall_width).
    strain_split, omega_split, chi_split : float
        The two states are +- these (dimensionless, deg, deg).
    bend : float
        Amplitude (um) of a smooth displacement (correlation length 1.5 um) along the normal that bends stripes.

    Labels: 1 and 2 for the two states (0 is kept for no stripes, as in a mixture).
    """

    name: ClassVar[str] = "stripes"
    n_labels: ClassVar[int] = 3
    min_period: float = 0.45
    max_period: float = 1.2
    wall_width: float = 0.02
    strain_split: float = 0.002
    omega_split: float = 0.015
    chi_split: float = 0.02
    bend: float = 0.15

    def _draw_features(self, rng):
        if not 0 < self.min_period <= self.max_period or not self.wall_width > 0 or self.bend < 0:
            raise ValueError("need 0 < min_period <= max_period (um), wall_width > 0 (um) and bend >= 0 (um)")
        self._set(normal_=rng.uniform(0, 2 * np.pi), stripe_phase_=rng.uniform(0, 2 * np.pi),
                  bend_modes_=_smooth_modes(rng, 1.5))

    def _wave(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """sin of the stripe phase and the local period (um) at flat positions."""
        length = self.field_of_view * np.sqrt(2)
        s = x * np.cos(self.normal_) + y * np.sin(self.normal_) + self.bend * _smooth_field(x, y, self.bend_modes_)
        t = np.clip(s / length + 0.5, 0, 1)
        p0, p1 = self.min_period, self.max_period
        period = p0 + (p1 - p0) * t
        if p1 - p0 > 1e-9 * p0:
            phase = 2 * np.pi * length / (p1 - p0) * np.log(period / p0)
        else:
            phase = 2 * np.pi * length * t / p0
        phase = phase + 2 * np.pi * (s - length * (t - 0.5)) / period  # constant period beyond the diagonal
        return np.sin(phase + self.stripe_phase_), period

    def offsets(self, x, y):
        wave, period = self._wave(x, y)
        state = np.tanh(wave * period / (2 * np.pi * self.wall_width))
        return state[:, None] * np.array([self.strain_split, self.omega_split, self.chi_split])

    def regions(self, x, y):
        return np.where(self._wave(x, y)[0] >= 0, 1, 2)


@dataclasses.dataclass(frozen=True)
class GradientScene(Structure):
    """Smooth gradients in all three fields with a few point defects (dilation centres).

    Parameters
    ----------
    gradient_strain, gradient_omega, gradient_chi : float
        Change across the field of view (dimensionless, deg, deg) of a linear gradient, each in a direction the
        seed draws, on top of the background.
    n_defects : int
        Number of point defects, uniform over the central 90% of the field of view.
    defect_radius : float
        Gaussian radius of a defect's field (um).
    defect_strain, defect_tilt : float
        Peak strain (sign drawn) and peak radial tilt (deg) of a defect.

    Labels: k + 1 within twice ``defect_radius`` of defect k (its core, where its field is above 13% of its peak),
    else 0.
    """

    name: ClassVar[str] = "gradient"
    gradient_strain: float = 0.003
    gradient_omega: float = 0.04
    gradient_chi: float = 0.08
    n_defects: int = 4
    defect_radius: float = 0.07
    defect_strain: float = 0.0012
    defect_tilt: float = 0.012

    @property
    def n_labels(self):
        return self.n_defects + 1

    def _draw_features(self, rng):
        if self.n_defects < 0 or not self.defect_radius > 0:
            raise ValueError("need n_defects >= 0 and defect_radius > 0 (um)")
        n = self.n_defects
        self._set(gradient_angles_=rng.uniform(0, 2 * np.pi, 3),
                  defects_=rng.uniform(-0.45, 0.45, (n, 2)) * self.field_of_view,
                  defect_signs_=_signs(rng, n))

    def offsets(self, x, y):
        out = np.empty((len(x), 3))
        sizes = (self.gradient_strain, self.gradient_omega, self.gradient_chi)
        for k, (size, angle) in enumerate(zip(sizes, self.gradient_angles_)):
            out[:, k] = size * (x * np.cos(angle) + y * np.sin(angle)) / self.field_of_view
        dx, dy = x[:, None] - self.defects_[:, 0], y[:, None] - self.defects_[:, 1]
        bump = np.exp(-(dx ** 2 + dy ** 2) / (2 * self.defect_radius ** 2))
        out[:, 0] += self.defect_strain * (bump * self.defect_signs_).sum(axis=1)
        out[:, 1] += self.defect_tilt * (bump * dx / self.defect_radius).sum(axis=1)
        out[:, 2] += self.defect_tilt * (bump * dy / self.defect_radius).sum(axis=1)
        return out

    def regions(self, x, y):
        labels = np.zeros(len(x), dtype=np.int64)
        for k, (cx, cy) in enumerate(self.defects_):
            labels[np.hypot(x - cx, y - cy) < 2 * self.defect_radius] = k + 1
        return labels

    def point_features(self):
        return self.defects_.copy()
