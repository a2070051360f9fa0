"""The array steps of the frame preparation (:mod:`nanopilot.physics.detector`): binning with masked pixels, the
peak's centroid, the shift between two images of one pattern, cutting regions of interest, and the record of
prepared frames. Pure numpy (and scipy's box filter)."""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.ndimage import uniform_filter

OK = "ok"
WRONG_SHAPE = "wrong_shape"  # a raw frame of another shape than the detector's
BAD_TYPE = "bad_type"  # a raw frame that is not an array of numbers
#: A binned pixel is kept (its good sub-pixels scaled up) when at least this fraction of its sub-pixels is good.
MIN_GOOD_FRACTION = 0.5


@dataclasses.dataclass
class PreparedFrames:
    """What :meth:`FramePreparation.prepare` returns for N raw frames.

    frames : (N, h, w) float32 photons at the model's pixel pitch (0 at masked pixels and in flagged frames).
    mask : (N, h, w) bool, True for pixels to ignore.
    roi_corner : (N, 2) int (row, col) of the ROI's first pixel in the oriented detector frame ((-1, -1): flagged).
    status : (N,) object array of ``ok``, ``wrong_shape``, ``bad_type``, ``no_peak`` or ``all_masked``.
    """

    frames: np.ndarray
    mask: np.ndarray
    roi_corner: np.ndarray
    status: np.ndarray


def peak_centroids(photons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centres (n, 2) (row, col) in pixels of ``photons`` (n, H, W), found (n,)): the centroid of each frame's
    row and column sums above their median (the background; the peak must cover less than half of the rows and
    columns), after a 3-point median filter that removes isolated hot pixels and fills masked columns. Not found:
    nothing above the background (the centre is then 0)."""
    centres, found = [], np.ones(len(photons), dtype=bool)
    for axis in (2, 1):
        profile = median3(photons.sum(axis=axis, dtype=np.float64))
        profile = np.maximum(profile - np.median(profile, axis=1, keepdims=True), 0)
        total = profile.sum(axis=1)
        found &= total > 0
        centres.append((profile * np.arange(profile.shape[1])).sum(axis=1) / np.where(total > 0, total, 1))
    return np.stack(centres, axis=1), found


def pattern_shift(image: np.ndarray, template: np.ndarray, smooth: int = 5, rounds: int = 3) -> np.ndarray:
    """(rows, cols) float: how far ``image`` (H, W) is moved from ``template`` (H, W), two noisy images of one
    pattern (pixels; ``image(r, c) ~ template(r - rows, c - cols)``). The peak of the circular cross-correlation of
    the two images, box-smoothed over ``smooth`` pixels (Poisson noise) and less their means (a flat background),
    refined by a parabola through its neighbours; then ``rounds - 1`` times again against the template moved by the
    shift found so far (a Fourier shift), where the parabola's pull toward whole pixels vanishes. Shifts must stay
    under half the image's size."""
    a, b = (uniform_filter(np.asarray(x, np.float64), smooth) for x in (image, template))
    spectrum = np.fft.rfft2(a - a.mean()) * np.conj(np.fft.rfft2(b - b.mean()))
    ramp = np.fft.fftfreq(a.shape[0])[:, None], np.fft.rfftfreq(a.shape[1])[None, :]
    shift = np.zeros(2)
    for _ in range(rounds):
        moved = spectrum * np.exp(2j * np.pi * (ramp[0] * shift[0] + ramp[1] * shift[1]))
        shift += _parabola_peak(np.fft.irfft2(moved, s=a.shape))
    return shift


def photon_shift(image: np.ndarray, template: np.ndarray) -> np.ndarray:
    """(rows, cols) float: :func:`pattern_shift` of two photon images (H, W) of one pattern after the square-root
    (Anscombe) transform, which gives Poisson noise one variance at every count level (plain correlation lets the
    brightest, noisiest pixels dominate); ``template`` is scaled to ``image``'s total first (any number of visits)."""
    image = np.maximum(np.asarray(image, np.float64), 0)
    template = np.maximum(np.asarray(template, np.float64), 0)
    scale = image.sum() / template.sum() if template.sum() > 0 else 1.0
    return pattern_shift(np.sqrt(image + 0.375), np.sqrt(scale * template + 0.375))


def fourier_shift(image: np.ndarray, shift) -> np.ndarray:
    """``image`` (H, W) moved by ``shift`` (rows, cols) pixels, circularly, by a phase ramp of its Fourier transform
    (sub-pixel; the sum is kept)."""
    ramp = np.fft.fftfreq(image.shape[0])[:, None], np.fft.rfftfreq(image.shape[1])[None, :]
    phase = np.exp(-2j * np.pi * (ramp[0] * shift[0] + ramp[1] * shift[1]))
    return np.fft.irfft2(np.fft.rfft2(image) * phase, s=image.shape)


