"""One call for a whole simulated beamline wired to one living sample."""

from __future__ import annotations

import dataclasses

from ..physics import Instrument
from .clock import SimClock
from .detector import NanobeamDetector
from .flyer import SimFlyer
from .motion import SimDepositionSource, SimStage, SimTemperatureController
from .raw_detector import RawDetectorPreset, RawReadout
from .sample import SimSample


@dataclasses.dataclass(frozen=True)
class Beamline:
    """The devices of a simulated beamline, sharing one :class:`SimClock` and one :class:`SimSample`."""

    clock: SimClock
    sample: SimSample
    stage: SimStage
    detector: NanobeamDetector
    flyer: SimFlyer
    temperature: SimTemperatureController
    deposition: SimDepositionSource

    def install(self, RE) -> None:
        """Run ``RE``'s ``bps.sleep`` on this beamline's clock (:meth:`SimClock.install`)."""
        self.clock.install(RE)

    @property
    def devices(self) -> dict:
        """The ophyd devices by their names (e.g. to put in a beamline namespace)."""
        return {device.name: device for device in (self.stage, self.detector, self.flyer, self.temperature,
                                                   self.deposition)}


def make_beamline(scene: str = "published", seed: int | None = None, *, scene_parameters: dict | None = None,
                  realtime: bool = False, instrument: Instrument | None = None, temperature: float = 295.0,
                  exposure_time: float = 0.1, count_rate: float = 70.0, noise: bool = True,
                  background: float = 0.0, footprint: float = 0.0, hot_pixels: int = 0,
                  data_mode: str = "inline", hdf5_directory: str | None = None,
                  stage_limits: tuple[float, float] = (-100.0, 100.0), stage_velocity: float = 1000.0,
                  settling_time: float = 0.01, temperature_limits: tuple[float, float] = (10.0, 600.0),
                  ramp_rate: float = 0.5, deposition_rate: float | None = None,
                  detector: str | RawDetectorPreset | None = None, peak_offset=(0, 0), peak_drift=(0.0, 0.0),
                  dark_current: float = 0.0, gain: float = 1.0, dead_pixels: int = 0) -> Beamline:
    """Make a simulated beamline: stage ``stage`` (``stage_x``, ``stage_y``), detector ``det``, flyer ``flyer``,
    temperature controller ``temperature`` and deposition source ``deposition``, all on one sample.

    Parameters
    ----------
    scene : str
        ``published``, ``domains``, ``cooling`` or ``growth`` (see :mod:`nanopilot.sim_devices.scenes`), or a
        structure family: ``inclusions``, ``walls``, ``stripes``, ``gradient``, ``crack``, ``mixture`` (see
        :mod:`nanopilot.sim_devices.structures`).
    seed : int, optional
        Seeds the scene's random draws and the detector's noise and hot pixels.
    scene_parameters : dict, optional
        Scene parameters to override.
    realtime : bool
        Run on the wall clock instead of simulated time (see :mod:`nanopilot.sim_devices.clock`).
    instrument : Instrument, optional
        The diffraction setup (default: the published one).
    temperature : float
        Initial sample temperature (K).
    exposure_time, count_rate, noise, background, footprint, hot_pixels, data_mode, hdf5_directory
        Detector settings (s, counts/s, bool, counts/s/pixel, um, int, ``"inline"``/``"hdf5"``, path); see
        :class:`NanobeamDetector`.
    stage_limits, stage_velocity, settling_time
        Stage soft limits (um), speed (um/s) and settling time (s).
    temperature_limits, ramp_rate
        Temperature controller limits (K) and ramp rate (K/s).
    deposition_rate : float, optional
        Deposition rate (angstrom/s); default the ``growth`` scene's growth rate, else 1.
    detector : str or RawDetectorPreset, optional
        A raw detector (a name of :data:`~nanopilot.sim_devices.raw_detector.DETECTOR_PRESETS`, e.g.
        ``"medipix-256"``): the detector then publishes its raw ADU frames, with ``hot_pixels`` at its own pixels;
        ``bl.detector.readout.preparation()`` is the matching frame preparation. None: the model's frames.
    peak_offset, peak_drift, dark_current, gain, dead_pixels
        Raw detector only: the pattern's shift from the ROI (rows, cols; detector pixels) and its drift per frame
        (detector pixels / frame, sub-pixel), the dark level (ADU), ADU per photon, dead pixels; see
        :class:`~nanopilot.sim_devices.raw_detector.RawReadout`.

    Raises
    ------
    ValueError
        For an unknown scene or parameter, or a setting out of range (before any device exists).
    """
    readout = None
    if detector is not None:
        readout = RawReadout(detector, instrument, peak_offset=peak_offset, peak_drift=peak_drift,
                             dark_current=dark_current, gain=gain, hot_pixels=hot_pixels, dead_pixels=dead_pixels,
                             seed=seed)
        hot_pixels = 0  # the raw detector's own
    elif (tuple(peak_offset), tuple(peak_drift), dark_current, gain, dead_pixels) != ((0, 0), (0.0, 0.0), 0.0, 1.0, 0):
        raise ValueError("peak_offset, peak_drift, dark_current, gain and dead_pixels need a raw detector: give "
                         "detector='medipix-256' (or another preset), or leave them out")
    sample = SimSample(scene, seed, temperature=temperature, **(scene_parameters or {}))
    clock = SimClock(realtime=realtime)
    stage = SimStage(name="stage", clock=clock, limits=stage_limits, velocity=stage_velocity,
                     settling_time=settling_time)
    detector = NanobeamDetector(name="det", clock=clock, sample=sample, sample_stage=stage, instrument=instrument,
                                seed=seed, hot_pixels=hot_pixels, readout=readout)
    detector.configure({"exposure_time": exposure_time, "count_rate": count_rate, "noise": noise,
                        "background": background, "footprint": footprint, "data_mode": data_mode,
                        "hdf5_directory": str(hdf5_directory or "")})
    temperature_controller = SimTemperatureController(name="temperature", clock=clock, sample=sample,
                                                      limits=temperature_limits)
    temperature_controller.ramp_rate.put(ramp_rate)
    if deposition_rate is None:
        deposition_rate = getattr(sample.scene, "growth_rate", 1.0)
    deposition = SimDepositionSource(name="deposition", clock=clock, sample=sample, rate=deposition_rate)
    flyer = SimFlyer(name="flyer", detector=detector)
    return Beamline(clock=clock, sample=sample, stage=stage, detector=detector, flyer=flyer,
                    temperature=temperature_controller, deposition=deposition)
