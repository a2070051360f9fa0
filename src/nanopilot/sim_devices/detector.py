"""The nanobeam area detector: renders the sample's diffraction pattern at the beam position.

Intensity convention: ``count_rate`` is the peak count rate (counts/s) of the brightest pattern of the default
41^3 training grid, the convention of :func:`nanopilot.physics.intensity_scale`; an exposure of ``t`` seconds
renders at peak level ``count_rate * t``. The defaults (70 counts/s, 0.1 s) give the published 7 counts.
"""

from __future__ import annotations

import numpy as np
from ophyd import Component as Cpt
from ophyd import DeviceStatus

from ..physics import KERNELS, Instrument, simulate
from ..physics.forward import simulate_box
from .hdf5 import HDF5FrameWriter, WriterStaging
from .motion import SimStage
from .raw_detector import RawReadout
from .sample import SimSample
from .signals import SimDevice, SimReadback, SimSignal, non_negative, one_of, positive

#: Dark count rate of a hot pixel (counts/s).
HOT_PIXEL_RATE = 1e5

#: Beam-footprint averaging: a 7-point, degree-3 cubature of the uniform unit disc (x, y, weight).
_FOOTPRINT_RULE = np.array([(0.0, 0.0, 0.25)] + [
    (np.sqrt(2 / 3) * np.cos(a), np.sqrt(2 / 3) * np.sin(a), 0.125) for a in np.arange(6) * np.pi / 3])


#: Poisson draws by inversion (:func:`poisson_counts`): rates per step (the working arrays stay in the L2 cache).
_INVERSION_STEP = 32768
#: Rates (expected counts) below which inversion applies; numpy's sampler takes the rest (e.g. hot pixels).
_INVERSION_RATES_BELOW = 10.0
#: CDF terms summed for all pixels of a step before the few with more counts carry on alone.
_INVERSION_TERMS = 6
#: Count at which a draw stops: reached only by a uniform above the float64 CDF (a rounding artefact,
#: probability ~1e-15 per pixel), since P(count >= 100) < 1e-60 at rates below 10.
_INVERSION_MAX_COUNT = 100


