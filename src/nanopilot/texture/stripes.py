"""Periodic nanotextures in a map: dominant spatial frequency, orientation and coverage of stripes.

After Shao et al. (PNAS 2023): the map is cross-correlated with a complex sinusoidal test function of the
dominant period, here found as the peak of the map's windowed power spectrum, and the local amplitude of that
correlation (a Gaussian window one period wide) says where the stripes are.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.ndimage import gaussian_filter

#: Zero-padding factor of the spectrum (finer frequency steps for the period estimate).
PAD = 4


@dataclasses.dataclass
class Stripes:
    """Stripes found in a map.

    Attributes
    ----------
    found : bool
        Whether the spectrum has a peak ``min_snr`` times above its median (stripes present).
    period : float
        Stripe period (um; NaN when not found).
    orientation : float
        Direction of the stripes' wave vector, from +x toward +y (deg, in [0, 180); NaN when not found).
    coverage : float
        Fraction (0-1) of the measured points inside striped regions.
    snr : float
        Spectral peak power over the spectrum's median power.
    amplitude : array (ny, nx)
        Local stripe amplitude (the field's units; half the peak-to-peak of a sinusoid), NaN where unmeasured.
    striped : array (ny, nx) of bool
        Points inside striped regions.
    """

    found: bool
    period: float
    orientation: float
    coverage: float
    snr: float
    amplitude: np.ndarray
    striped: np.ndarray


def detect_stripes(grid, spacing: tuple[float, float], *, min_snr: float = 30.0, min_period: float | None = None,
                   max_period: float | None = None, threshold: float = 0.5) -> Stripes:
    """Find stripes in a gridded map.

    Parameters
    ----------
    grid : array (ny, nx)
        A field on a rectilinear scan grid (rows: y, the slow axis; columns: x), NaN where not measured.
    spacing : (dy, dx)
        Grid steps (um).
    min_snr : float
        The spectral peak must exceed the spectrum's median power this many times.
    min_period, max_period : float, optional
        Range of periods searched (um); default from two grid steps to half the map's extent.
    threshold : float
        A point is striped where the local amplitude exceeds ``threshold`` times the amplitude of the
        strongest stripes of the map (the 95th percentile of the local amplitude).

    Returns
    -------
    Stripes
    """
    grid = np.asarray(grid, dtype=float)
    if grid.ndim != 2:
        raise ValueError(f"stripe detection needs a 2-D grid (rows y, columns x), got shape {grid.shape}")
    dy, dx = (float(s) for s in spacing)
    if not (dy > 0 and dx > 0):
        raise ValueError(f"grid spacing must be positive (um), got {spacing!r}")
    measured = np.isfinite(grid)
    nothing = Stripes(False, np.nan, np.nan, 0.0, 0.0, np.where(measured, 0.0, np.nan), np.zeros(grid.shape, bool))
    if measured.sum() < 16 or min(grid.shape) < 4:  # too small to say
        return nothing
    field = np.where(measured, grid - grid[measured].mean(), 0.0)
    ny, nx = field.shape
    window = np.outer(np.hanning(ny), np.hanning(nx))
    power = np.abs(np.fft.fft2(field * window, s=(PAD * ny, PAD * nx))) ** 2
    fy = np.fft.fftfreq(PAD * ny, dy)[:, None]
    fx = np.fft.fftfreq(PAD * nx, dx)[None, :]
    f = np.hypot(fx, fy)
    lo = 1.0 / (max_period or 0.5 * max(ny * dy, nx * dx))
    hi = 1.0 / (min_period or 2.0 * max(dy, dx))
    band = (f >= lo) & (f <= hi)
    median = np.median(power[band]) if band.any() else 0.0
    peak = np.unravel_index(np.argmax(np.where(band, power, -1.0)), power.shape)
    snr = float(power[peak] / median) if median > 0 else 0.0
    if not band.any() or snr < min_snr:
        return dataclasses.replace(nothing, snr=snr)
    ky, kx = float(fy[peak[0], 0]), float(fx[0, peak[1]])
    period = 1.0 / np.hypot(kx, ky)
    orientation = float(np.degrees(np.arctan2(ky, kx)) % 180.0)
    y, x = np.meshgrid(np.arange(ny) * dy, np.arange(nx) * dx, indexing="ij")
    test = np.exp(-2j * np.pi * (kx * x + ky * y))  # the sinusoidal test function
    sigma = (period / dy, period / dx)  # one period, in grid steps
    weight = gaussian_filter(measured.astype(float), sigma)
    with np.errstate(invalid="ignore", divide="ignore"):
        local = (gaussian_filter((field * test).real, sigma) + 1j * gaussian_filter((field * test).imag, sigma))
        amplitude = 2.0 * np.abs(local) / weight
    amplitude = np.where(measured, amplitude, np.nan)
    striped = measured & (amplitude >= threshold * np.nanpercentile(amplitude, 95))
    return Stripes(True, float(period), orientation, float(striped.sum() / measured.sum()), snr, amplitude, striped)


def run_stripes(run, field: str = "strain", **kwargs) -> Stripes:
    """:func:`detect_stripes` on a field of a rectilinear 2-D scan (a :class:`nanopilot.callbacks.RunMap`).

    The grid spacing comes from the start document's extents (slow axis first, i.e. y then x).
    """
    if not run.shape or len(run.shape) != 2 or not run.extents:
        raise ValueError(f"run {run.uid[:8]} is not a 2-D rectilinear grid scan with extents")
    spacing = tuple(abs(hi - lo) / max(n - 1, 1) for (lo, hi), n in zip(run.extents, run.shape))
    return detect_stripes(run.gridded(field), spacing, **kwargs)
