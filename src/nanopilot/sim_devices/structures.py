"""Structure families: seeded test scenes of kinds the steering was not designed on (issue 21).

Every family is a :class:`~.scene_base.Scene` (``make_scene(name, seed)``, ``make_beamline(name, seed=...)``)
whose fields are a smooth random background (:class:`Structure`) plus the family's features. Positions in um,
strain dimensionless, tilts in deg, thickness in angstrom; with their default parameters the fields stay inside
the training ranges (strain +-0.005, omega +-0.05 deg, chi +-0.1 deg) over the field of view.

``inclusions`` :class:`InclusionsScene`, sharp-rimmed elliptical inclusions with a strained rim.
``walls``      :class:`WallsScene`, domains separated by curved walls that branch at triple junctions.
``stripes``    :class:`StripesScene`, two-state stripe domains whose period changes across the field.
``gradient``   :class:`GradientScene`, smooth gradients with a few point defects.
``crack``      :class:`CrackScene`, curved lines across which both tilts jump, with relaxed strain beside them.
``mixture``    :class:`MixtureScene`, a stripe patch, an inclusion, a crack and defects on a gradient.

Labels mark the regions the walls, rims and cracks separate (a defect's core is a region of its own); with
:meth:`~.scene_base.Scene.point_features` they give the features :func:`~.truth.feature_mask` marks. Develop
and tune on :data:`TUNING_SEEDS`; report on :data:`REPORTING_SEEDS` only.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from .scene_base import Scene, _sigmoid, _smooth_field, _smooth_modes

#: Seeds to develop and tune samplers on (SLADS's training images included).
TUNING_SEEDS = tuple(range(10))
#: Seeds to report figures on, never tuned on (benchmarks/steering.py).
REPORTING_SEEDS = tuple(range(100, 105))


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


def _signs(rng, n):
    return rng.choice([-1.0, 1.0], n)


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


STRUCTURES: dict[str, type[Scene]] = {cls.name: cls for cls in (InclusionsScene, WallsScene, StripesScene,
                                                                GradientScene, CrackScene, MixtureScene)}
