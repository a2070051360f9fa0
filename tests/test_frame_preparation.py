"""Issue 17 (from the raw detector frame to the model's input), items 1, 2 and 5: the frame preparation (ROI,
binning, dark, flat, gain, masks, orientation), its YAML file and its configuration errors, raw frames in the
Predictor and the live analysis, per-frame problems flagged and counted."""

import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from event_model import compose_run

from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.model import Predictor
from nanopilot.physics import FramePreparation, Instrument, simulate
from nanopilot.physics.drift import DriftTrack
from nanopilot.physics.frame_steps import fill_holes
from nanopilot.session import setup
from nanopilot.sim_devices import make_beamline

PARAMS = np.array([[0.001, 0.01, -0.02], [0.0, 0.0, 0.0], [-0.002, -0.02, 0.05], [0.003, 0.03, 0.02]])
CORNER = (40, 70)  # the ROI's first pixel in the oriented frame
GAP = 121  # a masked module-gap column of the oriented frame, inside the ROI
GAIN = 3.0  # ADU per photon


def to_raw(oriented):
    """The raw detector layout of (N, 256, 256) oriented arrays, for transpose + flip_cols (the inverse)."""
    return np.ascontiguousarray(np.asarray(oriented)[..., ::-1].swapaxes(-1, -2))


def calibration(rng):
    """(dark ADU, flat, mask) of a 256 x 256 detector, in the oriented frame."""
    dark = rng.normal(100.0, 5.0, (256, 256))
    flat = rng.uniform(0.8, 1.2, (256, 256))
    mask = np.zeros((256, 256), dtype=bool)
    mask[:, GAP] = True
    return dark, flat, mask


def preparation(tmp_path=None, rng=None, **kwargs):
    """The preparation of the test detector (calibration arrays in memory, or as files under ``tmp_path``)."""
    dark, flat, mask = calibration(rng or np.random.default_rng(0))
    arrays = {"dark": to_raw(dark), "flat": to_raw(flat), "mask": to_raw(mask)}
    if tmp_path is not None:
        np.save(tmp_path / "dark.npy", arrays["dark"])
        with h5py.File(tmp_path / "flat.h5", "w") as file:
            file["entry/instrument/detector/flatfield"] = arrays["flat"]
        np.save(tmp_path / "mask.npy", arrays["mask"])
        arrays = {"dark": str(tmp_path / "dark.npy"), "flat": str(tmp_path / "flat.h5"), "mask": tmp_path / "mask.npy"}
    config = dict(detector_shape=(256, 256), pixel_size=55e-6, roi_shape=(128, 128), binning=2, roi_corner=CORNER,
                  gain=GAIN, saturation=2.0**31, transpose=True, flip_cols=True, **arrays)
    config.update(kwargs)
    return FramePreparation(**config)


def raw_frames(images, rng=None, noise=None, corner=CORNER, seed=0):
    """Raw ADU frames (N, 256, 256) of 64 x 64 ``images`` (counts at the model's pitch): each model pixel spread
    over 2 x 2 detector pixels with a quarter of its counts, placed at ``corner``, flat, gain and dark applied;
    ``noise``: a Generator for Poisson photons."""
    dark, flat, mask = calibration(np.random.default_rng(seed))
    photons = np.zeros((len(images), 256, 256))
    r, c = corner
    photons[:, r:r + 128, c:c + 128] = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2) / 4
    if noise is not None:
        photons = noise.poisson(photons)
    adu = dark + GAIN * flat * photons
    adu[:, mask] = 0.0  # the gap's pixels read nothing
    return to_raw(adu)


