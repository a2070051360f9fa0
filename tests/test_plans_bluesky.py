"""The plans speak bluesky (issue 19, items 3, 4 and 6). They wait for the analysis without blocking the
RunEngine: a pause while they wait is serviced at once, resume finishes the plan, abort restores the safe state, and
grow_until's shutter is closed for as long as the RunEngine is paused. They sleep with ``bps.sleep`` (a simulated
beamline spends it on its clock), merge ``md`` as bluesky's plans do, and get the session's maps from the RunEngine."""

import asyncio
import threading
import time

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import RunEngineInterrupted
from test_callbacks import CentroidPredictor
from test_plans_growth import TruthPredictor

from nanopilot.callbacks import LiveMaps, NanobeamAnalysis
from nanopilot.estimates import Estimates
from nanopilot.plans import find_texture_temperature, grow_until
from nanopilot.plans.common import SafeWhilePaused, merge_md
from nanopilot.plans.waiting import wait_until
from nanopilot.sim_devices import make_beamline
from nanopilot.texture import frame_descriptor


class GatedPredictor:
    """A predictor that stops (blocks the analysis thread) once ``armed()`` holds, until ``release()``."""

    def __init__(self, predictor, armed):
        self.predictor, self.armed = predictor, armed
        self.instrument, self.outputs = predictor.instrument, predictor.outputs
        self.metadata = getattr(predictor, "metadata", {})
        self.stopped, self.gate = threading.Event(), threading.Event()

    def release(self):
        self.gate.set()

    def predict(self, frames, refine=False):
        if self.armed():
            self.stopped.set()
            assert self.gate.wait(30), "the test never released the analysis"
        return self.predictor.predict(frames, refine)


def pause_when_waiting(RE, predictor):
    """Request a pause (as Ctrl+C twice does) once the plan waits for the stopped analysis; returns a dict that
    gets the time (s, monotonic) of the request."""
    waiting, asked = threading.Event(), {}
    RE.msg_hook = lambda msg: waiting.set() if msg.command == "wait_for" and predictor.stopped.is_set() else None

    def pause():
        assert waiting.wait(60)
        time.sleep(0.2)  # well inside the wait
        asked["t"] = time.monotonic()
        RE.request_pause(defer=False)

    threading.Thread(target=pause, daemon=True).start()
    return asked


@pytest.fixture
def analyses():
    """Analyses to close after the test (their threads end with it)."""
    made = []
    yield made
    for analysis in made:
        analysis.close(timeout=30)


def growth(analyses, seed=3, target=140.0):
    bl = make_beamline("growth", seed=seed)
    predictor = GatedPredictor(TruthPredictor(bl, seed), lambda: bl.deposition.shutter.get() == "open")
    analysis = NanobeamAnalysis(predictor, batch_size=1, max_latency=0.0)  # threaded: the RunEngine waits for it
    analyses.append(analysis)
    RE = RunEngine({}, call_returns_result=True)
    bl.install(RE)
    RE.subscribe(analysis)
    shutter = []
    bl.deposition.shutter.subscribe(lambda value, **_: shutter.append(value), run=False)
    plan = grow_until([bl.detector], bl.deposition, bl.stage.x, bl.stage.y, target, maps=analysis.maps,
                      interval=2.0, points=[(-1.0, 0.0), (0.0, 0.0), (1.0, 0.0)], timeout=30)
    return bl, RE, plan, predictor, shutter


def test_grow_until_pauses_at_once_while_waiting_closes_the_shutter_and_resumes(analyses):
    bl, RE, plan, predictor, shutter = growth(analyses)
    asked = pause_when_waiting(RE, predictor)
    with pytest.raises(RunEngineInterrupted):
        RE(plan)
    assert time.monotonic() - asked["t"] < 1.0  # the analysis is still stopped: the wait did not block the pause
    assert RE.state == "paused" and not predictor.gate.is_set()
    assert bl.deposition.shutter.get() == "closed" and shutter == ["open", "closed"]
    grown = bl.sample.deposited
    bl.clock.advance(60.0)
    assert bl.sample.deposited == grown  # the film does not grow while the RunEngine is paused
    predictor.release()
    result = RE.resume().plan_result
    assert result["reason"] in ("target", "relaxation") and result["rounds"] > 1
    assert shutter[:3] == ["open", "closed", "open"] and shutter[-1] == "closed"  # reopened on resume
    assert bl.deposition.shutter.get() == "closed"


def test_grow_until_abort_while_waiting_closes_the_shutter(analyses):
    bl, RE, plan, predictor, _ = growth(analyses)
    pause_when_waiting(RE, predictor)
    with pytest.raises(RunEngineInterrupted):
        RE(plan)
    predictor.release()  # the run's analysis can finish: the plan waits for it after the abort
    result = RE.abort("test")
    assert result.exit_status == "abort" and RE.state == "idle"
    assert bl.deposition.shutter.get() == "closed"
    grown = bl.sample.deposited
    bl.clock.advance(60.0)
    assert bl.sample.deposited == grown


