"""From the raw detector frame to the model's input: orientation, dark, flat, gain, masks, region of interest and
binning (PHYSICS.md section 8). Pure numpy; configured once per experiment, in a YAML file beside the instrument's.

A :class:`FramePreparation` turns a batch of raw frames (N, R, C) (ADU, as the detector writes them) into photon
counts (N, h, w) at the model's pixel pitch, the pixels to ignore, the ROI's position and a status per frame. Steps,
in this order (the pixel-wise ones only on the pixels the ROI, or the peak's search window, needs):

1. orientation: transpose, then flip the rows, then flip the columns, so that columns are detector x (the scattering
   direction) and rows detector y;
2. dark subtraction (ADU); 3. flat division (relative efficiency); 4. gain: photons = (ADU - dark) / (flat * gain),
   where values below zero (noise under the dark level) read zero;
5. masking: the configured mask (module gaps, hot and dead pixels), pixels whose flat or dark is not usable, and
   each frame's own invalid values (NaN or inf, negative raw values, raw values at or above ``saturation``, e.g. a
   2**32 - 1 marker);
6. region of interest: fixed (``roi_corner`` or ``roi_centre``; default centred on the detector); with
   ``follow_peak``, centred on the peak's centroid inside the search window (and kept inside it); with
   ``follow_drift``, the fixed ROI moved by the peak's drift (whole detector pixels, given per call: the live
   analysis measures it on reference frames taken at one sample position with a :class:`~.drift.DriftTrack` of
   their :meth:`FramePreparation.drift_image`);
7. binning: each b x b block is summed. A block with masked pixels gets the mean of its good pixels times b^2
   (the expected counts, unbiased for Poisson data) when at least half of it is good (``MIN_GOOD_FRACTION`` of
   :mod:`.frame_steps`); else the binned pixel is masked (zero, and left to the model's mask handling).

A peak-following ROI tracks a drifting peak, but a tilt moves the donut too: the ROI then also follows the tilts
(by whole detector pixels), and the model's omega and chi are relative to the ROI's position, which is reported per
frame for that reason. A drift cannot be told from a tilt in one frame; at one sample position the tilts do not
change, so repeated frames there measure the drift alone: that is what ``follow_drift`` uses, and its tilts stay
absolute.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from .detector_config import PreparationConfig
from .frame_steps import BAD_TYPE, OK, WRONG_SHAPE  # noqa: F401 (prepare's statuses, beside its others here)
from .frame_steps import (PreparedFrames, bin_frames, cut_rois, fill_holes, peak_centroids, photon_shift,
                          raw_batch)

# Per-frame statuses (the strings of nanopilot.estimates).
NO_PEAK = "no_peak"  # follow_peak: no counts above the background in the search window
DRIFT_OUTSIDE = "drift_outside"  # follow_drift: the drifted ROI leaves the search window
ALL_MASKED = "all_masked"  # no pixel of the prepared frame could be used


@dataclasses.dataclass(frozen=True, eq=False)
class FramePreparation(PreparationConfig):
    """Raw detector frames -> photon counts at the model's pixel pitch (see the module docstring for the steps).

    Defaults: a 256 x 256 detector of 55 um pixels whose central 128 x 128 pixels are binned 2 x 2, the published
    setup (110 um, 64 x 64; :class:`~nanopilot.physics.Instrument`). Equal configurations have equal
    :meth:`fingerprint` (compare those: arrays make ``==`` meaningless).

    Attributes (units)
    ------------------
    detector_shape : (rows, cols) of the raw frames as the detector writes them (pixels).
    pixel_size : the detector's own pixel (m); the model's pixel is ``pixel_size * binning``.
    roi_shape : (rows, cols) of the region of interest in detector pixels, after orientation.
    binning : b, the ROI is summed in b x b blocks; it must divide ``roi_shape``.
    roi_corner, roi_centre : (row, col) of the ROI's first pixel, or of its centre (pixel ``shape // 2`` of the ROI),
        in the oriented detector frame; at most one; neither: the ROI is centred on the detector.
    follow_peak : centre the ROI on each frame's peak centroid inside the search window (reported per frame).
    follow_drift : move the fixed ROI by the peak's drift, a whole-pixel ``shift`` given to :meth:`prepare`
        (reported per frame); :meth:`drift_image` and :meth:`drift` (or a :class:`~.drift.DriftTrack`) measure it on
        reference frames.
    search_window : (rows, cols) of the window, centred where the fixed ROI would be, in which the peak is sought
        or the ROI may drift (detector pixels; None: the whole detector). The peak must cover less than half of its
        rows and columns.
    dark : dark frame (ADU), flat : relative efficiency (dimensionless, about 1), mask : pixels to ignore (nonzero):
        each an (R, C) array in the raw layout, or a file (``.npy``; HDF5 / NeXus, ``FILE::/dataset`` or a dataset
        named dark / flatfield / pixel_mask; an image). Relative paths in a YAML file are relative to the file.
    gain : ADU per photon.
    saturation : raw values at or above it (ADU) are masked in their frame (None: none).
    transpose, flip_rows, flip_cols : orientation, applied in this order, so that columns are detector x.
    """

    detector_shape: tuple[int, int] = (256, 256)
    pixel_size: float = 55e-6
    roi_shape: tuple[int, int] = (128, 128)
    binning: int = 2
    roi_corner: tuple[int, int] | None = None
    roi_centre: tuple[int, int] | None = None
    follow_peak: bool = False
    follow_drift: bool = False
    search_window: tuple[int, int] | None = None
    dark: np.ndarray | str | os.PathLike | None = None
    flat: np.ndarray | str | os.PathLike | None = None
    mask: np.ndarray | str | os.PathLike | None = None
    gain: float = 1.0
    saturation: float | None = None
    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    def __post_init__(self):
        self._check_fields()
        corner = self._nominal_corner()
        self._set("_corner", corner)
        moving = self.follow_peak or self.follow_drift
        self._set("_region", self._search_region(corner) if moving else (*corner, *self.roi_shape))
        self._load_calibration()

    # ----------------------------------------------------------------- the per-frame work
    def prepare(self, raw, shift=(0, 0)) -> PreparedFrames:
        """Prepare raw frames: an (N, R, C) or (R, C) array (ADU), or a sequence of frames (each checked).

        ``shift``: with ``follow_drift``, the peak's drift (rows, cols) in detector pixels of the oriented frame, (2,)
        or per frame (N, 2), by which the ROI moves (rounded to whole pixels; ignored without ``follow_drift``).
        Per-frame problems are statuses (``wrong_shape``, ``bad_type``, ``no_peak``, ``drift_outside``,
        ``all_masked``), never errors; a flagged frame is all zeros and all masked, its ``roi_corner`` (-1, -1).
        Only the ROI's (or the search window's) pixels are copied. Raises ValueError only for an array of rank other
        than 2 or 3.
        """
        arr, status = raw_batch(raw, self.detector_shape)
        n = len(status)
        h, w = self.output_shape
        out = PreparedFrames(np.zeros((n, h, w), np.float32), np.ones((n, h, w), bool),
                             np.full((n, 2), -1, dtype=np.int64), status)
        good = np.flatnonzero(status == OK)
        if len(good) == 0:
            return out
        photons, bad = self._photons(arr if len(good) == n else arr[good])
        corners, binned_good = np.broadcast_to(np.asarray(self._corner), (len(good), 2)), None
        if self.follow_peak or self.follow_drift:
            corners, found = (self._peak_corners(photons) if self.follow_peak else
                              self._drift_corners(np.broadcast_to(shift, (n, 2))[good]))
            status[good[~found]] = NO_PEAK if self.follow_peak else DRIFT_OUTSIDE
            photons, bad = cut_rois(photons, np.broadcast_to(bad, photons.shape), corners - self._region[:2],
                                    self.roi_shape)
            corners = np.where(found[:, None], corners, -1)
        elif bad.ndim == 2:  # no frame has invalid pixels of its own: the configured mask's binning holds
            binned_good = self._good
        frames, masked = bin_frames(bad, self.binning, photons, good=binned_good)
        status[good[masked.reshape(len(good), -1).all(axis=1) & (status[good] == OK)]] = ALL_MASKED
        kept = status[good] == OK
        out.frames[good[kept]], out.mask[good[kept]], out.roi_corner[good] = frames[kept], masked[kept], corners
        return out

    def drift_image(self, raw) -> tuple[np.ndarray, int]:
        """(image (rows, cols) float32, frames used): the photons of raw reference frames summed over the search
        window (the ROI when it does not move), masked pixels at the mean of their good neighbours; frames that are
        not raw frames of the detector's shape are left out. Two such images taken at one sample position give the
        peak's drift between them (:meth:`drift`)."""
        arr, status = raw_batch(raw, self.detector_shape)
        ok = status == OK
        if not ok.any():
            return np.zeros(self._region[2:], np.float32), 0
        photons, bad = self._photons(arr[ok])
        image, bad = photons.sum(axis=0), bad if bad.ndim == 2 else bad.any(axis=0)
        return fill_holes(image, bad), int(ok.sum())

    @staticmethod
    def drift(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """(rows, cols) float: the peak's drift (detector pixels) from the :meth:`drift_image` ``reference`` to
        ``image``, by cross-correlation of their square roots (:func:`~.frame_steps.photon_shift`; about 0.05-0.08
        pixel RMS with 4 frames of the published 7-count level each)."""
        return photon_shift(image, reference)

    def _photons(self, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(photons, bad) over the region: float32 photons (n, rows, cols), 0 where bad, and the masked pixels,
        (n, rows, cols), or the configured (rows, cols) when no frame has invalid values of its own."""
        row, col, rows, cols = self._region
        raw = self.orient(arr)[:, row:row + rows, col:col + cols]
        photons = raw.astype(np.float32)
        own = self._invalid(raw if raw.dtype.kind in "iu" else photons)
        if self._dark is not None:
            photons -= self._dark
        photons *= self._scale  # 0 at the configured mask's pixels
        np.maximum(photons, 0, out=photons)
        if own is None or not own.any():
            return photons, self._bad
        photons[own] = 0
        return photons, own | self._bad

    def _invalid(self, values: np.ndarray) -> np.ndarray | None:
        """Each frame's own invalid pixels of ``values`` (n, rows, cols): NaN or inf, negative, at or above
        ``saturation``; None when the dtype cannot hold any (unsigned integers and no saturation: the common raw
        frame, spared two passes over it)."""
        if values.dtype.kind == "u":
            return None if self.saturation is None else values >= self.saturation
        with np.errstate(invalid="ignore"):  # NaN compares False with everything: not >= 0
            invalid = ~(values >= 0)
            if self.saturation is not None:
                invalid |= values >= self.saturation
            elif values.dtype.kind == "f":
                invalid |= np.isinf(values)
        return invalid

    def _drift_corners(self, shifts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(corners (n, 2), inside (n,)): the fixed ROI moved by ``shifts`` (n, 2) (rows, cols), clipped into the
        search window (not inside: the drift left it)."""
        row, col, rows, cols = self._region
        moved = np.asarray(self._corner, dtype=np.int64) + np.rint(np.asarray(shifts, dtype=float)).astype(np.int64)
        clipped = np.clip(moved, (row, col), (row + rows - self.roi_shape[0], col + cols - self.roi_shape[1]))
        return clipped, (clipped == moved).all(axis=1)

    def _peak_corners(self, photons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(corners (n, 2) in the oriented frame, found (n,)): the ROI centred on each window's peak centroid (at
        its geometric centre, (h - 1) / 2, where the unstrained pattern's centroid lies in the model's frame)."""
        row, col, rows, cols = self._region
        centres, found = peak_centroids(photons)
        h, w = self.roi_shape
        r = np.clip(np.rint(centres[:, 0] - (h - 1) / 2), 0, rows - h).astype(np.int64) + row
        c = np.clip(np.rint(centres[:, 1] - (w - 1) / 2), 0, cols - w).astype(np.int64) + col
        return np.stack([r, c], axis=1), found

    def __repr__(self) -> str:
        return (f"<FramePreparation {self.detector_shape} -> {self.output_shape}, binning {self.binning}, "
                f"{'following the peak' if self.follow_peak else f'ROI at {self._corner}'}"
                f"{', following the drift' if self.follow_drift else ''}, {self.fingerprint()}>")
