"""Box-kernel refinement: the tilts by a posterior over the cells where the box image is constant (normal prior
from the start, scale profiled out), strain / scale[ / thickness] by Levenberg-Marquardt at the most probable cell."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..physics import Instrument
from ..physics.forward import _const, chi_donut, laue_matrix
from .likelihood import LOG_THICKNESS_UNIT, STRAIN_UNIT, _fit, _laue_and_derivatives

_SQRT_2PI = math.sqrt(2 * math.pi)

#: Box kernel: the tilt search spans +-TILT_WINDOW prior std around the start, omega in OMEGA_CELLS cells.
TILT_WINDOW, OMEGA_CELLS = 4.0, 33
#: Omega nodes (posterior std from its mean) of the strain average over the omega posterior (:func:`_fit_box`).
OMEGA_NODES = (-2.0, -1.0, 0.0, 1.0, 2.0)


_POSTERIOR_CHUNK = 8  # frames per tilt-posterior evaluation (about 15 MB each)


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
        b_m = chi_donut(fixed[:, 2], self.instrument, "box", self.donut)
        return (b_m @ a_mat.transpose(1, 2)).reshape(len(theta), -1)

    def evaluate(self, theta: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu (n, H*W) and its Jacobian (n, P, H*W) with respect to the internal parameters."""
        n = len(theta)
        a_mat, d_a = _laue_and_derivatives(theta[:, 0] * STRAIN_UNIT, fixed[:, 1], self._thickness(theta, fixed),
                                           self.instrument, self.fit_thickness, "box")
        b_m = chi_donut(fixed[:, 2], self.instrument, "box", self.donut)
        images = (b_m[:, None] @ torch.stack([a_mat] + d_a, dim=1).transpose(2, 3)).reshape(n, 1 + len(d_a), -1)
        a = torch.exp(theta[:, 1])[:, None]
        jac = torch.stack([images[:, 1], images[:, 0]] + ([images[:, 2]] if self.fit_thickness else []), dim=1)
        return a * images[:, 0] + self.floor, jac * a[:, :, None]


@functools.lru_cache(maxsize=8)
def _omega_grid(instrument: Instrument) -> tuple[float, float]:
    """``o_qx[0]`` and the spacing ``o_qx[u] - o_qx[u + 1]`` (1/A) of the evenly spaced pupil Qx offsets."""
    o_qx = _const(instrument, "o_qx", "cpu")
    return float(o_qx[0]), float(o_qx[0] - o_qx[1])


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
    # the box is o_qx in (r - prec, r + prec); o_qx = -u * step + first is evenly spaced, decreasing with u
    first, step = _omega_grid(instrument)
    r = _const(instrument, "qx", device) + instrument.g * torch.deg2rad(omega)[:, :, None]  # (n, K, W)
    u_lo = (torch.floor((first - r - prec) / step) + 1).clamp(0, instrument.pupil_size).long()
    u_hi = torch.ceil((first - r + prec) / step).clamp(0, instrument.pupil_size).long()
    # only the band of pupil columns u that some cell's box reaches enters, per detector column x
    band_start = u_lo.amin(dim=1)  # (n, W)
    band = torch.arange(int((u_hi.amax(dim=1) - band_start).max()), device=device)
    u_band = (band_start[:, :, None] + band).clamp(max=instrument.pupil_size - 1)  # (n, W, Bw)
    # the Laue term on the band only (the expression of _laue_argument)
    qz, o_qz = _const(instrument, "qz", device), _const(instrument, "o_qz", device)
    z = t[:, None, None] * (qz[None, :, None] - instrument.g / (1 + strain[:, None, None]) - o_qz[u_band]) / 2
    laue = t[:, None, None] * torch.sinc(z / math.pi) ** 2  # (n, W, Bw)
    b_m = chi_donut(torch.deg2rad(chi), instrument, "box", _const(instrument, "donut", device))  # (n, H, U)
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
             tol: float, rounds: int, omega_average: bool = False):
    """Alternate the tilt posteriors (chi at the current omega, then omega at the most probable chi) and a strain
    (scale[, thickness]) fit at the most probable tilts.

    ``prior`` (n, 3): std of the normal priors centred on ``start`` of strain (NaN: none), omega and chi (deg).
    ``omega_average``: then strain[ and thickness] are averaged over omega (see :func:`_average_over_omega`).
    Returns params (n, 4), std (n, 4), deviance per pixel (n,) and converged (n,) like :func:`_fit`, with the
    tilts and their std the (conditional) posterior means and std.
    """
    as_tensor = functools.partial(torch.as_tensor, dtype=torch.float64, device=model.device)
    centre, sigma = as_tensor(start[:, 1:3]), as_tensor(prior[:, 1:3])
    strain_prior = torch.zeros((len(start), model.n_params), dtype=torch.float64, device=model.device)
    strain_prior[:, 0] = as_tensor(np.nan_to_num((STRAIN_UNIT / prior[:, 0]) ** 2))
    strain_prior = (model.to_internal(start, np.ones(len(start))), strain_prior)

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
        fitted, std, deviance, converged = _fit(model, counts, params, max_iter, tol, strain_prior)
        params = np.where(np.isfinite(fitted), fitted, params)
    tilts = posterior(params)
    params[:, 1:3], std[:, 1:3] = tilts[:, 1], tilts[:, 2]
    if omega_average:
        _average_over_omega(model, counts, params, std, start, prior, strain_prior, max_iter, tol)
    return params, std, deviance, converged


