"""The estimate side of :class:`~nanopilot.model.predictor.Predictor`: calibrated std, the flat background and
residual check, and physics refinement after the network pass (a mixin; it uses the predictor's ``instrument``,
``kernel``, ``outputs``, ``metadata``, ``spread_factor``, ``level_calibration`` and ``residual_levels``).
"""

from __future__ import annotations

import numpy as np

from ..estimates import OK, RESIDUAL, Estimates, usable
from .residual import fit_background

#: Box-kernel refinement: the tilts' prior std is this factor times the network's validation RMSE (wider than
#: the RMSE because the network's errors have heavy tails near the ends of the trained ranges).
TILT_PRIOR_FACTOR = 2.0
#: Box-kernel refinement: the strain prior's std is this factor times the network's validation RMSE (chosen on
#: two simulated sets other than the accuracy benchmark's: 1.0, 1.5 and 2.0 changed the refined strain RMSE by
#: -1.5% to +1.5% against no prior; 1.5 was best on both).
STRAIN_PRIOR_FACTOR = 1.5


class EstimateRefinement:
    """Estimates out: what :meth:`Predictor.predict` does with the network's mean and spread."""

    def calibrated_std(self, spread: np.ndarray, totals: np.ndarray) -> np.ndarray:
        """(N, K) reported std of frames with ensemble spread (N, K) and total counts (N,): the count-level
        calibration where the model has one, else the spread times :attr:`spread_factor`."""
        if self.level_calibration is not None:
            return self.level_calibration.std(spread, totals)
        return spread * self.spread_factor

    def _background(self, clean: np.ndarray, totals: np.ndarray, params: np.ndarray, status: np.ndarray, *,
                    flag: bool = False):
        """Fit the flat background of the usable frames (ok or a warning) of ``clean`` (N, H, W) counts (totals
        (N,)) besides the patterns of their ``params`` (N, K); with ``flag`` set ``status`` (N,) to ``residual`` (in
        place) where the residual statistic exceeds the model's threshold at the frame's total counts. Returns
        (frames still usable (n,), background (n,), its std (n,)), counts per pixel."""
        check = np.flatnonzero(usable(status))
        level, level_std, stat = fit_background(clean[check], params[check], self.instrument, self.kernel)
        if flag and self.residual_levels is not None:
            limit = np.interp(np.log10(np.maximum(totals[check], 1.0)), *self.residual_levels)
            status[check[stat > limit]] = RESIDUAL
        kept = usable(status[check])
        return check[kept], level[kept], level_std[kept]

    def _refine(self, clean, params, std, status, refine):
        from ..fitting import refine as physics_refine

        todo = status == OK
        if refine is not True:
            typical = np.asarray(self.metadata.get("typical_std", [np.nan] * len(self.outputs)))
            todo &= (std > float(refine) * typical * self.spread_factor).any(axis=1)
        idx = np.flatnonzero(todo)
        if len(idx) == 0:
            return params, std, status
        k = len(self.outputs)
        fit_thickness = k == 4
        net_std = np.array([self.metadata["validation"][f"rmse_{n}"] for n in self.outputs])
        if self.kernel == "box":
            prior = np.full((len(idx), 4), np.nan)
            prior[:, 0], prior[:, 1:3] = STRAIN_PRIOR_FACTOR * net_std[0], TILT_PRIOR_FACTOR * net_std[1:3]
            start = Estimates.from_params(params[idx], np.full(len(idx), OK, dtype=object), std=prior[:, :k])
            result = physics_refine(clean[idx], start, self.instrument, kernel="box", fit_thickness=fit_thickness,
                                    strain_prior=True, omega_average=True)
        else:
            result = physics_refine(clean[idx], params[idx], self.instrument, fit_thickness=fit_thickness)
        refined = result.params(with_thickness=True)[:, :k]
        refined_var = np.stack([getattr(result, n + "_std") for n in self.outputs], axis=1) ** 2
        if self.kernel == "box":  # the network's estimate already entered as the tilts' prior
            combined, combined_std = refined, np.sqrt(refined_var)
        else:  # the smooth-kernel fit and the network err largely independently: inverse-variance combination
            net_var = net_std ** 2
            combined = params[idx] + net_var / (net_var + refined_var) * (refined - params[idx])
            combined_std = np.sqrt(net_var * refined_var / (net_var + refined_var))
        good = result.ok & np.isfinite(combined).all(axis=1)
        params[idx[good]] = combined[good]
        std[idx[good]] = combined_std[good]
        status[idx[~good]] = result.status[~good]
        return params, std, status
