"""grow_until: stops at the target or at relaxation, and the shutter is closed on every exit path."""

import threading

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import RunEngineInterrupted

from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.estimates import Estimates, check_frames
from nanopilot.physics import Instrument
from nanopilot.plans import grow_until
from nanopilot.agents.growth_monitor import GrowthMonitor, relative
from nanopilot.sim_devices import make_beamline


class TruthPredictor:
    """Stand-in estimator with known accuracy for testing plan logic: the ground truth under the beam when the
    frame is analysed (the analysis runs inline, batch size 1) plus Gaussian noise of the shipped models' size."""

    instrument = Instrument()
    outputs = ("strain", "omega", "chi", "thickness")
    sigma = np.array([1.3e-4, 5e-4, 1.6e-3, 2.0])

    def __init__(self, beamline, seed=0):
        self.bl, self.rng = beamline, np.random.default_rng(seed)

    def predict(self, frames, refine=False):
        _, status = check_frames(frames, self.instrument)
        truth = self.bl.sample.truth(np.array([self.bl.stage.x.position]), np.array([self.bl.stage.y.position]))
        values = np.array([[truth["strain"][0], truth["omega"][0], truth["chi"][0], truth["thickness"][0]]])
        values = values + self.rng.normal(0, self.sigma, values.shape)
        return Estimates.from_params(values, status, std=np.tile(self.sigma, (len(values), 1)))


def growth_run(seed, target, plan_kwargs=None, RE=None, **scene):
    bl = make_beamline("growth", seed=seed, scene_parameters=scene or None)
    analysis = NanobeamAnalysis(TruthPredictor(bl, seed), batch_size=1, threaded=False)
    RE = RE or RunEngine({}, call_returns_result=True)
    bl.install(RE)  # the plan's bps.sleep on the beamline's clock
    RE.subscribe(analysis)
    plan = grow_until([bl.detector], bl.deposition, bl.stage.x, bl.stage.y, target, maps=analysis.maps,
                      interval=2.0, **(plan_kwargs or {}))
    return bl, RE, plan


def film_thickness(bl):
    return bl.sample.scene.initial_thickness + bl.sample.deposited


def test_stops_at_the_target_thickness():
    bl, RE, plan = growth_run(1, 100.0, critical_thickness=190.0)
    result = RE(plan).plan_result
    assert result["reason"] == "target"
    assert film_thickness(bl) == pytest.approx(100.0, abs=3.0)
    assert bl.deposition.shutter.get() == "closed"
    actions = [d["action"] for d in result["decisions"]]
    assert actions[0] == "open shutter" and actions[-1] == "close shutter"


@pytest.mark.parametrize("look_every", [1, 25])
def test_stops_when_the_film_starts_to_relax(look_every):
    bl, RE, plan = growth_run(2, 280.0, {"look_every": look_every}, critical_thickness=130.0)
    result = RE(plan).plan_result
    assert result["reason"] == "relaxation"
    assert film_thickness(bl) < 140.0
    assert bl.deposition.shutter.get() == "closed"
    evidence = result["decisions"][-1]["evidence"]
    assert evidence["test"] in ("one point", "spread") and result["thickness"] == evidence["thickness"]
    # looks every point: this one is seen mid-round; every 25 points (a round): at complete rounds only
    assert ("points measured in the round" in evidence) == (look_every == 1)


@pytest.mark.parametrize("fault", ["exception", "keyboard", "pause_abort", "pause_stop", "pause_halt"])
def test_the_shutter_is_closed_on_every_exit_path(fault):
    bl, RE, plan = growth_run(3, 250.0, critical_thickness=200.0)
    trigger = bl.detector.trigger
    fired = []

    def faulty_trigger():
        if bl.deposition.shutter.get() == "open" and not fired:  # mid-growth, shutter open
            fired.append(True)
            if fault == "exception":
                raise RuntimeError("injected detector failure")
            if fault == "keyboard":
                raise KeyboardInterrupt
            if fault.startswith("pause"):  # like Ctrl+C: a pause requested from another thread
                threading.Thread(target=RE.request_pause, kwargs={"defer": False}).start()
        return trigger()

    bl.detector.trigger = faulty_trigger
    if fault == "exception":
        with pytest.raises(RuntimeError, match="injected"):
            RE(plan)
    elif fault == "keyboard":  # the RunEngine halts: no more messages, the plan sets the shutter directly
        with pytest.raises((KeyboardInterrupt, RunEngineInterrupted)):
            RE(plan)
    else:
        try:
            RE(plan)
        except Exception:
            pass
        assert fired
        if RE.state == "paused":
            assert bl.deposition.shutter.get() == "closed"  # closed while paused (reopened only by a resume)
            {"pause_abort": RE.abort, "pause_stop": RE.stop, "pause_halt": RE.halt}[fault]()
    assert fired and bl.deposition.shutter.get() == "closed"
    assert RE.state == "idle"


def test_configuration_errors_before_anything_moves():
    bl = make_beamline("growth", seed=1)
    from test_callbacks import CentroidPredictor

    analysis = NanobeamAnalysis(CentroidPredictor())
    with pytest.raises(ValueError, match="thickness"):
        next(grow_until([bl.detector], bl.deposition, bl.stage.x, bl.stage.y, 150.0, maps=analysis.maps))
    analysis = NanobeamAnalysis(TruthPredictor(bl))
    with pytest.raises(ValueError, match="target_thickness"):
        next(grow_until([bl.detector], bl.deposition, bl.stage.x, bl.stage.y, -5.0, maps=analysis.maps))
    with pytest.raises(ValueError, match="limits"):
        next(grow_until([bl.detector], bl.deposition, bl.stage.x, bl.stage.y, 150.0, maps=analysis.maps,
                        points=[(0, 0), (500, 0)]))
    assert bl.deposition.shutter.get() == "closed" and bl.sample.deposited == 0


