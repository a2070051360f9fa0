"""Calibration of an ensemble's spread: one factor per output so that the scaled spread matches the actual error.

The sample standard deviation over a few ensemble members underestimates the error (the members share their
training data and architecture). On a freshly simulated validation set the factor ``f_k`` of output k is chosen
so that ``RMS(error_k / (f_k * spread_k)) = 1`` over the frames; it is stored in the model's sidecar
(``spread_factor``: {output: factor}) and :meth:`~nanopilot.model.Predictor.predict` reports ``f_k * spread_k``.
Editing the sidecar leaves the weights' checksum valid (it covers the ``.pt`` file only).

    nanopilot train --calibrate MODEL [--frames 4000] [--seed 11]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..physics import Instrument
from .data import SimulatedSource
from .files import load_model, paths

#: Frames and seed of the calibration set (the accuracy benchmark's held-out sets use seeds 0, 1 and 2).
CALIBRATION_FRAMES, CALIBRATION_SEED = 4000, 11


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
    ranges = {name: tuple(meta["ranges"][name]) for name in predictor.outputs}
    source = SimulatedSource(Instrument.from_dict(meta["instrument"]), ranges, outputs=len(predictor.outputs),
                             counts=meta["counts"], kernel=meta["kernel"], reuse=1)
    images, params = source.batch(int(frames), np.random.default_rng([int(seed), 5]))
    mean, spread, _ = predictor.predict_raw(images.numpy())
    factors = spread_factors(mean - params.numpy(), spread)
    result = {name: float(f) for name, f in zip(predictor.outputs, factors)}
    sidecar = paths(path)[1]
    data = json.loads(sidecar.read_text())
    data["spread_factor"] = result
    data["spread_calibration"] = {"frames": int(frames), "seed": int(seed), "kernel": meta["kernel"],
                                  "counts": meta["counts"]}
    sidecar.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    log(f"calibrated {sidecar} on {frames} frames (seed {seed}): spread factor "
        + ", ".join(f"{k} {v:.3f}" for k, v in result.items()))
    return result
