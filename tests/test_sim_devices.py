"""Simulated stage, temperature controller, deposition source, nanobeam detector and flyer."""

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import h5py
import numpy as np
import pytest
from scipy import stats
from bluesky import RunEngine
from bluesky.simulators import check_limits, summarize_plan
from event_model import DocumentNames, schema_validators
from ophyd.utils import LimitError

from nanopilot.physics import simulate
from nanopilot.sim_devices import HOT_PIXEL_RATE, SimClock, make_beamline
from nanopilot.sim_devices.detector import poisson_counts


@pytest.fixture
def RE():
    return RunEngine({})


def collect(RE, plan):
    docs = []
    RE(plan, lambda name, doc: docs.append((name, doc)))
    for name, doc in docs:
        schema_validators[DocumentNames[name]].validate(doc)
    return docs


def test_pattern_is_simulate_of_the_ground_truth_at_the_stage_position():
    bl = make_beamline("domains", seed=1, noise=False)
    bl.stage.x.set(0.37)
    bl.stage.y.set(-0.41)
    bl.detector.trigger()
    truth = bl.sample.parameters(0.37, -0.41)
    expected = simulate(truth, counts=70.0 * 0.1)[0]
    np.testing.assert_allclose(bl.detector.image.get(), expected, rtol=1e-6)
    assert bl.detector.image.get().dtype == np.float32
    total = bl.detector.total.get()
    assert total == pytest.approx(expected.sum(), rel=1e-5)
    assert bl.detector.centroid_x.get() == pytest.approx((expected.sum(0) * np.arange(64)).sum() / total, rel=1e-5)

    bl.detector.exposure_time.put(0.4)  # counts scale with exposure; background and hot pixels add on top
    bl.detector.background.put(2.0)
    bl.detector.trigger()
    np.testing.assert_allclose(bl.detector.image.get(), 4 * expected + 0.8, rtol=1e-5)


def test_footprint_averages_the_truth_over_the_beam():
    bl = make_beamline("domains", seed=1, noise=False, footprint=0.2)
    bl.detector.trigger()
    x, y = bl.detector.beam_positions(0.0, 0.0)
    assert len(x) == 7 and np.hypot(x, y).max() == pytest.approx(0.1 * np.sqrt(2 / 3))
    expected = simulate(bl.sample.parameters(x, y), counts=7.0)
    weights = np.array([0.25] + [0.125] * 6)
    np.testing.assert_allclose(bl.detector.image.get(), np.tensordot(weights, expected, 1), rtol=1e-5)


def test_noise_is_poisson_seeded_and_hot_pixels_are_hot():
    frames = []
    for _ in range(2):
        bl = make_beamline("published", seed=7, hot_pixels=3, exposure_time=1.0)
        bl.detector.trigger()
        frames.append(bl.detector.image.get())
    np.testing.assert_array_equal(*frames)
    assert frames[0].dtype == np.uint32
    hot = np.sort(frames[0].ravel())[-3:]
    assert hot.min() > 0.9 * HOT_PIXEL_RATE
    bl.detector.noise.put(False)
    bl.detector.trigger()
    assert abs(frames[0].sum() - bl.detector.image.get().sum()) < 5 * np.sqrt(bl.detector.image.get().sum())


def test_stage_limits_raise_before_motion_and_moves_cost_time(RE):
    bl = make_beamline(stage_limits=(-10, 10), stage_velocity=100.0, settling_time=0.02)
    t0 = bl.clock.elapsed
    bl.stage.x.set(5.0).wait()
    assert bl.stage.x.position == 5.0
    assert bl.clock.elapsed - t0 == pytest.approx(5.0 / 100.0 + 0.02, abs=1e-6)
    with pytest.raises(LimitError, match="outside the soft limits"):
        bl.stage.x.set(10.5)
    with pytest.raises(LimitError):
        RE(bps.mv(bl.stage.y, 1.0, bl.stage.x, 20.0))
    with pytest.raises(LimitError):  # bluesky's own dry run finds it before a real scan starts
        check_limits(bp.grid_scan([bl.detector], bl.stage.y, -1, 1, 2, bl.stage.x, 0, 20, 3))
    assert bl.stage.position == (5.0, 1.0)  # y moved, x refused its move
    with pytest.raises(ValueError, match="finite"):
        bl.stage.y.set(np.nan)