def test_find_texture_temperature_abort_while_waiting_restores_the_temperature(analyses):
    bl = make_beamline("cooling", seed=1, noise=False, temperature=266.0)
    predictor = GatedPredictor(CentroidPredictor(), lambda: bl.temperature.position < 265.0)
    analysis = NanobeamAnalysis(predictor, frame_features=frame_descriptor, batch_size=64, max_latency=0.02)
    analyses.append(analysis)
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(analysis)
    asked = pause_when_waiting(RE, predictor)
    with pytest.raises(RunEngineInterrupted):
        RE(find_texture_temperature([bl.detector], bl.temperature, bl.stage.x, bl.stage.y, (-2, 2), (-2, 2), 244.0,
                                    quick=6, fine=8, step=4.0, restore=True, maps=analysis.maps, timeout=30))
    assert time.monotonic() - asked["t"] < 1.0 and RE.state == "paused"
    assert bl.temperature.position < 265.0  # a pause leaves the temperature
    predictor.release()
    assert RE.abort("test").exit_status == "abort"
    assert bl.temperature.position == pytest.approx(266.0, abs=0.2)


# --- the wait itself


def one_frame_maps():
    maps = LiveMaps()
    maps.begin_run("u", ["y", "x"]).taken = 1  # one frame taken, not yet analysed
    return maps


def add_frame(maps):
    nan = np.full((1, 3), np.nan)
    maps.add("u", [1], [[0.0, 0.0]], Estimates.from_params(nan, np.array(["ok"])))


def test_wait_until_is_completed_from_the_analysis_thread():
    maps = one_frame_maps()
    RE = RunEngine({})
    threading.Timer(0.3, add_frame, (maps,)).start()
    t = time.monotonic()
    RE(wait_until(maps, LiveMaps.caught_up, 10.0, lambda: "not caught up"))
    assert 0.25 < time.monotonic() - t < 5 and maps.caught_up()
    assert not maps._waiters  # nothing left behind


def test_wait_until_times_out_with_a_message_and_leaves_no_waiter():
    maps = one_frame_maps()
    with pytest.raises(TimeoutError, match="1 frame behind"):
        RunEngine({})(wait_until(maps, LiveMaps.caught_up, 0.2, lambda: f"{maps['u'].taken} frame behind"))
    add_frame(maps)
    assert not maps._waiters


def test_a_failing_condition_fails_its_wait_and_not_the_analysis():
    maps = one_frame_maps()
    future = maps.when(lambda m: m.caught_up() and 1 / 0)
    add_frame(maps)
    assert isinstance(future.exception(timeout=1), ZeroDivisionError) and maps.caught_up()


# --- time, metadata


def test_a_simulated_beamline_spends_the_run_engines_sleeps_on_its_clock():
    bl = make_beamline("growth", seed=1)
    RE = RunEngine({})
    bl.install(RE)
    bl.deposition.shutter.put("open")
    t, deposited = bl.clock.elapsed, bl.sample.deposited
    start = time.monotonic()
    RE(bps.sleep(100.0))
    assert time.monotonic() - start < 5 and bl.clock.elapsed - t == pytest.approx(100.0)
    assert bl.sample.deposited - deposited == pytest.approx(100.0 * bl.deposition.rate.get())


def test_md_is_merged_as_bluesky_plans_do_keeping_hints_and_plan_args():
    own = {"plan_name": "p", "plan_args": {"a": 1}, "motors": ["y", "x"], "hints": {"dimensions": [(["x"], "primary")]}}
    merged = merge_md(own, {"sample": "S1", "motors": ["z"], "plan_args": {}, "hints": {"gridding": "rectilinear"}})
    assert merged == {"plan_name": "p", "plan_args": {"a": 1}, "motors": ["z"], "sample": "S1",
                      "hints": {"dimensions": [(["x"], "primary")], "gridding": "rectilinear"}}
    assert merge_md(own, None) == own


def test_a_shutter_that_fails_to_close_at_a_pause_is_logged_not_raised(caplog):
    from ophyd.status import StatusBase

    class Shutter:
        name, parent, fail = "shutter", None, False

        def set(self, value):
            if self.fail:
                raise RuntimeError("stuck")
            status = StatusBase()
            status.set_finished()
            return status

    shutter = Shutter()
    guarded = SafeWhilePaused(shutter, "closed")
    guarded.set("open")
    shutter.fail = True
    asyncio.run(guarded.pause())
    assert "could not set shutter to 'closed'; do it by hand" in caplog.text
