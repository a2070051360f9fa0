"""numpy twin of the box-kernel forward model for the CPU (:func:`simulate_box`): the same patterns as
:func:`~.forward.simulate` with few torch dispatches per pattern."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from .geometry import _check_params, _default_instrument, _geometry
from .instrument import Instrument
from .intensity import intensity_scale


@functools.lru_cache(maxsize=8)
def _donut_prefix(instrument: Instrument) -> np.ndarray:
    """Running sums of the donut's pupil rows, (V + 1, U) float32: row v sums rows 0..v-1 (exact integers)."""
    donut = _geometry(instrument)["donut"]
    return np.concatenate([np.zeros((1, donut.shape[1])), np.cumsum(donut, axis=0)]).astype(np.float32)


def _band_np(base: np.ndarray, offsets: np.ndarray, precision: float):
    """numpy twin of :func:`~.forward._box_band` for ``base`` (N, R): ``(raw, index, inside)``, each (N, R, band).

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