def test_temperature_settles_to_tolerance_and_drives_the_sample(RE):
    bl = make_beamline("cooling", seed=0)
    controller, scene = bl.temperature, bl.sample.scene
    t0 = bl.clock.elapsed
    status = controller.set(230.0)
    assert status.done and status.success
    assert abs(controller.position - 230.0) <= controller.tolerance.get()
    assert bl.clock.elapsed - t0 >= (295.0 - 230.0) / controller.ramp_rate.get()
    assert bl.sample.temperature == controller.position and bl.sample.state.coverage == 1.0
    RE(bps.mv(controller, scene.transition_temperature + scene.hysteresis + 1))
    assert bl.sample.state.coverage == 0.0
    with pytest.raises(LimitError, match="outside the limits"):
        controller.set(700.0)
    with pytest.raises(ValueError, match="ramp_rate"):
        controller.ramp_rate.put(-1.0)


def test_deposition_accumulates_only_while_the_shutter_is_open(RE):
    bl = make_beamline("growth", seed=2, deposition_rate=2.0)
    source = bl.deposition
    bl.clock.advance(100.0)
    assert source.position == 0.0 and bl.sample.deposited == 0.0
    RE(bps.mv(source.shutter, "open"))
    bl.clock.advance(10.0)
    RE(bps.mv(source.shutter, "closed"))
    bl.clock.advance(50.0)
    assert source.position == pytest.approx(20.0) and bl.sample.deposited == pytest.approx(20.0)
    RE(bps.mv(source, 150.0))
    assert source.position == pytest.approx(150.0) and source.shutter.get() == "closed"
    assert bl.sample.truth(0, 0).thickness == pytest.approx(bl.sample.scene.initial_thickness + 150, rel=0.03)
    with pytest.raises(ValueError, match="cannot deposit down"):
        source.set(10.0)
    with pytest.raises(ValueError, match="must be one of"):
        source.shutter.put("ajar")


def test_clocks():
    simulated = SimClock()
    simulated.advance(3600.0)
    assert simulated.elapsed == pytest.approx(3600.0)
    with pytest.raises(ValueError, match="non-negative"):
        simulated.advance(-1.0)
    bl = make_beamline(realtime=True, stage_velocity=10.0, settling_time=0.0)
    status = bl.stage.x.set(1.0)  # 0.1 s of real travel
    assert not status.done
    status.wait(timeout=5)
    assert bl.stage.x.position == 1.0 and 0.1 <= bl.clock.elapsed < 5


def test_bad_detector_settings_fail_before_anything_moves():
    bl = make_beamline()
    for signal, value in ((bl.detector.count_rate, -5.0), (bl.detector.exposure_time, -0.1),
                          (bl.detector.exposure_time, 0.0), (bl.detector.data_mode, "tiff")):
        with pytest.raises(ValueError, match=signal.name):
            signal.put(value)
    with pytest.raises(ValueError, match="count_rate"):
        make_beamline(count_rate=-1.0)
    with pytest.raises(ValueError, match="unknown scene"):
        make_beamline("sinewave")


def test_describe_matches_read():
    bl = make_beamline()
    for device in bl.devices.values():
        assert list(device.describe()) == list(device.read())
        assert list(device.describe_configuration()) == list(device.read_configuration())
    image = bl.detector.describe()["det_image"]
    assert image["shape"] == [64, 64] and image["dtype_numpy"] == "<u4"
    assert "det_image" not in bl.detector.hints["fields"]


