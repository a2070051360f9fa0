"""Reciprocal-space coordinates of a setup's detector pixels and pupil points, and the check of film-state
parameters: what the forward model (:mod:`.forward`) and its numpy twin (:mod:`.forward_numpy`) share."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from .instrument import Instrument


@functools.lru_cache(maxsize=8)
def _geometry(instrument: Instrument) -> dict[str, np.ndarray]:
    """Pixel and pupil reciprocal-space coordinates of a setup (float64 numpy, 1/angstrom)."""
    rows, cols = instrument.roi_shape
    k, theta, d, p = instrument.k, instrument.bragg_angle, instrument.detector_distance, instrument.pixel_size
    s = instrument.pupil_pitch
    x = np.arange(cols) - (cols - 1) / 2  # pixel offset from the ROI centre (unstrained 2 theta)
    y = np.arange(rows) - (rows - 1) / 2
    gamma = np.arcsin(x * p / d) + theta
    u = np.arange(instrument.pupil_size) - (instrument.pupil_size - 1) / 2
    radius = s * np.hypot(u[None, :], u[:, None])
    donut = (radius > instrument.theta_in) & (radius < instrument.theta_out)
    return {
        "qx": k * (math.cos(theta) - np.cos(gamma)),  # (W,)
        "qz": k * (np.sin(gamma) + math.sin(theta)),  # (W,)
        "qy": k * y * p / d,  # (H,)
        "o_qx": -u * s * k * math.sin(theta),  # (U,)
        "o_qz": u * s * k * math.cos(theta),  # (U,)
        "o_qy": u * s * k,  # (V,)
        "donut": donut.astype(np.float64),  # (V, U)
    }


@functools.lru_cache(maxsize=1)
def _default_instrument() -> Instrument:
    return Instrument()


def donut_points(instrument: Instrument | None = None) -> int:
    """Number of pupil grid points inside the zone-plate donut (6,392 for the default setup)."""
    return int(_geometry(instrument or Instrument())["donut"].sum())


def _const(instrument: Instrument, name: str, device) -> torch.Tensor:
    return torch.as_tensor(_geometry(instrument)[name], dtype=torch.float64, device=device)


def _check_params(p) -> None:
    """ValueError unless ``p`` (a 2-D numpy array or torch tensor) holds (N, 3) or (N, 4) finite film states in
    the physical range: strain, omega (deg), chi (deg)[, thickness (angstrom)]."""
    if p.ndim != 2 or p.shape[1] not in (3, 4):
        raise ValueError(f"params must have shape (N, 3) or (N, 4) = strain, omega (deg), chi (deg)[, thickness (A)]; "
                         f"got {tuple(p.shape)}")
    if not bool((abs(p) < math.inf).all()):
        raise ValueError("params contain NaN or inf")
    if bool((p[:, 0] <= -1).any()) or (p.shape[1] == 4 and bool((p[:, 3] <= 0).any())):
        raise ValueError("params out of physical range: strain must be > -1 and thickness > 0 angstrom")
