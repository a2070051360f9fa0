"""The frame side of :class:`~nanopilot.model.predictor.Predictor`: shape checks, raw-frame preparation, bad pixels and
count-level scaling before the network pass (a mixin; it uses the predictor's ``instrument``, ``path``, ``mask``,
``preparation``, ``find_hot_pixels``, ``trained_counts`` and ``training_total``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import bad_pixels


class FrameInput:
    """Frames in: the checks and clean-up :meth:`Predictor.predict` applies before the network pass."""

    def _check_shape(self, frames) -> np.ndarray:
        arr = np.asarray(frames)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[1:] != self.instrument.roi_shape:
            rows, cols = self.instrument.roi_shape
            raise ValueError(f"frames must have shape (N, {rows}, {cols}) for model {Path(self.path).name} "
                             f"(instrument {self.instrument.fingerprint()}); got {arr.shape}")
        return arr

    def _model_frames(self, frames, mask):
        """(frames (N, H, W), pixels to ignore (N, H, W) / (H, W) or None, the preparation's status (N,) or None):
        raw detector frames prepared by :attr:`preparation`, others checked for the ROI shape."""
        arr, status = np.asarray(frames), None
        raw_shape = None if self.preparation is None else self.preparation.detector_shape
        if raw_shape is not None and arr.shape[-2:] == raw_shape and arr.shape[-2:] != self.instrument.roi_shape:
            prepared = self.preparation.prepare(arr)
            arr, status = prepared.frames, prepared.status
            mask = prepared.mask if mask is None else prepared.mask | np.asarray(mask, dtype=bool)
        else:
            arr = self._check_shape(arr)
            mask = None if mask is None else np.asarray(mask) != 0
        if self.mask is not None:
            mask = self.mask if mask is None else mask | self.mask
        return arr, mask, status

    def without_bad_pixels(self, frames: np.ndarray, mask=None) -> np.ndarray:
        """``frames`` with the masked pixels (:attr:`mask`, or ``mask`` (N, H, W) / (H, W) bool when given) and (if
        :attr:`find_hot_pixels`) the hot ones filled from their good neighbours (the frames themselves when there
        are none)."""
        bad = bad_pixels.find_hot_pixels(frames) if self.find_hot_pixels else None
        mask = self.mask if mask is None else mask
        if mask is not None:
            bad = mask if bad is None else bad | mask
        return frames if bad is None or not bad.any() else bad_pixels.fill_pixels(frames, bad)

    def at_training_level(self, frames: np.ndarray, totals: np.ndarray) -> np.ndarray:
        """(N, H, W) frames, those whose ``totals`` (N,) counts lie outside :attr:`trained_counts` scaled to
        :attr:`training_total` counts (a copy where any is scaled)."""
        low, high = self.trained_counts
        out = (totals > 0) & ((totals < low) | (totals > high))
        if not out.any():
            return frames
        scaled = np.array(frames, dtype=np.float32)
        scaled[out] *= (self.training_total / totals[out]).astype(np.float32)[:, None, None]
        return scaled
