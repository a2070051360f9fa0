"""Physics refinement: per-frame Poisson likelihood fits under the smooth (Gaussian) or the box forward model.

Each frame's counts ``c`` are modelled as ``mu = a * simulate(strain, omega, chi[, thickness]) + floor`` with the
differentiable Gaussian kernel and a free count-level scale ``a``; the Poisson negative log-likelihood
``sum(mu - c log mu)`` is minimised by Levenberg-Marquardt on the Fisher information (Fisher scoring with
Marquardt damping), batched over frames. The Jacobian comes from analytic derivatives of the separable factors
``A(strain, omega, t)`` and ``B(chi)`` of the image ``B M A^T`` (PHYSICS.md section 2), so one evaluation costs
a few small matrix products per frame.

Under the box kernel (the published one) the image is smooth in strain, thickness and scale but piecewise
constant in the tilts, so the fit alternates a posterior over a fine (omega, chi) cell grid around the start
(normal prior from the start's std, scale profiled out) with Levenberg-Marquardt in strain, log a[, thickness]
at the most probable cell; the tilts returned are the posterior means.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from tqdm.auto import tqdm

from ..estimates import NOT_CONVERGED, OK, Estimates, check_frames
from ..physics import GAUSS_SIGMA_PER_PRECISION, Instrument
from ..physics.forward import _const, chi_matrix, laue_matrix

#: Internal parameter units: strain / 1e-4, omega / 1e-3 deg, chi / 1e-3 deg, log(a), log(thickness) / 1e-2.
STRAIN_UNIT, ANGLE_UNIT_DEG, LOG_THICKNESS_UNIT = 1e-4, 1e-3, 1e-2
_ANGLE_UNIT_RAD = math.radians(ANGLE_UNIT_DEG)
_SQRT_2PI = math.sqrt(2 * math.pi)
#: Box kernel: the tilt search spans +-TILT_WINDOW prior std around the start, omega in OMEGA_CELLS cells.
TILT_WINDOW, OMEGA_CELLS = 4.0, 33
#: Box kernel: prior std (deg) of omega and chi where ``initial`` gives none (the published network's errors).
DEFAULT_TILT_STD_DEG = (5e-4, 1.5e-3)
_POSTERIOR_CHUNK = 8  # frames per tilt-posterior evaluation (about 15 MB each)


def refine(frames, initial, instrument: Instrument | None = None, *, kernel: str = "gauss",
           fit_thickness: bool = False, max_iter: int = 50, tol: float = 1e-6, floor: float = 1e-4,
           batch: int = 256, rounds: int = 2, device=None, progress: bool = False) -> Estimates:
    """Refine estimates by maximising each frame's Poisson likelihood under the forward model.

    Parameters
    ----------
    frames : array-like, (N, H, W) or (H, W)
        Detector frames in counts (rows = detector y).
    initial : Estimates or array (N, 3) or (N, 4)
        Starting strain, omega (deg), chi (deg)[, thickness (A)]; a missing or NaN thickness means
        ``instrument.thickness``. Frames whose initial Estimates status is not ok keep that status. With
        ``kernel="box"`` the start is also the prior of the tilts: normal with the Estimates' ``omega_std`` and
        ``chi_std`` (deg) where finite, else :data:`DEFAULT_TILT_STD_DEG`.
    instrument : the setup (default: the published one).
    kernel : "gauss" (the differentiable kernel: Levenberg-Marquardt in all parameters) or "box" (the published
        kernel: tilt posterior on a cell grid alternated with Levenberg-Marquardt in strain; about 5 ms per frame
        on 2 cores).
    fit_thickness : also fit the film thickness (otherwise it stays at its initial value).
    max_iter : Levenberg-Marquardt iterations per frame.
    tol : convergence threshold on the Newton decrement g^T I^-1 g (twice the expected decrease of the
        negative log-likelihood; 1e-6 means the optimum is within 1e-3 standard deviations).
    floor : expected background counts per pixel added to the model (keeps log mu finite).
    batch : frames refined together (memory grows by about 1 MB per frame of the batch).
    rounds : box kernel: alternations of tilt posterior and strain fit (one more tilt posterior follows).
    device : torch device for the computation (default CPU).
    progress : show a progress bar over frames.

    Returns
    -------
    Estimates
        Refined strain, omega (deg), chi (deg), thickness (A: fitted, or the initial value when given, else NaN);
        ``*_std`` from the inverse Fisher information at the optimum (the scale ``a`` marginalised; thickness std
        only when fitted; box kernel: strain and thickness at fixed tilts, the tilts' std from their posterior); ``score`` the Poisson deviance per pixel. Status: :func:`check_frames`' status, the
        initial estimate's status, or ``not_converged`` (no finite start, or no convergence in ``max_iter``).
    """
    instrument = instrument or Instrument()
    if kernel not in ("gauss", "box"):
        raise ValueError(f"refine: kernel must be 'gauss' or 'box', got {kernel!r}")
    if max_iter < 1 or batch < 1 or rounds < 1 or not tol > 0 or not floor > 0:
        raise ValueError(f"max_iter, batch and rounds must be >= 1 and tol, floor > 0; got max_iter={max_iter}, "
                         f"batch={batch}, rounds={rounds}, tol={tol}, floor={floor}")
    clean, status = check_frames(frames, instrument)
    start, thickness_given, status = _start(initial, status, instrument)
    params = np.full((len(clean), 4), np.nan)
    std = np.full((len(clean), 4), np.nan)
    score = np.full(len(clean), np.nan)
    todo = np.flatnonzero(status == OK)
    model = (_BoxModel if kernel == "box" else _Model)(instrument, fit_thickness, floor, device)
    prior = _tilt_prior(initial, len(clean))
    with tqdm(total=len(todo), unit="frame", desc="refine", disable=not progress) as bar:
        for first in range(0, len(todo), batch):
            idx = todo[first:first + batch]
            counts = torch.as_tensor(clean[idx].reshape(len(idx), -1), dtype=torch.float64, device=model.device)
            if kernel == "box":
                p, s, deviance, converged = _fit_box(model, counts, start[idx], prior[idx], max_iter, tol, rounds)
            else:
                p, s, deviance, converged = _fit(model, counts, start[idx], max_iter, tol)
            params[idx], std[idx], score[idx] = p, s, deviance
            status[idx[~converged]] = NOT_CONVERGED
            bar.update(len(idx))
    if not fit_thickness:
        params[:, 3] = np.where(thickness_given, start[:, 3], np.nan)
    return Estimates.from_params(params, status, std=std, score=score)


def _tilt_prior(initial, n: int) -> np.ndarray:
    """(n, 2) prior std (deg) of omega and chi: the initial Estimates' std where finite and positive, else the
    default."""
    prior = np.tile(np.asarray(DEFAULT_TILT_STD_DEG, dtype=np.float64), (n, 1))
    if isinstance(initial, Estimates):
        given = np.stack([initial.omega_std, initial.chi_std], axis=1).astype(np.float64)
        prior = np.where(np.isfinite(given) & (given > 0), given, prior)
    return prior


def _start(initial, status: np.ndarray, instrument: Instrument):
    """(N, 4) starting parameters, whether each thickness was given, and the status updated for the start."""
    status = status.copy()
    if isinstance(initial, Estimates):
        start = initial.params(with_thickness=True).astype(np.float64)
        inherited = (status == OK) & (initial.status != OK)
        status[inherited] = initial.status[inherited]
    else:
        start = np.asarray(initial, dtype=np.float64)
        if start.ndim == 1:
            start = start[None]
        if start.ndim != 2 or start.shape[1] not in (3, 4):
            raise ValueError("initial must be Estimates or an (N, 3) or (N, 4) array of strain, omega (deg), "
                             f"chi (deg)[, thickness (A)]; got shape {start.shape}")
        if start.shape[1] == 3:
            start = np.concatenate([start, np.full((len(start), 1), np.nan)], axis=1)
    if len(start) != len(status):
        raise ValueError(f"initial has {len(start)} rows but there are {len(status)} frames")
    thickness_given = np.isfinite(start[:, 3])
    start[:, 3] = np.where(thickness_given, start[:, 3], instrument.thickness)
    bad = ~np.isfinite(start).all(axis=1) | (start[:, 0] <= -1) | (start[:, 3] <= 0)
    status[(status == OK) & bad] = NOT_CONVERGED
    return start, thickness_given, status


class _Model:
    """mu = a * (B(chi) M A(strain, omega, t)^T) + floor (Gaussian kernel) and its Jacobian in internal units."""

    def __init__(self, instrument: Instrument, fit_thickness: bool, floor: float, device):
        self.instrument, self.fit_thickness, self.floor = instrument, fit_thickness, floor
        self.device = torch.device(device or "cpu")
        self.donut = _const(instrument, "donut", self.device)
        self.n_params = 5 if fit_thickness else 4
        #: (output column, internal index) pairs of the parameters with a Fisher std: strain, omega, chi[, thickness].
        self.std_columns = [(0, 0), (1, 1), (2, 2)] + ([(3, 4)] if fit_thickness else [])

    def fixed(self, params: np.ndarray) -> torch.Tensor:
        """(n, 1) per-frame values held fixed in the fit: the thickness (A) of (n, 4) physical ``params``."""
        return torch.as_tensor(params[:, 3:4], dtype=torch.float64, device=self.device)

    def to_internal(self, params: np.ndarray, scale: np.ndarray) -> torch.Tensor:
        """(n, 4) strain, omega, chi, thickness and (n,) scale a -> (n, P) internal parameters."""
        theta = [params[:, 0] / STRAIN_UNIT, params[:, 1] / ANGLE_UNIT_DEG, params[:, 2] / ANGLE_UNIT_DEG,
                 np.log(scale)]
        if self.fit_thickness:
            theta.append(np.log(params[:, 3]) / LOG_THICKNESS_UNIT)
        return torch.as_tensor(np.stack(theta, axis=1), dtype=torch.float64, device=self.device)

    def to_params(self, theta: torch.Tensor, fixed: torch.Tensor) -> np.ndarray:
        """(n, P) internal parameters -> (n, 4) strain, omega (deg), chi (deg), thickness (A)."""
        t = torch.exp(theta[:, 4] * LOG_THICKNESS_UNIT) if self.fit_thickness else fixed[:, 0]
        return torch.stack([theta[:, 0] * STRAIN_UNIT, theta[:, 1] * ANGLE_UNIT_DEG,
                            theta[:, 2] * ANGLE_UNIT_DEG, t], dim=1).cpu().numpy()

    def units(self, theta: torch.Tensor) -> torch.Tensor:
        """(n, 4) physical units of one internal step for strain, omega, chi, thickness."""
        ones = torch.ones_like(theta[:, 0])
        t_unit = torch.exp(theta[:, 4] * LOG_THICKNESS_UNIT) * LOG_THICKNESS_UNIT if self.fit_thickness \
            else torch.full_like(ones, math.nan)
        return torch.stack([ones * STRAIN_UNIT, ones * ANGLE_UNIT_DEG, ones * ANGLE_UNIT_DEG, t_unit], dim=1)

    def shape(self, theta: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """(n, H*W) noiseless raw-unit images at internal parameters (no scale, no floor)."""
        return self._images(theta, fixed[:, 0], jacobian=False)[0]

    def evaluate(self, theta: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu (n, H*W) and its Jacobian (n, P, H*W) with respect to the internal parameters."""
        mu0, derivs = self._images(theta, fixed[:, 0], jacobian=True)
        a = torch.exp(theta[:, 3])[:, None]
        jac = torch.stack(derivs[:3] + [mu0] + derivs[3:], dim=1) * a[:, :, None]
        return a * mu0 + self.floor, jac

    def _images(self, theta: torch.Tensor, thickness: torch.Tensor, jacobian: bool):
        inst = self.instrument
        strain = theta[:, 0] * STRAIN_UNIT
        omega, chi = theta[:, 1] * _ANGLE_UNIT_RAD, theta[:, 2] * _ANGLE_UNIT_RAD
        t = torch.exp(theta[:, 4] * LOG_THICKNESS_UNIT) if self.fit_thickness else thickness
        n = len(theta)
        if not jacobian:
            a_mat = laue_matrix(strain, omega, t, inst, "gauss")
            b_m = chi_matrix(chi, inst, "gauss") @ self.donut
            return (b_m @ a_mat.transpose(1, 2)).reshape(n, -1), []
        a_mat, d_a = _laue_and_derivatives(strain, omega, t, inst, self.fit_thickness)
        b_mat, d_b = _chi_and_derivative(chi, inst)
        b_m, d_b_m = b_mat @ self.donut, d_b @ self.donut
        images = b_m[:, None] @ torch.stack([a_mat] + d_a, dim=1).transpose(2, 3)  # (n, 1 + len(d_a), H, W)
        images = images.reshape(n, images.shape[1], -1)
        d_chi = (d_b_m @ a_mat.transpose(1, 2)).reshape(n, -1)
        derivs = [images[:, 1], images[:, 2], d_chi] + ([images[:, 3]] if self.fit_thickness else [])
        return images[:, 0], derivs


def _laue_argument(strain, t, instrument: Instrument) -> torch.Tensor:
    """z[n, x, u] of the Laue term ``t sinc^2(z)`` (:func:`laue_matrix`); strain and t (A) are (n,) tensors."""
    qz, o_qz = _const(instrument, "qz", strain.device), _const(instrument, "o_qz", strain.device)
    return t[:, None, None] * (qz[None, :, None] - instrument.g / (1 + strain[:, None, None])
                               - o_qz[None, None, :]) / 2


def _laue_and_derivatives(strain, omega, t, instrument: Instrument, with_thickness: bool, kernel: str = "gauss"):
    """A[n, x, u] of :func:`laue_matrix` and its derivatives per internal unit of strain, omega (Gaussian kernel
    only: the box has none) and log thickness (analytic: one pass shares the sinc and kernel terms)."""
    g, device = instrument.g, strain.device
    qx, o_qx = _const(instrument, "qx", device), _const(instrument, "o_qx", device)
    t3, s3 = t[:, None, None], strain[:, None, None]
    z = _laue_argument(strain, t, instrument)
    sinc = torch.sinc(z / math.pi)  # sin(z) / z
    small = z.abs() < 1e-4
    d_sinc = torch.where(small, -z / 3, (torch.cos(z) - sinc) / torch.where(small, torch.ones_like(z), z))
    sigma = GAUSS_SIGMA_PER_PRECISION * instrument.box_precision
    q = qx[None, :, None] + g * omega[:, None, None] - o_qx[None, None, :]
    if kernel == "box":
        tilt = (q.abs() < instrument.box_precision).to(q.dtype)
    else:
        tilt = torch.exp(-0.5 * (q / sigma) ** 2)
    laue = t3 * sinc ** 2
    a_mat = laue * tilt
    d_laue_dz_tilt = 2 * t3 * sinc * d_sinc * tilt
    derivs = [d_laue_dz_tilt * (t3 * g / (1 + s3) ** 2 / 2 * STRAIN_UNIT)]
    if kernel != "box":
        derivs.append(a_mat * (-q * (g / sigma ** 2) * _ANGLE_UNIT_RAD))
    if with_thickness:  # d/d(log t) = t d/dt, and t dz/dt = z
        derivs.append((a_mat + d_laue_dz_tilt * z) * LOG_THICKNESS_UNIT)
    return a_mat, derivs


def _chi_and_derivative(chi, instrument: Instrument):
    """Gaussian-kernel B[n, y, v] of :func:`chi_matrix` and its derivative per internal unit of chi."""
    qy, o_qy = _const(instrument, "qy", chi.device), _const(instrument, "o_qy", chi.device)
    sigma = GAUSS_SIGMA_PER_PRECISION * instrument.box_precision
    q = qy[None, :, None] + instrument.g * chi[:, None, None] - o_qy[None, None, :]
    b_mat = torch.exp(-0.5 * (q / sigma) ** 2)
    return b_mat, b_mat * (-q * (instrument.g / sigma ** 2) * _ANGLE_UNIT_RAD)


class _BoxModel:
    """mu = a * (B(chi) M A(strain, omega, t)^T) + floor (box kernel) with the tilts held fixed; Jacobian in the
    internal parameters strain / 1e-4, log(a)[, log(thickness) / 1e-2]."""

    def __init__(self, instrument: Instrument, fit_thickness: bool, floor: float, device):
        self.instrument, self.fit_thickness, self.floor = instrument, fit_thickness, floor
        self.device = torch.device(device or "cpu")
        self.donut = _const(instrument, "donut", self.device)
        self.n_params = 3 if fit_thickness else 2
        #: (output column, internal index) pairs of the parameters with a Fisher std: strain[, thickness].
        self.std_columns = [(0, 0)] + ([(3, 2)] if fit_thickness else [])

    def fixed(self, params: np.ndarray) -> torch.Tensor:
        """(n, 3) per-frame values held fixed: thickness (A), omega (rad), chi (rad) of (n, 4) ``params``."""
        values = np.stack([params[:, 3], np.radians(params[:, 1]), np.radians(params[:, 2])], axis=1)
        return torch.as_tensor(values, dtype=torch.float64, device=self.device)

    def to_internal(self, params: np.ndarray, scale: np.ndarray) -> torch.Tensor:
        """(n, 4) strain, omega, chi, thickness and (n,) scale a -> (n, P) internal parameters."""
        theta = [params[:, 0] / STRAIN_UNIT, np.log(scale)]
        if self.fit_thickness:
            theta.append(np.log(params[:, 3]) / LOG_THICKNESS_UNIT)
        return torch.as_tensor(np.stack(theta, axis=1), dtype=torch.float64, device=self.device)

    def _thickness(self, theta: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return torch.exp(theta[:, 2] * LOG_THICKNESS_UNIT) if self.fit_thickness else fixed[:, 0]

    def to_params(self, theta: torch.Tensor, fixed: torch.Tensor) -> np.ndarray:
        """(n, P) internal parameters -> (n, 4) strain, omega (deg), chi (deg), thickness (A)."""
        return torch.stack([theta[:, 0] * STRAIN_UNIT, torch.rad2deg(fixed[:, 1]), torch.rad2deg(fixed[:, 2]),
                            self._thickness(theta, fixed)], dim=1).cpu().numpy()

    def units(self, theta: torch.Tensor) -> torch.Tensor:
        """(n, 4) physical units of one internal step for strain and thickness (NaN for the fixed tilts)."""
        ones = torch.ones_like(theta[:, 0])
        t_unit = torch.exp(theta[:, 2] * LOG_THICKNESS_UNIT) * LOG_THICKNESS_UNIT if self.fit_thickness \
            else ones * math.nan
        return torch.stack([ones * STRAIN_UNIT, ones * math.nan, ones * math.nan, t_unit], dim=1)

    def shape(self, theta: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """(n, H*W) noiseless raw-unit images at internal parameters (no scale, no floor)."""
        a_mat = laue_matrix(theta[:, 0] * STRAIN_UNIT, fixed[:, 1], self._thickness(theta, fixed),
                            self.instrument, "box")
        b_m = chi_matrix(fixed[:, 2], self.instrument, "box") @ self.donut
        return (b_m @ a_mat.transpose(1, 2)).reshape(len(theta), -1)

    def evaluate(self, theta: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu (n, H*W) and its Jacobian (n, P, H*W) with respect to the internal parameters."""
        n = len(theta)
        a_mat, d_a = _laue_and_derivatives(theta[:, 0] * STRAIN_UNIT, fixed[:, 1], self._thickness(theta, fixed),
                                           self.instrument, self.fit_thickness, "box")
        b_m = chi_matrix(fixed[:, 2], self.instrument, "box") @ self.donut
        images = (b_m[:, None] @ torch.stack([a_mat] + d_a, dim=1).transpose(2, 3)).reshape(n, 1 + len(d_a), -1)
        a = torch.exp(theta[:, 1])[:, None]
        jac = torch.stack([images[:, 1], images[:, 0]] + ([images[:, 2]] if self.fit_thickness else []), dim=1)
        return a * images[:, 0] + self.floor, jac * a[:, :, None]


@functools.lru_cache(maxsize=8)
def _chi_transitions(instrument: Instrument) -> np.ndarray:
    """Sorted chi values (deg) where a box edge of B(chi) crosses a pupil row: the image is constant between."""
    geometry = {name: _const(instrument, name, "cpu").numpy() for name in ("qy", "o_qy")}
    offsets = geometry["o_qy"][None, :] - geometry["qy"][:, None]
    edges = np.concatenate([offsets + instrument.box_precision, offsets - instrument.box_precision]).ravel()
    edges = np.sort(np.degrees(edges / instrument.g))
    return edges[np.concatenate([[True], np.diff(edges) > 1e-12])]


def _cell_moments(left: torch.Tensor, right: torch.Tensor, centre: torch.Tensor, sigma: torch.Tensor):
    """Log prior mass, mean and variance of a normal(centre, sigma) prior restricted to cells [left, right]."""
    alpha, beta = (left - centre) / sigma, (right - centre) / sigma
    mass = (torch.special.ndtr(beta) - torch.special.ndtr(alpha)).clamp_min(1e-300)
    pdf_a, pdf_b = torch.exp(-alpha ** 2 / 2) / _SQRT_2PI, torch.exp(-beta ** 2 / 2) / _SQRT_2PI
    shift = (pdf_a - pdf_b) / mass
    variance = sigma ** 2 * (1 + (alpha * pdf_a - beta * pdf_b) / mass - shift ** 2)
    return torch.log(mass), centre + sigma * shift, variance.clamp_min(0)


def _cell_posterior(counts, images, floor, left, right, valid, centre, sigma):
    """Posterior over the cells of one tilt: the Poisson likelihood of each cell's image (scale profiled out,
    ``a = sum(counts) / sum(image)``) times the normal prior's mass in the cell.

    counts (n, H*W); images (n, H*W, C); left, right, valid (n, C) cells (deg); centre, sigma (n,) prior (deg).
    Returns the most probable cell's index (n,), the posterior mean (n,) and std (n,), deg.
    """
    total = images.sum(dim=1)  # (n, C)
    scale = counts.sum(dim=1, keepdim=True) / total
    log_like = (torch.special.xlogy(counts[:, :, None], scale[:, None] * images + floor).sum(dim=1)
                - scale * total)
    log_prior, mean, variance = _cell_moments(left, right, centre[:, None], sigma[:, None])
    log_post = torch.where(valid & ~torch.isnan(log_like), log_like + log_prior, -math.inf)
    weight = torch.softmax(log_post, dim=1)
    post_mean = (weight * mean).sum(dim=1)
    post_var = (weight * (variance + mean ** 2)).sum(dim=1) - post_mean ** 2
    return log_post.argmax(dim=1), post_mean, torch.sqrt(post_var.clamp_min(0))


def _omega_posterior(instrument: Instrument, counts, strain, t, chi, centre, sigma, floor):
    """Posterior of omega at fixed strain, thickness (A) and chi (deg) under the box model: :data:`OMEGA_CELLS`
    equal cells across +-TILT_WINDOW prior std around ``centre`` (deg). With ``P[y, x, u] = sum_{u' < u}
    (B M)[y, u'] Laue[x, u']`` (over the band of u that the cells' boxes reach) each cell's image is a difference
    of two entries of P per pixel.

    Returns each frame's most probable cell centre, posterior mean and std, all (n,) deg.
    """
    device, prec = counts.device, instrument.box_precision
    rows, cols = instrument.roi_shape
    n = len(counts)
    steps = torch.linspace(-TILT_WINDOW, TILT_WINDOW, OMEGA_CELLS + 1, dtype=torch.float64, device=device)
    edges = centre[:, None] + sigma[:, None] * steps
    left, right = edges[:, :-1], edges[:, 1:]
    omega = (left + right) / 2
    ascending = -_const(instrument, "o_qx", device)  # o_qx decreases with u; the box is o_qx in (r - prec, r + prec)
    r = _const(instrument, "qx", device) + instrument.g * torch.deg2rad(omega)[:, :, None]  # (n, K, W)
    u_lo = torch.searchsorted(ascending, -(r + prec), right=True)
    u_hi = torch.searchsorted(ascending, (prec - r).contiguous())
    # only the band of pupil columns u that some cell's box reaches enters, per detector column x
    band_start = u_lo.amin(dim=1)  # (n, W)
    band = torch.arange(int((u_hi.amax(dim=1) - band_start).max()), device=device)
    u_band = (band_start[:, :, None] + band).clamp(max=instrument.pupil_size - 1)  # (n, W, Bw)
    laue = t[:, None, None] * torch.sinc(_laue_argument(strain, t, instrument) / math.pi) ** 2  # (n, W, U)
    laue = torch.gather(laue, 2, u_band)
    b_m = chi_matrix(torch.deg2rad(chi), instrument, "box") @ _const(instrument, "donut", device)  # (n, H, U)
    b_m = torch.gather(b_m, 2, u_band.reshape(n, 1, -1).expand(n, rows, -1)).reshape(n, rows, cols, -1)
    prefix = torch.nn.functional.pad(torch.cumsum(b_m * laue[:, None], dim=3), (1, 0))  # (n, H, W, Bw + 1)
    size = (n, rows, cols, OMEGA_CELLS)
    u_lo = (u_lo - band_start[:, None]).transpose(1, 2)[:, None].expand(size)
    u_hi = (u_hi - band_start[:, None]).transpose(1, 2)[:, None].expand(size)
    images = (torch.gather(prefix, 3, u_hi) - torch.gather(prefix, 3, u_lo)).reshape(n, rows * cols, -1)
    best, mean, std = _cell_posterior(counts, images, floor, left, right, torch.ones_like(left, dtype=torch.bool),
                                      centre, sigma)
    return omega[torch.arange(n, device=device), best], mean, std


def _chi_posterior(instrument: Instrument, counts, strain, t, omega, centre, sigma, floor):
    """Posterior of chi at fixed strain, thickness (A) and omega (deg) under the box model, on the exact intervals
    of chi where B(chi) is constant, across +-TILT_WINDOW prior std around ``centre`` (deg). With the prefix sum of
    ``M A^T`` over pupil rows v each interval's image is a difference of two of its rows per detector row.

    Returns each frame's most probable interval's midpoint, posterior mean and std, all (n,) deg.
    """
    device, prec = counts.device, instrument.box_precision
    rows, cols = instrument.roi_shape
    n = len(counts)
    transitions = torch.as_tensor(_chi_transitions(instrument), device=device)
    lo, hi = centre - TILT_WINDOW * sigma, centre + TILT_WINDOW * sigma
    first = torch.searchsorted(transitions, lo, right=True)
    n_cells = torch.searchsorted(transitions, hi) - first + 1
    m = torch.arange(int(n_cells.max()), device=device)
    last = len(transitions) - 1
    valid = m < n_cells[:, None]
    left = torch.where(m == 0, lo[:, None], transitions[(first[:, None] + m - 1).clamp(0, last)])
    right = torch.where(m == n_cells[:, None] - 1, hi[:, None], transitions[(first[:, None] + m).clamp(0, last)])
    right = torch.where(valid, right, left)
    chi = torch.where(valid, (left + right) / 2, centre[:, None])
    a_mat = laue_matrix(strain, torch.deg2rad(omega), t, instrument, "box")
    columns = _const(instrument, "donut", device) @ a_mat.transpose(1, 2)  # (n, V, W)
    prefix = torch.nn.functional.pad(torch.cumsum(columns, dim=1), (0, 0, 1, 0))  # (n, V + 1, W)
    o_qy = _const(instrument, "o_qy", device)
    r = _const(instrument, "qy", device) + instrument.g * torch.deg2rad(chi)[:, :, None]  # (n, L, H)
    size = (n, r.shape[1] * rows, cols)
    v_lo = torch.searchsorted(o_qy, (r - prec).contiguous(), right=True).reshape(n, -1, 1).expand(size)
    v_hi = torch.searchsorted(o_qy, (r + prec).contiguous()).reshape(n, -1, 1).expand(size)
    images = (torch.gather(prefix, 1, v_hi) - torch.gather(prefix, 1, v_lo)).reshape(n, -1, rows * cols)
    best, mean, std = _cell_posterior(counts, images.transpose(1, 2), floor, left, right, valid, centre, sigma)
    return chi[torch.arange(n, device=device), best], mean, std


def _fit_box(model: _BoxModel, counts: torch.Tensor, start: np.ndarray, prior: np.ndarray, max_iter: int,
             tol: float, rounds: int):
    """Alternate the tilt posteriors (chi at the current omega, then omega at the most probable chi) and a strain
    (scale[, thickness]) fit at the most probable tilts.

    Returns params (n, 4), std (n, 4), deviance per pixel (n,) and converged (n,) like :func:`_fit`, with the
    tilts and their std the (conditional) posterior means and std.
    """
    as_tensor = functools.partial(torch.as_tensor, dtype=torch.float64, device=model.device)
    centre, sigma = as_tensor(start[:, 1:3]), as_tensor(prior)

    def posterior(params):
        out = np.empty((len(params), 3, 2))  # (most probable, mean, std) x (omega, chi)
        for i in range(0, len(params), _POSTERIOR_CHUNK):
            part = slice(i, i + _POSTERIOR_CHUNK)
            c, p = counts[part], as_tensor(params[part])
            chi = _chi_posterior(model.instrument, c, p[:, 0], p[:, 3], p[:, 1], centre[part, 1], sigma[part, 1],
                                 model.floor)
            omega = _omega_posterior(model.instrument, c, p[:, 0], p[:, 3], chi[0], centre[part, 0],
                                     sigma[part, 0], model.floor)
            out[part] = torch.stack([torch.stack(omega, dim=1), torch.stack(chi, dim=1)], dim=2).cpu().numpy()
        return out

    params = start.copy()
    for _ in range(rounds):
        params[:, 1:3] = posterior(params)[:, 0]
        fitted, std, deviance, converged = _fit(model, counts, params, max_iter, tol)
        params = np.where(np.isfinite(fitted), fitted, params)
    tilts = posterior(params)
    params[:, 1:3], std[:, 1:3] = tilts[:, 1], tilts[:, 2]
    return params, std, deviance, converged


def _nll(mu: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Poisson negative log-likelihood per frame (without the log c! constant)."""
    return (mu - counts * torch.log(mu)).sum(dim=1)


def _fisher_and_gradient(mu, jac, counts):
    fisher = (jac / mu[:, None, :]) @ jac.transpose(1, 2)
    gradient = (jac @ (1 - counts / mu)[:, :, None])[..., 0]
    return fisher, gradient


def _fit(model: _Model, counts: torch.Tensor, start: np.ndarray, max_iter: int, tol: float):
    """Levenberg-Marquardt on one batch. Returns params (n, 4), std (n, 4), deviance per pixel (n,), converged."""
    n = len(counts)
    fixed = model.fixed(start)
    shape = model.shape(model.to_internal(start, np.ones(n)), fixed)
    total = shape.sum(dim=1)
    scale = torch.where(total > 0, counts.sum(dim=1) / total, torch.nan)  # Poisson MLE of a for a fixed shape
    theta = model.to_internal(start, scale.cpu().numpy())
    mu, jac = model.evaluate(theta, fixed)
    nll = _nll(mu, counts)
    damping = torch.full((n,), 1e-3, dtype=torch.float64, device=model.device)
    converged = torch.zeros(n, dtype=torch.bool, device=model.device)
    failed = ~torch.isfinite(nll)
    eye = torch.eye(model.n_params, dtype=torch.float64, device=model.device)
    for _ in range(max_iter):
        active = torch.nonzero(~converged & ~failed)[:, 0]
        if len(active) == 0:
            break
        fisher, gradient = _fisher_and_gradient(mu[active], jac[active], counts[active])
        newton, info = torch.linalg.solve_ex(fisher, -gradient[..., None])
        decrement = -(gradient * newton[..., 0]).sum(dim=1)
        done = (info == 0) & (decrement < tol)
        converged[active[done]] = True
        keep = ~done
        active, fisher, gradient = active[keep], fisher[keep], gradient[keep]
        if len(active) == 0:
            break
        damped = fisher + damping[active, None, None] * (fisher * eye)
        step = torch.linalg.solve_ex(damped, -gradient[..., None])[0][..., 0]
        trial = theta[active] + step
        mu_trial, jac_trial = model.evaluate(trial, fixed[active])
        nll_trial = _nll(mu_trial, counts[active])
        accept = torch.isfinite(nll_trial) & (nll_trial <= nll[active])
        accepted = active[accept]
        theta[accepted], mu[accepted], jac[accepted], nll[accepted] = \
            trial[accept], mu_trial[accept], jac_trial[accept], nll_trial[accept]
        damping[active] = torch.where(accept, damping[active] / 3, damping[active] * 4)
        failed |= damping > 1e12  # no step lowers the likelihood, yet the optimum is not reached
    fisher, _ = _fisher_and_gradient(mu, jac, counts)
    covariance, info = torch.linalg.inv_ex(fisher)
    variances = torch.diagonal(covariance, dim1=1, dim2=2)
    columns, internal = zip(*model.std_columns)
    std = torch.full((n, 4), math.nan, dtype=torch.float64, device=model.device)
    std[:, list(columns)] = torch.sqrt(variances[:, list(internal)].clamp(min=0))
    std = std * model.units(theta)
    std[info != 0] = math.nan
    deviance = 2 * (torch.special.xlogy(counts, counts / mu).sum(dim=1) - (counts - mu).sum(dim=1))
    params = model.to_params(theta, fixed)
    return params, std.cpu().numpy(), (deviance / counts.shape[1]).cpu().numpy(), converged.cpu().numpy()


__all__ = ["refine"]