# ---------------------------------------------------------------- the YAML file and configuration errors
def test_yaml_round_trip_with_calibration_files_relative_to_the_file(tmp_path):
    prep = preparation(tmp_path)
    path = tmp_path / "detector.yaml"
    prep.save(path)
    loaded = FramePreparation.load(path)
    assert loaded.fingerprint() == prep.fingerprint()
    assert loaded.to_dict() == prep.to_dict()
    raw = raw_frames(simulate(PARAMS[:1], counts=7.0))
    np.testing.assert_array_equal(loaded.prepare(raw).frames, prep.prepare(raw).frames)
    relative = path.read_text().replace(str(tmp_path) + "/", "")
    assert "dark: dark.npy" in relative
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "detector.yaml").write_text(relative.replace(": dark.npy", ": ../dark.npy"))
    with pytest.raises(FileNotFoundError, match="FramePreparation.flat file .*sub/flat.h5 does not exist"):
        FramePreparation.load(tmp_path / "sub" / "detector.yaml")  # relative to the file, not to the cwd
    path.write_text(relative)
    assert FramePreparation.load(path).fingerprint() == prep.fingerprint()
    np.save(tmp_path / "dark.npy", np.zeros((256, 256)))  # another dark: another fingerprint
    assert FramePreparation.load(path).fingerprint() != prep.fingerprint()


def test_published_setup_yaml_matches_the_default_instrument():
    text = "detector_shape: [256, 256]\npixel_size: 55.0e-6\nroi_shape: [128, 128]\nbinning: 2\n"
    FramePreparation.from_yaml(text).check(Instrument())
    assert FramePreparation(gain=3).fingerprint() == FramePreparation(gain=3.0).fingerprint()


def test_unknown_field_is_an_error_that_names_it():
    with pytest.raises(ValueError, match=r"unknown FramePreparation field\(s\) \['binnin'\]"):
        FramePreparation.from_yaml("binnin: 2\n")


@pytest.mark.parametrize("field, value", [("gain", 0), ("pixel_size", -55e-6), ("binning", 0), ("roi_shape", [128]),
                                          ("transpose", "yes"), ("saturation", float("nan"))])
def test_a_bad_field_value_is_an_error_that_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"FramePreparation.{field}"):
        FramePreparation(**{field: value})


def test_in_memory_calibration_is_described_and_refused_when_read_back(tmp_path):
    prep = preparation()
    described = prep.to_dict()["dark"]
    assert described["in_memory_array"] == [256, 256] and len(described["sha256"]) == 16
    prep.save(tmp_path / "detector.yaml")
    with pytest.raises(ValueError, match="FramePreparation.dark was an in-memory array.*numpy.save"):
        FramePreparation.load(tmp_path / "detector.yaml")


@pytest.mark.parametrize("field", ["dark", "flat", "mask"])
def test_a_calibration_array_of_the_wrong_shape_is_refused_naming_it(field):
    with pytest.raises(ValueError, match=f"FramePreparation.{field} has shape \\(128, 128\\).*\\(256, 256\\)"):
        preparation(**{field: np.ones((128, 128))})


def test_a_mask_that_hides_the_whole_roi_is_refused():
    mask = np.zeros((256, 256), dtype=bool)
    mask[40:168, :] = True
    with pytest.raises(ValueError, match="FramePreparation.mask .* hides the whole ROI"):
        FramePreparation(roi_corner=(40, 0), mask=mask)
    FramePreparation(roi_corner=(100, 0), mask=mask)  # an ROI partly outside the masked band is fine


def test_an_roi_that_leaves_the_detector_is_refused():
    with pytest.raises(ValueError, match=r"FramePreparation.roi_corner=\(200, 0\) .* outside the oriented detector"):
        FramePreparation(roi_corner=(200, 0))
    with pytest.raises(ValueError, match=r"FramePreparation.roi_centre=\(250, 128\)"):
        FramePreparation(roi_centre=(250, 128))
    with pytest.raises(ValueError, match="FramePreparation.search_window"):
        FramePreparation(follow_peak=True, roi_corner=(0, 0), search_window=(200, 200))
    with pytest.raises(ValueError, match="FramePreparation.search_window is used only by a moving ROI"):
        FramePreparation(search_window=(200, 200))