def _average_over_omega(model: _BoxModel, counts: torch.Tensor, params: np.ndarray, std: np.ndarray,
                        start: np.ndarray, prior: np.ndarray, strain_prior, max_iter: int, tol: float) -> None:
    """Replace strain[ and thickness] (and their std) in ``params`` and ``std`` by their posterior mean over omega.

    Strain and omega both move the Bragg peak, so the strain fitted at one omega carries that omega's error. The
    joint posterior is integrated over omega on :data:`OMEGA_NODES` (omega's posterior mean +- 1 and 2 posterior
    std): at each node strain[, thickness] and scale are fitted, and the node weighs as exp(-objective), the
    Poisson NLL plus the priors' penalties at the fit. The std combine the fits' own and the nodes' spread. Frames
    whose fits all fail keep their values. Costs len(OMEGA_NODES) more fits (about 2.2x the refinement time).
    """
    columns = [c for c, _ in model.std_columns]  # strain[, thickness]
    precision = np.nan_to_num(1 / prior[:, 0] ** 2)
    fits, spreads, objectives = [], [], []
    for k in OMEGA_NODES:
        node = params.copy()
        node[:, 1] = params[:, 1] + k * std[:, 1]
        fitted, fit_std, deviance, _ = _fit(model, counts, node, max_iter, tol, strain_prior)
        penalty = (precision * (fitted[:, 0] - start[:, 0]) ** 2
                   + ((node[:, 1] - start[:, 1]) / prior[:, 1]) ** 2) / 2
        fits.append(fitted[:, columns])
        spreads.append(fit_std[:, columns])
        objectives.append(deviance * counts.shape[1] / 2 + penalty)
    objectives, fits, spreads = np.array(objectives), np.array(fits), np.array(spreads)  # (nodes, n[, columns])
    with np.errstate(invalid="ignore", over="ignore"):
        weight = np.exp(-(objectives - np.nanmin(objectives, axis=0)))
        weight = np.where(np.isfinite(weight) & np.isfinite(fits).all(axis=2), weight, 0.0)
        weight /= weight.sum(axis=0)
        mean = np.einsum("kn,knc->nc", weight, np.nan_to_num(fits))
        second = np.einsum("kn,knc->nc", weight, np.nan_to_num(fits ** 2 + spreads ** 2))
    ok = np.isfinite(mean).all(axis=1)
    params[np.ix_(ok, columns)] = mean[ok]
    std[np.ix_(ok, columns)] = np.sqrt(np.clip(second[ok] - mean[ok] ** 2, 0, None))
