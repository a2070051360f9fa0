"""Conventional library fitting: every frame scored against every pattern of a simulated library.

Both scores are one (frames x pixels) @ (pixels x library) matrix product, done in chunks: the library is
streamed from its HDF5 file chunk by chunk (read once per call), and the frames in batches, so memory stays
bounded whatever the library and batch sizes.

- ``"correlation"``, the published method (PHYSICS.md section 5): library patterns normalised to unit sum,
  score = frame . pattern, the score cube summed onto each parameter axis, each 1-D profile minus its minimum,
  estimate = the profile's centre of mass on the grid. Biased toward the grid centre.
- ``"likelihood"``: Poisson log-likelihood with a free scale, score = counts . log(unit-sum pattern + floor);
  the estimate is the best grid point. About an order of magnitude more accurate, limited by the grid step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..estimates import Estimates, check_frames
from ..physics import Instrument, Library

METHODS = ("correlation", "likelihood")

#: Floor added to unit-sum library patterns before the log (likelihood method): the fraction of a frame's
#: counts the model allows in a pixel where the pattern is zero.
LIKELIHOOD_FLOOR = 1e-6


def correlation_fit(frames, library: Library | str | Path, *, method: str = "correlation",
                    instrument: Instrument | None = None, chunk: int = 8192, batch: int = 4096,
                    floor: float = LIKELIHOOD_FLOOR, progress: bool = False) -> Estimates:
    """Fit frames by scoring them against every pattern of a library.

    Parameters
    ----------
    frames : array-like, (N, H, W) or (H, W)
        Detector frames in counts (rows = detector y), H x W the library instrument's ROI.
    library : Library or path to a library file
        The simulated library; its grid (``grid.order``, chi fastest) gives the parameter axes.
    method : {"correlation", "likelihood"}
        The published centre-of-mass correlation method, or the Poisson likelihood best grid point.
    instrument : Instrument, optional
        The setup the frames come from; a library made for another setup is refused (ValueError).
    chunk : library patterns per streamed chunk.
    batch : frames per matrix product.
    floor : unit-sum floor inside the log (likelihood method only).
    progress : show a progress bar over the library.

    Returns
    -------
    Estimates
        strain, omega (deg), chi (deg) and, when the library has a thickness axis, thickness (A; otherwise
        NaN). ``score``: the best match score (correlation: frame . unit-sum pattern, counts; likelihood:
        counts . log(unit-sum pattern + floor)). No std (NaN). Frames failing :func:`check_frames` get
        their status and NaN values.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if chunk < 1 or batch < 1:
        raise ValueError(f"chunk and batch must be positive, got chunk={chunk}, batch={batch}")
    if not floor > 0:
        raise ValueError(f"floor must be positive, got {floor!r}")
    own = not isinstance(library, Library)
    lib = Library.load(library, instrument) if own else library
    try:
        if instrument is not None and not own:
            instrument.require_same(lib.instrument, f"library {lib.path}")
        clean, status = check_frames(frames, lib.instrument)
        x = torch.from_numpy(clean.reshape(len(clean), -1))
        if method == "correlation":
            score, grid_estimate = _correlation(x, lib, chunk, batch, progress)
        else:
            score, grid_estimate = _likelihood(x, lib, chunk, batch, floor, progress)
    finally:
        if own:
            lib.close()
    params = np.full((len(clean), 4), np.nan)
    for axis, name in enumerate(lib.grid.order):
        params[:, ("strain", "omega", "chi", "thickness").index(name)] = grid_estimate[:, axis]
    return Estimates.from_params(params, status, score=score)


def _chunks(lib: Library, chunk: int, progress: bool, desc: str):
    """Library chunks as ``(start, unit-sum patterns (n, H*W) float32 tensor)``.

    One buffer is read into and normalised in place for every chunk (fresh 100 MB arrays per chunk cost more
    in page faults than the arithmetic); a yielded tensor is valid until the next one and may be changed.
    """
    rows, cols = lib.instrument.roi_shape
    buffer = np.empty((min(chunk, len(lib)), rows, cols), dtype=np.float32)
    with tqdm(total=len(lib), unit="pattern", desc=desc, disable=not progress) as bar:
        for start in range(0, len(lib), chunk):
            n = min(chunk, len(lib) - start)
            lib.images.read_direct(buffer, np.s_[start:start + n], np.s_[0:n])
            patterns = torch.from_numpy(buffer[:n].reshape(n, rows * cols))
            total = patterns.sum(dim=1, keepdim=True)
            yield start, patterns.div_(torch.where(total > 0, total, torch.ones_like(total)))
            bar.update(n)


