"""Kinematic forward model of convergent-beam nanodiffraction (PHYSICS.md section 2).

The pupil sum is separable, so each pattern is two small matrix products::

    I = B(chi) @ M @ A(strain, omega, t)^T
    A[x, u] = Laue term * Qx kernel      (detector column x, pupil column u)
    B[y, v] = Qy kernel                  (detector row y, pupil row v)
    M[v, u] = donut mask of the zone plate minus central stop

The matrices are built in float64 (the box edges are exact) and multiplied in the requested dtype.
:func:`~.forward_numpy.simulate_box` is a numpy twin of the box-kernel path for the CPU (few torch dispatches per
pattern); the intensity convention is in :mod:`.intensity`, the setup's coordinates in :mod:`.geometry`.
"""

from __future__ import annotations

import math

import torch

from .forward_numpy import simulate_box  # noqa: F401 (re-exported: nanopilot.physics.forward.simulate_box)
from .geometry import _check_params, _const, _default_instrument
from .geometry import _geometry, donut_points  # noqa: F401 (re-exported, as before the split)
from .instrument import Instrument
from .intensity import intensity_scale
from .intensity import (KNOWN_GRID_PEAKS, PUBLISHED_PEAK_COUNTS, brightest_grid_peak,  # noqa: F401 (re-exported)
                        poisson, search_brightest_grid_peak)

KERNELS = ("box", "gauss")

#: The smooth kernel is exp(-q^2 / 2 sigma^2) with sigma = GAUSS_SIGMA_PER_PRECISION * box_precision:
#: the Gaussian of equal area to the box of half-width box_precision (sigma * sqrt(2 pi) = 2 * precision).
GAUSS_SIGMA_PER_PRECISION = math.sqrt(2 / math.pi)


def _kernel(q: torch.Tensor, precision: float, kernel: str) -> torch.Tensor:
    if kernel == "box":
        return (q.abs() < precision).to(q.dtype)
    sigma = GAUSS_SIGMA_PER_PRECISION * precision
    return torch.exp(-0.5 * (q / sigma) ** 2)


