"""NanobeamAnalysis on the simulated beamline: frames in every form -> LiveMaps and analysis documents."""

import threading
import time

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import event_model
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd.sim import SynAxis, SynSignalWithRegistry

from nanopilot.callbacks import LiveMaps, NanobeamAnalysis
from nanopilot.callbacks.plot import LiveMapPlot
from nanopilot.estimates import Estimates, check_frames
from nanopilot.physics import Instrument, simulate
from nanopilot.sim_devices import make_beamline


class CentroidPredictor:
    """A fast, deterministic estimator for testing the plumbing: the intensity centroid of each frame
    (strain <- column centroid, omega <- row centroid, chi <- total counts). Flags bad frames like a Predictor."""

    instrument = Instrument()
    outputs = ("strain", "omega", "chi")
    metadata = {"name": "centroid test estimator"}

    def __init__(self, delay=0.0, fail_on_call=None):
        self.delay, self.fail_on_call, self.calls, self.frames_seen = delay, fail_on_call, 0, 0

    def predict(self, frames, refine=False):
        self.calls += 1
        self.frames_seen += len(frames)
        if self.fail_on_call == self.calls:
            raise RuntimeError("injected failure")
        time.sleep(self.delay)
        clean, status = check_frames(frames, self.instrument)
        total = clean.sum(axis=(1, 2))
        axis = np.arange(64)
        with np.errstate(invalid="ignore", divide="ignore"):
            cx = clean.sum(axis=1) @ axis / total
            cy = clean.sum(axis=2) @ axis / total
        return Estimates.from_params(np.column_stack([cx, cy, total]), status, std=np.ones((len(frames), 3)))


def validate(docs):
    for name, doc in docs:
        event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)


def scan(bl, n_y=4, n_x=5, **kw):
    return bp.grid_scan([bl.detector], bl.stage.y, -1, 1, n_y, bl.stage.x, -1, 1, n_x, **kw)


def run_analysis(plan, analysis, RE=None):
    docs = []
    analysis.subscribe(lambda name, doc: docs.append((name, doc)))
    RE = RE or RunEngine({})
    RE.subscribe(analysis)
    (uid,) = RE(plan)
    assert analysis.flush(timeout=30)
    return uid, docs


@pytest.mark.parametrize("threaded", [True, False])
def test_grid_scan_fills_maps_with_positions_and_emits_valid_documents(threaded):
    bl = make_beamline("published", seed=3, noise=False)
    predictor = CentroidPredictor()
    analysis = NanobeamAnalysis(predictor, batch_size=7, threaded=threaded)
    uid, docs = run_analysis(scan(bl, snake_axes=True), analysis)
    run = analysis.maps[uid]
    assert len(run) == run.received == 20 and run.motors == ["stage_y", "stage_x"]
    points = run.scattered()
    # each point is the analysis of the frame rendered at that position
    y, x = points["stage_y"], points["stage_x"]
    truth = bl.sample.truth(x, y)
    frames = simulate(np.column_stack([truth["strain"], truth["omega"], truth["chi"], truth["thickness"]]),
                      counts=7.0)
    expected = predictor.predict(frames)
    np.testing.assert_allclose(points["strain"], expected.strain, rtol=1e-5)
    # the gridded view undoes the snake: row j holds y_j, column i holds x_i
    gx, gy = run.gridded("stage_x"), run.gridded("stage_y")
    np.testing.assert_allclose(gx, np.tile(np.linspace(-1, 1, 5), (4, 1)), atol=1e-9)
    np.testing.assert_allclose(gy, np.tile(np.linspace(-1, 1, 4)[:, None], (1, 5)), atol=1e-9)
    names = [n for n, _ in docs]
    assert names[0] == "start" and names[-1] == "stop" and "event_page" in names
    validate(docs)
    start = docs[0][1]
    assert start["raw_uid"] == uid and start["instrument_fingerprint"] == Instrument().fingerprint()
    assert start["model"]["name"] == "centroid test estimator"
    pages = [d for n, d in docs if n == "event_page"]
    assert sum(len(p["seq_num"]) for p in pages) == 20
    desc = next(d for n, d in docs if n == "descriptor")
    assert desc["data_keys"]["omega"]["units"] == "deg" and desc["data_keys"]["stage_x"]["units"] == "um"
    summary = [d for n, d in docs if n == "event"][-1]["data"]
    assert summary["frames_ok"] == 20 and summary["frames_flagged"] == 0
    assert "20 frames ok" in docs[-1][1]["reason"]