def test_stock_plans_run(RE):
    bl = make_beamline("published", seed=0)
    det, stage = bl.detector, bl.stage
    plans = {
        "grid_scan": (bp.grid_scan([det], stage.y, -0.5, 0.5, 3, stage.x, -0.5, 0.5, 4), 12),
        "rel_grid_scan": (bp.rel_grid_scan([det], stage.y, -0.2, 0.2, 2, stage.x, -0.2, 0.2, 2), 4),
        "list_scan": (bp.list_scan([det, bl.temperature], stage.x, [0.1, 0.4, 0.7]), 3),
        "count": (bp.count([det, bl.deposition], num=2), 2),
        "scan": (bp.scan([det], bl.temperature, 290.0, 280.0, 3), 3),
    }
    for name, (plan, n) in plans.items():
        docs = collect(RE, plan)
        events = [doc for kind, doc in docs if kind == "event"]
        assert len(events) == n, name
        assert events[-1]["data"]["det_image"].shape == (64, 64)
    RE(bps.mv(stage.x, 1.0, stage.y, 2.0))
    assert stage.position == (1.0, 2.0)
    summarize_plan(bp.grid_scan([det], stage.y, -1, 1, 2, stage.x, -1, 1, 2))


def test_flyer_streams_event_pages_of_the_swept_region(RE):
    bl = make_beamline("domains", seed=4, noise=False)
    flyer = bl.flyer
    flyer.configure({"x_start": -0.5, "x_stop": 0.5, "num_x": 40, "y_start": -0.2, "y_stop": 0.2, "num_y": 3,
                     "frame_rate": 2000.0, "page_size": 16})

    @bpp.run_decorator()
    def fly():
        yield from bps.declare_stream(flyer, name="fly", collect=True)
        yield from bps.kickoff(flyer, wait=True)
        yield from bps.complete(flyer, wait=True)
        yield from bps.collect(flyer, name="fly")

    t0 = bl.clock.elapsed
    docs = collect(RE, fly())
    pages = [doc for name, doc in docs if name == "event_page"]
    assert len(pages) == 8  # 120 frames in pages of 16
    x = np.concatenate([page["data"]["stage_x"] for page in pages])
    y = np.concatenate([page["data"]["stage_y"] for page in pages])
    np.testing.assert_allclose(x, np.tile(np.linspace(-0.5, 0.5, 40), 3))
    frames = np.concatenate([page["data"]["det_image"] for page in pages])
    expected = simulate(bl.sample.parameters(x, y), counts=70.0 / 2000.0)
    np.testing.assert_allclose(frames, expected, rtol=1e-5)
    assert bl.clock.elapsed - t0 >= 120 / 2000.0
    flyer.frame_rate.put(1e6)
    with pytest.raises(LimitError, match="lower frame_rate"):
        flyer.kickoff()


def test_flyer_noise_is_seeded_and_pages_keep_their_order():
    def fly_pages(seed):
        bl = make_beamline("published", seed=seed, count_rate=70_000.0)
        bl.flyer.configure({"x_start": -0.5, "x_stop": 0.5, "num_x": 30, "y_start": 0.0, "y_stop": 0.3, "num_y": 4,
                            "frame_rate": 10_000.0, "page_size": 16})
        bl.stage.x.velocity.put(10_000.0)
        bl.flyer.kickoff().wait()
        bl.flyer.complete().wait()
        return list(bl.flyer.collect_pages())

    pages = fly_pages(3)
    assert [len(page["time"]) for page in pages] == [16] * 7 + [8]
    frames = np.concatenate([page["data"]["det_image"] for page in pages])
    assert frames.dtype == np.uint32 and frames.sum() > 0
    np.testing.assert_array_equal(frames, np.concatenate([page["data"]["det_image"] for page in fly_pages(3)]))
    assert not np.array_equal(frames, np.concatenate([page["data"]["det_image"] for page in fly_pages(4)]))
    totals = np.concatenate([page["data"]["det_total"] for page in pages])
    np.testing.assert_array_equal(totals, frames.sum(axis=(1, 2)))


