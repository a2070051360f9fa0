"""Faults in the closed-loop plans (issue 15): the safe state on every exit path without relying on any
subscriber, and every argument checked before anything moves, opens or heats."""

import math
import threading

import pytest
from bluesky import RunEngine
from bluesky.utils import RunEngineInterrupted

from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.plans import find_texture_temperature, grow_until, steered_map
from nanopilot.sim_devices import make_beamline
from nanopilot.texture import frame_descriptor
from test_callbacks import CentroidPredictor
from test_plans_growth import TruthPredictor, growth_run


def fail_on_stop(name, doc):
    if name == "stop":
        raise RuntimeError("injected subscriber failure on the stop document")


def interrupt_when(device, condition, fault, RE):
    """Make ``device.trigger`` inject ``fault`` ("keyboard" or "pause") the first time ``condition()`` holds."""
    trigger, fired = device.trigger, []

    def faulty_trigger():
        if condition() and not fired:
            fired.append(True)
            if fault == "keyboard":
                raise KeyboardInterrupt
            threading.Thread(target=RE.request_pause, kwargs={"defer": False}).start()  # like Ctrl+C twice
        return trigger()

    device.trigger = faulty_trigger
    return fired


def run_interrupted(RE, plan, fired):
    """Run ``plan`` until the fault; halt the RunEngine if it paused. Returns the RunEngine's state when the
    plan returned control."""
    with pytest.raises((KeyboardInterrupt, RunEngineInterrupted)):
        RE(plan)
    assert fired
    state = RE.state
    if state == "paused":
        RE.halt()
    assert RE.state == "idle"
    return state


# --- the shutter of grow_until


def growth_with_failing_stop_subscriber(fault):
    bl, RE, plan = growth_run(3, 250.0, critical_thickness=200.0)
    RE.subscribe(fail_on_stop)  # subscribed before the plan's own callbacks: they would never see the stop
    fired = interrupt_when(bl.detector, lambda: bl.deposition.shutter.get() == "open", fault, RE)
    return bl, RE, plan, fired


def test_keyboard_interrupt_in_the_detector_with_a_failing_stop_subscriber_closes_the_shutter():
    bl, RE, plan, fired = growth_with_failing_stop_subscriber("keyboard")
    run_interrupted(RE, plan, fired)
    assert bl.deposition.shutter.get() == "closed"


def test_pause_then_halt_with_a_failing_stop_subscriber_closes_the_shutter():
    bl, RE, plan, fired = growth_with_failing_stop_subscriber("pause")
    assert run_interrupted(RE, plan, fired) == "paused"
    assert bl.deposition.shutter.get() == "closed"
    grown = bl.sample.deposited
    bl.clock.advance(60.0)
    assert bl.sample.deposited == grown  # the film stopped growing


# --- arguments checked before the first message


def run_refused(RE, plan, match):
    """Run ``plan`` and expect a ValueError matching ``match`` before any document."""
    docs = []
    RE.subscribe(lambda name, doc: docs.append(name))
    with pytest.raises(ValueError, match=match):
        RE(plan)
    assert docs == [] and RE.state == "idle"


@pytest.mark.parametrize("kwargs, match", [
    ({"points": [(math.nan, 0.0)]}, r"points\[0\]"),
    ({"points": [(0.0, 0.0), (math.inf, 0.0)]}, r"points\[1\]"),
    ({"points": [("a", 0.0)]}, r"points\[0\]"),
    ({"points": 5}, "points"),
    ({"timeout": -1}, "timeout"),
    ({"timeout": math.nan}, "timeout"),
    ({"approve": "yes"}, "approve"),
])
def test_grow_until_bad_arguments_open_nothing(kwargs, match):
    bl = make_beamline("growth", seed=1)
    analysis = NanobeamAnalysis(TruthPredictor(bl), batch_size=1, threaded=False)
    RE = RunEngine({})
    RE.subscribe(analysis)
    shutter = []
    bl.deposition.shutter.subscribe(lambda value, **_: shutter.append(value), run=False)
    plan = grow_until([bl.detector], bl.deposition, bl.stage.x, bl.stage.y, 100.0, maps=analysis.maps,
                      interval=2.0, **kwargs)
    run_refused(RE, plan, match)
    assert shutter == [] and bl.sample.deposited == 0
    assert (bl.stage.x.position, bl.stage.y.position) == (0, 0)


