"""The simulated nanobeam detector and sample stage as ophyd-async devices (needs ``pip install nanopilot[async]``).

:class:`AsyncNanobeamDetector` is an ophyd-async ``StandardDetector`` built the library's way, from a trigger, an
acquire and a data logic (like ``ophyd_async.sim.SimBlobDetector``): each exposure renders the sample's pattern at
the stage motors' current readbacks with the same functions as :class:`~.detector.NanobeamDetector`
(:func:`~.detector.render_frames`) and appends it to an HDF5 file that the documents announce with
stream_resource / stream_datum. The stage axes are ``ophyd_async.sim.SimMotor`` (um)::

    RE = RunEngine()  # first: ophyd-async devices connect in the RunEngine's event loop
    bl = make_async_beamline("domains", seed=1, directory=tmp_path)
    RE(bp.grid_scan([bl.detector], bl.y, -1, 1, 32, bl.x, -1, 1, 32))
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
from bluesky.run_engine import call_in_bluesky_event_loop
from ophyd_async.core import (DetectorAcquireLogic, DetectorDataLogic, DetectorTriggerLogic, PathProvider,
                              StandardDetector, StaticPathProvider, StreamResourceDataProvider, StreamResourceInfo,
                              TriggerInfo, UUIDFilenameProvider, init_devices, soft_signal_r_and_setter,
                              soft_signal_rw)
from ophyd_async.sim import SimMotor

from ..physics import KERNELS, Instrument
from .detector import beam_positions, render_frames
from .hdf5 import DATASET, HDF5FrameWriter
from .sample import SimSample


class _Exposures:
    """What the three logics share: the settings, the stage, the open file and the frames written to it."""

    def __init__(self, sample: SimSample, x: SimMotor, y: SimMotor, instrument: Instrument, kernel: str,
                 seed: int | None, realtime: bool):
        self.sample, self.x, self.y, self.instrument, self.kernel = sample, x, y, instrument, kernel
        self.rng, self.realtime = np.random.default_rng(seed), realtime
        self.exposure_time = soft_signal_rw(float, 0.1, units="s")
        self.count_rate = soft_signal_rw(float, 70.0, units="counts/s")
        self.noise = soft_signal_rw(bool, True)
        self.background = soft_signal_rw(float, 0.0, units="counts/s/pixel")
        self.footprint = soft_signal_rw(float, 0.0, units="um")
        self.instrument_fingerprint, _ = soft_signal_r_and_setter(str, instrument.fingerprint())
        self.frames_written, self.set_frames_written = soft_signal_r_and_setter(int)
        self.writer: HDF5FrameWriter | None = None
        self.num, self.livetime = 1, 0.0  # exposures per trigger, s (0: exposure_time)

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(self.instrument.roi_shape)

    async def frame_dtype(self) -> np.dtype:
        """uint32 counts with noise, float32 expected counts without."""
        return np.dtype(np.uint32) if await self.noise.get_value() else np.dtype(np.float32)

    async def acquire(self) -> None:
        """Render, write and announce the prepared number of exposures at the stage's current position."""
        if self.writer is None:
            raise RuntimeError("the detector has no open file: prepare it (bluesky plans do) before triggering")
        exposure = self.livetime or await self.exposure_time.get_value()
        settings = dict(zip(("count_rate", "noise", "background", "footprint"), await asyncio.gather(
            self.count_rate.get_value(), self.noise.get_value(), self.background.get_value(),
            self.footprint.get_value())))
        for _ in range(self.num):
            x, y = await asyncio.gather(self.x.user_readback.get_value(), self.y.user_readback.get_value())
            parameters = self.sample.parameters(*beam_positions(x, y, settings["footprint"]))
            frame = render_frames(parameters, self.instrument, exposure, rng=self.rng, kernel=self.kernel,
                                  **settings)
            if self.realtime:
                await asyncio.sleep(exposure)
            self.writer.append(frame)
            self.set_frames_written(self.writer.index)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@dataclasses.dataclass
class _TriggerLogic(DetectorTriggerLogic):
    exposures: _Exposures

    async def prepare_internal(self, num: int, livetime: float, deadtime: float):
        self.exposures.num, self.exposures.livetime = num, livetime

    async def default_trigger_info(self) -> TriggerInfo:
        return TriggerInfo()


class _AcquireLogic(DetectorAcquireLogic):
    def __init__(self, exposures: _Exposures):
        self.exposures, self.task = exposures, None

    async def start_acquiring(self):
        if self.exposures.realtime:  # in the background, like ophyd-async's SimBlobDetector
            self.task = asyncio.create_task(self.exposures.acquire())
        else:  # exposures cost no time: render now, so that a failure is the trigger's (kickoff's) own error
            await self.exposures.acquire()

    async def wait_for_idle(self):
        if self.task is not None:
            await self.task

    async def ensure_stopped(self):
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None


class _DataLogic(DetectorDataLogic):
    def __init__(self, exposures: _Exposures, path_provider: PathProvider):
        self.exposures, self.path_provider = exposures, path_provider

    async def prepare_unbounded(self, datakey_name: str) -> StreamResourceDataProvider:
        """Open a new HDF5 file where the path provider says; raises if its directory is missing or unwritable."""
        info, dtype = self.path_provider(datakey_name), await self.exposures.frame_dtype()
        shape = self.exposures.frame_shape
        self.exposures.close()
        writer = HDF5FrameWriter(info.directory_path, datakey_name, shape, dtype, prefix=info.filename)
        self.exposures.writer = writer
        self.exposures.set_frames_written(0)
        resource = StreamResourceInfo(data_key=datakey_name, shape=shape, chunk_shape=(1, *shape),
                                      dtype_numpy=dtype.str, parameters={"dataset": DATASET})
        return StreamResourceDataProvider(uri=writer.uri, resources=[resource],
                                          mimetype="application/x-hdf5",
                                          collections_written_signal=self.exposures.frames_written)

    async def stop(self) -> None:
        self.exposures.close()

    def get_hinted_fields(self, datakey_name: str) -> list[str]:
        return [datakey_name]


