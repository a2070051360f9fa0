"""The diffraction setup: energy, reflection, detector, zone plate and film.

Defaults are the published SrIrO3 (002) setup (Luo et al., Sci. Rep. 2025; PHYSICS.md section 3).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import yaml

#: h*c in keV * angstrom, as used by the published setup (lambda = 12.398 / E).
HC_KEV_ANGSTROM = 12.398

_UNITS = {
    "energy_kev": "keV",
    "lattice_c": "angstrom",
    "reflection_l": "",
    "detector_distance": "m",
    "pixel_size": "m",
    "roi_shape": "pixels (rows=y, cols=x)",
    "zone_plate_diameter": "m",
    "central_stop_diameter": "m",
    "focal_length": "m",
    "pupil_upsampling": "pupil points per detector pixel",
    "pupil_size": "pupil points per side",
    "thickness": "angstrom",
    "box_precision": "1/angstrom",
}


def from_fields(cls, data: dict):
    """``cls(**data)`` for a dataclass ``cls``; keys that are not its fields are a ValueError that names them and
    the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**data)


@dataclasses.dataclass(frozen=True)
class Instrument:
    """A frozen description of the nanodiffraction setup.

    Attributes (units)
    ------------------
    energy_kev : X-ray energy (keV).
    lattice_c : out-of-plane lattice parameter of the film (angstrom).
    reflection_l : order of the (00l) reflection.
    detector_distance : sample-detector distance (m).
    pixel_size : effective (binned) detector pixel (m).
    roi_shape : detector region of interest (rows = detector y, cols = detector x), centred on the
        unstrained Bragg angle.
    zone_plate_diameter, central_stop_diameter, focal_length : zone-plate optics (m).
    pupil_upsampling : pupil grid points per detector pixel (the pupil pitch is pixel / (up * D)).
    pupil_size : pupil grid points per side.
    thickness : default film thickness (angstrom), used when params carry no thickness column.
    box_precision : half-width of the box kernel in reciprocal space (1/angstrom).
    """

    energy_kev: float = 11.3
    lattice_c: float = 4.013
    reflection_l: int = 2
    detector_distance: float = 0.85
    pixel_size: float = 110e-6
    roi_shape: tuple[int, int] = (64, 64)
    zone_plate_diameter: float = 149e-6
    central_stop_diameter: float = 77e-6
    focal_length: float = 21.874e-3
    pupil_upsampling: int = 2
    pupil_size: int = 128
    thickness: float = 117.0
    box_precision: float = 5e-4

    def __post_init__(self):
        object.__setattr__(self, "roi_shape", tuple(int(v) for v in self.roi_shape))
        for name in ("energy_kev", "lattice_c", "detector_distance", "pixel_size", "zone_plate_diameter",
                     "focal_length", "thickness", "box_precision"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"Instrument.{name} must be a positive finite number ({_UNITS[name]}), got {value!r}")
        for name in ("reflection_l", "pupil_upsampling", "pupil_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Instrument.{name} must be a positive integer, got {value!r}")
        if len(self.roi_shape) != 2 or min(self.roi_shape) < 8:
            raise ValueError(f"Instrument.roi_shape must be (rows, cols) with both >= 8 pixels, got {self.roi_shape!r}")
        if not 0 <= self.central_stop_diameter < self.zone_plate_diameter:
            raise ValueError(
                f"Instrument.central_stop_diameter must be in [0, zone_plate_diameter={self.zone_plate_diameter}) m, "
                f"got {self.central_stop_diameter!r}")
        sin_bragg = self.wavelength * self.reflection_l / (2 * self.lattice_c)
        if sin_bragg >= 1:
            raise ValueError(
                f"Instrument.energy_kev={self.energy_kev} is too low for the (00{self.reflection_l}) reflection of "
                f"lattice_c={self.lattice_c} A: lambda*l/2c = {sin_bragg:.3f} >= 1")
        outer = self.theta_out / self.pupil_pitch
        if outer > self.pupil_size / 2:
            raise ValueError(
                f"Instrument.pupil_size={self.pupil_size} is too small: the zone-plate cone spans {2 * outer:.1f} "
                f"pupil points; use at least {math.ceil(2 * outer)}")

    # ----------------------------------------------------------------- derived quantities
    @property
    def wavelength(self) -> float:
        """X-ray wavelength (angstrom)."""
        return HC_KEV_ANGSTROM / self.energy_kev

    @property
    def k(self) -> float:
        """Wavenumber 2 pi / lambda (1/angstrom)."""
        return 2 * math.pi / self.wavelength

    @property
    def bragg_angle(self) -> float:
        """Bragg angle theta_B of the unstrained film (rad)."""
        return math.asin(self.wavelength * self.reflection_l / (2 * self.lattice_c))

    @property
    def g(self) -> float:
        """Reciprocal-lattice vector length 2 pi l / c of the unstrained film (1/angstrom)."""
        return 2 * math.pi * self.reflection_l / self.lattice_c

    @property
    def pupil_pitch(self) -> float:
        """Angular pitch of the pupil grid, pixel / (upsampling * D) (rad)."""
        return self.pixel_size / (self.pupil_upsampling * self.detector_distance)

    @property
    def theta_out(self) -> float:
        """Outer half-angle of the focused cone, d_ZP / 2f (rad)."""
        return self.zone_plate_diameter / (2 * self.focal_length)

    @property
    def theta_in(self) -> float:
        """Inner half-angle (central stop shadow), d_CS / 2f (rad)."""
        return self.central_stop_diameter / (2 * self.focal_length)

    @property
    def tilt_per_pixel(self) -> tuple[float, float]:
        """(chi, omega) in degrees that move the pattern by one pixel of the model along the rows (chi, detector y)
        and along the columns (omega, detector x), near the ROI's centre: G chi against Qy = K p y / D, and G omega
        against Qx ~ K sin(theta) p x / D (PHYSICS.md section 2). Negative: a larger tilt moves the pattern toward
        lower pixel indices. Omega also moves intensity within the donut, so its figure holds for a shift only."""
        step = self.k * self.pixel_size / (self.g * self.detector_distance)  # rad per pixel, before sin(theta)
        return -math.degrees(step), -math.degrees(step * math.sin(self.bragg_angle))

    @property
    def strain_per_pixel(self) -> float:
        """Strain that a shift of the whole pattern by one pixel of the model along the columns (detector x) reads
        as, near the ROI's centre: the shift moves the Laue term's centre by Qz ~ K cos(theta) p x / D, against
        G / (1 + strain) (PHYSICS.md section 2). Negative: a pattern moved toward higher x reads as less strain."""
        return -self.k * math.cos(self.bragg_angle) * self.pixel_size / (self.g * self.detector_distance)

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        """Plain-Python dict of the fields (JSON/YAML friendly)."""
        d = dataclasses.asdict(self)
        d["roi_shape"] = list(self.roi_shape)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> Instrument:
        """Build from a dict; unknown keys are an error that names them."""
        return from_fields(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Instrument:
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    @classmethod
    def from_yaml(cls, text: str) -> Instrument:
        return cls.from_dict(yaml.safe_load(text) or {})

    def save(self, path: str | Path) -> None:
        """Write to ``.json`` or ``.yaml``/``.yml`` by suffix."""
        path = Path(path)
        path.write_text(self.to_json() if path.suffix == ".json" else self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) -> Instrument:
        """Read a file written by :meth:`save` (JSON or YAML)."""
        path = Path(path)
        text = path.read_text()
        return cls.from_json(text) if path.suffix == ".json" else cls.from_yaml(text)

    def fingerprint(self) -> str:
        """Short stable hash (16 hex digits) of all fields; equal setups give equal fingerprints."""
        canonical = json.dumps({k: (float(v) if isinstance(v, float) else v) for k, v in self.to_dict().items()},
                               sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def differences(self, other: Instrument) -> dict[str, tuple]:
        """Fields whose values differ: ``{name: (self value, other value)}``."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}

    def require_same(self, other: Instrument, what: str) -> None:
        """Raise ValueError naming the differing fields if ``other`` is a different setup."""
        diff = self.differences(other)
        if diff:
            detail = ", ".join(f"{k}: {v[1]!r} (expected {v[0]!r})" for k, v in diff.items())
            raise ValueError(f"{what} was made for a different instrument; differing fields: {detail}")
