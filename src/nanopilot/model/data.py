"""Training data for NanobeamNN: random off-grid patterns simulated on the fly, or an HDF5 library.

Both sources give expected counts; fresh Poisson noise is drawn every epoch (seeded), so the network never sees
the same noisy frame twice.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ..physics import Instrument, Library, intensity_scale
from ..physics.forward import PUBLISHED_PEAK_COUNTS, _const, chi_donut, laue_matrix

#: The published parameter ranges (strain, omega deg, chi deg) and the thickness range of the growth plans (A).
DEFAULT_RANGES = {"strain": (-0.005, 0.005), "omega": (-0.05, 0.05), "chi": (-0.1, 0.1), "thickness": (60.0, 300.0)}


def sample_params(n: int, ranges: dict, outputs: int, rng: np.random.Generator) -> np.ndarray:
    """(n, outputs) parameters drawn uniformly over ``ranges`` (strain, omega deg, chi deg[, thickness A])."""
    names = ("strain", "omega", "chi", "thickness")[:outputs]
    lo = np.array([ranges[k][0] for k in names])
    hi = np.array([ranges[k][1] for k in names])
    return lo + (hi - lo) * rng.random((n, outputs))


def _noisy(expected: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Poisson counts (float32) from expected counts, seeded from ``rng``."""
    gen = torch.Generator(device=expected.device)
    gen.manual_seed(int(rng.integers(2**62)))
    return torch.poisson(expected, generator=gen)


def check_counts(counts) -> str | float | tuple[float, float]:
    """``counts`` of a training set: "published", a peak count level, or [low, high] peak counts drawn
    log-uniformly per frame (0 < low < high); a clear error otherwise."""
    if isinstance(counts, (list, tuple)):
        if len(counts) != 2 or not all(isinstance(c, (int, float)) for c in counts):
            raise ValueError(f"data.counts as a range must be [low, high] peak counts, got {counts!r}")
        low, high = float(counts[0]), float(counts[1])
        if not (0 < low < high < math.inf):
            raise ValueError(f"data.counts range needs 0 < low < high (peak counts), got {counts!r}")
        return low, high
    if counts == "published" or (isinstance(counts, (int, float)) and 0 < counts < math.inf):
        return counts
    raise ValueError(f"data.counts must be 'published', a positive peak count level or [low, high], got {counts!r}")


