"""Families with sharp boundaries: inclusions, curved and branching walls, cracks."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from ..scene_base import _sigmoid, _smooth_field, _smooth_modes
from .base import Structure, _signs


@dataclasses.dataclass(frozen=True)
class InclusionsScene(Structure):
    """Elliptical inclusions of another strain and tilt state, with sharp rims carrying a strained ring.

    Parameters
    ----------
    n_inclusions : int
        Number of inclusions; centres uniform over the central 80% of the field of view; a later one lies on top.
    min_radius, max_radius : float
        Range of the ellipses' mean radius (um), drawn uniformly; axes ratio uniform in 1 .. ``max_aspect``.
    rim_width : float
        Sharpness of the rim (um): the state changes as a sigmoid of (distance to the rim) / rim_width.
    strain_contrast, omega_contrast, chi_contrast : float
        Size of an inclusion's offset from the background (dimensionless, deg, deg): sign random, 0.5-1 times this.
    rim_strain, ring_width : float
        Extra strain on the rim, a Gaussian ring of standard deviation ``ring_width`` (um).

    Labels: 0 outside, k + 1 inside inclusion k (the topmost where they overlap).
    """

    name: ClassVar[str] = "inclusions"
    n_inclusions: int = 3
    min_radius: float = 0.25
    max_radius: float = 0.6
    max_aspect: float = 1.8
    rim_width: float = 0.01
    strain_contrast: float = 0.0025
    omega_contrast: float = 0.025
    chi_contrast: float = 0.05
    rim_strain: float = 0.0006
    ring_width: float = 0.04

    @property
    def n_labels(self):
        return self.n_inclusions + 1

    def _draw_features(self, rng):
        n = self.n_inclusions
        if n < 0 or not 0 < self.min_radius <= self.max_radius or self.max_aspect < 1 or not self.rim_width > 0:
            raise ValueError("need n_inclusions >= 0, 0 < min_radius <= max_radius (um), max_aspect >= 1 and "
                             "rim_width > 0 (um)")
        radius, aspect = rng.uniform(self.min_radius, self.max_radius, n), rng.uniform(1, self.max_aspect, n)
        contrast = np.array([self.strain_contrast, self.omega_contrast, self.chi_contrast])
        self._set(centres_=rng.uniform(-0.4, 0.4, (n, 2)) * self.field_of_view,
                  axes_=np.stack([radius * np.sqrt(aspect), radius / np.sqrt(aspect)], axis=1),
                  angles_=rng.uniform(0, np.pi, n),
                  states_=_signs(rng, (n, 3)) * rng.uniform(0.5, 1.0, (n, 3)) * contrast)

    def _rim_distances(self, x, y) -> np.ndarray:
        """(N, n) signed distance (um, first order; negative inside) to each inclusion's rim."""
        dx, dy = x[:, None] - self.centres_[:, 0], y[:, None] - self.centres_[:, 1]
        c, s = np.cos(self.angles_), np.sin(self.angles_)
        u, v = dx * c + dy * s, -dx * s + dy * c
        a, b = self.axes_[:, 0], self.axes_[:, 1]
        level = (u / a) ** 2 + (v / b) ** 2 - 1
        slope = 2 * np.hypot(u / a ** 2, v / b ** 2)
        return level / np.maximum(slope, 1e-12)

    def offsets(self, x, y):
        out = np.zeros((len(x), 3))
        for k, d in enumerate(self._rim_distances(x, y).T):
            inside = _sigmoid(-d / self.rim_width)[:, None]
            out = out * (1 - inside) + self.states_[k] * inside
            out[:, 0] += self.rim_strain * np.exp(-0.5 * (d / self.ring_width) ** 2)
        return out

    def regions(self, x, y):
        labels = np.zeros(len(x), dtype=np.int64)
        for k, d in enumerate(self._rim_distances(x, y).T):
            labels[d < 0] = k + 1
        return labels