def _parabola_peak(cc: np.ndarray) -> np.ndarray:
    """(rows, cols) of the maximum of a circular correlation ``cc``, sub-pixel by a parabola per axis."""
    peak = np.unravel_index(np.argmax(cc), cc.shape)
    where = np.zeros(2)
    for axis, (k, n) in enumerate(zip(peak, cc.shape)):
        step = np.eye(2, dtype=int)[axis]
        before, here, after = (cc[tuple((np.asarray(peak) + d * step) % cc.shape)] for d in (-1, 0, 1))
        curvature = before - 2 * here + after
        where[axis] = (k + n // 2) % n - n // 2 + (0.5 * (before - after) / curvature if curvature < 0 else 0.0)
    return where


def fill_holes(image: np.ndarray, bad: np.ndarray, size: int = 5) -> np.ndarray:
    """``image`` (H, W) with its ``bad`` pixels set to the mean of the good ones in the ``size`` x ``size`` box around
    each (the image's good mean where there are none): fixed holes, at one place in every image, would pull a
    measured shift toward zero, and so would a hole filled with a value far from its surroundings."""
    good = (~bad).astype(np.float64)
    total, weight = (uniform_filter(x, size, mode="constant") for x in (np.where(bad, 0, image), good))
    local = np.where(weight > 0, total / np.maximum(weight, 1e-12), image[~bad].mean() if good.any() else 0.0)
    return np.where(bad, local, image).astype(image.dtype)


def block_sum(x: np.ndarray, b: int) -> np.ndarray:
    """(n, H/b, W/b) sums of the b x b blocks of ``x`` (n, H, W) (H and W multiples of b)."""
    rows = x[:, 0::b].copy()
    for i in range(1, b):
        rows += x[:, i::b]
    out = rows[:, :, 0::b].copy()
    for j in range(1, b):
        out += rows[:, :, j::b]
    return out


def median3(profiles: np.ndarray) -> np.ndarray:
    """3-point running median along the last axis of (n, L) (the ends kept)."""
    out = profiles.copy()
    out[:, 1:-1] = np.median(np.stack([profiles[:, :-2], profiles[:, 1:-1], profiles[:, 2:]]), axis=0)
    return out


def cut_rois(photons, bad, corners, shape):
    """The (n, h, w) ROIs at ``corners`` (n, 2) (relative to the arrays) of ``photons`` and ``bad``."""
    h, w = shape
    rois = np.empty((len(photons), h, w), photons.dtype)
    masks = np.empty((len(photons), h, w), bool)
    for i, (r, c) in enumerate(corners):
        rois[i], masks[i] = photons[i, r:r + h, c:c + w], bad[i, r:r + h, c:c + w]
    return rois, masks


def bin_frames(bad: np.ndarray, b: int, photons: np.ndarray | None = None, good: np.ndarray | None = None):
    """Binning by ``b`` of the pixels ``bad`` ((n, H, W) or (H, W)) and, if given, ``photons`` (n, H, W) (0 where
    bad): (binned photons (n, H/b, W/b) or None, binned mask (n or 1, H/b, W/b)). A block's sum is scaled by b^2 / its
    good pixels (the expected counts of the whole block) when at least :data:`MIN_GOOD_FRACTION` of it is good, else
    masked (0). ``good``: the blocks' good-pixel counts when known."""
    if good is None:
        good = block_sum((~(bad if bad.ndim == 3 else bad[None])).astype(np.float32), b)
    masked = good < MIN_GOOD_FRACTION * b * b
    if photons is None:
        return None, masked
    sums = block_sum(photons, b)
    if (good < b * b).any():  # some blocks have masked pixels
        sums *= np.where(masked, 0, b * b / np.maximum(good, 1)).astype(np.float32)
    return sums, np.broadcast_to(masked, sums.shape)


def raw_batch(raw, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(frames (N, R, C), status (N,)) of raw frames (an array, or a sequence of frames): frames of another shape
    than ``shape`` (R, C) or not of numbers are flagged (their rows zero, or all rows when the whole array is)."""
    try:
        arr = np.asarray(raw)
    except ValueError:  # frames of different shapes
        arr = None
    if arr is not None and arr.dtype.kind in "biuf":
        if arr.ndim not in (2, 3):
            raise ValueError(f"raw frames must be (N, R, C) or (R, C), got shape {arr.shape}")
        arr = arr[None] if arr.ndim == 2 else arr
        status = np.full(len(arr), OK if arr.shape[1:] == shape else WRONG_SHAPE, dtype=object)
        return arr, status
    frames = [np.asarray(f) if isinstance(f, np.ndarray) else _numbers(f) for f in raw]
    status = np.array([BAD_TYPE if f is None or f.dtype.kind not in "biuf" else
                       OK if f.shape == shape else WRONG_SHAPE for f in frames], dtype=object)
    good = [f for f, s in zip(frames, status) if s == OK]
    empty = np.zeros((0, *shape), np.float32)
    stacked = np.stack(good) if good else empty
    full = np.zeros((len(frames), *shape), stacked.dtype) if len(good) < len(frames) else stacked
    if len(good) < len(frames):
        full[status == OK] = stacked
    return full, status


def _numbers(frame) -> np.ndarray | None:
    try:
        array = np.asarray(frame)
        return array.astype(np.float64) if array.dtype.kind == "O" else array
    except (ValueError, TypeError):
        return None