def test_binning_that_does_not_divide_the_roi_is_refused():
    with pytest.raises(ValueError, match="FramePreparation.binning=3 does not divide roi_shape"):
        FramePreparation(binning=3)


def test_check_says_which_field_to_change_for_the_instrument():
    with pytest.raises(ValueError, match="set FramePreparation.binning to 2"):
        FramePreparation(binning=1, roi_shape=(64, 64)).check(Instrument())
    with pytest.raises(ValueError, match=r"set FramePreparation.roi_shape to \[128, 128\]"):
        FramePreparation(roi_shape=(96, 96)).check(Instrument())
    with pytest.raises(ValueError, match="set FramePreparation.binning to 2"):
        Predictor.load(preparation=FramePreparation(binning=1, roi_shape=(64, 64)))


# ---------------------------------------------------------------- the prepared frames
def test_prepared_frames_equal_the_model_frames_before_noise():
    images = simulate(PARAMS, counts=7.0)
    prepared = preparation().prepare(raw_frames(images))
    assert list(prepared.status) == ["ok"] * len(PARAMS)
    np.testing.assert_allclose(prepared.frames, images, rtol=1e-4, atol=1e-4)
    assert not prepared.mask.any()  # the gap column: half of each binned pixel is good, scaled up
    assert (prepared.roi_corner == CORNER).all()