def test_poisson_counts_follow_the_poisson_law_in_both_samplers():
    rates = np.array([0.003, 0.4, 2.5, 6.0, 9.99, 10.0, 40.0])
    rate = np.repeat(rates, 60_000)  # large: inversion below rate 10, numpy's sampler above
    counts = poisson_counts(rate, np.random.default_rng(11))
    np.testing.assert_array_equal(counts, poisson_counts(rate, np.random.default_rng(11)))
    for value, drawn in zip(rates, counts.reshape(len(rates), -1)):
        for sample in (drawn, poisson_counts(np.full(2000, value), np.random.default_rng(12))):  # small: numpy
            expected = stats.poisson.pmf(np.arange(sample.max() + 1), value) * len(sample)
            kept = expected >= 10  # chi-square over the well-populated counts
            chi2 = ((np.bincount(sample)[kept] - expected[kept]) ** 2 / expected[kept]).sum()
            assert stats.chi2.sf(chi2, max(kept.sum() - 1, 1)) > 1e-4, (value, len(sample))
    for bad in (-1.0, np.nan):
        with pytest.raises(ValueError, match="non-negative"):
            poisson_counts(np.append(rate, bad), np.random.default_rng(0))


def fly_docs(bl, **configuration):
    """Documents of a staged fly scan (stream "fly") with the flyer configured as given, schema-validated."""
    bl.flyer.configure(configuration)

    @bpp.stage_decorator([bl.flyer])
    @bpp.run_decorator()
    def fly():
        yield from bps.declare_stream(bl.flyer, name="fly", collect=True)
        yield from bps.kickoff(bl.flyer, wait=True)
        yield from bps.complete(bl.flyer, wait=True)
        yield from bps.collect(bl.flyer, name="fly")

    return collect(RunEngine({}), fly())


def test_flyer_in_hdf5_mode_writes_the_inline_pixels_with_stream_documents(tmp_path):
    sweep = {"num_x": 30, "num_y": 3, "y_stop": 0.2, "page_size": 16}  # pages span lines; the last one is short
    inline = fly_docs(make_beamline("published", seed=7, count_rate=7000.0), **sweep)
    docs = fly_docs(make_beamline("published", seed=7, count_rate=7000.0, data_mode="hdf5",
                                  hdf5_directory=tmp_path), **sweep)
    names = [name for name, _ in docs]
    assert names[:4] == ["start", "descriptor", "stream_resource", "stream_datum"]
    assert names.count("stream_datum") == 1 and names.count("event_page") == 6
    descriptor = docs[1][1]
    assert descriptor["data_keys"]["det_image"]["external"] == "STREAM:"
    datum = docs[3][1]
    assert datum["indices"] == {"start": 0, "stop": 90} and datum["seq_nums"] == {"start": 1, "stop": 91}
    pages = [doc for name, doc in docs if name == "event_page"]
    assert all("det_image" not in page["data"] for page in pages)
    np.testing.assert_array_equal(np.concatenate([page["seq_num"] for page in pages]), np.arange(1, 91))
    inline_pages = [doc for name, doc in inline if name == "event_page"]
    inline_frames = np.concatenate([page["data"]["det_image"] for page in inline_pages])
    resource = docs[2][1]
    with h5py.File(resource["uri"].removeprefix("file://localhost"), "r") as f:
        np.testing.assert_array_equal(f[resource["parameters"]["dataset"]][()], inline_frames)
    for key in ("det_total", "det_centroid_x", "stage_x", "stage_y"):
        np.testing.assert_array_equal(np.concatenate([page["data"][key] for page in pages]),
                                      np.concatenate([page["data"][key] for page in inline_pages]))


def test_flyer_in_hdf5_mode_checks_its_directory_at_stage_time(tmp_path):
    bl = make_beamline(data_mode="hdf5", hdf5_directory=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="directory"):
        fly_docs(bl)
    with pytest.raises(RuntimeError, match="stage it"):
        bl.flyer.kickoff()
    assert bl.stage.position == (0.0, 0.0)
