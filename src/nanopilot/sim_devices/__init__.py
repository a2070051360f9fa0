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
from .structures import REPORTING_SEEDS, STRUCTURES, TUNING_SEEDS
from .truth import feature_mask, label_walls

__all__ = [
    "Beamline", "CoolingScene", "DETECTOR_PRESETS", "DomainsScene", "GrowthScene", "HOT_PIXEL_RATE",
    "NanobeamDetector", "PublishedScene", "REPORTING_SEEDS", "RawDetectorPreset", "RawReadout", "SCENES", "STRUCTURES",
    "SampleState", "Scene", "SimAxis", "SimClock", "SimDepositionSource", "SimFlyer", "SimSample", "SimStage",
    "SimTemperatureController", "TRUTH_DTYPE", "TUNING_SEEDS", "feature_mask", "frame_statistics", "label_walls",
    "make_beamline", "make_scene",
]
