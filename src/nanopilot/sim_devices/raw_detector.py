"""Raw detector frames for the simulated beamline (issue 17, item 3): the model-pitch pattern read out by a larger
detector of its own pixel pitch, in ADU, with a peak that may sit off the ROI's centre and drift during a scan.

A :class:`RawDetectorPreset` names a detector (shape, pixel, binning, ROI); :data:`DETECTOR_PRESETS` holds the named
ones and :meth:`RawDetectorPreset.preparation` gives the matching :class:`~nanopilot.physics.FramePreparation`
(``.save(path)`` writes it as a YAML preset). A :class:`RawReadout` turns expected model-pitch frames (N, h, w) into
raw frames (N, R, C): each model pixel is spread evenly over b x b detector pixels (1/b^2 of its expected counts
each) at the ROI's position plus the peak's offset and drift (a sub-pixel position: linear interpolation between
the four whole-pixel placements around it), the background (per model pixel, spread likewise over the whole
detector) and hot pixels are added, Poisson photons are drawn, dead pixels read 0 and ADU = dark_current + gain *
photons.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..physics import FramePreparation, Instrument


@dataclasses.dataclass(frozen=True)
class RawDetectorPreset:
    """A raw detector: ``shape`` (rows, cols) of its frames, ``pixel_size`` (m), the ``binning`` and ``roi_shape``
    (detector pixels, centred) that give the model's frames (``pixel_size * binning`` = the instrument's pixel), and
    the rows and columns of its gaps between chips or modules (they read nothing; the matching preparation masks
    them)."""

    shape: tuple[int, int]
    pixel_size: float
    binning: int
    roi_shape: tuple[int, int]
    gap_rows: tuple[int, ...] = ()
    gap_cols: tuple[int, ...] = ()

    def gaps(self) -> np.ndarray:
        """(R, C) bool: the gap pixels."""
        gaps = np.zeros(self.shape, dtype=bool)
        gaps[list(self.gap_rows), :] = True
        gaps[:, list(self.gap_cols)] = True
        return gaps

    def preparation(self, **fields) -> FramePreparation:
        """The :class:`FramePreparation` of this detector (fixed, centred ROI; the gaps masked); ``fields``
        override or add (e.g. ``dark``, ``mask``, ``gain``, ``roi_corner``)."""
        config = {"detector_shape": self.shape, "pixel_size": self.pixel_size, "roi_shape": self.roi_shape,
                  "binning": self.binning}
        if self.gap_rows or self.gap_cols:
            config["mask"] = self.gaps()
        return FramePreparation(**{**config, **fields})


#: Named raw detectors. "medipix-256" is the published setup's (a 128 x 128 ROI of 55 um pixels binned 2 x 2).
#: "eiger-like-1030x514" has the layout of an EIGER 500k module (1030 x 514 pixels: 2 x 4 chips of 256 x 256 with
#: the 2-pixel boundaries between them, which read nothing here) at 55 um, so that it bins to the model's 110 um
#: pixel (a real EIGER's 75 um pixel does not); its centred ROI straddles a gap row and a gap column.
DETECTOR_PRESETS = {
    "medipix-256": RawDetectorPreset(shape=(256, 256), pixel_size=55e-6, binning=2, roi_shape=(128, 128)),
    "eiger-like-1030x514": RawDetectorPreset(shape=(514, 1030), pixel_size=55e-6, binning=2, roi_shape=(128, 128),
                                             gap_rows=(256, 257), gap_cols=(256, 257, 514, 515, 772, 773)),
}


def detector_preset(name: str | RawDetectorPreset) -> RawDetectorPreset:
    """The preset of that name (or the preset itself); ValueError naming the known ones."""
    if isinstance(name, RawDetectorPreset):
        return name
    if name not in DETECTOR_PRESETS:
        raise ValueError(f"unknown detector {name!r}: use one of {sorted(DETECTOR_PRESETS)}")
    return DETECTOR_PRESETS[name]


class RawReadout:
    """The raw readout of one simulated detector (see the module docstring).

    Parameters (units)
    ------------------
    preset : the detector; instrument : checked against it (its pixel and ROI shape must follow).
    peak_offset : (rows, cols) of the pattern's shift from the ROI's position (detector pixels).
    peak_drift : (rows, cols) added to the shift per frame rendered (detector pixels / frame).
    dark_current : dark level of every pixel (ADU, no read noise); gain : ADU per photon.
    hot_pixels, dead_pixels : numbers of each, at distinct random detector pixels (``seed``).
    """

    def __init__(self, preset: str | RawDetectorPreset, instrument: Instrument | None = None, *,
                 peak_offset=(0, 0), peak_drift=(0.0, 0.0), dark_current: float = 0.0, gain: float = 1.0,
                 hot_pixels: int = 0, dead_pixels: int = 0, seed: int | None = None):
        self.preset = detector_preset(preset)
        self.preset.preparation().check(instrument or Instrument())  # a mismatch fails here, saying what to change
        self.corner = np.array([(n - r) // 2 for n, r in zip(self.preset.shape, self.preset.roi_shape)])  # centred
        self.peak_offset = np.asarray(peak_offset, dtype=np.float64).reshape(2)
        self.peak_drift = np.asarray(peak_drift, dtype=np.float64).reshape(2)
        if not (np.isfinite(dark_current) and dark_current >= 0):
            raise ValueError(f"dark_current must be a finite ADU level >= 0, got {dark_current!r}")
        if not (np.isfinite(gain) and gain > 0):
            raise ValueError(f"gain must be a positive number of ADU per photon, got {gain!r}")
        self.dark_current, self.gain = float(dark_current), float(gain)
        size = self.shape[0] * self.shape[1]
        if min(hot_pixels, dead_pixels) < 0 or hot_pixels + dead_pixels > size:
            raise ValueError(f"hot_pixels + dead_pixels must be between 0 and {size}, got {hot_pixels} + "
                             f"{dead_pixels}")
        chosen = np.random.default_rng(seed).choice(size, size=hot_pixels + dead_pixels, replace=False)
        self.hot_index, self.dead_index = chosen[:hot_pixels], chosen[hot_pixels:]
        self.dark_index = np.concatenate([self.dead_index, np.flatnonzero(self.preset.gaps())])  # read nothing
        self.frames_rendered = 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.preset.shape

    def bad_pixels(self) -> np.ndarray:
        """(R, C) bool: the gaps, hot and dead pixels (the beamline's pixel mask)."""
        mask = self.preset.gaps()
        mask.flat[np.concatenate([self.hot_index, self.dead_index])] = True
        return mask

    def preparation(self, **fields) -> FramePreparation:
        """The matching :class:`FramePreparation`: the preset's, with this detector's dark level, gain and pixel
        mask (in memory; save them with numpy.save and give the paths to write a YAML file)."""
        known = {"gain": self.gain}
        if self.dark_current:
            known["dark"] = np.full(self.shape, self.dark_current, dtype=np.float32)
        if self.bad_pixels().any():
            known["mask"] = self.bad_pixels()
        return self.preset.preparation(**{**known, **fields})

    def peak_corners(self, n: int) -> np.ndarray:
        """(n, 2) float: where the next ``n`` frames' patterns start (detector pixels, sub-pixel)."""
        steps = self.frames_rendered + np.arange(n)[:, None]
        return self.corner + self.peak_offset + self.peak_drift * steps

    def expected_photons(self, patterns: np.ndarray, background: float, hot: float) -> np.ndarray:
        """(N, R, C) float32 expected photons of model-pitch ``patterns`` (N, h, w) (expected counts), with
        ``background`` and ``hot`` (expected counts per model pixel and per hot pixel); advances the drift."""
        b = self.preset.binning
        fine = np.repeat(np.repeat(np.asarray(patterns, np.float32), b, axis=1), b, axis=2) / np.float32(b * b)
        photons = np.full((len(patterns), *self.shape), np.float32(background / (b * b)), dtype=np.float32)
        for frame, spread, corner in zip(photons, fine, self.peak_corners(len(patterns))):
            (r, c), (fr, fc) = np.floor(corner).astype(int), corner - np.floor(corner)
            for dr, dc, weight in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)),
                                   (1, 1, fr * fc)):
                if weight > 0:
                    _add_clipped(frame, np.float32(weight) * spread, r + dr, c + dc)
        self.frames_rendered += len(patterns)
        flat = photons.reshape(len(photons), -1)
        flat[:, self.hot_index] += np.float32(hot)
        flat[:, self.dark_index] = 0
        return photons

    def readout(self, photons: np.ndarray) -> np.ndarray:
        """ADU of ``photons`` (N, R, C): uint32 for drawn (integer) photons, float32 for expected ones; dead pixels
        read 0."""
        adu = np.float32(self.gain) * photons.astype(np.float32) + np.float32(self.dark_current)
        adu.reshape(len(adu), -1)[:, self.dark_index] = 0
        if photons.dtype.kind == "f":
            return adu
        return np.rint(adu).astype(np.uint32)

    def photons(self, adu: np.ndarray) -> np.ndarray:
        """(N, R, C) float32 photons (ADU - dark_current) / gain of raw frames ``adu`` (0 below the dark level)."""
        return np.maximum((adu.astype(np.float32) - np.float32(self.dark_current)) / np.float32(self.gain), 0)


def _add_clipped(frame: np.ndarray, image: np.ndarray, row: int, col: int) -> None:
    """frame[row:, col:] += image, the parts of ``image`` outside ``frame`` dropped."""
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + image.shape[0], frame.shape[0]), min(col + image.shape[1], frame.shape[1])
    if r1 > r0 and c1 > c0:
        frame[r0:r1, c0:c1] += image[r0 - row:r1 - row, c0 - col:c1 - col]
