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

import numpy as np
import torch
from tqdm.auto import tqdm

from ..estimates import NOT_CONVERGED, OK, Estimates, check_frames, usable
from ..physics import Instrument
from .box_tilts import _BoxModel, _fit_box
from .likelihood import _Model, _fit

#: Box kernel: prior std (deg) of omega and chi where ``initial`` gives none (the published network's errors).
DEFAULT_TILT_STD_DEG = (5e-4, 1.5e-3)


def refine(frames, initial, instrument: Instrument | None = None, *, kernel: str = "gauss",
           fit_thickness: bool = False, max_iter: int = 50, tol: float = 1e-6, floor: float = 1e-4,
           batch: int = 256, rounds: int = 1, strain_prior: bool = False, omega_average: bool = False,
           device=None, progress: bool = False) -> Estimates:
    """Refine estimates by maximising each frame's Poisson likelihood under the forward model.

    Parameters
    ----------
    frames : array-like, (N, H, W) or (H, W)
        Detector frames in counts (rows = detector y).
    initial : Estimates or array (N, 3) or (N, 4)
        Starting strain, omega (deg), chi (deg)[, thickness (A)]; a missing or NaN thickness means
        ``instrument.thickness``. Frames whose initial Estimates status is not ok keep that status (a failure: not
        refined, values NaN; a warning such as ``edge``: refined, values kept). With
        ``kernel="box"`` the start is also the prior of the tilts: normal with the Estimates' ``omega_std`` and
        ``chi_std`` (deg) where finite, else :data:`DEFAULT_TILT_STD_DEG` (and of strain with ``strain_prior``).
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
    rounds : box kernel: alternations of tilt posterior and strain fit (one more tilt posterior follows; a second
        round changed the network-started RMSE by < 0.5% on 300 frames at about twice the cost).
    strain_prior : box kernel: also a normal prior on strain, centred on the start with the initial Estimates'
        ``strain_std`` where finite (the returned ``strain_std`` is then the posterior std).
    omega_average : box kernel: return strain (and thickness) averaged over the omega posterior instead of their
        fit at the most probable omega (strain and omega both move the Bragg peak): from the default ensemble's
        start, strain RMSE 1.034e-4 instead of 1.080e-4 on 400 held-out frames, at 2.2 times the cost.
    device : torch device for the computation (default CPU).
    progress : show a progress bar over frames.

    Returns
    -------
    Estimates
        Refined strain, omega (deg), chi (deg), thickness (A: fitted, or the initial value when given, else NaN);
        ``*_std`` from the inverse Fisher information at the optimum (the scale ``a`` marginalised; thickness std
        only when fitted; box kernel: strain and thickness at fixed tilts, the tilts' std from their posterior);
        ``score`` the Poisson deviance per pixel. Status: :func:`check_frames`' status, the initial estimate's
        status, or ``not_converged`` (no finite start, or no convergence in ``max_iter``).
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
    todo = np.flatnonzero(usable(status))
    model = (_BoxModel if kernel == "box" else _Model)(instrument, fit_thickness, floor, device)
    prior = _prior(initial, len(clean), strain_prior)
    with tqdm(total=len(todo), unit="frame", desc="refine", disable=not progress) as bar:
        for first in range(0, len(todo), batch):
            idx = todo[first:first + batch]
            counts = torch.as_tensor(clean[idx].reshape(len(idx), -1), dtype=torch.float64, device=model.device)
            if kernel == "box":
                p, s, deviance, converged = _fit_box(model, counts, start[idx], prior[idx], max_iter, tol, rounds,
                                                     omega_average)
            else:
                p, s, deviance, converged = _fit(model, counts, start[idx], max_iter, tol)
            params[idx], std[idx], score[idx] = p, s, deviance
            status[idx[~converged]] = NOT_CONVERGED
            bar.update(len(idx))
    if not fit_thickness:
        params[:, 3] = np.where(thickness_given, start[:, 3], np.nan)
    return Estimates.from_params(params, status, std=std, score=score)


def _prior(initial, n: int, strain_prior: bool) -> np.ndarray:
    """(n, 3) box-kernel prior std of strain, omega (deg) and chi (deg): the initial Estimates' std where finite and
    positive (strain only with ``strain_prior``), else none for strain (NaN) and :data:`DEFAULT_TILT_STD_DEG`."""
    prior = np.tile(np.asarray((np.nan, *DEFAULT_TILT_STD_DEG), dtype=np.float64), (n, 1))
    if isinstance(initial, Estimates):
        given = np.stack([initial.strain_std, initial.omega_std, initial.chi_std], axis=1).astype(np.float64)
        given[:, 0] = given[:, 0] if strain_prior else np.nan
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
    status[usable(status) & bad] = NOT_CONVERGED
    return start, thickness_given, status


__all__ = ["refine"]