@dataclasses.dataclass(frozen=True)
class WallsScene(Structure):
    """Domains of uniform state separated by curved walls that branch at triple junctions: a Voronoi tessellation
    seen through a smooth random displacement.

    Parameters
    ----------
    n_domains : int
        Number of domains (centres uniform over the field of view).
    warp, warp_length : float
        Amplitude (um) and correlation length (um) of the displacement that curves the walls.
    strain_spread, omega_spread, chi_spread : float
        Domain states uniform in +- these (dimensionless, deg, deg).
    wall_strain, wall_width : float
        Extra strain at a wall's centre, a Gaussian profile of half-width ``wall_width`` (um).

    Labels: the domain index 0 .. n_domains - 1.
    """

    name: ClassVar[str] = "walls"
    n_domains: int = 6
    warp: float = 0.35
    warp_length: float = 1.2
    strain_spread: float = 0.0025
    omega_spread: float = 0.03
    chi_spread: float = 0.06
    wall_strain: float = 0.0008
    wall_width: float = 0.04

    @property
    def n_labels(self):
        return self.n_domains

    def _draw_features(self, rng):
        if self.n_domains < 2 or self.warp < 0 or not self.warp_length > 0:
            raise ValueError("need n_domains >= 2, warp >= 0 (um) and warp_length > 0 (um)")
        half, n = self.field_of_view / 2, self.n_domains
        spreads = np.array([self.strain_spread, self.omega_spread, self.chi_spread])
        self._set(centres_=rng.uniform(-half, half, (n, 2)), states_=rng.uniform(-1, 1, (n, 3)) * spreads,
                  warp_modes_=[_smooth_modes(rng, self.warp_length) for _ in range(2)])

    def _distances(self, x, y):
        wx = x + self.warp * _smooth_field(x, y, self.warp_modes_[0])
        wy = y + self.warp * _smooth_field(x, y, self.warp_modes_[1])
        return np.hypot(wx[:, None] - self.centres_[:, 0], wy[:, None] - self.centres_[:, 1])

    def offsets(self, x, y):
        distance = self._distances(x, y)
        order = np.argsort(distance, axis=1)
        out = self.states_[order[:, 0]].copy()
        nearest = np.take_along_axis(distance, order[:, :2], axis=1)
        out[:, 0] += self.wall_strain * np.exp(-(0.5 * (nearest[:, 1] - nearest[:, 0]) / self.wall_width) ** 2)
        return out

    def regions(self, x, y):
        return np.argmin(self._distances(x, y), axis=1)


@dataclasses.dataclass(frozen=True)
class CrackScene(Structure):
    """Cracks: curved lines across the field on whose two sides both tilts differ; strain relaxes beside them.

    Parameters
    ----------
    n_cracks : int
        Number of cracks, each through a point uniform over the central 60% of the field of view, in a direction
        the seed draws, bent into a parabola of curvature uniform in +- ``curvature`` (1/um).
    omega_jump, chi_jump : float
        Size of the tilt jump across a crack (deg): sign random, 0.5-1 times this.
    relax_strain, relax_length : float
        Strain change on a crack, decaying exponentially with the distance from it over ``relax_length`` (um).

    Labels: bit k is the side of crack k (0 .. 2 ** n_cracks - 1).
    """

    name: ClassVar[str] = "crack"
    n_cracks: int = 2
    curvature: float = 0.15
    omega_jump: float = 0.02
    chi_jump: float = 0.04
    relax_strain: float = -0.0008
    relax_length: float = 0.1

    @property
    def n_labels(self):
        return 2 ** self.n_cracks

    def _draw_features(self, rng):
        if self.n_cracks < 0 or self.curvature < 0 or not self.relax_length > 0:
            raise ValueError("need n_cracks >= 0, curvature >= 0 (1/um) and relax_length > 0 (um)")
        n = self.n_cracks
        self._set(points_=rng.uniform(-0.3, 0.3, (n, 2)) * self.field_of_view,
                  directions_=rng.uniform(0, np.pi, n),
                  curvatures_=rng.uniform(-self.curvature, self.curvature, n),
                  jumps_=_signs(rng, (n, 2)) * rng.uniform(0.5, 1.0, (n, 2)) * [self.omega_jump, self.chi_jump])

    def _sides(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """(N, n) signed offset from each crack along its normal (um, first order) and its distance (um)."""
        dx, dy = x[:, None] - self.points_[:, 0], y[:, None] - self.points_[:, 1]
        c, s = np.cos(self.directions_), np.sin(self.directions_)
        u, v = dx * c + dy * s, -dx * s + dy * c
        offset = v - 0.5 * self.curvatures_ * u ** 2
        return offset, np.abs(offset) / np.sqrt(1 + (self.curvatures_ * u) ** 2)

    def offsets(self, x, y):
        offset, distance = self._sides(x, y)
        out = np.zeros((len(x), 3))
        out[:, 1:] = 0.5 * np.sign(offset) @ self.jumps_
        out[:, 0] = self.relax_strain * np.exp(-distance / self.relax_length).sum(axis=1)
        return out

    def regions(self, x, y):
        return ((self._sides(x, y)[0] > 0) * (2 ** np.arange(self.n_cracks))).sum(axis=1).astype(np.int64)