def _box_band(base: torch.Tensor, offsets: torch.Tensor, precision: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Where |base[n, r] - offsets[u]| < precision, for an evenly spaced ``offsets`` (U,).

    Returns ``(index, inside)``, both (N, R, band): the few pupil indices u around each row's box (clamped to
    the grid) and whether the box is 1 there. Exact: the same float64 expression as the dense kernel.
    """
    step = float(offsets[1] - offsets[0])
    ends = torch.stack([(base - precision - offsets[0]) / step, (base + precision - offsets[0]) / step])
    start = torch.floor(ends.amin(dim=0)).long() - 1
    raw = start[..., None] + torch.arange(int(math.ceil(2 * precision / abs(step))) + 3, device=base.device)
    index = raw.clamp(0, len(offsets) - 1)
    inside = (raw >= 0) & (raw < len(offsets)) & ((base[..., None] - offsets[index]).abs() < precision)
    return index, inside


def laue_matrix(strain, omega_rad, thickness, instrument: Instrument, kernel: str = "box") -> torch.Tensor:
    """A[n, x, u]: Laue (sinc^2) term times the Qx kernel. Inputs (N,) float64 tensors; output (N, W, U).

    With the box kernel only a narrow band of u per column is non-zero (2 * precision / pupil pitch in Qx):
    the Laue term is evaluated on that band alone and scattered into A.
    """
    g = instrument.g
    device = strain.device
    qz, o_qz = _const(instrument, "qz", device), _const(instrument, "o_qz", device)
    qx, o_qx = _const(instrument, "qx", device), _const(instrument, "o_qx", device)
    t = thickness[:, None, None]
    level = (g / (1 + strain))[:, None, None]
    base = qx[None, :] + (g * omega_rad)[:, None]  # (N, W)
    if kernel == "box":
        index, inside = _box_band(base, o_qx, instrument.box_precision)
        z = t * (qz[None, :, None] - level - o_qz[index]) / 2
        band = t * torch.sinc(z / math.pi) ** 2 * inside  # torch.sinc(x) = sin(pi x) / (pi x)
        return torch.zeros((*base.shape, len(o_qx)), dtype=band.dtype, device=device).scatter_add_(2, index, band)
    z = t * (qz[None, :, None] - level - o_qz[None, None, :]) / 2
    laue = t * torch.sinc(z / math.pi) ** 2
    return laue * _kernel(base[:, :, None] - o_qx[None, None, :], instrument.box_precision, kernel)


def chi_matrix(chi_rad, instrument: Instrument, kernel: str = "box") -> torch.Tensor:
    """B[n, y, v]: the Qy kernel. Input (N,) float64 tensor; output (N, H, V)."""
    qy, o_qy = _const(instrument, "qy", chi_rad.device), _const(instrument, "o_qy", chi_rad.device)
    base = qy[None, :] + (instrument.g * chi_rad)[:, None]  # (N, H)
    if kernel == "box":
        index, inside = _box_band(base, o_qy, instrument.box_precision)
        out = torch.zeros((*base.shape, len(o_qy)), dtype=torch.float64, device=chi_rad.device)
        return out.scatter_add_(2, index, inside.to(torch.float64))
    return _kernel(base[:, :, None] - o_qy[None, None, :], instrument.box_precision, kernel)


def chi_donut(chi_rad, instrument: Instrument, kernel: str, donut: torch.Tensor) -> torch.Tensor:
    """B(chi) @ M, (N, H, U) in the dtype of ``donut``. With the box kernel each detector row selects a run of
    consecutive pupil rows, so the product is a difference of two prefix sums of donut rows (exact: integers)."""
    if kernel != "box":
        return torch.matmul(chi_matrix(chi_rad, instrument, kernel).to(donut.dtype), donut)
    qy, o_qy = _const(instrument, "qy", chi_rad.device), _const(instrument, "o_qy", chi_rad.device)
    index, inside = _box_band(qy[None, :] + (instrument.g * chi_rad)[:, None], o_qy, instrument.box_precision)
    first = torch.gather(index, 2, inside.to(torch.uint8).argmax(dim=2, keepdim=True))[..., 0]
    stop = first + inside.sum(dim=2)  # an empty run (first == stop) gives a zero row
    prefix = torch.cat([torch.zeros_like(donut[:1]), torch.cumsum(donut, dim=0)])  # (V + 1, U)
    rows = torch.nn.functional.embedding  # a row gather, several times faster on the CPU than prefix[stop]
    return rows(stop, prefix) - rows(first, prefix)


def _as_params(params, instrument: Instrument, device) -> torch.Tensor:
    p = torch.as_tensor(params, device=device)
    if p.ndim == 1:
        p = p[None]
    _check_params(p)
    p = p.to(torch.float64)
    if p.shape[1] == 3:
        p = torch.cat([p, torch.full_like(p[:, :1], instrument.thickness)], dim=1)
    return p


def simulate(params, instrument: Instrument | None = None, *, kernel: str = "box", counts=None, device=None,
             dtype: torch.dtype = torch.float32, batch_size: int = 4096):
    """Diffraction patterns for a batch of film states.

    Parameters
    ----------
    params : array or tensor, (N, 3) or (N, 4)
        strain (dimensionless), omega (deg), chi (deg)[, thickness (angstrom); default ``instrument.thickness``].
    instrument : Instrument, optional
        The setup (default: the published one).
    kernel : {"box", "gauss"}
        "box" is the published formula exactly; "gauss" replaces both boxes by the equal-area Gaussian
        (sigma = sqrt(2/pi) * box_precision), making the image differentiable in all parameters.
    counts : None, "published" or float
        None: raw units of the formula. "published": scaled by the one global factor that makes the brightest
        pattern of the default 41^3 grid peak at 7 counts. A float c: the same convention with peak c
        (c = 70 is ten times brighter). No noise is added; see :func:`poisson`.
    device, dtype : torch device and float dtype of the output (float32 default; float64 for exactness).
    batch_size : patterns per matrix-product batch (bounds memory).

    Returns
    -------
    (N, H, W) images (rows = detector y, cols = detector x): a torch tensor if ``params`` is a tensor
    (autograd flows through with kernel="gauss"), else a numpy array.
    """
    instrument = instrument or _default_instrument()
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return_tensor = isinstance(params, torch.Tensor)
    if device is None:
        device = params.device if return_tensor else "cpu"
    p = _as_params(params, instrument, device)
    donut = _const(instrument, "donut", device).to(dtype)
    out = []
    for start in range(0, len(p), batch_size):
        q = p[start:start + batch_size]
        a = laue_matrix(q[:, 0], torch.deg2rad(q[:, 1]), q[:, 3], instrument, kernel).to(dtype)
        out.append(torch.matmul(chi_donut(torch.deg2rad(q[:, 2]), instrument, kernel, donut), a.transpose(1, 2)))
    images = torch.cat(out) if out else torch.zeros((0, *instrument.roi_shape), dtype=dtype, device=device)
    if counts is not None:
        images = images * intensity_scale(instrument, counts)
    return images if return_tensor else images.detach().cpu().numpy()