def test_hdf5_mode_gives_the_same_maps_as_inline(tmp_path):
    maps = {}
    for mode in ("inline", "hdf5"):
        bl = make_beamline("domains", seed=5, data_mode=mode, hdf5_directory=str(tmp_path))
        analysis = NanobeamAnalysis(CentroidPredictor(), batch_size=4)
        uid, docs = run_analysis(scan(bl, 3, 4), analysis)
        maps[mode] = analysis.maps[uid].scattered()
        assert len(analysis.maps[uid]) == 12
        validate(docs)
    for field in ("strain", "omega", "chi", "stage_x", "stage_y"):
        np.testing.assert_array_equal(maps["inline"][field], maps["hdf5"][field])


def test_legacy_resource_datum_frames(tmp_path):
    motor = SynAxis(name="m")
    image = simulate(np.array([[0.001, 0.01, -0.02]]), counts=70.0)[0]
    cam = SynSignalWithRegistry(func=lambda: image * (1 + motor.position), name="cam_image",
                                save_path=str(tmp_path))
    analysis = NanobeamAnalysis(CentroidPredictor(), threaded=False)
    uid, docs = run_analysis(bp.scan([cam], motor, 0, 1, 3), analysis)
    points = analysis.maps[uid].scattered()
    np.testing.assert_allclose(points["chi"], image.sum() * np.array([1, 1.5, 2]), rtol=1e-5)
    np.testing.assert_allclose(points["m"], [0, 0.5, 1])


def test_fly_scan_event_pages_are_analysed():
    bl = make_beamline("published", seed=2)
    bl.flyer.configure({"num_x": 40, "num_y": 3, "page_size": 25, "y_start": -0.5, "y_stop": 0.5})

    @bpp.run_decorator(md={"motors": ["stage_y", "stage_x"]})
    def fly():
        yield from bps.declare_stream(bl.flyer, name="fly", collect=True)
        yield from bps.kickoff(bl.flyer, wait=True)
        yield from bps.complete(bl.flyer, wait=True)
        yield from bps.collect(bl.flyer, name="fly")

    analysis = NanobeamAnalysis(CentroidPredictor(), batch_size=32)
    uid, docs = run_analysis(fly(), analysis)
    run = analysis.maps[uid]
    assert len(run) == 120
    points = run.scattered()
    assert sorted(set(np.round(points["stage_y"], 6))) == [-0.5, 0.0, 0.5]
    validate(docs)


def test_bad_frames_are_flagged_and_counted_never_raised():
    motor = SynAxis(name="m")
    good = simulate(np.zeros((1, 3)), counts=70.0)[0]
    frames = {0: good, 1: good * np.nan, 2: -good, 3: np.zeros((32, 32)), 4: np.zeros_like(good), 5: good}

    class Camera(SynSignalWithRegistry):
        pass

    from ophyd.sim import SynSignal
    cam = SynSignal(func=lambda: frames[int(round(motor.position))], name="cam_image")
    cam.describe = lambda: {"cam_image": {"source": "test", "dtype": "array", "shape": [64, 64]}}
    analysis = NanobeamAnalysis(CentroidPredictor(), batch_size=3)
    uid, docs = run_analysis(bp.scan([cam], motor, 0, 5, 6), analysis)
    status = analysis.maps[uid].scattered()["status"].tolist()
    assert status == ["ok", "nonfinite", "negative", "wrong_shape", "empty", "ok"]
    summary = [d for n, d in docs if n == "event"][-1]["data"]
    assert summary["frames_ok"] == 2 and summary["frames_flagged"] == 4
    assert "wrong_shape: 1" in docs[-1][1]["reason"]


