"""The ophyd-async detector and stage (nanopilot.sim_devices.async_devices) next to the ophyd v1 devices."""

import time

import bluesky.plans as bp
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import FailedStatus
from bluesky_tiled_plugins import TiledWriter
from event_model import DocumentNames, schema_validators

pytest.importorskip("ophyd_async")

from nanopilot.callbacks import NanobeamAnalysis  # noqa: E402
from nanopilot.model import Predictor  # noqa: E402
from nanopilot.sim_devices import make_beamline  # noqa: E402
from nanopilot.sim_devices.async_devices import make_async_beamline  # noqa: E402


def grid(detector, x, y, n):
    return bp.grid_scan([detector], y, -2, 2, n, x, -2, 2, n)


def run(plan, *callbacks):
    """Run ``plan`` on a new RunEngine with ``callbacks``; returns its documents."""
    return run_on(RunEngine({}), plan, *callbacks)


def run_on(RE, plan, *callbacks):
    """Run ``plan`` on ``RE`` with ``callbacks``; returns its documents."""
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    for callback in callbacks:
        RE.subscribe(callback)
    RE(plan)
    return docs


def async_run(tmp_path, n, *callbacks, **settings):
    """An n x n grid scan through the ophyd-async devices: (beamline, documents). The RunEngine comes first."""
    RE = RunEngine({})
    bl = make_async_beamline("published", seed=7, directory=tmp_path, **settings)
    return bl, run_on(RE, grid(bl.detector, bl.x, bl.y, n), *callbacks)


@pytest.mark.slow  # run by .ci/run's second pass
def test_documents_validate_and_the_frames_are_the_v1_detectors_also_in_tiled(catalog, catalog_dir):
    """Same positions, noise off: the HDF5 frames equal the v1 detector's inline frames pixel for pixel, and the
    run reads back from the Tiled catalogue with them."""
    directory = catalog_dir / "async"
    directory.mkdir(exist_ok=True)
    bl, docs = async_run(directory, 3, TiledWriter(catalog), noise=False)
    for name, doc in docs:
        schema_validators[DocumentNames[name]].validate(doc)
    names = [name for name, _ in docs]
    assert names.count("stream_resource") == 1 and names.count("stream_datum") == 9 and names.count("event") == 9
    descriptor = next(doc for name, doc in docs if name == "descriptor")
    key = descriptor["data_keys"]["det"]
    assert key["shape"] == [1, 64, 64] and key["external"] == "STREAM:" and key["dtype_numpy"] == "<f4"
    configuration = descriptor["configuration"]["det"]["data"]
    assert configuration["det-instrument_fingerprint"] == bl.detector.instrument.fingerprint()
    resource = next(doc for name, doc in docs if name == "stream_resource")
    datums = [doc for name, doc in docs if name == "stream_datum"]
    assert [d["indices"] for d in datums] == [{"start": i, "stop": i + 1} for i in range(9)]
    with h5py.File(resource["uri"].removeprefix("file://localhost"), "r") as f:
        frames = f[resource["parameters"]["dataset"]][()]
    v1 = make_beamline("published", seed=7, noise=False)
    inline = run(grid(v1.detector, v1.stage.x, v1.stage.y, 3))
    expected = np.array([doc["data"]["det_image"] for name, doc in inline if name == "event"])
    assert frames.shape == (9, 64, 64) and frames.max() > 0
    np.testing.assert_array_equal(frames, expected)
    stored = catalog[docs[0][1]["uid"]]["primary"]["det"].read()
    np.testing.assert_array_equal(np.reshape(stored, frames.shape), expected)


def map_rmse(maps, sample):
    """(strain, omega, chi) RMSE of a run's live maps against the scene's truth at each point."""
    points = maps.scattered()
    truth = sample.truth(points["stage_x"], points["stage_y"])
    assert (points["status"] == "ok").mean() > 0.85
    return np.array([np.sqrt(np.nanmean((points[k] - truth[k]) ** 2)) for k in ("strain", "omega", "chi")])


def test_grid_scan_through_the_async_devices_maps_like_the_v1_devices(tmp_path):
    n, rmse = 8, {}
    analysis = NanobeamAnalysis(Predictor.load(), threaded=False, residual=False)
    bl, docs = async_run(tmp_path, n, analysis)
    uid = docs[0][1]["uid"]
    assert len(analysis.maps[uid]) == n * n
    rmse["async"] = map_rmse(analysis.maps[uid], bl.sample)
    v1 = make_beamline("published", seed=7)
    analysis = NanobeamAnalysis(Predictor.load(), threaded=False, residual=False)
    uid = run(grid(v1.detector, v1.stage.x, v1.stage.y, n), analysis)[0][1]["uid"]
    rmse["v1"] = map_rmse(analysis.maps[uid], v1.sample)
    print("RMSE (strain, omega, chi): async", rmse["async"], "v1", rmse["v1"])
    assert (rmse["async"] < 1.2 * rmse["v1"]).all()


def test_bad_settings_fail_before_any_device_exists(tmp_path):
    RunEngine({})
    with pytest.raises(FileNotFoundError, match="directory"):
        make_async_beamline(directory=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="count_rate must be positive"):
        make_async_beamline(directory=tmp_path, count_rate=0)
    with pytest.raises(ValueError, match="scene"):
        make_async_beamline("nowhere", directory=tmp_path)