def test_prepared_frames_have_the_model_frames_poisson_statistics():
    n = 100
    images = simulate(np.repeat(PARAMS[:1], n, axis=0), counts=7.0)
    prepared = preparation().prepare(raw_frames(images, noise=np.random.default_rng(1)))
    mean, var, expected = prepared.frames.mean(axis=0), prepared.frames.var(axis=0), images[0]
    bright = expected > 1.0
    bright[:, (GAP - CORNER[1]) // 2] = False  # the gap's binned column: twice the variance (half its pixels)
    z = (mean - expected)[bright] / np.sqrt(expected[bright] / n)
    assert abs(z.mean()) < 0.2 and 0.8 < z.std() < 1.25  # Poisson counts whose mean is the model frame
    assert 0.85 < (var[bright] / expected[bright]).mean() < 1.15


def test_a_frames_own_invalid_pixels_are_masked_in_that_frame_only():
    raw = raw_frames(simulate(PARAMS[:2], counts=7.0))
    oriented = FramePreparation(transpose=True, flip_cols=True).orient(raw)  # a view: writes reach raw
    oriented[0, CORNER[0] + 10, CORNER[1] + 20:CORNER[1] + 22] = np.nan  # both pixels of a binned pixel's row
    oriented[0, CORNER[0] + 11, CORNER[1] + 20:CORNER[1] + 22] = 2.0**32 - 1  # and the saturation marker
    prepared = preparation().prepare(raw)
    assert prepared.mask[0, 5, 10] and prepared.mask.sum() == 1 and prepared.frames[0, 5, 10] == 0


def test_unsigned_raw_frames_are_masked_only_at_the_saturation_level():
    raw = np.rint(raw_frames(simulate(PARAMS[:2], counts=7.0))).astype(np.uint32)
    oriented = FramePreparation(transpose=True, flip_cols=True).orient(raw)
    oriented[1, CORNER[0] + 10:CORNER[0] + 12, CORNER[1] + 20:CORNER[1] + 22] = 2**32 - 1  # saturation markers
    as_float = preparation().prepare(raw.astype(np.float64))  # preparation(): saturation 2**31 ADU
    prepared = preparation().prepare(raw)
    np.testing.assert_array_equal(prepared.mask[0], as_float.mask[0])
    np.testing.assert_allclose(prepared.frames[0], as_float.frames[0], rtol=1e-6)
    assert (prepared.mask[1] & ~prepared.mask[0]).sum() == 1 and prepared.mask[1, 5, 10]
    assert not preparation(saturation=None).prepare(raw).mask[1, 5, 10]  # no level: a count like any other


def test_per_frame_problems_are_statuses_never_errors():
    good = raw_frames(simulate(PARAMS[:1], counts=7.0))[0]
    prepared = preparation().prepare([good, np.zeros((64, 64)), "frame", np.full((256, 256), np.nan)])
    assert list(prepared.status) == ["ok", "wrong_shape", "bad_type", "all_masked"]
    assert prepared.mask[1:].all() and not prepared.frames[1:].any() and (prepared.roi_corner[1:3] == -1).all()
    assert list(preparation().prepare(np.zeros((3, 100, 100))).status) == ["wrong_shape"] * 3


def test_a_peak_following_roi_finds_a_displaced_peak_and_reports_its_position():
    images = simulate(PARAMS[1:2].repeat(2, axis=0), counts=70.0)
    raw = raw_frames(images[:1], corner=(20, 90))  # the peak 20 pixels up, 20 right of the fixed ROI
    raw = np.concatenate([raw, raw_frames(images[:1], corner=(60, 50))])
    oriented = FramePreparation(transpose=True, flip_cols=True).orient(raw)
    oriented[:, 190, 40] += 400.0 * GAIN  # a hot pixel far from the peak, inside the search window
    prep = preparation(follow_peak=True, search_window=(200, 200), roi_corner=None, roi_centre=(104, 134))
    prepared = prep.prepare(raw)
    assert list(prepared.status) == ["ok", "ok"]
    np.testing.assert_array_equal(prepared.roi_corner, [[20, 90], [60, 50]])
    np.testing.assert_allclose(prepared.frames, images, rtol=1e-4, atol=1e-4)


def test_a_window_without_a_peak_is_flagged_no_peak():
    prep = preparation(follow_peak=True, roi_corner=None, dark=None, mask=None)
    prepared = prep.prepare(np.zeros((2, 256, 256)))
    assert list(prepared.status) == ["no_peak", "no_peak"] and (prepared.roi_corner == -1).all()


# ---------------------------------------------------------------- the Predictor
def test_predictor_on_raw_frames_gives_the_estimates_of_the_model_frames():
    images = simulate(PARAMS, counts=7.0)
    predictor = Predictor.load(preparation=preparation())
    on_raw, on_model = predictor.predict(raw_frames(images)), predictor.predict(images)
    assert list(on_raw.status) == list(on_model.status)
    assert (np.abs(on_raw.params() - on_model.params()) < [2e-6, 2e-5, 2e-5]).all()  # float32 rounding only


def test_predictor_on_noisy_raw_frames_is_as_accurate_as_on_noisy_model_frames():
    rng = np.random.default_rng(3)
    n = 200
    truth = np.column_stack([rng.uniform(-0.004, 0.004, n), rng.uniform(-0.04, 0.04, n), rng.uniform(-0.08, 0.08, n)])
    images = simulate(truth, counts=7.0)
    predictor = Predictor.load(preparation=preparation())
    on_raw = predictor.predict(raw_frames(images, noise=rng))
    on_model = predictor.predict(rng.poisson(images))
    rmse = lambda est: np.sqrt(np.nanmean((est.params() - truth) ** 2, axis=0))  # noqa: E731
    assert (on_raw.usable.mean() > 0.95) and (rmse(on_raw) < 1.3 * rmse(on_model)).all()


def test_predictor_flags_the_preparations_per_frame_problems():
    raw = raw_frames(simulate(PARAMS[:2], counts=7.0))
    raw[1] = np.nan
    est = Predictor.load(preparation=preparation()).predict(raw)
    assert list(est.status) == ["ok", "all_masked"] and np.isnan(est.strain[1])


# ---------------------------------------------------------------- the live analysis
def raw_run():
    bundle = compose_run(metadata={"motors": ["m"]})
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "cam_image": {"source": "t", "dtype": "array", "shape": [256, 256]},
        "m": {"source": "t", "dtype": "number", "shape": []}})
    return bundle, desc


