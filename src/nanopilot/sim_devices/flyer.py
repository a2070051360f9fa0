"""A fly scan: the stage sweeps a line or a region continuously while the detector streams frames.

Bluesky protocols: ``Flyable`` (kickoff / complete), ``EventPageCollectable`` (describe_collect / collect_pages)
and ``WritesExternalAssets`` (collect_asset_docs), so ``bps.collect`` makes the RunEngine emit ``event_page``
documents of up to ``page_size`` frames each. The flyer follows its detector's ``data_mode``:

* ``"inline"`` (the default): the frames are in the event pages, with their statistics and positions.
* ``"hdf5"``: during ``complete()`` the frames go to an SWMR HDF5 file in the detector's ``hdf5_directory``
  (``/entry/data/data``, one file per staging, opened at stage time); ``collect`` emits the file's
  stream_resource, one stream_datum for the frames of the sweep, then event pages of the statistics and
  positions only (the image key is ``external: "STREAM:"``). The pixels are the same as inline for the same
  seed. This is how high-rate detectors stream: no per-frame schema validation of the pixels in the RunEngine.

A fly plan (staging is needed in HDF5 mode and harmless inline)::

    @bpp.stage_decorator([flyer])
    @bpp.run_decorator()
    def fly():
        yield from bps.declare_stream(flyer, name="fly", collect=True)
        yield from bps.kickoff(flyer, wait=True)
        yield from bps.complete(flyer, wait=True)
        yield from bps.collect(flyer, name="fly")

The flyer deliberately has no ``get_index``: that would make it ``WritesStreamAssets``, and bluesky 1.15's
``collect`` then skips ``collect_pages`` of a single collected device (the statistics would be lost).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
from ophyd import Component as Cpt
from ophyd import DeviceStatus
from ophyd.utils import LimitError

from .detector import NanobeamDetector
from .hdf5 import HDF5FrameWriter, WriterStaging
from .signals import SimDevice, SimSignal, positive


def _count(value) -> None:
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"must be an integer >= 1, got {value!r}")


class SimFlyer(WriterStaging, SimDevice):
    """Sweeps the detector's stage over a raster of ``num_y`` lines of ``num_x`` frames at ``frame_rate``.

    Line ``j`` lies at ``y = linspace(y_start, y_stop, num_y)[j]``; along it the stage moves at constant speed
    from ``x_start`` to ``x_stop`` and frame ``i`` is centred on ``linspace(x_start, x_stop, num_x)[i]``; between
    lines the stage flies back at its own speed. Each frame is exposed for ``1 / frame_rate`` s (so counts
    scale with it through the detector's ``count_rate``); the detector's noise, background, footprint and hot
    pixels apply. ``num_y = 1`` sweeps a single line.

    ``kickoff()`` checks the sweep (limits, stage speed) and moves to the start; ``complete()`` spends the
    sweep's time on the clock, recording the sample's ground truth at each frame as it goes (so a growing or
    cooling sample changes during the sweep); the frames are rendered in batches of ``page_size`` (inline: by
    ``collect_pages()``, as it yields them; HDF5: by ``complete()``, which writes them to the file). Configure
    it with ``flyer.configure({...})`` or ``bps.mv(flyer.num_x, 64)``; the data mode is the detector's.

    Parameters
    ----------
    detector : NanobeamDetector
        Supplies the sample, stage, clock and rendering settings.
    """

    x_start = Cpt(SimSignal, value=-1.0, units="um", kind="config")
    x_stop = Cpt(SimSignal, value=1.0, units="um", kind="config")
    y_start = Cpt(SimSignal, value=0.0, units="um", kind="config")
    y_stop = Cpt(SimSignal, value=0.0, units="um", kind="config")
    num_x = Cpt(SimSignal, value=64, check=_count, kind="config")
    num_y = Cpt(SimSignal, value=1, check=_count, kind="config")
    frame_rate = Cpt(SimSignal, value=1000.0, units="Hz", check=positive, kind="config")
    page_size = Cpt(SimSignal, value=512, check=_count, kind="config")

    def __init__(self, prefix="", *, name, detector: NanobeamDetector, **kwargs):
        super().__init__(prefix, name=name, clock=detector.clock, **kwargs)
        self.detector = detector
        self._sweep: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._kicked_off = False
        self._written_pages: list[tuple[dict, list]] = []  # HDF5 mode: (scalar data, times) of written frames

    # ------------------------------------------------------------------ the sweep
    def _lines(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.linspace(self.x_start.get(), self.x_stop.get(), self.num_x.get()),
                np.linspace(self.y_start.get(), self.y_stop.get(), self.num_y.get()))

    def _check(self) -> None:
        stage = self.detector.sample_stage
        for axis, values in ((stage.x, (self.x_start.get(), self.x_stop.get())),
                             (stage.y, (self.y_start.get(), self.y_stop.get()))):
            for value in values:
                axis.check_value(value)
        xs, _ = self._lines()
        speed = (abs(xs[1] - xs[0]) if len(xs) > 1 else 0.0) * self.frame_rate.get()
        if speed > stage.x.velocity.get():
            raise LimitError(f"{self.name}: the sweep needs {speed:g} um/s but {stage.x.name} moves at most "
                             f"{stage.x.velocity.get():g} um/s; lower frame_rate or the step")

    def kickoff(self) -> DeviceStatus:
        """Check the sweep and move the stage to its start; the status finishes there."""
        self._check()
        if self.detector.data_mode.get() == "hdf5" and self._writer is None:
            raise RuntimeError(f"{self.name}: in data_mode 'hdf5' the flyer writes files only while staged; "
                               "stage it (e.g. bpp.stage_decorator([flyer])) before kickoff")
        stage = self.detector.sample_stage
        xs, ys = self._lines()
        self._sweep = []
        self._kicked_off = True
        return stage.x.set(xs[0]) & stage.y.set(ys[0])

    def complete(self) -> DeviceStatus:
        """Sweep; the status finishes when the last frame has been exposed (immediately in simulated time) and,
        in HDF5 mode, written to the file."""
        if not self._kicked_off:
            raise RuntimeError(f"{self.name}: complete() called before kickoff()")
        self._kicked_off = False
        status = DeviceStatus(self)

        def sweep():
            try:
                self._run_sweep()
                if self._writer is not None:
                    self._write_frames()
            except Exception as error:
                status.set_exception(error)
            else:
                status.set_finished()

        if self.clock.realtime:
            threading.Thread(target=sweep, daemon=True).start()
        else:
            sweep()
        return status

    def _run_sweep(self) -> None:
        """Walk the raster on the clock in steps of at most ``page_size`` frames, recording positions, frame
        times and the ground truth under the beam (the sample is taken as constant within a step)."""
        stage, detector = self.detector.sample_stage, self.detector
        xs, ys = self._lines()
        period, step = 1.0 / self.frame_rate.get(), self.page_size.get()
        for j, y in enumerate(ys):
            if j:
                (stage.x.set(xs[0]) & stage.y.set(y)).wait()
            for start in range(0, len(xs), step):
                x, t0 = xs[start:start + step], self.clock.now()
                y_line = np.full_like(x, y)
                truth = detector.sample.parameters(*detector.beam_positions(x, y_line))
                self._sweep.append((x, y_line, t0 + period * np.arange(len(x)), truth))
                self.clock.advance(period * len(x))
            stage.x.readback.put(xs[-1], internal=True, timestamp=self.clock.now())

    def _render(self) -> Iterator[tuple[np.ndarray, dict, list]]:
        """Render the recorded sweep in batches of ``page_size`` frames (the same batches, hence the same noise
        draws, in both data modes): ``(frames (n, H, W), statistics and positions {key: n values}, times (n,))``."""
        detector, stage = self.detector, self.detector.sample_stage
        if not self._sweep:
            return
        exposure, page = 1.0 / self.frame_rate.get(), self.page_size.get()
        x, y, times, truth = (np.concatenate(columns) for columns in zip(*self._sweep))
        self._sweep = []
        samples = len(truth) // len(x)  # ground-truth rows per frame (the beam footprint)
        for start in range(0, len(x), page):
            stop = min(start + page, len(x))
            frames = detector.render(truth[start * samples:stop * samples], exposure)
            total, cx, cy = detector.statistics(frames)
            data = {detector.total.name: total.tolist(), detector.centroid_x.name: cx.tolist(),
                    detector.centroid_y.name: cy.tolist(), stage.x.readback.name: x[start:stop].tolist(),
                    stage.y.readback.name: y[start:stop].tolist()}
            yield frames, data, times[start:stop].tolist()

    def _write_frames(self) -> None:
        """HDF5 mode: append the sweep's frames to the file, keeping their statistics and positions for
        ``collect_pages``."""
        for frames, data, stamps in self._render():
            self._writer.append(frames)
            self._written_pages.append((data, stamps))

    # ------------------------------------------------------------------ staging (the HDF5 file)
    def _open_writer(self) -> HDF5FrameWriter | None:
        """At stage: in HDF5 mode a new file in the detector's ``hdf5_directory`` (raises here if it is unset,
        missing or unwritable)."""
        return self.detector.open_writer(prefix=self.name) if self.detector.data_mode.get() == "hdf5" else None

    def _close_writer(self):
        super()._close_writer()
        self._written_pages = []

    # ------------------------------------------------------------------ collection
    def describe_collect(self) -> dict[str, dict]:
        """Data keys of the collected stream: the detector's image (``external: "STREAM:"`` in HDF5 mode) and
        statistics plus the beam position."""
        detector, stage = self.detector, self.detector.sample_stage
        keys = {detector.image.name: {**detector.image_description(), "source": f"SIM:{self.name}"}}
        for signal, units in ((detector.total, "counts"), (detector.centroid_x, "pixel"),
                              (detector.centroid_y, "pixel"), (stage.x.readback, "um"), (stage.y.readback, "um")):
            keys[signal.name] = {"source": f"SIM:{self.name}", "dtype": "number", "shape": [], "units": units}
        return keys

    def collect_asset_docs(self, index: int | None = None) -> Iterator[tuple[str, dict]]:
        """HDF5 mode: the file's stream_resource (first collect after staging), then one stream_datum for the
        frames written since the last collect (up to frame ``index`` if given). Nothing inline."""
        if self._writer is not None:
            yield from self._writer.collect_asset_docs(index)

    def collect_pages(self) -> Iterator[dict]:
        """One event page per ``page_size`` frames of the recorded sweep.

        Inline, the frames are rendered here and the page's image entry is one (n, H, W) array (valid as an
        event-page array, and several times cheaper for the RunEngine's schema validation than a list of n
        frames). In HDF5 mode the pages hold the statistics and positions of the frames ``complete()`` wrote.
        """
        if self._writer is not None:
            pages, self._written_pages = self._written_pages, []
        else:
            image = self.detector.image.name
            pages = (({image: frames, **data}, stamps) for frames, data, stamps in self._render())
        for data, stamps in pages:
            yield {"time": stamps, "data": data, "timestamps": {key: stamps for key in data}}