def test_monitor_rate_and_relaxation_logic():
    monitor = GrowthMonitor(target=150.0)
    rng = np.random.default_rng(1)
    for k in range(12):
        monitor.add_round(10.0 * k, {"thickness": 80 + 2.0 * k + rng.normal(0, 0.5, 9),
                                     "strain": -0.004 + rng.normal(0, 1e-4, 9),
                                     "omega": rng.normal(0, 5e-4, 9), "chi": rng.normal(0, 1e-3, 9)})
        assert monitor.relaxation() == (False, {"reason": "baseline"}) if k < 7 else not monitor.relaxation()[0]
    rate, fitted = monitor.rate()
    assert rate == pytest.approx(0.2, abs=0.02) and fitted == pytest.approx(102, abs=1)
    remaining, evidence = monitor.time_to_target(110.0)
    assert remaining == pytest.approx((150 - 102) / 0.2, rel=0.1)
    for k in range(8):  # one point's tilt ramps up by 1.5 noise units per round
        omega = rng.normal(0, 5e-4, 9)
        omega[4] += 7.5e-4 * (k + 1)
        monitor.add_round(120.0 + 10 * k, {"thickness": np.full(9, 104.0 + 2 * k), "strain": np.full(9, -0.004),
                                           "omega": omega, "chi": rng.normal(0, 1e-3, 9)})
        relaxed, evidence = monitor.relaxation()
        if relaxed:
            break
    assert relaxed and 1 <= k <= 5  # a few rounds into the ramp, not on its first
    assert evidence["point"] == 4 and evidence["z"]["omega"] > 4 and 11 <= evidence["ramp from round"] <= 13


def test_monitor_spread_test_sees_several_points_tilting():
    monitor = GrowthMonitor(target=300.0)
    rng = np.random.default_rng(2)
    for k in range(20):  # from round 14 on, half the points tilt a little (0.5 noise units more each round)
        ramp = 2.5e-4 * max(0, k - 13)
        monitor.add_round(float(k), {"thickness": np.full(16, 80.0 + k), "strain": -0.004 + rng.normal(0, 1e-4, 16),
                                     "omega": rng.normal(0, 5e-4, 16) + np.where(np.arange(16) < 8, ramp, 0),
                                     "chi": rng.normal(0, 1e-3, 16)})
    relaxed, evidence = monitor.relaxation()
    assert relaxed and evidence["test"] == "spread"


def test_monitor_follows_a_drift_common_to_all_points():
    monitor = GrowthMonitor(target=300.0)  # the estimator's bias drifts with thickness, the same at every point
    rng = np.random.default_rng(1)
    for k in range(30):
        drift = 2e-4 * k  # 2 strain noise units per round, 58 over the run
        monitor.add_round(float(k), {"thickness": np.full(16, 80.0 + k),
                                     "strain": -0.004 + drift + rng.normal(0, 1e-4, 16),
                                     "omega": 5 * drift + rng.normal(0, 5e-4, 16), "chi": rng.normal(0, 1e-3, 16)})
        assert not monitor.relaxation()[0]
    chi = rng.normal(0, 1e-3, 16)
    chi[:4] += 0.02  # a patch relaxes: its tilts move away from the rest
    monitor.add_round(30.0, {"thickness": np.full(16, 110.0), "strain": np.full(16, -0.004),
                             "omega": rng.normal(0, 5e-4, 16), "chi": chi + rng.normal(0, 1e-3, 16)})
    relaxed, evidence = monitor.relaxation()
    assert relaxed and evidence["point"] < 4 and abs(evidence["z"]["chi"]) > 5


def test_monitor_looks_at_a_partial_round():
    monitor = GrowthMonitor(target=300.0)
    rng = np.random.default_rng(3)

    def round_values(k):
        return {"thickness": np.full(16, 80.0 + k), "strain": -0.004 + rng.normal(0, 1e-4, 16),
                "omega": rng.normal(0, 5e-4, 16), "chi": rng.normal(0, 1e-3, 16)}

    for k in range(10):
        monitor.add_round(float(k), round_values(k))
    partial = {f: np.where(np.arange(16) < 2, v, np.nan) for f, v in round_values(10).items()}  # 2 points so far
    assert not monitor.relaxation(partial)[0]
    partial["omega"][1] += 0.01  # the second point tilts by 20 noise units
    relaxed, evidence = monitor.relaxation(partial)
    assert relaxed and evidence["point"] == 1 and evidence["ramp from round"] == 9
    assert len(monitor.rounds) == 10  # the partial round is not stored


def test_relative_counts_points_not_measured_with_their_previous_value():
    values = np.array([[1.0, 2.0, 3.0, np.nan], [np.nan, np.nan, 10.0, np.nan]])
    out = relative(values)
    np.testing.assert_allclose(out[0, :3], [-1, 0, 1])  # a point never measured is left out of the median
    assert np.isnan(out[1, :2]).all() and out[1, 2] == 8.0  # median of the latest values 1, 2, 10
