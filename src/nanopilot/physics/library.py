"""Simulated pattern libraries: parameter grids rendered in batches and streamed to HDF5."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from .forward import KERNELS, _const, chi_matrix, intensity_scale, laue_matrix
from .instrument import Instrument

AXES = ("strain", "omega", "chi", "thickness")
UNITS = {"strain": "", "omega": "deg", "chi": "deg", "thickness": "angstrom"}


@dataclasses.dataclass(frozen=True)
class Axis:
    """Evenly spaced grid axis: ``n`` values from ``start`` to ``stop`` inclusive (units of the parameter)."""

    start: float
    stop: float
    n: int

    def __post_init__(self):
        if int(self.n) != self.n or self.n < 1:
            raise ValueError(f"grid axis needs n >= 1 points, got {self.n!r}")
        if self.n > 1 and not self.stop > self.start:
            raise ValueError(f"grid axis needs stop > start, got {self.start}..{self.stop}")

    @property
    def values(self) -> np.ndarray:
        return np.linspace(self.start, self.stop, int(self.n))

    @property
    def step(self) -> float:
        return (self.stop - self.start) / (self.n - 1) if self.n > 1 else 0.0


@dataclasses.dataclass(frozen=True)
class Grid:
    """A regular grid over strain, omega (deg), chi (deg) and optionally thickness (angstrom).

    Flat order (the order of :func:`iter_grid_patterns` and of library files) is C order over
    :attr:`order`: ``(thickness,) strain, omega, chi`` with chi fastest.
    """

    strain: Axis = Axis(-0.005, 0.005, 41)
    omega: Axis = Axis(-0.05, 0.05, 41)
    chi: Axis = Axis(-0.1, 0.1, 41)
    thickness: Axis | None = None

    @classmethod
    def default(cls) -> Grid:
        """The published 41 x 41 x 41 grid (PHYSICS.md section 4)."""
        return cls()

    @classmethod
    def parse(cls, spec: str) -> Grid:
        """Parse ``"strain=-0.005:0.005:41,omega=...,chi=...,thickness=60:300:25"``; omitted axes keep defaults."""
        axes = {}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            m = re.fullmatch(r"(\w+)=([-+0-9.eE]+):([-+0-9.eE]+):(\d+)", item)
            if not m or m.group(1) not in AXES:
                raise ValueError(f"bad grid item {item!r}: expected NAME=START:STOP:N with NAME in {AXES}")
            axes[m.group(1)] = Axis(float(m.group(2)), float(m.group(3)), int(m.group(4)))
        return dataclasses.replace(cls(), **axes)

    @property
    def order(self) -> tuple[str, ...]:
        return (("thickness",) if self.thickness else ()) + ("strain", "omega", "chi")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(getattr(self, name).n for name in self.order)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in AXES if getattr(self, name)}

    @classmethod
    def from_dict(cls, data: dict) -> Grid:
        return cls(**{name: Axis(**data[name]) for name in data})

    def params(self, instrument: Instrument | None = None) -> np.ndarray:
        """All grid points in flat order as (N, 4): strain, omega, chi, thickness."""
        thick = self.thickness.values if self.thickness else [(instrument or Instrument()).thickness]
        t, s, o, c = np.meshgrid(thick, self.strain.values, self.omega.values, self.chi.values, indexing="ij")
        return np.stack([s.ravel(), o.ravel(), c.ravel(), t.ravel()], axis=1)


def iter_grid_patterns(grid: Grid, instrument: Instrument | None = None, *, kernel: str = "box",
                       dtype: torch.dtype = torch.float32, device=None, patterns_per_batch: int = 4096,
                       progress: bool = False, desc: str = "library") -> Iterator[tuple[int, torch.Tensor]]:
    """Render a grid in flat order, yielding ``(start index, images (n, H, W) tensor)`` blocks (``desc``: the
    progress bar's label).

    Uses the grid's structure: B(chi) @ M is computed once for the chi axis and the Laue matrix once per
    (thickness, strain, omega) point, so each pattern costs one (H x U) @ (U x W) product.
    """
    instrument = instrument or Instrument()
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    device = device or "cpu"
    chi = torch.as_tensor(np.deg2rad(grid.chi.values), dtype=torch.float64, device=device)
    b_m = torch.matmul(chi_matrix(chi, instrument, kernel), _const(instrument, "donut", device)).to(dtype)
    outer = grid.params(instrument)[:: grid.chi.n]  # one row per (thickness, strain, omega)
    outer_t = torch.as_tensor(outer, dtype=torch.float64, device=device)
    per_batch = max(1, patterns_per_batch // grid.chi.n)
    bar = tqdm(total=grid.size, unit="pattern", desc=desc, disable=not progress)
    for first in range(0, len(outer), per_batch):
        q = outer_t[first:first + per_batch]
        a = laue_matrix(q[:, 0], torch.deg2rad(q[:, 1]), q[:, 3], instrument, kernel).to(dtype)
        images = torch.matmul(b_m[None], a.transpose(1, 2)[:, None])  # (P, n_chi, H, W)
        bar.update(images.shape[0] * images.shape[1])
        yield first * grid.chi.n, images.reshape(-1, *instrument.roi_shape)
    bar.close()


class Library:
    """A rendered library on disk (HDF5), read lazily.

    File layout: ``images`` (N, H, W) float32 expected counts (no noise), ``params`` (N, 4) float64
    strain, omega (deg), chi (deg), thickness (A), in the grid's flat order; attributes ``instrument``
    (JSON), ``fingerprint``, ``grid`` (JSON), ``order``, ``kernel``, ``counts`` (intensity convention),
    ``scale`` (raw units -> stored units) and ``nanopilot_version``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
            attrs = self._file.attrs
            self.instrument = Instrument.from_json(attrs["instrument"])
            self.grid = Grid.from_dict(json.loads(attrs["grid"]))
            self.kernel = str(attrs["kernel"])
            self.counts = json.loads(attrs["counts"])
            self.scale = float(attrs["scale"])
            self.images = self._file["images"]
            self.params = self._file["params"][()]
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"{self.path} is not a readable nanopilot library: {err}") from err

    @classmethod
    def load(cls, path: str | Path, instrument: Instrument | None = None) -> Library:
        """Open a library; with ``instrument`` given, refuse a file made for another setup."""
        lib = cls(path)
        if instrument is not None:
            instrument.require_same(lib.instrument, f"library {lib.path}")
        return lib

    @classmethod
    def generate(cls, path: str | Path, grid: Grid | None = None, instrument: Instrument | None = None, *,
                 kernel: str = "box", counts="published", progress: bool = True) -> Library:
        """Render ``grid`` and stream it to ``path`` in batches (memory stays bounded); returns the opened library.

        ``counts`` follows :func:`nanopilot.physics.simulate`: None stores raw formula units, "published"
        or a peak count level stores noiseless expected counts.
        """
        from .. import __version__

        grid = grid or Grid.default()
        instrument = instrument or Instrument()
        scale = 1.0 if counts is None else intensity_scale(instrument, counts)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        rows, cols = instrument.roi_shape
        with h5py.File(tmp, "w") as f:
            f.attrs.update(instrument=instrument.to_json(), fingerprint=instrument.fingerprint(),
                           grid=json.dumps(grid.to_dict()), order=json.dumps(grid.order), kernel=kernel,
                           counts=json.dumps(counts), scale=scale, nanopilot_version=__version__)
            f.create_dataset("params", data=grid.params(instrument))
            images = f.create_dataset("images", shape=(grid.size, rows, cols), dtype="f4",
                                      chunks=(min(grid.size, grid.chi.n), rows, cols))
            for start, block in iter_grid_patterns(grid, instrument, kernel=kernel, progress=progress):
                images[start:start + len(block)] = (block * scale).numpy()
        tmp.replace(path)
        return cls(path)

    def __len__(self) -> int:
        return self.images.shape[0]

    def iter_chunks(self, size: int = 8192) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, images (n, H, W) float32)`` blocks of at most ``size`` patterns."""
        for start in range(0, len(self), size):
            yield start, self.images[start:start + size]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        shape = " x ".join(f"{n} {name}" for name, n in zip(self.grid.order, self.grid.shape))
        return f"<Library {self.path.name}: {shape}, kernel={self.kernel}, counts={self.counts}>"