@pytest.mark.parametrize("kwargs, match", [
    ({"timeout": -1}, "timeout"),
    ({"timeout": math.nan}, "timeout"),
    ({"x_range": ("a", 1.0)}, "x_range"),
    ({"y_range": 5}, "y_range"),
    ({"approve": "yes"}, "approve"),
])
def test_steered_map_bad_arguments_are_refused_before_any_run(kwargs, match):
    bl = make_beamline("domains", seed=1)
    analysis = NanobeamAnalysis(CentroidPredictor())
    RE = RunEngine({})
    RE.subscribe(analysis)
    args = {"x_range": (-1, 1), "y_range": (-1, 1), "fine": 9, "coarse_step": 4, **kwargs}
    run_refused(RE, steered_map([bl.detector], bl.stage.x, bl.stage.y, maps=analysis.maps, **args), match)
    assert (bl.stage.x.position, bl.stage.y.position) == (0, 0)


@pytest.mark.parametrize("kwargs, match", [
    ({"x_range": (-1.0, math.inf)}, "x_range"),
    ({"y_range": (-1.0, "b")}, "y_range"),
    ({"dwell": "1 s"}, "dwell"),
    ({"stop": "cold"}, "stop"),
    ({"approve": "yes"}, "approve"),
    ({"detectors": "det"}, "detectors"),
])
def test_find_texture_temperature_bad_arguments_heat_nothing(kwargs, match):
    bl = make_beamline("cooling", seed=1, temperature=266.0)
    analysis = NanobeamAnalysis(CentroidPredictor())
    RE = RunEngine({})
    RE.subscribe(analysis)
    setpoints = []
    bl.temperature.setpoint.subscribe(lambda value, **_: setpoints.append(value), run=False)
    args = {"detectors": [bl.detector], "x_range": (-1, 1), "y_range": (-1, 1), "stop": 250.0, **kwargs}
    run_refused(RE, find_texture_temperature(temperature=bl.temperature, x=bl.stage.x, y=bl.stage.y,
                                             maps=analysis.maps, **args), match)
    assert setpoints == [] and bl.temperature.position == 266.0
    assert (bl.stage.x.position, bl.stage.y.position) == (0, 0)


@pytest.mark.parametrize("plan, device, match", [
    ("steered_map", "y", r"y: there is no device named 'stage_yy'"),
    ("steered_map", "detectors", r"detectors\[0\]: there is no device named 'stage_yy'"),
    ("grow_until", "deposition", r"deposition: there is no device named 'stage_yy'"),
    ("find_texture_temperature", "temperature", r"temperature: there is no device named 'stage_yy'"),
    ("find_texture_temperature", "x", r"must be a device with set\(\)"),
])
def test_a_device_name_that_was_not_resolved_is_refused_naming_the_argument(plan, device, match):
    """The queue server passes a device name it does not know (e.g. misspelt) as the string itself."""
    bl = make_beamline("growth", seed=1)
    analysis = NanobeamAnalysis(CentroidPredictor())
    RE = RunEngine({})
    RE.subscribe(analysis)
    args = {"steered_map": {"detectors": [bl.detector], "x": bl.stage.x, "y": bl.stage.y, "x_range": (-1, 1),
                            "y_range": (-1, 1)},
            "grow_until": {"detectors": [bl.detector], "deposition": bl.deposition, "x": bl.stage.x, "y": bl.stage.y,
                           "target_thickness": 100.0},
            "find_texture_temperature": {"detectors": [bl.detector], "temperature": bl.temperature, "x": bl.stage.x,
                                         "y": bl.stage.y, "x_range": (-1, 1), "y_range": (-1, 1), "stop": 250.0}}[plan]
    args[device] = ["stage_yy"] if device == "detectors" else bl.detector if device == "x" else "stage_yy"
    plans = {"steered_map": steered_map, "grow_until": grow_until, "find_texture_temperature": find_texture_temperature}
    run_refused(RE, plans[plan](maps=analysis.maps, **args), match)


# --- find_texture_temperature(restore=True)


@pytest.mark.parametrize("fault", ["keyboard", "pause"])
def test_restore_after_a_halt_sets_the_start_temperature(fault):
    bl = make_beamline("cooling", seed=1, noise=False, temperature=266.0)
    analysis = NanobeamAnalysis(CentroidPredictor(), frame_features=frame_descriptor, batch_size=64,
                                max_latency=0.02)
    RE = RunEngine({})
    RE.subscribe(analysis)
    RE.subscribe(fail_on_stop)
    fired = interrupt_when(bl.detector, lambda: bl.temperature.setpoint.get() < 265.0, fault, RE)
    plan = find_texture_temperature([bl.detector], bl.temperature, bl.stage.x, bl.stage.y, (-2, 2), (-2, 2), 244.0,
                                    quick=5, fine=5, step=8.0, restore=True, timeout=10.0, maps=analysis.maps)
    run_interrupted(RE, plan, fired)
    assert bl.temperature.setpoint.get() == 266.0