def analyse(prep, pages):
    analysis = NanobeamAnalysis(Predictor.load(preparation=prep), threaded=False, residual=False)
    bundle, desc = raw_run()
    derived = []
    analysis.subscribe(lambda name, doc: derived.append((name, doc)))
    analysis("start", bundle.start_doc)
    analysis("descriptor", desc.descriptor_doc)
    seq = 1
    for frames in pages:
        analysis("event_page", desc.compose_event_page(
            data={"cam_image": frames, "m": list(range(len(frames)))}, timestamps={"cam_image": [0] * len(frames),
                                                                                     "m": [0] * len(frames)},
            seq_num=list(range(seq, seq + len(frames))), time=[0] * len(frames), validate=False))
        seq += len(frames)
    analysis("stop", bundle.compose_stop())
    return analysis.maps[bundle.start_doc["uid"]], derived


def test_live_analysis_takes_raw_frames_and_records_the_preparation():
    images = simulate(PARAMS, counts=7.0)
    prep = preparation()
    run, derived = analyse(prep, [list(raw_frames(images))])
    start = next(doc for name, doc in derived if name == "start")
    assert start["frame_preparation"] == prep.to_dict()
    assert start["frame_preparation_fingerprint"] == prep.fingerprint()
    est = Predictor.load().predict(images)
    np.testing.assert_allclose(run.scattered()["strain"], est.strain, atol=2e-6)


def test_the_analysis_queue_of_raw_frames_is_bounded_in_bytes():
    predictor = Predictor.load()
    assert NanobeamAnalysis(predictor, threaded=False).max_queued_frames == 16384  # 64 x 64: 256 MiB
    raw = NanobeamAnalysis(Predictor.load(preparation=preparation()), threaded=False)
    assert raw.max_queued_frames == 4096  # 256 x 256 raw frames: 1 GiB
    small = NanobeamAnalysis(predictor, threaded=False, max_queued_bytes=1 << 20, batch_size=32)
    assert small.max_queued_frames == 64


def test_a_frame_of_the_wrong_raw_shape_in_a_live_stream_is_flagged_and_counted():
    raw = list(raw_frames(simulate(PARAMS[:3], counts=7.0)))
    raw[1] = np.ones((64, 64))
    run, derived = analyse(preparation(), [raw, [np.ones((128, 128))] * 2])
    assert list(run.scattered()["status"]) == ["ok", "wrong_shape", "ok", "wrong_shape", "wrong_shape"]
    summary = [doc for name, doc in derived if name == "event"][-1]["data"]
    assert summary["frames_received"] == 5 and '"wrong_shape": 3' in summary["flagged_by_reason"]


def test_live_analysis_reports_the_roi_position_of_a_peak_following_preparation():
    images = simulate(PARAMS[1:2], counts=70.0)
    raw = np.concatenate([raw_frames(images, corner=(20, 90)), raw_frames(images, corner=(60, 50))])
    prep = preparation(follow_peak=True, search_window=(200, 200), roi_corner=None, roi_centre=(104, 134))
    _, derived = analyse(prep, [list(raw)])
    descriptor = next(doc for name, doc in derived if name == "descriptor")
    assert descriptor["data_keys"]["roi_row"]["units"] == "pixel"
    page = next(doc for name, doc in derived if name == "event_page")
    assert page["data"]["roi_row"] == [20, 60] and page["data"]["roi_col"] == [90, 50]


def test_setup_refuses_a_preparation_for_another_pixel_size_before_subscribing():
    bl = make_beamline("domains", seed=2)
    RE = RunEngine({})
    with pytest.raises(ValueError, match="set FramePreparation.binning to 2"):
        setup(RE, detector=bl.detector, x=bl.stage.x, y=bl.stage.y,
              preparation=FramePreparation(binning=1, roi_shape=(64, 64)))
    assert not any(RE.dispatcher.cb_registry.callbacks.values())


