"""Poisson likelihood of a frame under the forward model: the smooth-kernel model with its analytic Jacobian,
and batched Levenberg-Marquardt (Fisher scoring with Marquardt damping) in internal parameter units."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..physics import GAUSS_SIGMA_PER_PRECISION, Instrument
from ..physics.forward import _const, chi_matrix, laue_matrix

#: Internal parameter units: strain / 1e-4, omega / 1e-3 deg, chi / 1e-3 deg, log(a), log(thickness) / 1e-2.
STRAIN_UNIT, ANGLE_UNIT_DEG, LOG_THICKNESS_UNIT = 1e-4, 1e-3, 1e-2


_ANGLE_UNIT_RAD = math.radians(ANGLE_UNIT_DEG)


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


def _nll(mu: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Poisson negative log-likelihood per frame (without the log c! constant)."""
    return (mu - counts * torch.log(mu)).sum(dim=1)


def _fisher_and_gradient(mu, jac, counts):
    fisher = (jac / mu[:, None, :]) @ jac.transpose(1, 2)
    gradient = (jac @ (1 - counts / mu)[:, :, None])[..., 0]
    return fisher, gradient


def _fit(model: _Model, counts: torch.Tensor, start: np.ndarray, max_iter: int, tol: float,
         prior: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Levenberg-Marquardt on one batch, optionally with independent normal priors on the internal parameters.

    ``prior``: (centre, precision), both (n, P) in internal units (precision 1 / std^2; 0 where there is none):
    the objective is the Poisson NLL plus ``precision * (theta - centre)^2 / 2`` and the std are posterior std.
    Returns params (n, 4), std (n, 4), deviance per pixel (n,), converged."""
    n = len(counts)
    fixed = model.fixed(start)
    shape = model.shape(model.to_internal(start, np.ones(n)), fixed)
    total = shape.sum(dim=1)
    scale = torch.where(total > 0, counts.sum(dim=1) / total, torch.nan)  # Poisson MLE of a for a fixed shape
    theta = model.to_internal(start, scale.cpu().numpy())
    centre, precision = prior if prior is not None else (torch.zeros_like(theta), torch.zeros_like(theta))

    def objective(mu, counts, theta, rows):
        return _nll(mu, counts) + 0.5 * (precision[rows] * (theta - centre[rows]) ** 2).sum(dim=1)

    def fisher_and_gradient(rows):
        fisher, gradient = _fisher_and_gradient(mu[rows], jac[rows], counts[rows])
        return (fisher + torch.diag_embed(precision[rows]),
                gradient + precision[rows] * (theta[rows] - centre[rows]))

    mu, jac = model.evaluate(theta, fixed)
    nll = objective(mu, counts, theta, slice(None))
    damping = torch.full((n,), 1e-3, dtype=torch.float64, device=model.device)
    converged = torch.zeros(n, dtype=torch.bool, device=model.device)
    failed = ~torch.isfinite(nll)
    eye = torch.eye(model.n_params, dtype=torch.float64, device=model.device)
    for _ in range(max_iter):
        active = torch.nonzero(~converged & ~failed)[:, 0]
        if len(active) == 0:
            break
        fisher, gradient = fisher_and_gradient(active)
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
        nll_trial = objective(mu_trial, counts[active], trial, active)
        accept = torch.isfinite(nll_trial) & (nll_trial <= nll[active])
        accepted = active[accept]
        theta[accepted], mu[accepted], jac[accepted], nll[accepted] = \
            trial[accept], mu_trial[accept], jac_trial[accept], nll_trial[accept]
        damping[active] = torch.where(accept, damping[active] / 3, damping[active] * 4)
        failed |= damping > 1e12  # no step lowers the likelihood, yet the optimum is not reached
    fisher, _ = fisher_and_gradient(slice(None))
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