def test_an_exception_in_the_analysis_is_counted_and_the_scan_goes_on():
    bl = make_beamline("published", seed=1)
    analysis = NanobeamAnalysis(CentroidPredictor(fail_on_call=2), batch_size=5, threaded=False)
    RE = RunEngine({})
    uid, docs = run_analysis(scan(bl, 3, 5), analysis, RE)
    run = analysis.maps[uid]
    assert run.errors == 5 and len(run) == 10
    summary = [d for n, d in docs if n == "event"][-1]["data"]
    assert summary["frames_errors"] == 5 and summary["frames_ok"] == 10
    assert docs[-1][1]["exit_status"] == "success"


def test_configuration_errors_fail_before_the_scan_runs():
    bl = make_beamline("published", seed=1)
    RE = RunEngine({})
    RE.subscribe(NanobeamAnalysis(CentroidPredictor(), image_key="camera_image"))
    with pytest.raises(ValueError, match="det_image"):
        RE(scan(bl, 2, 2))
    small = make_beamline("published", seed=1, instrument=Instrument(roi_shape=(48, 64)))
    RE = RunEngine({})
    RE.subscribe(NanobeamAnalysis(CentroidPredictor()))
    with pytest.raises(ValueError, match=r"\(64, 64\)"):
        RE(scan(small, 2, 2))


def test_close_finishes_the_analysis_stops_the_worker_and_frees_it():
    import gc
    import weakref

    bl = make_beamline("published", seed=1)
    analysis = NanobeamAnalysis(CentroidPredictor(), batch_size=64, max_latency=5.0)
    RE = RunEngine({})
    token = RE.subscribe(analysis)
    (first,) = RE(scan(bl))
    worker = analysis._worker.thread
    assert analysis.close(timeout=30) and not worker.is_alive()
    assert len(analysis.maps[first]) == 20  # the pending batch was analysed before the worker stopped
    (second,) = RE(scan(bl))  # after close: analysed inline, in the RunEngine's thread
    assert len(analysis.maps[second]) == 20 and analysis.close()
    ref = weakref.ref(analysis)
    RE.unsubscribe(token)
    del analysis
    gc.collect()
    assert ref() is None  # neither the stopped worker nor the exit hook keeps it alive


def test_runs_without_frames_are_ignored():
    from ophyd.sim import det, motor

    analysis = NanobeamAnalysis(CentroidPredictor())
    uid, docs = run_analysis(bp.scan([det], motor, 0, 1, 3), analysis)
    assert docs == [] and uid not in analysis.maps


def test_decimate_policy_bounds_the_queue_and_counts_skipped_frames():
    bl = make_beamline("published", seed=1)
    predictor = CentroidPredictor(delay=0.2)
    analysis = NanobeamAnalysis(predictor, batch_size=2, max_queued_frames=4, when_behind="decimate")
    uid, docs = run_analysis(scan(bl, 4, 5), analysis)
    run = analysis.maps[uid]
    assert run.skipped > 0 and len(run) + run.skipped == 20 == run.received
    assert predictor.frames_seen == len(run)
    summary = [d for n, d in docs if n == "event"][-1]["data"]
    assert summary["frames_skipped"] == run.skipped


def test_block_policy_slows_the_stream_and_loses_nothing():
    bl = make_beamline("published", seed=1)
    analysis = NanobeamAnalysis(CentroidPredictor(delay=0.05), batch_size=2, max_queued_frames=4)
    uid, docs = run_analysis(scan(bl, 3, 4), analysis)
    assert len(analysis.maps[uid]) == 12 and analysis.maps[uid].skipped == 0


def test_plans_can_wait_for_the_analysis_to_catch_up():
    maps = LiveMaps()
    bl = make_beamline("published", seed=1)
    analysis = NanobeamAnalysis(CentroidPredictor(delay=0.05), maps=maps, batch_size=50, max_latency=0.1)
    seen = []

    def plan():
        yield from scan(bl, 2, 3)

    RE = RunEngine({})
    RE.subscribe(analysis)
    RE.subscribe(lambda name, doc: seen.append(maps.wait_for(timeout=10)) if name == "stop" else None)
    RE(plan())
    assert seen == [True] and len(maps.current) == 6