def test_fit_command_fits_raw_frames_through_a_preparation(tmp_path, capsys):
    from nanopilot.cli import main
    from nanopilot.physics import Grid, Library

    lib = Library.generate(tmp_path / "small.h5", Grid.parse("strain=-0.005:0.005:5,omega=-0.05:0.05:5,"
                                                             "chi=-0.1:0.1:5"), progress=False)
    model_frames = lib.images[()][[5, 60]]
    lib.close()
    raw = raw_frames(model_frames)
    raw = np.concatenate([raw, np.full((1, 256, 256), np.nan)])
    np.save(tmp_path / "raw.npy", raw)
    preparation(tmp_path).save(tmp_path / "detector.yaml")
    args = ["fit", "--library", str(tmp_path / "small.h5"), "--method", "likelihood", "--out"]
    assert main([*args, str(tmp_path / "raw.npz"), "--frames", str(tmp_path / "raw.npy"),
                 "--preparation", str(tmp_path / "detector.yaml")]) == 0
    assert "flagged frames by status: all_masked: 1" in capsys.readouterr().out
    np.save(tmp_path / "model.npy", model_frames)
    assert main([*args, str(tmp_path / "model.npz"), "--frames", str(tmp_path / "model.npy")]) == 0
    on_raw, on_model = np.load(tmp_path / "raw.npz"), np.load(tmp_path / "model.npz")
    assert list(on_raw["status"]) == ["ok", "ok", "all_masked"]
    np.testing.assert_array_equal(on_raw["strain"][:2], on_model["strain"])
    assert main([*args, str(tmp_path / "x.npz"), "--preparation", str(tmp_path / "detector.yaml")]) == 1


# ---------------------------------------------------------------- replay
def test_replay_reproduces_the_live_maps_of_raw_frames_with_the_stored_preparation(catalog, catalog_dir, tmp_path,
                                                                                   capsys):
    from bluesky_tiled_plugins import TiledWriter

    from nanopilot.cli import main
    from nanopilot.replay import replay, stored_preparation

    prep = preparation(tmp_path)
    raw = raw_frames(np.random.default_rng(4).poisson(simulate(PARAMS, counts=7.0)), noise=None)
    bundle, desc = raw_run()
    docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc),
            ("event_page", desc.compose_event_page(data={"cam_image": raw, "m": [0, 1, 2, 3]},
                                                   timestamps={"cam_image": [0] * 4, "m": [0] * 4},
                                                   seq_num=[1, 2, 3, 4], time=[0] * 4)),
            ("stop", bundle.compose_stop())]
    writer, live = TiledWriter(catalog, batch_size=10), NanobeamAnalysis(Predictor.load(preparation=prep),
                                                                         threaded=False)
    live.subscribe(TiledWriter(catalog, batch_size=10))
    for name, doc in docs:
        writer(name, doc)
        live(name, doc)
    uid = bundle.start_doc["uid"]
    assert stored_preparation(catalog, uid).fingerprint() == prep.fingerprint()
    again = NanobeamAnalysis(Predictor.load(preparation=stored_preparation(catalog, uid)), threaded=False)
    replay(catalog[uid], again)
    for field in ("strain", "omega", "chi", "status"):
        assert list(again.maps[uid].scattered()[field]) == list(live.maps[uid].scattered()[field])
    assert main(["replay", uid[:8], "--catalog", str(catalog_dir)]) == 0
    assert f"frame preparation {prep.fingerprint()}: the one the stored analysis used" in capsys.readouterr().out
    np.save(tmp_path / "dark.npy", np.zeros((256, 256)))  # the calibration changed since: refused, saying so
    assert main(["replay", uid[:8], "--catalog", str(catalog_dir)]) == 1
    assert "a calibration file changed" in capsys.readouterr().err


def test_check_names_every_field_to_change_at_once():
    with pytest.raises(ValueError, match=r"set FramePreparation.binning to 2 and set FramePreparation.roi_shape to "
                                         r"\[128, 128\]"):
        FramePreparation(binning=1, roi_shape=(64, 64)).check(Instrument())