def poisson_counts(rate: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts (an integer array) with means ``rate`` (1-D float, finite, >= 0), drawn from ``rng``.

    Fewer than :data:`_INVERSION_STEP` rates (a step scan's frame) go to ``rng.poisson``. Larger sets (a
    flyer's page) are drawn by inversion where the rate is small: one uniform per pixel against the CDF
    summed term by term, p(k) = p(k - 1) * rate / k, vectorised over cache-sized steps: fewer uniforms per
    sample than ``rng.poisson``, whose per-sample cost is an exponential and rate + 1 uniforms.
    """
    if len(rate) < _INVERSION_STEP:
        return rng.poisson(rate)
    if not rate.min() >= 0:
        raise ValueError("Poisson rates must be finite and non-negative")
    if rate.max() >= _INVERSION_RATES_BELOW:
        small = rate < _INVERSION_RATES_BELOW
        counts = np.empty(len(rate), dtype=np.int64)
        counts[~small] = rng.poisson(rate[~small])
        counts[small] = poisson_counts(rate[small], rng)
        return counts
    rate = rate.astype(np.float64)
    return np.concatenate([_poisson_by_inversion(rate[start:start + _INVERSION_STEP], rng)
                           for start in range(0, len(rate), _INVERSION_STEP)])


def _poisson_by_inversion(rate: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts (uint8) for rates below :data:`_INVERSION_RATES_BELOW` (1-D float64)."""
    u, count = rng.random(len(rate)), np.zeros(len(rate), dtype=np.uint8)
    term = np.exp(-rate)  # p(0)
    cdf = term.copy()
    for k in range(1, _INVERSION_TERMS + 1):  # count = #{k >= 0 : u > cdf(k)}; first terms for all pixels
        count += u > cdf
        term *= rate
        term *= 1.0 / k
        cdf += term
    tail = np.flatnonzero(u > cdf)
    u, rate, term, cdf = u[tail], rate[tail], term[tail], cdf[tail]
    extra, more, k = np.zeros(len(tail), dtype=np.uint8), u > cdf, _INVERSION_TERMS
    while k < _INVERSION_MAX_COUNT and more.any():
        extra += more
        k += 1
        term *= rate
        term *= 1.0 / k
        cdf += term
        more = u > cdf
    count[tail] += extra
    return count


def frame_statistics(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Total counts and intensity-weighted centroid (column x, row y; pixels) of (N, H, W) frames.

    The centroid of an empty frame is NaN.
    """
    frames = np.asarray(frames)
    columns, rows = frames.sum(axis=1, dtype=np.float64), frames.sum(axis=2, dtype=np.float64)  # (N, W), (N, H)
    total = columns.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total, columns @ np.arange(frames.shape[2]) / total, rows @ np.arange(frames.shape[1]) / total


def beam_positions(x, y, footprint: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Sample-plane points (um) a beam of ``footprint`` diameter (um; 0 = a point) at each (x, y) covers: K per
    position, flattened (N * K,)."""
    x, y = np.atleast_1d(np.asarray(x, dtype=np.float64)), np.atleast_1d(np.asarray(y, dtype=np.float64))
    radius = footprint / 2
    if radius == 0:
        return x, y
    return ((x[:, None] + radius * _FOOTPRINT_RULE[:, 0]).ravel(),
            (y[:, None] + radius * _FOOTPRINT_RULE[:, 1]).ravel())


def render_frames(parameters: np.ndarray, instrument: Instrument, exposure: float, *, count_rate: float,
                  rng: np.random.Generator, kernel: str = "box", background: float = 0.0, footprint: float = 0.0,
                  hot_pixel_index=(), noise: bool = True, readout: RawReadout | None = None) -> np.ndarray:
    """Frames (N, H, W) for ground-truth ``parameters`` ((N * K, 4) at :func:`beam_positions`) exposed ``exposure``
    s at ``count_rate`` (counts/s, see the module notes), with ``background`` (counts/s/pixel), hot pixels at the
    flat ``hot_pixel_index`` and Poisson noise from ``rng`` (uint32 counts; float32 expected counts without noise);
    through ``readout`` a raw detector's ADU frames. See :class:`NanobeamDetector`."""
    peak = count_rate * exposure
    if kernel == "box":
        patterns = simulate_box(parameters, instrument, counts=peak)
    else:
        patterns = simulate(parameters, instrument, kernel=kernel, counts=peak)
    if footprint > 0:
        patterns = np.einsum("nkhw,k->nhw", patterns.reshape(-1, len(_FOOTPRINT_RULE), *patterns.shape[1:]),
                             _FOOTPRINT_RULE[:, 2].astype(patterns.dtype))
    background = background * exposure
    if readout is not None:
        photons = readout.expected_photons(patterns, background, HOT_PIXEL_RATE * exposure)
        if noise:
            photons = poisson_counts(photons.ravel(), rng).reshape(photons.shape)
        return readout.readout(photons)
    if background:
        patterns += np.float32(background)
    if len(hot_pixel_index):
        patterns.reshape(len(patterns), -1)[:, hot_pixel_index] += np.float32(HOT_PIXEL_RATE * exposure)
    if not noise:
        return patterns
    counts = np.zeros(patterns.shape, dtype=np.uint32)
    lit = patterns > 0  # about half the pixels lie outside the donut: draw only where counts can arise
    counts[lit] = poisson_counts(patterns[lit], rng)
    return counts


class NanobeamDetector(WriterStaging, SimDevice):
    """A photon-counting area detector looking at the sample's Bragg reflection through a nanofocused beam.

    ``trigger()`` renders the pattern at the stage's current (x, y) from the sample's ground truth with
    :func:`nanopilot.physics.simulate` (for the box kernel its numpy twin
    :func:`~nanopilot.physics.forward.simulate_box`, the same patterns at a fraction of the per-call cost), adds
    background and hot pixels, draws Poisson counts (:func:`poisson_counts`; unless ``noise`` is False),
    computes the live statistics, then spends ``exposure_time`` on the clock.

    Parameters
    ----------
    sample : SimSample
        The sample under the beam.
    sample_stage : SimStage
        The stage that positions it (its x, y readbacks, um, are the beam position on the sample).
    instrument : Instrument, optional
        The diffraction setup (default: the published one).
    seed : int, optional
        Seed of the noise and of the hot-pixel positions.
    hot_pixels : int
        Number of hot pixels (each with :data:`HOT_PIXEL_RATE` dark counts/s).
    kernel : {"box", "gauss"}
        Forward-model kernel (see :func:`nanopilot.physics.simulate`).
    readout : RawReadout, optional
        A raw detector: frames are then its raw ADU frames (its shape, its own hot and dead pixels; see
        :mod:`.raw_detector`); ``total`` and the centroids are then those of its photons, (ADU - dark) / gain
        (detector pixels).

    Notes
    -----
    Readings: ``image`` (kind normal, never hinted; uint32 counts, or float32 expected counts with noise off),
    ``total`` (counts, hinted), ``centroid_x``/``centroid_y`` (pixels). Configuration: ``exposure_time`` (s),
    ``count_rate`` (counts/s, see the module notes), ``noise``, ``background`` (counts/s/pixel), ``footprint``
    (diameter in um of the uniform beam footprint averaged over; 0 = a point beam), ``data_mode``,
    ``hdf5_directory`` and ``instrument_fingerprint`` (read-only: ``instrument.fingerprint()``, so that an
    analysis can check the run's setup against its model's).

    In ``data_mode="hdf5"`` each staging opens an SWMR HDF5 file in ``hdf5_directory`` (checked at stage time),
    frames go to ``/entry/data/data`` and the image reaches the documents as stream_resource / stream_datum
    (``external: "STREAM:"``) instead of inline arrays. The pixels are the same in both modes.
    """

    image = Cpt(SimReadback, kind="normal")
    total = Cpt(SimReadback, value=0.0, units="counts", kind="hinted")
    centroid_x = Cpt(SimReadback, value=np.nan, units="pixel", kind="normal")
    centroid_y = Cpt(SimReadback, value=np.nan, units="pixel", kind="normal")
    exposure_time = Cpt(SimSignal, value=0.1, units="s", check=positive, kind="config")
    count_rate = Cpt(SimSignal, value=70.0, units="counts/s", check=positive, kind="config")
    noise = Cpt(SimSignal, value=True, check=one_of((True, False)), kind="config")
    background = Cpt(SimSignal, value=0.0, units="counts/s/pixel", check=non_negative, kind="config")
    footprint = Cpt(SimSignal, value=0.0, units="um", check=non_negative, kind="config")
    data_mode = Cpt(SimSignal, value="inline", check=one_of(("inline", "hdf5")), kind="config")
    hdf5_directory = Cpt(SimSignal, value="", kind="config")
    instrument_fingerprint = Cpt(SimReadback, value="", kind="config")

    def __init__(self, prefix="", *, name, sample: SimSample, sample_stage: SimStage,
                 instrument: Instrument | None = None, seed: int | None = None, hot_pixels: int = 0,
                 kernel: str = "box", readout: RawReadout | None = None, **kwargs):
        super().__init__(prefix, name=name, **kwargs)
        self.sample, self.sample_stage = sample, sample_stage
        self.instrument = instrument or Instrument()
        self.instrument_fingerprint.put(self.instrument.fingerprint(), internal=True)
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self.kernel, self.readout = kernel, readout
        self.rng = np.random.default_rng(seed)
        rows, cols = self.instrument.roi_shape
        if not 0 <= int(hot_pixels) <= rows * cols:
            raise ValueError(f"hot_pixels must be between 0 and {rows * cols}, got {hot_pixels!r}")
        self.hot_pixel_index = self.rng.choice(rows * cols, size=int(hot_pixels), replace=False)
        self.image.put(np.zeros(self.frame_shape, dtype=self.frame_dtype), internal=True)

    # ------------------------------------------------------------------ rendering (shared with the flyer)
    @property
    def frame_shape(self) -> tuple[int, int]:
        """(rows, cols) of the published frames: the raw detector's, else the instrument's ROI."""
        return tuple(self.readout.shape) if self.readout is not None else tuple(self.instrument.roi_shape)

    @property
    def frame_dtype(self) -> np.dtype:
        """uint32 counts (ADU for a raw detector) with noise, float32 expected counts without."""
        return np.dtype(np.uint32) if self.noise.get() else np.dtype(np.float32)

    def beam_positions(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Sample-plane points (um) the beam at each (x, y) covers: K per position, flattened (N * K,)."""
        return beam_positions(x, y, self.footprint.get())

    def render(self, parameters: np.ndarray, exposure: float) -> np.ndarray:
        """Frames for ground-truth ``parameters`` ((N * K, 4) at :meth:`beam_positions`) exposed ``exposure`` s."""
        return render_frames(parameters, self.instrument, exposure, count_rate=self.count_rate.get(),
                             kernel=self.kernel, background=self.background.get(), footprint=self.footprint.get(),
                             hot_pixel_index=self.hot_pixel_index, noise=self.noise.get(), rng=self.rng,
                             readout=self.readout)

    def statistics(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`frame_statistics` of published frames (N, ...); a raw detector's in photons."""
        return frame_statistics(frames if self.readout is None else self.readout.photons(frames))

    # ------------------------------------------------------------------ bluesky interface
    def trigger(self) -> DeviceStatus:
        """Acquire one frame at the stage's current position; finishes after the exposure time."""
        if self.data_mode.get() == "hdf5" and self._writer is None:
            raise RuntimeError(f"{self.name}: in data_mode 'hdf5' the detector writes files only while staged; "
                               "stage it (bluesky plans do) before triggering")
        exposure = self.exposure_time.get()
        x, y = self.beam_positions(*self.sample_stage.position)
        frame = self.render(self.sample.parameters(x, y), exposure)
        total, cx, cy = self.statistics(frame)
        now = self.clock.now()
        self.image.put(frame[0], internal=True, timestamp=now)
        for signal, value in ((self.total, total), (self.centroid_x, cx), (self.centroid_y, cy)):
            signal.put(float(value[0]), internal=True, timestamp=now)
        if self._writer is not None:
            self._writer.append(frame)
        status = DeviceStatus(self)
        self.clock.call_after(exposure, status.set_finished)
        return status

    def image_description(self) -> dict:
        """The descriptor entry of the image: shape, numpy dtype, and ``external`` in HDF5 mode."""
        description = {"source": f"SIM:{self.image.name}", "dtype": "array", "shape": list(self.frame_shape),
                       "dtype_numpy": self.frame_dtype.str,
                       "units": "counts" if self.readout is None else "ADU"}
        if self.data_mode.get() == "hdf5":
            description["external"] = "STREAM:"
        return description

    def describe(self):
        description = super().describe()
        description[self.image.name] = self.image_description()
        return description

    def read(self):
        reading = super().read()
        if self.data_mode.get() == "hdf5":
            del reading[self.image.name]
        return reading

    def _open_writer(self) -> HDF5FrameWriter | None:
        """At stage: in HDF5 mode a new file in ``hdf5_directory`` (raises here if it is missing/unwritable)."""
        return self.open_writer(prefix=self.name) if self.data_mode.get() == "hdf5" else None

    def open_writer(self, prefix: str) -> HDF5FrameWriter:
        """A new HDF5 file ``{prefix}_*.h5`` in ``hdf5_directory`` for (N, H, W) frames of this detector's image
        key, ROI and pixel type (also the flyer's); raises if the directory is unset, missing or unwritable."""
        directory = self.hdf5_directory.get()
        if not directory:
            raise ValueError(f"{self.name}: data_mode is 'hdf5' but hdf5_directory is not set")
        return HDF5FrameWriter(directory, self.image.name, self.frame_shape, self.frame_dtype, prefix=prefix)

    def get_index(self) -> int:
        """Frames written to the current HDF5 file (0 in inline mode)."""
        return self._writer.index if self._writer is not None else 0

    def collect_asset_docs(self, index: int | None = None):
        """stream_resource / stream_datum documents for frames written since the last call (HDF5 mode)."""
        if self._writer is not None:
            yield from self._writer.collect_asset_docs(index)
