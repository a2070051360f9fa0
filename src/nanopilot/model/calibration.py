"""Calibration of an ensemble's spread, so that the reported standard deviation matches the actual error.

The sample standard deviation over a few ensemble members underestimates the error (the members share their
training data and architecture). On a freshly simulated validation set:

- a model trained at one count level gets one factor ``f_k`` per output, chosen so that ``RMS(error_k / (f_k *
  spread_k)) = 1``; it is stored in the model's sidecar (``spread_factor``: {output: factor}) and
  :meth:`~nanopilot.model.Predictor.predict` reports ``f_k * spread_k``;
- a model trained across count levels (its error falls 10-fold from 2 to 10,000 peak counts, its members' spread
  does not follow it exactly) gets a :class:`LevelCalibration`: per bin of the frames' total counts, each
  frame's spread shrunk toward the bin's typical spread (the spread of 4 members is itself noisy, which gives the
  ratio error / spread heavy tails) and a factor per output and bin chosen so that 68% of the errors lie within
  1 std and 95% within 2 (``level_calibration`` in the sidecar).

Editing the sidecar leaves the weights' checksum valid (it covers the ``.pt`` file only).

    nanopilot train --calibrate MODEL [--frames 4000] [--seed 11]
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..physics import Instrument
from .data import Background, SimulatedSource
from .files import load_model, paths

#: Frames and seed of the calibration set (the accuracy benchmark's held-out sets use seeds 0, 1 and 2).
CALIBRATION_FRAMES, CALIBRATION_SEED = 4000, 11
#: Count-level bins of a :class:`LevelCalibration` (equally many calibration frames in each).
LEVEL_BINS = 8
#: Weight of a frame's own ensemble variance against its count level's typical one in a :class:`LevelCalibration`.
SPREAD_WEIGHT = 0.5
#: Gaussian shares within 1 and 2 std that a :class:`LevelCalibration`'s factors aim at.
TARGET_COVERAGE = (0.683, 0.954)


@dataclasses.dataclass
class LevelCalibration:
    """Reported std of an ensemble trained across count levels, as a function of the frame's total counts.

    ``std = factor(T) * sqrt(weight * spread**2 + (1 - weight) * typical(T)**2)`` per output, with ``factor`` and
    ``typical`` (the median spread) tabulated at ``log10_total`` (B,) bin centres (log10 of total counts) and
    interpolated linearly in between (the end values beyond).

    log10_total : (B,) bin centres. factor : (B, K) dimensionless. typical : (B, K) physical units.
    weight : 0-1, how much the frame's own spread counts.
    """

    log10_total: np.ndarray
    factor: np.ndarray
    typical: np.ndarray
    weight: float = SPREAD_WEIGHT

    def std(self, spread: np.ndarray, totals: np.ndarray) -> np.ndarray:
        """(N, K) calibrated std of frames with ensemble spread (N, K) and total counts (N,)."""
        x = np.log10(np.maximum(np.asarray(totals, dtype=np.float64), 1.0))
        factor = np.stack([np.interp(x, self.log10_total, f) for f in self.factor.T], axis=1)
        typical = np.stack([np.interp(x, self.log10_total, t) for t in self.typical.T], axis=1)
        return factor * np.sqrt(self.weight * np.asarray(spread) ** 2 + (1 - self.weight) * typical ** 2)

    @classmethod
    def fit(cls, error: np.ndarray, spread: np.ndarray, totals: np.ndarray, *, bins: int = LEVEL_BINS,
            weight: float = SPREAD_WEIGHT) -> LevelCalibration:
        """Fit on a calibration set: errors and spreads (N, K) in physical units, total counts (N,)."""
        which, centres = level_bins(totals, bins)
        factors, typicals = [], []
        for b in range(bins):
            sel = which == b
            typical = np.nanmedian(spread[sel], axis=0)
            shrunk = np.sqrt(weight * spread[sel] ** 2 + (1 - weight) * typical ** 2)
            factors.append([coverage_factor(z) for z in (np.abs(error[sel]) / shrunk).T])
            typicals.append(typical)
        return cls(centres, np.array(factors), np.array(typicals), float(weight))

    def to_dict(self, outputs) -> dict:
        return {"log10_total": self.log10_total.tolist(), "weight": self.weight,
                "factor": {n: self.factor[:, i].tolist() for i, n in enumerate(outputs)},
                "typical": {n: self.typical[:, i].tolist() for i, n in enumerate(outputs)}}

    @classmethod
    def from_dict(cls, data: dict, outputs) -> LevelCalibration:
        return cls(np.asarray(data["log10_total"], dtype=np.float64),
                   np.stack([np.asarray(data["factor"][n], dtype=np.float64) for n in outputs], axis=1),
                   np.stack([np.asarray(data["typical"][n], dtype=np.float64) for n in outputs], axis=1),
                   float(data["weight"]))


def coverage_factor(z: np.ndarray) -> float:
    """The factor f that brings the shares of |z| / f within 1 and 2 closest to :data:`TARGET_COVERAGE`
    (least squares over a fine grid of f); z: (N,) |error| / spread, non-finite values left out."""
    z = np.sort(z[np.isfinite(z)])
    candidates = np.quantile(z, TARGET_COVERAGE[0]) * np.geomspace(0.5, 2.0, 301)
    share = lambda limit: np.searchsorted(z, limit, side="right") / len(z)  # noqa: E731
    cost = [(share(f) - TARGET_COVERAGE[0]) ** 2 + (share(2 * f) - TARGET_COVERAGE[1]) ** 2 for f in candidates]
    return float(candidates[int(np.argmin(cost))])


def calibration_source(meta: dict, outputs) -> SimulatedSource:
    """Simulated frames as the model in ``meta`` (a sidecar) was trained on: its ranges, count levels, background
    and kernel."""
    background = (meta.get("config") or {}).get("data", {}).get("background")
    return SimulatedSource(Instrument.from_dict(meta["instrument"]), {n: tuple(meta["ranges"][n]) for n in outputs},
                           outputs=len(outputs), counts=meta["counts"], kernel=meta["kernel"], reuse=1,
                           background=Background(**background) if background else None)


def spread_factors(error: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Per-output factors ``f`` with ``RMS(error / (f * spread)) = 1``.

    Parameters
    ----------
    error : (N, K) estimate minus truth, physical units (strain, deg, deg[, A]).
    spread : (N, K) ensemble spread (sample std over members), same units.

    Returns
    -------
    (K,) dimensionless factors; frames with a zero or non-finite spread or error are left out.
    """
    z2 = (np.asarray(error, dtype=np.float64) / np.asarray(spread, dtype=np.float64)) ** 2
    z2 = np.where(np.isfinite(z2), z2, np.nan)
    return np.sqrt(np.nanmean(z2, axis=0))