@dataclasses.dataclass(frozen=True)
class Background:
    """A smooth background added to a share of the training frames before their Poisson noise.

    fraction : share of frames (0-1) that get one.
    max_ratio : its mean level (counts/pixel) is drawn uniformly in [0, max_ratio] times the frame's peak count
        level (0.2 counts/pixel at the published 7 counts is a ratio of 0.029).
    gradient : a plane across the ROI, the level times 1 + gx u + gy v (u, v in [-1, 1] over columns and rows,
        gx and gy uniform in [-gradient, gradient]; gradient <= 1 keeps it non-negative).
    """

    fraction: float = 0.5
    max_ratio: float = 0.04
    gradient: float = 0.5

    def __post_init__(self):
        if not (0 <= self.fraction <= 1 and self.max_ratio >= 0 and 0 <= self.gradient <= 1):
            raise ValueError(f"data.background needs 0 <= fraction <= 1, max_ratio >= 0 and 0 <= gradient <= 1, "
                             f"got {dataclasses.asdict(self)}")

    def draw(self, peaks: torch.Tensor, shape: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
        """(n, H, W) float32 background counts/pixel for frames of peak count levels ``peaks`` (n,)."""
        n = len(peaks)
        level = rng.random(n) * self.max_ratio * (rng.random(n) < self.fraction)
        gx, gy = (self.gradient * (2 * rng.random((2, n)) - 1))
        v, u = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
        plane = 1 + gx[:, None, None] * u + gy[:, None, None] * v
        out = torch.as_tensor((level[:, None, None] * plane).astype(np.float32), device=peaks.device)
        return out * peaks.float()[:, None, None]


class SimulatedSource:
    """Random off-grid film states rendered with the separable forward model each time they are asked for.

    ``ranges``: {name: (low, high)}; ``outputs`` 3 or 4 (thickness is drawn too when 4, else the instrument's);
    ``counts`` as in :func:`~nanopilot.physics.simulate` or a [low, high] range of peak counts drawn
    log-uniformly per frame; ``background``: a :class:`Background` (None: none); ``kernel`` as in
    :func:`~nanopilot.physics.simulate`. ``reuse`` r > 1 draws n / r
    (strain, omega[, thickness]) states and n / r chi values and pairs each with r random partners: every
    parameter is still random and off-grid, the patterns are exactly :func:`~nanopilot.physics.simulate`'s,
    and a batch costs about half as much to render.
    """

    def __init__(self, instrument: Instrument, ranges: dict, outputs: int, *, counts="published", kernel="box",
                 reuse: int = 4, device="cpu", background: Background | None = None):
        self.instrument, self.ranges, self.outputs = instrument, ranges, outputs
        self.counts, self.kernel, self.reuse = check_counts(counts), kernel, max(1, int(reuse))
        self.background = background
        self.unit = intensity_scale(instrument, 1.0)  # raw formula units -> counts of a pattern peaking at 1
        self.device = torch.device(device)
        self.donut = _const(instrument, "donut", self.device).float()

    def expected(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` expected-count images (n, H, W) float32 and their (n, outputs) float64 parameters."""
        m = -(-n // self.reuse)
        dev = self.device
        params = torch.as_tensor(sample_params(m, self.ranges, self.outputs, rng), device=dev)
        chi = torch.as_tensor(sample_params(m, self.ranges, 3, rng)[:, 2], device=dev)
        a_index = torch.as_tensor(np.tile(np.arange(m), self.reuse)[:n], device=dev)
        b_index = torch.as_tensor(np.concatenate([rng.permutation(m) for _ in range(self.reuse)])[:n], device=dev)
        thickness = params[:, 3] if self.outputs == 4 else torch.full((m,), self.instrument.thickness,
                                                                      dtype=torch.float64, device=dev)
        a = laue_matrix(params[:, 0], torch.deg2rad(params[:, 1]), thickness, self.instrument, self.kernel)
        b_m = chi_donut(torch.deg2rad(chi), self.instrument, self.kernel, self.donut)
        images = torch.matmul(b_m[b_index], (a.float() * self.unit).transpose(1, 2)[a_index])
        peaks = self._peaks(n, rng).to(dev)
        images = images * peaks[:, None, None]
        if self.background is not None:
            images = images + self.background.draw(peaks, tuple(images.shape[1:]), rng)
        out = params[a_index].clone()
        out[:, 2] = chi[b_index]
        return images, out

    def _peaks(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        """(n,) float32 peak count level of each frame (one level, or log-uniform over the counts range)."""
        if isinstance(self.counts, tuple):
            low, high = np.log(self.counts)
            return torch.as_tensor(np.exp(low + (high - low) * rng.random(n)), dtype=torch.float32)
        level = PUBLISHED_PEAK_COUNTS if self.counts == "published" else float(self.counts)
        return torch.full((n,), level, dtype=torch.float32)

    def batch(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` noisy frames (n, H, W) float32 counts and their (n, outputs) float64 parameters."""
        images, params = self.expected(n, rng)
        return _noisy(images, rng), params

    def epoch(self, n: int, batch_size: int, rng: np.random.Generator):
        """Yield ``ceil(n / batch_size)`` fresh batches (frames, params)."""
        for start in range(0, n, batch_size):
            yield self.batch(min(batch_size, n - start), rng)


class LibrarySource:
    """Patterns of an HDF5 library (read into memory once), split into train / validation indices.

    ``val_fraction`` of the patterns (a seeded random choice) are held out; :meth:`epoch` shuffles the rest and
    draws fresh Poisson noise. ``outputs`` 4 needs a library with a thickness axis.
    """

    def __init__(self, path, instrument: Instrument, outputs: int, *, val_fraction: float, seed: int):
        with Library.load(path, instrument) as lib:
            if outputs == 4 and lib.grid.thickness is None:
                raise ValueError(f"library {path} has no thickness axis; a 4-output model needs one")
            scale = intensity_scale(instrument, "published") if lib.counts is None else 1.0
            self.images = torch.as_tensor(np.asarray(lib.images[()], dtype=np.float32) * scale)
            self.params = torch.as_tensor(lib.params[:, :outputs])
            self.ranges = {name: (axis["start"], axis["stop"]) for name, axis in lib.grid.to_dict().items()}
            self.counts, self.kernel = lib.counts if lib.counts is not None else "published", lib.kernel
        order = np.random.default_rng(seed).permutation(len(self.images))
        n_val = max(1, int(round(val_fraction * len(order))))
        self.val_index, self.train_index = np.sort(order[:n_val]), order[n_val:]
        self.instrument, self.outputs = instrument, outputs

    def validation(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out patterns with one (seeded) draw of noise."""
        idx = torch.as_tensor(self.val_index)
        return _noisy(self.images[idx], rng), self.params[idx]

    def epoch(self, n: int | None, batch_size: int, rng: np.random.Generator):
        """Yield shuffled training batches (frames with fresh noise, params); ``n`` None = all of them."""
        order = rng.permutation(self.train_index)[: n or len(self.train_index)]
        for start in range(0, len(order), batch_size):
            idx = torch.as_tensor(order[start:start + batch_size])
            yield _noisy(self.images[idx], rng), self.params[idx]