def test_a_drift_following_roi_moves_by_the_shift_and_flags_a_drift_out_of_its_window():
    images = simulate(PARAMS[:1], counts=70.0)
    moved = raw_frames(images, corner=(CORNER[0] + 5, CORNER[1] - 3))  # the peak drifted 5 down, 3 left
    prep = preparation(follow_drift=True, search_window=(148, 148))
    still, followed = prep.prepare(moved), prep.prepare(moved, shift=(5.2, -2.8))
    np.testing.assert_array_equal(followed.roi_corner, [[CORNER[0] + 5, CORNER[1] - 3]])
    keep = np.setdiff1d(np.arange(64), [(GAP - CORNER[1] + 3) // 2, (GAP - CORNER[1]) // 2])  # the gap stays put
    np.testing.assert_allclose(followed.frames[..., keep], preparation().prepare(raw_frames(images)).frames[..., keep],
                               rtol=1e-4, atol=1e-4)
    assert not np.allclose(still.frames, followed.frames)
    outside = prep.prepare(np.concatenate([moved, moved]), shift=[(5, -3), (11, 0)])  # 10 pixels each way at most
    assert list(outside.status) == ["ok", "drift_outside"] and (outside.roi_corner[1] == -1).all()
    with pytest.raises(ValueError, match="follow_peak .* or follow_drift"):
        preparation(follow_drift=True, follow_peak=True)


def test_the_drift_between_reference_images_is_measured_to_a_fraction_of_a_pixel():
    images = simulate(PARAMS[1:2].repeat(4, axis=0), counts=7.0)
    prep = preparation(follow_drift=True)
    rng = np.random.default_rng(3)
    reference, used = prep.drift_image(raw_frames(images, noise=rng))
    assert used == 4
    for shift in [(3, -2), (-6, 4)]:
        corner = (CORNER[0] + shift[0], CORNER[1] + shift[1])
        image, _ = prep.drift_image(raw_frames(images, noise=rng, corner=corner))
        np.testing.assert_allclose(prep.drift(image, reference), shift, atol=0.35)


def test_a_drift_track_follows_a_steady_drift_from_the_runs_start():
    rows, cols = np.mgrid[:96, :96]
    blob = lambda r, c: 40 * np.exp(-((rows - 48 - r) ** 2 + (cols - 48 - c) ** 2) / 18) + 0.2  # noqa: E731
    rng, rate = np.random.default_rng(5), np.array([0.02, -0.03])  # pixels per frame
    track = DriftTrack()
    assert track.count == 0 and track.at(np.array([3.0])).tolist() == [[0.0, 0.0]]
    for time in 1.5 + 16 * np.arange(8):  # a visit every 16 frames, the first at the run's start
        track.add(rng.poisson(blob(*(rate * time))).astype(float), time)
        if track.count == 1:
            assert track.at(np.array([5.0])).tolist() == [[0.0, 0.0]]  # no rate known yet: the ROI stays put
    ahead = np.array([118.0, 130.0, 200.0])  # held after one gap past the last visit
    np.testing.assert_allclose(track.at(ahead), rate * np.minimum(ahead, 113.5 + 16)[:, None], atol=0.15)
    np.testing.assert_allclose(track.drift, rate * 113.5, atol=0.15)  # a held drift would be 2.6 and 3.9 off
    with pytest.raises(ValueError, match="visits >= 2"):
        DriftTrack(visits=1)


def test_holes_take_their_neighbours_mean():
    image = np.arange(25, dtype=np.float32).reshape(5, 5)
    bad = np.zeros((5, 5), bool)
    bad[2, 2] = bad[0, 0] = True
    filled = fill_holes(image, bad, size=3)
    assert filled[2, 2] == pytest.approx(12) and filled[0, 0] == pytest.approx((1 + 5 + 6) / 3)
    assert (filled[~bad] == image[~bad]).all() and filled.dtype == np.float32
