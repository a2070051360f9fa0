"""Pixels the network must not see: a detector mask (module gaps, dead and hot pixels known in advance; an array
or a file, see :func:`load_mask`) and hot pixels found in each frame. Both are filled from their good neighbours
before the network.

Hot pixels are counts the physics cannot produce: no pixel of a noiseless pattern exceeds its brightest
neighbour (checked on 4,000 random in-range patterns of the default setup), so a pixel far above its brightest
neighbour, beyond what Poisson noise allows, is flagged. With :data:`HOT_Z` and :data:`HOT_MARGIN` no pixel of
1,000 clean frames was flagged at any peak count level from 2 to 10,000, and 99.6% of +40-count hot pixels were
found at 2 and 7 counts (at 300 counts and above only those off the bright ring stand out, and only they matter).
"""

from __future__ import annotations

import os

import numpy as np
from scipy import ndimage

from ..physics.arrays import HDF5_SUFFIXES, IMAGE_SUFFIXES, read_array  # noqa: F401 (public here before)

#: A pixel is hot when its counts exceed ``m + HOT_Z * sqrt(m + 1) + HOT_MARGIN``, m its brightest neighbour's.
HOT_Z, HOT_MARGIN = 5.0, 8.0
_NEIGHBOURS = np.ones((1, 3, 3), dtype=bool)
_NEIGHBOURS[0, 1, 1] = False
_OFFSETS = list(zip(*np.nonzero(_NEIGHBOURS[0])))  # (dy, dx) of the 8 neighbours in a frame padded by one pixel
_SPARSE = 0.02  # above this share of candidate pixels every pixel is looked at (cheaper than indexing them)


def find_hot_pixels(frames: np.ndarray) -> np.ndarray:
    """(N, H, W) bool: pixels of ``frames`` (N, H, W) counts (>= 0) far above their brightest of 8 neighbours.

    Only pixels above ``HOT_Z + HOT_MARGIN`` (the threshold next to dark neighbours) can be hot: in a frame of a
    few counts per pixel only those few are looked at, in a bright one every pixel."""
    candidates = frames > HOT_Z + HOT_MARGIN
    if np.count_nonzero(candidates) > _SPARSE * candidates.size:
        return frames > _threshold(_brightest_neighbours(frames))
    hot = np.zeros(frames.shape, dtype=bool)
    n, y, x = np.nonzero(candidates)
    if len(n):
        padded = np.pad(frames, ((0, 0), (1, 1), (1, 1)))
        brightest = np.zeros(len(n), dtype=frames.dtype)
        for dy, dx in _OFFSETS:
            np.maximum(brightest, padded[n, y + dy, x + dx], out=brightest)
        hot[n, y, x] = frames[n, y, x] > _threshold(brightest)
    return hot


def _threshold(brightest: np.ndarray) -> np.ndarray:
    return brightest + HOT_Z * np.sqrt(brightest + 1) + HOT_MARGIN


def _brightest_neighbours(frames: np.ndarray) -> np.ndarray:
    """(N, H, W): the largest of each pixel's 8 neighbours (0 beyond the frame's edge)."""
    rows, cols = frames.shape[1:]
    padded = np.pad(frames, ((0, 0), (1, 1), (1, 1)))
    brightest = np.zeros_like(frames)
    for dy, dx in _OFFSETS:
        np.maximum(brightest, padded[:, dy:dy + rows, dx:dx + cols], out=brightest)
    return brightest


def fill_pixels(frames: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """A float32 copy of ``frames`` (N, H, W) with each ``bad`` pixel ((N, H, W) or (H, W) bool) replaced by the
    mean of its good neighbours (of 8; 0 where it has none)."""
    bad = np.broadcast_to(bad, frames.shape)
    good = np.where(bad, 0.0, frames).astype(np.float32)
    weights = (~bad).astype(np.float32)
    kernel = _NEIGHBOURS.astype(np.float32)
    sums = ndimage.convolve(good, kernel, mode="constant", cval=0.0)
    counts = ndimage.convolve(weights, kernel, mode="constant", cval=0.0)
    return np.where(bad, np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0), good)


def load_mask(source, shape: tuple[int, int]) -> np.ndarray:
    """A detector mask as an (H, W) bool array, True where a pixel must be ignored (any nonzero value: the NeXus
    ``pixel_mask`` and pyFAI convention).

    ``source``: an array; a ``.npy`` file; an HDF5 / NeXus file (its first dataset named ``pixel_mask``, e.g.
    ``/entry/instrument/detector/pixel_mask``, or ``FILE::/path/to/dataset``); or an image file (``.tif``, ``.png``,
    an areaDetector-style mask image). ``shape``: the (H, W) the frames have; another shape raises ValueError naming
    the source.
    """
    if isinstance(source, (str, os.PathLike)):
        mask, where = read_array(str(source), "pixel_mask", what="mask file"), str(source)
    else:
        mask, where = np.asarray(source), "the mask array"
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.shape != tuple(shape):
        raise ValueError(f"{where} has shape {mask.shape}; the frames have shape {tuple(shape)}: give a mask of the "
                         f"ROI's pixels")
    return mask != 0
