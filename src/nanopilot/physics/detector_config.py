"""The frame preparation's configuration checked and loaded (:class:`~nanopilot.physics.FramePreparation`
inherits these): each field's type and range, the ROI and search window placed on the oriented detector, the
dark, flat and mask read and cut to that region, and the match with an :class:`~.instrument.Instrument`."""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np

from .arrays import read_array
from .detector_file import ARRAY_FIELDS, PreparationFile
from .frame_steps import MIN_GOOD_FRACTION, block_sum
from .instrument import Instrument

_HDF5_NAMES = {"dark": "dark", "flat": "flatfield", "mask": "pixel_mask"}


class PreparationConfig(PreparationFile):
    """Checks and calibration of a frame preparation (mixed into the frozen dataclass of its fields):
    :meth:`_load_calibration` reads ``_region`` and sets ``_hashes``, ``_dark``, ``_scale``, ``_bad``, ``_good``."""

    def _set(self, name, value):
        object.__setattr__(self, name, value)

    def _check_fields(self) -> None:
        """Each field's type and range, naming the field; pairs as tuples of ints, numbers as floats."""
        for name in ("detector_shape", "roi_shape", "roi_corner", "roi_centre", "search_window"):
            value = getattr(self, name)
            if value is not None:
                self._set(name, _pair(value, name, minimum=1 if "shape" in name else 0))
        _positive(self.pixel_size, "pixel_size", "m")
        _positive(self.gain, "gain", "ADU per photon")
        if self.saturation is not None:
            _positive(self.saturation, "saturation", "ADU")
        for name in ("pixel_size", "gain", "saturation"):  # 3 and 3.0 are one configuration (one fingerprint)
            if getattr(self, name) is not None:
                self._set(name, float(getattr(self, name)))
        for name in ("follow_peak", "follow_drift", "transpose", "flip_rows", "flip_cols"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"FramePreparation.{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.binning, int) or isinstance(self.binning, bool) or self.binning < 1:
            raise ValueError(f"FramePreparation.binning must be a positive integer, got {self.binning!r}")
        if any(n % self.binning for n in self.roi_shape):
            raise ValueError(f"FramePreparation.binning={self.binning} does not divide roi_shape={self.roi_shape}: "
                             f"choose a roi_shape that is a multiple of it")
        if self.follow_peak and self.follow_drift:
            raise ValueError("FramePreparation: set follow_peak (the ROI centred on each frame's peak) or follow_drift "
                             "(the fixed ROI moved by the measured drift), not both")
        if self.search_window is not None and not (self.follow_peak or self.follow_drift):
            raise ValueError("FramePreparation.search_window is used only by a moving ROI: set follow_peak or "
                             "follow_drift to true, or remove search_window")

    @property
    def oriented_shape(self) -> tuple[int, int]:
        """(rows, cols) of a frame after orientation (detector y, detector x)."""
        rows, cols = self.detector_shape
        return (cols, rows) if self.transpose else (rows, cols)

    @property
    def output_shape(self) -> tuple[int, int]:
        """(h, w) of the prepared frames: ``roi_shape // binning`` (the instrument's ``roi_shape``)."""
        return (self.roi_shape[0] // self.binning, self.roi_shape[1] // self.binning)

    def _nominal_corner(self) -> tuple[int, int]:
        if self.roi_corner is not None and self.roi_centre is not None:
            raise ValueError("FramePreparation: give roi_corner or roi_centre, not both")
        half = (self.roi_shape[0] // 2, self.roi_shape[1] // 2)
        if self.roi_corner is not None:
            name, corner = "roi_corner", self.roi_corner
        elif self.roi_centre is not None:
            name, corner = "roi_centre", (self.roi_centre[0] - half[0], self.roi_centre[1] - half[1])
        else:
            name = "roi_shape"
            corner = tuple((n - r) // 2 for n, r in zip(self.oriented_shape, self.roi_shape))
        if not _inside(corner, self.roi_shape, self.oriented_shape):
            raise ValueError(f"FramePreparation.{name}={getattr(self, name)} puts the {self.roi_shape} ROI (rows "
                             f"{corner[0]}..{corner[0] + self.roi_shape[0] - 1}, cols {corner[1]}.."
                             f"{corner[1] + self.roi_shape[1] - 1}) outside the oriented detector of shape "
                             f"{self.oriented_shape}: move it inside")
        return corner

    def _search_region(self, corner) -> tuple[int, int, int, int]:
        """(row, col, rows, cols) of the search window in the oriented frame."""
        if self.search_window is None:
            return (0, 0, *self.oriented_shape)
        window = self.search_window
        if window[0] < self.roi_shape[0] or window[1] < self.roi_shape[1]:
            raise ValueError(f"FramePreparation.search_window={window} is smaller than roi_shape={self.roi_shape}: "
                             f"make it at least as large")
        start = tuple(c + r // 2 - w // 2 for c, r, w in zip(corner, self.roi_shape, window))
        if not _inside(start, window, self.oriented_shape):
            raise ValueError(f"FramePreparation.search_window={window} centred on the ROI leaves the oriented "
                             f"detector of shape {self.oriented_shape}: make it smaller or move the ROI")
        return (*start, *window)

    def _load_calibration(self) -> None:
        """Read dark, flat and mask; keep their oriented values over the region (the only pixels ever used)."""
        arrays = {name: self._array(name) for name in ARRAY_FIELDS}
        self._set("_hashes", {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()[:16]
                              for k, v in arrays.items() if v is not None})
        row, col, rows, cols = self._region
        cut = lambda a: np.ascontiguousarray(self.orient(a[None])[0, row:row + rows, col:col + cols])  # noqa: E731
        bad = np.zeros((rows, cols), dtype=bool)
        if arrays["mask"] is not None:
            bad |= cut(arrays["mask"]) != 0
        dark = None
        if arrays["dark"] is not None:
            dark = cut(arrays["dark"]).astype(np.float32)
            bad |= ~np.isfinite(dark)
            dark[bad] = 0
        scale = np.full((rows, cols), 1 / self.gain, dtype=np.float32)
        if arrays["flat"] is not None:
            flat = cut(arrays["flat"]).astype(np.float64)
            bad |= ~(np.isfinite(flat) & (flat > 0))
            scale = np.where(bad, 0, 1 / np.where(bad, 1, flat * self.gain)).astype(np.float32)
        self._set("_dark", None if dark is None else np.where(bad, 0, dark))
        self._set("_scale", np.where(bad, 0, scale).astype(np.float32))  # 0 at the masked pixels
        self._set("_bad", bad)
        b = self.binning  # the ROI (fixed) or the search window (follow_peak): some binned pixel must survive
        good = block_sum((~bad[None, :rows // b * b, :cols // b * b]).astype(np.float32), b)
        self._set("_good", good)  # (1, h, w) good pixels per binned pixel of a fixed ROI
        if (good < MIN_GOOD_FRACTION * b * b).all():
            where = "search window" if self.follow_peak or self.follow_drift else "ROI"
            raise ValueError(f"FramePreparation.mask (with the unusable dark / flat pixels) hides the whole {where} "
                             f"(rows {row}..{row + rows - 1}, cols {col}..{col + cols - 1} of the oriented frame): "
                             f"check the mask file and the ROI position")

    def _array(self, name: str) -> np.ndarray | None:
        source = getattr(self, name)
        if source is None:
            return None
        if isinstance(source, dict):
            raise ValueError(f"FramePreparation.{name} was an in-memory array when this configuration was written "
                             f"({source}); save it with numpy.save and give the file's path")
        if isinstance(source, (str, os.PathLike)):
            array = read_array(str(source), _HDF5_NAMES[name], what=f"FramePreparation.{name} file")
        else:
            array = np.asarray(source)
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.shape != self.detector_shape:
            raise ValueError(f"FramePreparation.{name} has shape {array.shape}; the detector's raw frames have shape "
                             f"{self.detector_shape}: give a {name} of the whole detector, in its raw layout")
        if array.dtype.kind not in "biuf":
            raise ValueError(f"FramePreparation.{name} must hold numbers, got dtype {array.dtype}")
        return array

    def check(self, instrument: Instrument) -> None:
        """Raise ValueError, saying which fields to change, if the prepared frames do not have ``instrument``'s
        pixel size (``pixel_size * binning``) and ROI shape (``roi_shape / binning``)."""
        binning, pixel, problems, fixes = self.binning, self.pixel_size * self.binning, [], []
        if not math.isclose(pixel, instrument.pixel_size, rel_tol=1e-9):
            problems.append(f"{self.binning} x {self.pixel_size:g} m = {pixel:g} m pixels (Instrument.pixel_size is "
                            f"{instrument.pixel_size:g} m)")
            ratio = instrument.pixel_size / self.pixel_size
            if round(ratio) >= 1 and math.isclose(ratio, round(ratio), rel_tol=1e-9):
                binning = round(ratio)
                fixes.append(f"set FramePreparation.binning to {binning}")
            else:
                fixes.append("correct FramePreparation.pixel_size or Instrument.pixel_size")
        wanted = [n * binning for n in instrument.roi_shape]
        if self.output_shape != tuple(instrument.roi_shape):
            problems.append(f"{list(self.output_shape)} frames (roi_shape {list(self.roi_shape)} / binning "
                            f"{self.binning}; Instrument.roi_shape is {list(instrument.roi_shape)})")
        if list(self.roi_shape) != wanted:
            fixes.append(f"set FramePreparation.roi_shape to {wanted}")
        if problems:
            raise ValueError(f"the frame preparation gives {' and '.join(problems)}: {' and '.join(fixes)}")

    def orient(self, frames: np.ndarray) -> np.ndarray:
        """A view of ``frames`` (N, R, C) transposed and flipped as configured (N, rows = y, cols = x)."""
        if self.transpose:
            frames = frames.transpose(0, 2, 1)
        if self.flip_rows:
            frames = frames[:, ::-1]
        if self.flip_cols:
            frames = frames[:, :, ::-1]
        return frames



def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    try:
        pair = tuple(int(v) for v in value)
        ok = len(pair) == 2 and all(p == v and p >= minimum for p, v in zip(pair, value))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"FramePreparation.{name} must be (rows, cols), integers >= {minimum}, got {value!r}")
    return pair


def _positive(value, name: str, units: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"FramePreparation.{name} must be a positive finite number ({units}), got {value!r}")


def _inside(corner, shape, bounds) -> bool:
    return all(0 <= c and c + s <= b for c, s, b in zip(corner, shape, bounds))
