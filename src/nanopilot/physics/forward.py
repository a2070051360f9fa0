"""Kinematic forward model of convergent-beam nanodiffraction (PHYSICS.md section 2).

The pupil sum is separable, so each pattern is two small matrix products::

    I = B(chi) @ M @ A(strain, omega, t)^T
    A[x, u] = Laue term * Qx kernel      (detector column x, pupil column u)
    B[y, v] = Qy kernel                  (detector row y, pupil row v)
    M[v, u] = donut mask of the zone plate minus central stop

The matrices are built in float64 (the box edges are exact) and multiplied in the requested dtype.
:func:`simulate_box` is a numpy twin of the box-kernel path for the CPU (few torch dispatches per pattern).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from .instrument import Instrument

KERNELS = ("box", "gauss")

#: The smooth kernel is exp(-q^2 / 2 sigma^2) with sigma = GAUSS_SIGMA_PER_PRECISION * box_precision:
#: the Gaussian of equal area to the box of half-width box_precision (sigma * sqrt(2 pi) = 2 * precision).
GAUSS_SIGMA_PER_PRECISION = math.sqrt(2 / math.pi)


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


# --------------------------------------------------------------------------- numpy twin (box kernel, CPU)
@functools.lru_cache(maxsize=8)
def _donut_prefix(instrument: Instrument) -> np.ndarray:
    """Running sums of the donut's pupil rows, (V + 1, U) float32: row v sums rows 0..v-1 (exact integers)."""
    donut = _geometry(instrument)["donut"]
    return np.concatenate([np.zeros((1, donut.shape[1])), np.cumsum(donut, axis=0)]).astype(np.float32)


def _band_np(base: np.ndarray, offsets: np.ndarray, precision: float):
    """numpy twin of :func:`_box_band` for ``base`` (N, R): ``(raw, index, inside)``, each (N, R, band).

    ``raw`` are the unclamped pupil indices (the first one is the band's start), ``index`` the same clamped to
    the grid, ``inside`` where the box is 1 (the same float64 expression as the torch path, so the same set).
    """
    step = offsets[1] - offsets[0]
    start = np.floor((base - math.copysign(precision, step) - offsets[0]) / step).astype(np.int64) - 1
    raw = start[..., None] + np.arange(math.ceil(2 * precision / abs(step)) + 3)
    index = np.minimum(np.maximum(raw, 0), len(offsets) - 1)  # (np.clip is slower on small int arrays)
    return raw, index, (raw == index) & (np.abs(base[..., None] - offsets[index]) < precision)


def simulate_box(params, instrument: Instrument | None = None, *, counts=None, batch_size: int = 32) -> np.ndarray:
    """``simulate(params, instrument, counts=counts)`` (box kernel, float32, CPU) with few ops per pattern.

    The same formula, box edges and float32 product as :func:`simulate`, set up in numpy: B(chi) @ M as the
    difference of two running sums of donut rows, the Laue term on the Qx band only, then one torch product
    per batch (so it follows torch's thread setting). Agrees with :func:`simulate` to float32 rounding (in
    practice bit for bit); cheaper per call, which is what a single pattern costs (CPU).

    Parameters
    ----------
    params : array, (N, 3), (N, 4) or (4,)
        strain (dimensionless), omega (deg), chi (deg)[, thickness (angstrom); default ``instrument.thickness``].
    instrument : Instrument, optional
        The setup (default: the published one).
    counts : None, "published" or float
        The intensity convention of :func:`simulate`.
    batch_size : int
        Patterns per product (32 keeps the intermediates in cache).

    Returns
    -------
    (N, H, W) float32 numpy array.
    """
    instrument = instrument or _default_instrument()
    p = np.atleast_2d(np.asarray(params, dtype=np.float64))
    _check_params(p)
    if p.shape[1] == 3:
        p = np.column_stack([p, np.full(len(p), instrument.thickness)])
    geometry, prefix = _geometry(instrument), _donut_prefix(instrument)
    qx, qz, o_qz = geometry["qx"], geometry["qz"][:, None], geometry["o_qz"]
    g, precision, (rows, cols), pupil = instrument.g, instrument.box_precision, instrument.roi_shape, len(o_qz)
    scale = None if counts is None else intensity_scale(instrument, counts)
    out = np.empty((len(p), rows, cols), dtype=np.float32)
    for start in range(0, len(p), batch_size):
        q = p[start:start + batch_size]
        n = len(q)
        # B(chi) @ M: detector row y sums pupil rows first..stop-1
        raw, _, inside = _band_np(geometry["qy"] + (g * np.radians(q[:, 2]))[:, None], geometry["o_qy"], precision)
        first = np.minimum(np.maximum(raw[..., 0] + inside.argmax(axis=2), 0), len(prefix) - 1)
        b_m = prefix[first + inside.sum(axis=2)] - prefix[first]  # (n, H, U)
        # A: the Laue term on the band, written into columns 1..U of a zeroed (n, W, U + 2) array (columns 0
        # and U + 1 take the band ends that fall off the grid, all zeros)
        raw, index, inside = _band_np(qx + (g * np.radians(q[:, 1]))[:, None], geometry["o_qx"], precision)
        t = q[:, 3, None, None]
        z = t * (qz - (g / (1 + q[:, 0]))[:, None, None] - o_qz[index]) / 2
        band = t * np.sinc(z / np.pi) ** 2 * inside
        a = np.zeros((n, cols, pupil + 2), dtype=np.float32)
        rows_at = (np.arange(n * cols) * (pupil + 2)).reshape(n, cols, 1)
        a.ravel()[rows_at + np.minimum(np.maximum(raw, -1), pupil) + 1] = band
        torch.bmm(torch.from_numpy(b_m), torch.from_numpy(a[:, :, 1:-1]).transpose(1, 2),
                  out=torch.from_numpy(out[start:start + n]))
    if counts is not None:
        out *= np.float32(scale)  # as simulate() scales: the float32 product times the float32 factor
    return out