def test_steered_map_runs_unchanged_on_the_async_devices_through_a_session(tmp_path):
    from nanopilot.plans import steered_map
    from nanopilot.session import setup

    RE = RunEngine({}, call_returns_result=True)
    bl = make_async_beamline("domains", seed=1, directory=tmp_path)
    with setup(RE, detector=bl.detector, x=bl.x, y=bl.y) as session:
        res = RE(steered_map([bl.detector], bl.x, bl.y, (-2, 2), (-2, 2), fine=17, coarse_step=4, budget=0.3))
        maps = session.maps[res.run_start_uids[0]]
        assert len(maps) == res.plan_result["points"]
    assert res.plan_result["rounds"] >= 2 and 25 <= res.plan_result["points"] <= round(0.3 * 17 ** 2)
    with h5py.File(next(tmp_path.glob("*.h5")), "r") as f:
        assert f["/entry/data/data"].shape == (res.plan_result["points"], 64, 64)


def test_an_async_motors_limit_signals_are_read_with_messages_and_a_range_outside_them_is_refused(tmp_path):
    from ophyd_async.core import soft_signal_rw
    from ophyd_async.sim import SimMotor

    from nanopilot.callbacks import LiveMaps
    from nanopilot.physics import Instrument
    from nanopilot.plans import steered_map

    class LimitedMotor(SimMotor):  # the limit signals of an EPICS motor (ophyd-async's epics.motor.Motor)
        def __init__(self, name):
            self.low_limit_travel, self.high_limit_travel = soft_signal_rw(float, -1.5), soft_signal_rw(float, 1.5)
            super().__init__(name=name)

    RE = RunEngine({})
    bl = make_async_beamline("domains", seed=1, directory=tmp_path)
    x = LimitedMotor("stage_x")
    RE(bps_connect(x))
    messages = []
    RE.msg_hook = messages.append
    maps = LiveMaps(Instrument(), ("strain", "omega", "chi"))
    with pytest.raises(ValueError, match=r"range of stage_x -2\.\.2 um leaves the limits -1\.5\.\.1\.5 um"):
        RE(steered_map([bl.detector], x, bl.y, (-2, 2), (-1, 1), fine=17, maps=maps))
    assert {m.obj.name for m in messages if m.command in ("read", "locate")} == {"stage_x-low_limit_travel",
                                                                                 "stage_x-high_limit_travel"}
    assert not [m for m in messages if m.command in ("set", "open_run", "trigger")]


def bps_connect(device):
    from ophyd_async.plan_stubs import ensure_connected

    return ensure_connected(device, mock=False)


def test_find_texture_temperature_runs_on_the_async_devices_with_the_v1_temperature_controller(tmp_path):
    """The v1 temperature controller drives the async beamline's sample; the bracket is the v1 test's."""
    from test_callbacks import CentroidPredictor

    from nanopilot.plans import find_texture_temperature
    from nanopilot.sim_devices import SimClock, SimTemperatureController
    from nanopilot.texture import frame_descriptor

    RE = RunEngine({}, call_returns_result=True)
    bl = make_async_beamline("cooling", seed=1, directory=tmp_path, noise=False, temperature=266.0)
    temperature = SimTemperatureController(name="temperature", clock=SimClock(), sample=bl.sample)
    analysis = NanobeamAnalysis(CentroidPredictor(), frame_features=frame_descriptor, batch_size=64, max_latency=0.02)
    RE.subscribe(analysis)
    result = RE(find_texture_temperature([bl.detector], temperature, bl.x, bl.y, (-2, 2), (-2, 2), 244.0,
                                         maps=analysis.maps, quick=6, fine=8, step=4.0, tolerance=1.0)).plan_result
    transition = bl.sample.scene.transition_temperature
    assert result["reason"] == "bracketed" and transition - 3.0 <= result["transition"] <= transition + 0.5


def test_grow_until_runs_on_the_async_devices_with_the_v1_deposition_source(tmp_path):
    from nanopilot.plans import grow_until
    from nanopilot.sim_devices import SimClock, SimDepositionSource

    RE = RunEngine({}, call_returns_result=True)
    bl = make_async_beamline("growth", seed=1, directory=tmp_path, scene_parameters={"critical_thickness": 190.0})
    deposition = SimDepositionSource(name="deposition", clock=SimClock(), sample=bl.sample,
                                     rate=bl.sample.scene.growth_rate)
    deposition.clock.install(RE)  # the plan's bps.sleep on the source's clock: the film grows meanwhile
    analysis = NanobeamAnalysis(Predictor.load("thickness"), threaded=False, batch_size=1)
    RE.subscribe(analysis)
    result = RE(grow_until([bl.detector], deposition, bl.x, bl.y, 100.0, maps=analysis.maps, interval=2.0))
    assert result.plan_result["reason"] == "target" and deposition.shutter.get() == "closed"
    assert bl.sample.scene.initial_thickness + bl.sample.deposited == pytest.approx(100.0, abs=3.0)


def test_a_rendering_failure_is_the_triggers_own_error_at_once(tmp_path):
    RE = RunEngine({})
    bl = make_async_beamline(directory=tmp_path)

    def broken(x, y):
        raise ValueError("no sample there")

    bl.sample.parameters = broken
    start = time.monotonic()
    with pytest.raises(FailedStatus) as error:
        RE(bp.count([bl.detector]))
    assert "no sample there" in str(error.value) and time.monotonic() - start < 5  # not the 10 s index timeout


def test_realtime_exposures_take_their_time(tmp_path):
    RE = RunEngine({})
    bl = make_async_beamline(directory=tmp_path, exposure_time=0.2, realtime=True)
    start = time.monotonic()
    docs = run_on(RE, bp.count([bl.detector], 3))
    assert time.monotonic() - start >= 0.6
    assert [doc["indices"] for name, doc in docs if name == "stream_datum"][-1] == {"start": 2, "stop": 3}