def level_bins(totals: np.ndarray, bins: int = LEVEL_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(N,) bin index of each frame's total counts (N,) in ``bins`` bins of equally many frames, and (bins,) the
    median log10 total of each bin."""
    x = np.log10(np.maximum(np.asarray(totals, dtype=np.float64), 1.0))
    edges = np.quantile(x, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)
    return which, np.array([float(np.median(x[which == b])) for b in range(bins)])


def level_fields(predictor, frames: np.ndarray, params: np.ndarray, seed: int) -> dict:
    """The sidecar fields of a model trained across count levels, from calibration frames (N, H, W) counts drawn
    as it was trained and their true params (N, K):

    - ``level_calibration`` (:class:`LevelCalibration`);
    - ``residual_levels``: the residual check's threshold per count level, 1.5 x the 99.9th percentile of the
      statistic of each bin's frames (one threshold for all levels would be set by the faintest frames, whose
      deviance per count is largest, and pass any bright frame);
    - ``reference_rmse``: the RMSE per output on :data:`CALIBRATION_FRAMES` frames at the published count level
      without background (seeded by ``seed``), the yardstick of :data:`~nanopilot.estimates.UNCERTAIN`.
    """
    from .residual import residual_statistic

    mean, spread, _ = predictor.predict_raw(frames)
    totals = frames.reshape(len(frames), -1).sum(axis=1, dtype=np.float64)
    which, centres = level_bins(totals)
    statistic = residual_statistic(frames, mean, predictor.instrument, predictor.kernel)
    thresholds = [1.5 * float(np.nanquantile(statistic[which == b], 0.999)) for b in range(len(centres))]
    meta = predictor.metadata
    source = SimulatedSource(predictor.instrument, {n: tuple(meta["ranges"][n]) for n in predictor.outputs},
                             outputs=len(predictor.outputs), kernel=meta["kernel"], reuse=1)
    images, truth = source.batch(CALIBRATION_FRAMES, np.random.default_rng([int(seed), 7]))
    reference, _, _ = predictor.predict_raw(images.numpy())
    rmse = np.sqrt(((reference - truth.numpy()) ** 2).mean(axis=0))
    return {"level_calibration": LevelCalibration.fit(mean - params, spread, totals).to_dict(predictor.outputs),
            "residual_levels": {"log10_total": centres.tolist(), "threshold": thresholds},
            "reference_rmse": {"counts": "published", **dict(zip(predictor.outputs, rmse.tolist()))}}


def calibrate(path: str | Path, *, frames: int = CALIBRATION_FRAMES, seed: int = CALIBRATION_SEED,
              threads: int | None = None, log=print) -> dict:
    """Fit the spread factors of the model file ``path`` on a fresh simulated set and write them to its sidecar.

    The set is ``frames`` random off-grid states uniform over the model's trained ranges, rendered with its
    kernel at its count level with Poisson noise (seeded by ``seed``).

    Parameters
    ----------
    path : model file (``NAME``, ``NAME.pt`` or ``NAME.json``).
    frames : number of calibration frames.
    seed : seed of the parameters and the noise.
    threads : torch threads for the network pass (None: torch's setting).
    log : called with one line of results.

    Returns
    -------
    dict {output: factor} as written to the sidecar (key ``spread_factor``, with ``spread_calibration``
    recording frames and seed).

    Raises
    ------
    ValueError for a single network (no ensemble spread to calibrate).
    """
    from .predictor import Predictor

    model = load_model(path)
    if len(model.networks) < 2:
        raise ValueError(f"model {model.path} is a single network: it has no ensemble spread to calibrate")
    meta = model.metadata
    predictor = Predictor(model, threads=threads)
    source = calibration_source(meta, predictor.outputs)
    images, params = source.batch(int(frames), np.random.default_rng([int(seed), 5]))
    mean, spread, _ = predictor.predict_raw(images.numpy())
    factors = spread_factors(mean - params.numpy(), spread)
    result = {name: float(f) for name, f in zip(predictor.outputs, factors)}
    sidecar = paths(path)[1]
    data = json.loads(sidecar.read_text())
    data["spread_factor"] = result
    data["spread_calibration"] = {"frames": int(frames), "seed": int(seed), "kernel": meta["kernel"],
                                  "counts": meta["counts"]}
    if isinstance(source.counts, tuple):
        data.update(level_fields(predictor, images.numpy(), params.numpy(), seed))
    sidecar.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    log(f"calibrated {sidecar} on {frames} frames (seed {seed}): spread factor "
        + ", ".join(f"{k} {v:.3f}" for k, v in result.items())
        + (", and per count level" if isinstance(source.counts, tuple) else ""))
    return result