# --------------------------------------------------------------------------- intensity convention
PUBLISHED_PEAK_COUNTS = 7.0


#: :func:`brightest_grid_peak` of the published setup (``Instrument()``) by its fingerprint: a process simulating
#: at the published count level skips the search of the 41^3 grid (5-25 s on 2 cores). A test searches it again.
KNOWN_GRID_PEAKS = {"113c9750fa29974d": 3505.8068177890023}


@functools.lru_cache(maxsize=8)
def brightest_grid_peak(instrument: Instrument) -> float:
    """Peak (raw units, box kernel) of the brightest pattern of the default 41^3 grid for this setup.

    About 3,505.8 for the published setup (stored in :data:`KNOWN_GRID_PEAKS`); any other setup's is searched on
    the full grid once per process, with a progress bar on stderr (5-25 s on 2 cores).
    """
    known = KNOWN_GRID_PEAKS.get(instrument.fingerprint())
    return known if known is not None else search_brightest_grid_peak(instrument, progress=True)


def search_brightest_grid_peak(instrument: Instrument, *, progress: bool = False) -> float:
    """:func:`brightest_grid_peak` searched on the full grid: float32 patterns, then the brightest in float64."""
    from .library import Grid, iter_grid_patterns

    grid = Grid.default()
    best, best_index = -1.0, 0
    patterns = iter_grid_patterns(grid, instrument, progress=progress, desc="count level: brightest 41^3 grid pattern")
    for start, images in patterns:
        peaks = images.amax(dim=(1, 2))
        if float(peaks.max()) > best:
            best, best_index = float(peaks.max()), start + int(peaks.argmax())
    brightest = grid.params(instrument)[best_index:best_index + 1]
    return float(simulate(brightest, instrument, dtype=torch.float64).max())


def intensity_scale(instrument: Instrument | None, counts="published") -> float:
    """Factor from raw formula units to counts: the brightest default-grid pattern peaks at ``counts``.

    ``counts`` is "published" (7 counts, the published convention) or a positive peak count level.
    """
    instrument = instrument or Instrument()
    if isinstance(counts, str):
        if counts != "published":
            raise ValueError(f"counts must be None, 'published' or a positive number, got {counts!r}")
        counts = PUBLISHED_PEAK_COUNTS
    if not (isinstance(counts, (int, float)) and math.isfinite(counts) and counts > 0):
        raise ValueError(f"counts must be None, 'published' or a positive number, got {counts!r}")
    return float(counts) / brightest_grid_peak(instrument)


def poisson(images, seed: int | None = None):
    """Poisson counts drawn from expected images (same type out as in: numpy or torch), seeded.

    Raises ValueError if any expected value is negative or not finite.
    """
    is_tensor = isinstance(images, torch.Tensor)
    rate = images.detach().to(torch.float64) if is_tensor else torch.as_tensor(np.asarray(images, dtype=np.float64))
    if not torch.isfinite(rate).all() or (rate < 0).any():
        raise ValueError("poisson() needs finite, non-negative expected counts")
    gen = torch.Generator(device=rate.device)
    gen.manual_seed(int(seed) if seed is not None else int(torch.seed()))
    noisy = torch.poisson(rate, generator=gen)
    if is_tensor:
        return noisy.to(images.dtype)
    return noisy.numpy().astype(np.asarray(images).dtype)
