"""Simulated beamline: an Ophyd stage, nanobeam detector, fly scanner, temperature controller and deposition
source, all acting on one living sample whose ground truth is queryable::

    from nanopilot.sim_devices import make_beamline
    bl = make_beamline("domains", seed=1)
    RE(bp.grid_scan([bl.detector], bl.stage.y, -1, 1, 32, bl.stage.x, -1, 1, 32))
    bl.sample.truth(0.5, -0.2).strain, bl.sample.labels([0, 1], [0, 1])

Time is simulated by default (moves, exposures, ramps and growth cost no wall time); see
:mod:`nanopilot.sim_devices.clock`. The detector and stage as ophyd-async devices (the ``async`` extra) are in
:mod:`nanopilot.sim_devices.async_devices`.
"""

from .beamline import Beamline, make_beamline
from .clock import SimClock
from .detector import HOT_PIXEL_RATE, NanobeamDetector, frame_statistics
from .flyer import SimFlyer
from .motion import SimAxis, SimDepositionSource, SimStage, SimTemperatureController
from .raw_detector import DETECTOR_PRESETS, RawDetectorPreset, RawReadout
from .sample import TRUTH_DTYPE, SimSample
from .scenes import SCENES, CoolingScene, DomainsScene, GrowthScene, PublishedScene, SampleState, Scene, make_scene

__all__ = [
    "DETECTOR_PRESETS", "HOT_PIXEL_RATE", "SCENES", "TRUTH_DTYPE", "Beamline", "CoolingScene", "DomainsScene",
    "GrowthScene", "NanobeamDetector", "PublishedScene", "RawDetectorPreset", "RawReadout", "SampleState", "Scene",
    "SimAxis", "SimClock", "SimDepositionSource", "SimFlyer", "SimSample", "SimStage", "SimTemperatureController",
    "frame_statistics", "make_beamline", "make_scene",
]