class AsyncNanobeamDetector(StandardDetector):
    """The nanobeam area detector of :class:`~.detector.NanobeamDetector` as an ophyd-async ``StandardDetector``.

    Each exposure renders the pattern at ``x``, ``y``'s readbacks (um) and writes it to ``/entry/data/data`` of
    an HDF5 file per staging, in the directory ``path_provider`` gives; the frames reach the documents as
    stream_resource / stream_datum under the data key named like the detector (shape [1, H, W]).

    Parameters
    ----------
    path_provider : ophyd_async PathProvider
        Where the files go (e.g. ``StaticPathProvider(UUIDFilenameProvider(), directory)``).
    sample : SimSample
        The sample under the beam.
    x, y : ophyd_async.sim.SimMotor
        The stage axes (um).
    instrument : Instrument, optional
        The diffraction setup (default: the published one).
    seed : int, optional
        Seed of the noise.
    kernel : {"box", "gauss"}
        Forward-model kernel (see :func:`nanopilot.physics.simulate`).
    realtime : bool
        Spend each exposure on the wall clock, acquiring in the background; False (default): exposures cost no
        time, like the simulated clock, and are rendered when acquisition starts.

    Notes
    -----
    Configuration signals: ``exposure_time`` (s; a prepared ``TriggerInfo.livetime`` overrides it), ``count_rate``
    (counts/s), ``noise``, ``background`` (counts/s/pixel), ``footprint`` (um) and the read-only
    ``instrument_fingerprint``; see :class:`~.detector.NanobeamDetector` for their meaning.
    """

    def __init__(self, path_provider: PathProvider, *, sample: SimSample, x: SimMotor, y: SimMotor,
                 instrument: Instrument | None = None, seed: int | None = None, kernel: str = "box",
                 realtime: bool = False, name: str = ""):
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        exposures = _Exposures(sample, x, y, instrument or Instrument(), kernel, seed, realtime)
        self.sample, self.instrument = sample, exposures.instrument
        self.exposure_time, self.count_rate, self.noise = (exposures.exposure_time, exposures.count_rate,
                                                           exposures.noise)
        self.background, self.footprint = exposures.background, exposures.footprint
        self.instrument_fingerprint = exposures.instrument_fingerprint
        self.add_detector_logics(_TriggerLogic(exposures), _AcquireLogic(exposures),
                                 _DataLogic(exposures, path_provider))
        self.add_config_signals(self.exposure_time, self.count_rate, self.noise, self.background, self.footprint,
                                self.instrument_fingerprint)
        super().__init__(name=name)


async def _set_all(settings: dict) -> None:
    await asyncio.gather(*(signal.set(value) for signal, value in settings.items()))


@dataclasses.dataclass(frozen=True)
class AsyncBeamline:
    """The ophyd-async devices of :func:`make_async_beamline` on one :class:`SimSample`."""

    sample: SimSample
    x: SimMotor
    y: SimMotor
    detector: AsyncNanobeamDetector


def make_async_beamline(scene: str = "published", seed: int | None = None, directory: str | Path = ".", *,
                        scene_parameters: dict | None = None, instrument: Instrument | None = None,
                        temperature: float = 295.0, exposure_time: float = 0.1, count_rate: float = 70.0,
                        noise: bool = True, background: float = 0.0, footprint: float = 0.0,
                        realtime: bool = False) -> AsyncBeamline:
    """Connected ophyd-async stage motors ``stage_x``, ``stage_y`` (instant moves, um) and detector ``det`` writing
    HDF5 files to ``directory`` (an existing, writable directory), all on the sample of ``scene``.

    Make the RunEngine first: the devices connect in its event loop. The settings are those of
    :func:`~.beamline.make_beamline`; the v1 temperature controller and deposition source
    (:class:`~.motion.SimTemperatureController`, :class:`~.motion.SimDepositionSource`) can drive the returned
    ``sample``.
    """
    for label, value in (("exposure_time", exposure_time), ("count_rate", count_rate)):
        if not value > 0:
            raise ValueError(f"{label} must be positive, got {value!r}")
    for label, value in (("background", background), ("footprint", footprint)):
        if not value >= 0:
            raise ValueError(f"{label} must be non-negative, got {value!r}")
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"HDF5 directory {str(directory)!r} does not exist or is not a directory")
    sample = SimSample(scene, seed, temperature=temperature, **(scene_parameters or {}))
    with init_devices(set_name=False):
        x, y = SimMotor(name="stage_x", units="um"), SimMotor(name="stage_y", units="um")
        detector = AsyncNanobeamDetector(StaticPathProvider(UUIDFilenameProvider(), directory), sample=sample,
                                         x=x, y=y, instrument=instrument, seed=seed, realtime=realtime, name="det")
    settings = {detector.exposure_time: exposure_time, detector.count_rate: count_rate, detector.noise: bool(noise),
                detector.background: background, detector.footprint: footprint}
    call_in_bluesky_event_loop(_set_all(settings))
    return AsyncBeamline(sample=sample, x=x, y=y, detector=detector)