def _scores(x: torch.Tensor, patterns: torch.Tensor, batch: int, out: torch.Tensor):
    """Yield ``(first frame, scores (b, n))`` of frame batches against one chunk, in a reused buffer."""
    for b in range(0, len(x), batch):
        rows = x[b:b + batch]
        scores = out[:len(rows) * len(patterns)].view(len(rows), len(patterns))
        yield b, torch.matmul(rows, patterns.T, out=scores)


def _axis_indicator(grid, start: int, n: int) -> torch.Tensor:
    """(n, sum of axis lengths) one-hot matrix mapping flat library indices onto every grid axis."""
    index = np.unravel_index(np.arange(start, start + n), grid.shape)
    offsets = np.cumsum((0,) + grid.shape[:-1])
    onehot = torch.zeros((n, sum(grid.shape)), dtype=torch.float32)
    rows = torch.arange(n)
    for axis_index, offset in zip(index, offsets):
        onehot[rows, torch.from_numpy(axis_index + offset)] = 1.0
    return onehot


def _grid_values(grid) -> list[np.ndarray]:
    return [getattr(grid, name).values for name in grid.order]


def _correlation(x: torch.Tensor, lib: Library, chunk: int, batch: int, progress: bool):
    """Published method: axis profiles of the score cube, minimum removed, centre of mass per axis."""
    grid = lib.grid
    profiles = torch.zeros((len(x), sum(grid.shape)), dtype=torch.float64)
    best = torch.full((len(x),), -torch.inf)
    out = torch.empty(min(batch, len(x)) * min(chunk, len(lib)))
    for start, patterns in _chunks(lib, chunk, progress, "correlation fit"):
        onehot = _axis_indicator(grid, start, len(patterns))
        for b, scores in _scores(x, patterns, batch, out):
            profiles[b:b + batch] += (scores @ onehot).double()
            best[b:b + batch] = torch.maximum(best[b:b + batch], scores.amax(dim=1))
    estimate = np.empty((len(x), len(grid.shape)))
    offsets = np.cumsum((0,) + grid.shape)
    for axis, values in enumerate(_grid_values(grid)):
        profile = profiles[:, offsets[axis]:offsets[axis + 1]].numpy()
        weight = profile - profile.min(axis=1, keepdims=True)
        total = weight.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            centre = (weight @ values) / total
        # A flat profile (single-point axis, or a frame equally like every pattern) has no centre of mass:
        # the axis is not constrained, so report its mid value.
        estimate[:, axis] = np.where(total > 0, centre, values.mean())
    return best.numpy().astype(np.float64), estimate


def _likelihood(x: torch.Tensor, lib: Library, chunk: int, batch: int, floor: float, progress: bool):
    """Poisson likelihood with a free scale: best grid point of counts . log(unit-sum pattern + floor)."""
    best = torch.full((len(x),), -torch.inf)
    best_index = torch.zeros(len(x), dtype=torch.long)
    out = torch.empty(min(batch, len(x)) * min(chunk, len(lib)))
    for start, patterns in _chunks(lib, chunk, progress, "likelihood fit"):
        log_patterns = patterns.add_(floor).log_()
        for b, scores in _scores(x, log_patterns, batch, out):
            value, index = scores.max(dim=1)
            better = value > best[b:b + batch]
            best[b:b + batch] = torch.where(better, value, best[b:b + batch])
            best_index[b:b + batch] = torch.where(better, index + start, best_index[b:b + batch])
    index = np.unravel_index(best_index.numpy(), lib.grid.shape)
    estimate = np.stack([values[i] for values, i in zip(_grid_values(lib.grid), index)], axis=1)
    return best.numpy().astype(np.float64), estimate


__all__ = ["LIKELIHOOD_FLOOR", "METHODS", "correlation_fit"]