def test_live_map_plot_saves_png(tmp_path):
    bl = make_beamline("domains", seed=1)
    analysis = NanobeamAnalysis(CentroidPredictor(), threaded=False)
    plot = LiveMapPlot(analysis.maps, save=tmp_path / "maps_{uid}.png", min_interval=0)
    analysis.maps.subscribe(plot)
    RE = RunEngine({})
    RE.subscribe(analysis)
    (uid,) = RE(scan(bl, 4, 4))
    assert (tmp_path / f"maps_{uid[:8]}.png").stat().st_size > 10_000
    assert plot.draws >= 2
    with pytest.raises(ValueError, match="unknown map fields"):
        LiveMapPlot(analysis.maps, fields=("strian",))


def test_live_maps_are_safe_to_read_while_written():
    maps = LiveMaps()
    maps.begin_run("u", ["y", "x"], shape=(10, 10), extents=[(0, 1), (0, 1)])
    errors = []

    def reader():
        for _ in range(200):
            try:
                points = maps["u"].scattered()
                assert len(points["strain"]) == len(points["seq_num"]) == len(points["x"])
            except Exception as err:  # pragma: no cover - reported below
                errors.append(err)

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(100):
        est = Estimates.from_params(np.full((1, 3), float(i)), np.array(["ok"], dtype=object))
        maps.add("u", [i + 1], [[i // 10, i % 10]], est)
    thread.join()
    assert not errors and np.nansum(maps["u"].gridded("strain")) == sum(range(100))


def test_frame_features_are_stored_per_point():
    bl = make_beamline("domains", seed=4)
    analysis = NanobeamAnalysis(CentroidPredictor(), threaded=False, batch_size=4,
                                frame_features=lambda frames: frames.reshape(len(frames), 64, 64).sum(axis=1))
    uid, _ = run_analysis(scan(bl, 2, 5), analysis)
    run = analysis.maps[uid]
    features = run.features()
    assert features.shape == (10, 64)
    np.testing.assert_allclose(features.sum(axis=1), run.scattered()["chi"], rtol=1e-5)  # chi <- total counts


def test_a_page_with_one_frame_of_another_shape_flags_only_that_frame():
    analysis = NanobeamAnalysis(CentroidPredictor(), threaded=False)
    good = simulate(np.zeros((2, 3)), counts=70.0)
    from event_model import compose_run

    bundle = compose_run(metadata={"motors": ["m"]})
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "cam_image": {"source": "t", "dtype": "array", "shape": [64, 64]},
        "m": {"source": "t", "dtype": "number", "shape": []}})
    page = desc.compose_event_page(data={"cam_image": [good[0], np.ones((8, 8)), good[1]], "m": [0, 1, 2]},
                                   timestamps={"cam_image": [0] * 3, "m": [0] * 3}, seq_num=[1, 2, 3],
                                   time=[0] * 3, validate=False)
    for name, doc in [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc), ("event_page", page),
                      ("stop", bundle.compose_stop())]:
        analysis(name, doc)
    points = analysis.maps[bundle.start_doc["uid"]].scattered()
    assert points["status"].tolist() == ["ok", "wrong_shape", "ok"]


def test_a_failing_subscriber_does_not_stop_the_others(caplog):
    bl = make_beamline("published", seed=1)
    analysis = NanobeamAnalysis(CentroidPredictor(), threaded=False)

    def broken(name, doc):
        raise RuntimeError("subscriber bug")

    analysis.subscribe(broken)
    uid, docs = run_analysis(scan(bl, 2, 2), analysis)
    assert [n for n, _ in docs][0] == "start" and docs[-1][0] == "stop" and len(analysis.maps[uid]) == 4
    assert "subscriber" in caplog.text and "subscriber bug" in caplog.text
