"""NanobeamNN: architecture, stacked ensembles, training data, model files, the Predictor and ``nanopilot train``."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml

from nanopilot.cli import main
from nanopilot.estimates import COUNT_LEVEL, EDGE, EMPTY, NEGATIVE, NONFINITE, OK, SATURATED
from nanopilot.model import (Architecture, NanobeamNN, Predictor, StackedEnsemble, TrainConfig, count_parameters,
                             load_model, multiply_adds, save_model, shipped_model_path)
from nanopilot.model.data import DEFAULT_RANGES, SimulatedSource, sample_params
from nanopilot.physics import Instrument, poisson, simulate

TINY = Architecture(channels=((2, 4), (4, 8), (8, 8)))


def frames_for(params, seed=0, counts="published"):
    return poisson(simulate(np.asarray(params, dtype=float), counts=counts), seed)


def random_params(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.c_[rng.uniform(-0.004, 0.004, n), rng.uniform(-0.04, 0.04, n), rng.uniform(-0.08, 0.08, n)]


def tiny_metadata(outputs=3, instrument=None):
    names = ("strain", "omega", "chi", "thickness")[:outputs]
    return {"label_scaler": {"scale": [100.0, 10.0, 5.0, 1 / 240], "offset": [0.0, 0.0, 0.0, 180.0]},
            "instrument": (instrument or Instrument()).to_dict(), "counts": "published", "kernel": "box",
            "count_stats": {"median": 6400.0, "p001": 3500.0, "p999": 7300.0},
            "ranges": {k: list(DEFAULT_RANGES[k]) for k in names}, "members": [], "residual_threshold": 50.0}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("model") / "tiny"
    save_model(path, [NanobeamNN(TINY) for _ in range(3)], tiny_metadata())
    return path


@pytest.fixture(scope="module")
def shipped():
    return Predictor.load(threads=2)


def test_published_architecture():
    net = NanobeamNN()
    assert count_parameters(net) == 27_771
    assert count_parameters(net.requires_grad_(False)) == 27_771  # frozen, as in a Predictor
    assert abs(multiply_adds(net.arch) - 3.4e6) < 0.05e6
    assert net(torch.zeros(5, 64, 64)).shape == (5, 3)
    assert NanobeamNN(Architecture(outputs=4))(torch.zeros(2, 1, 64, 64)).shape == (2, 4)
    with pytest.raises(ValueError, match="outputs"):
        Architecture(outputs=5)
    with pytest.raises(ValueError, match="too small"):
        Architecture(channels=((2, 2, 2, 2, 2, 2, 2, 2),) * 3)


def test_stacked_ensemble_equals_member_loop():
    torch.manual_seed(0)
    members = [NanobeamNN(TINY).eval() for _ in range(4)]
    x = torch.as_tensor(frames_for(random_params(16)), dtype=torch.float32)
    with torch.inference_mode():
        stacked = StackedEnsemble(members).eval()(x)
        loop = torch.stack([m(x) for m in members], dim=1)
    assert stacked.shape == (16, 4, 3)
    torch.testing.assert_close(stacked, loop, rtol=1e-5, atol=1e-6)


def test_simulated_source_matches_simulate():
    source = SimulatedSource(Instrument(), DEFAULT_RANGES, 4, reuse=4)
    images, params = source.expected(32, np.random.default_rng(1))
    assert params.shape == (32, 4) and len(np.unique(params[:, 2].numpy())) == 8  # 32 / reuse chi values
    assert len(np.unique(params[:, [0, 2]].numpy(), axis=0)) > 16
    lo = np.array([DEFAULT_RANGES[k][0] for k in ("strain", "omega", "chi", "thickness")])
    hi = np.array([DEFAULT_RANGES[k][1] for k in ("strain", "omega", "chi", "thickness")])
    assert ((params.numpy() >= lo) & (params.numpy() <= hi)).all()
    torch.testing.assert_close(images, simulate(params, counts="published"), rtol=1e-4, atol=1e-5)


def test_file_round_trip_gives_identical_predictions(tiny_model, tmp_path):
    frames = frames_for(random_params(40), seed=2)
    first = Predictor.load(tiny_model).predict_raw(frames)
    again = Predictor.load(str(tiny_model) + ".pt").predict_raw(frames)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    meta = json.loads(tiny_model.with_suffix(".json").read_text())
    assert meta["instrument_fingerprint"] == Instrument().fingerprint()
    assert meta["weights"]["members"] == 3 and meta["outputs"] == ["strain", "omega", "chi"]
    assert first[2].shape == (40, 3, 3) and np.isfinite(first[1]).all()


def test_instrument_mismatch_names_fields(tiny_model):
    other = Instrument(energy_kev=10.0, detector_distance=1.0)
    with pytest.raises(ValueError, match="energy_kev.*detector_distance|detector_distance.*energy_kev"):
        Predictor.load(tiny_model, instrument=other)
    assert Predictor.load(tiny_model, instrument=Instrument()).n_members == 3


def test_corrupted_or_incompatible_files_name_the_file(tiny_model, tmp_path):
    weights, sidecar = tiny_model.with_suffix(".pt"), tiny_model.with_suffix(".json")
    bad = tmp_path / "bad"
    (tmp_path / "bad.json").write_text(sidecar.read_text())
    (tmp_path / "bad.pt").write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match="bad.pt"):
        load_model(bad)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_model(bad)
    meta = json.loads(sidecar.read_text())
    meta["architecture"]["channels"] = [[2, 4], [8, 16], [32, 64]]
    (tmp_path / "bad.json").write_text(json.dumps(meta))
    (tmp_path / "bad.pt").write_bytes(weights.read_bytes())
    with pytest.raises(ValueError, match="bad.pt.*do not fit"):
        load_model(bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_model(tmp_path / "missing")


def test_unsafe_pickle_is_refused(tiny_model, tmp_path):
    import hashlib

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"member0.x": Evil()}, tmp_path / "evil.pt")
    meta = json.loads(tiny_model.with_suffix(".json").read_text())
    meta["weights"]["sha256"] = hashlib.sha256((tmp_path / "evil.pt").read_bytes()).hexdigest()
    (tmp_path / "evil.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="evil.pt cannot be read safely"):
        load_model(tmp_path / "evil")


def test_wrong_shape_fails_before_work(tiny_model):
    predictor = Predictor.load(tiny_model)
    with pytest.raises(ValueError, match=r"\(N, 64, 64\)"):
        predictor.predict(np.zeros((3, 32, 64)))


def test_bad_frames_get_statuses_not_exceptions(shipped):
    params = random_params(8, seed=4)
    params[7] = [0.0075, 0.0, 0.0]  # strain beyond the trained range: the estimate sits at its edge
    frames = frames_for(params, seed=5).astype(np.float64)
    frames[0, 3, 3] = np.nan
    frames[1, 5, 5] = -1
    frames[2] = 0
    frames[3] /= 30  # 1/30 of the training count level: too faint for the network
    frames[4, 10, 10] = 1e6
    predictor = Predictor.load(threads=2, saturation=1e5)
    est = predictor.predict(frames)
    assert list(est.status[:5]) == [NONFINITE, NEGATIVE, EMPTY, COUNT_LEVEL, SATURATED]
    assert list(est.status[5:7]) == [OK, OK] and est.status[7] == EDGE
    assert np.isnan(est.strain[:5]).all() and np.isfinite(est.strain[5:7]).all()
    assert np.isfinite(est.strain_std[5:7]).all() and np.isnan(est.thickness).all()


@pytest.fixture(scope="module")
def published():
    """The published network trained at one count level (raw counts in)."""
    return Predictor.load("published", threads=2)


@pytest.mark.parametrize("peak", [2.0, 30.0, 300.0, 3000.0])
def test_frames_at_any_flux_are_scaled_to_the_training_level(published, peak):
    """A model trained at one count level: brighter (or fainter) frames keep the 7-count accuracy (without the
    scaling the network is off by up to 40x at 300 counts, and its frames are flagged)."""
    params = random_params(100, seed=16)
    est = published.predict(frames_for(params, seed=17, counts=peak))
    assert est.ok.mean() > 0.9
    rmse = np.sqrt(np.mean((est.params()[est.ok] - params[est.ok]) ** 2, axis=0))
    assert (rmse < [3e-4 if peak < 7 else 1.5e-4, 1e-3 if peak < 7 else 6e-4, 2.5e-3]).all(), rmse


def test_frames_at_the_training_level_are_not_scaled_and_thickness_models_never(published, shipped):
    frames = frames_for(random_params(50, seed=18), seed=19)
    raw = Predictor.load("published", threads=2, normalise_counts=False).predict(frames)  # no hot pixels here
    scaled = published.predict(frames)
    totals = frames.sum(axis=(1, 2))
    inside = (totals >= published.trained_counts[0]) & (totals <= published.trained_counts[1])
    assert inside.mean() > 0.9
    np.testing.assert_array_equal(scaled.params()[inside], raw.params()[inside])
    thickness = Predictor.load("thickness", threads=2)
    assert not thickness.normalise_counts and np.isfinite(thickness.count_range[1])
    assert published.normalise_counts and published.count_range[1] == np.inf
    # the default model scales every frame inside its network: nothing to scale before it, no upper count limit
    assert shipped.any_flux and not shipped.normalise_counts and shipped.count_range[1] == np.inf


def with_hot_pixels(frames, n, seed, counts=40):
    """A copy of ``frames`` with ``n`` pixels per frame raised by ``counts``; and their (N, n, 2) positions."""
    rng = np.random.default_rng(seed)
    out, where = frames.astype(np.float64), rng.integers(0, 64, size=(len(frames), n, 2))
    for i, pixels in enumerate(where):
        out[i, pixels[:, 0], pixels[:, 1]] += counts
    return out, where


def test_hot_pixels_are_found_and_ignored(shipped):
    params = random_params(100, seed=20)
    frames = frames_for(params, seed=21)
    hot, _ = with_hot_pixels(frames, 4, seed=22)
    clean, found = shipped.predict(frames), shipped.predict(hot)
    blind = Predictor.load(threads=2, find_hot_pixels=False).predict(hot)

    def rmse(est):
        return np.sqrt(np.nanmean((est.params() - params) ** 2, axis=0))

    assert (rmse(found) < 1.3 * rmse(clean)).all(), (rmse(found), rmse(clean))
    assert (rmse(blind) > 1.5 * rmse(clean)).any()  # the test can fail: unnoticed, they cost accuracy


@pytest.mark.parametrize("peak", [2.0, 7.0, 3000.0])
def test_no_pixel_of_a_clean_frame_is_taken_for_a_hot_one(peak):
    from nanopilot.model.bad_pixels import find_hot_pixels

    assert not find_hot_pixels(frames_for(random_params(200, seed=23), seed=24, counts=peak).astype(np.float32)).any()


def test_masked_pixels_change_nothing(shipped):
    frames = frames_for(random_params(20, seed=25), seed=26).astype(np.float64)
    mask = np.zeros((64, 64), dtype=bool)
    mask[:, 31] = True  # a module gap
    mask[10, 40] = True  # a known hot pixel
    masked = Predictor.load(threads=2, mask=mask, find_hot_pixels=False)
    spoiled = frames.copy()
    spoiled[:, :, 31] = np.nan
    spoiled[:, 10, 40] = 1e4
    a, b = masked.predict(frames), masked.predict(spoiled)
    np.testing.assert_array_equal(a.params(), b.params())
    assert (b.status == OK).mean() > 0.8
    with pytest.raises(ValueError, match=r"the mask array has shape \(32, 64\)"):
        Predictor.load(mask=np.zeros((32, 64), dtype=bool))


def test_masks_load_from_numpy_nexus_and_image_files(tmp_path):
    import h5py
    from PIL import Image

    from nanopilot.model.bad_pixels import load_mask

    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 31], mask[10, 40] = 1, 4  # a gap, and a pixel with another defect bit (NeXus: nonzero = masked)
    np.save(tmp_path / "mask.npy", mask)
    with h5py.File(tmp_path / "detector.nxs", "w") as file:
        file["entry/instrument/detector/pixel_mask"] = mask
    Image.fromarray(mask).save(tmp_path / "mask.tif")
    for source in ("mask.npy", "detector.nxs", "detector.nxs::/entry/instrument/detector/pixel_mask", "mask.tif"):
        np.testing.assert_array_equal(load_mask(f"{tmp_path}/{source}", (64, 64)), mask != 0)
    with pytest.raises(ValueError, match="mask.tif has shape"):
        load_mask(tmp_path / "mask.tif", (128, 128))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mask(tmp_path / "nothing.npy", (64, 64))
    assert Predictor.load(mask=tmp_path / "detector.nxs").mask.sum() == 65


def test_shipped_ensemble_is_accurate_and_deterministic(shipped):
    params = random_params(200, seed=6)
    frames = frames_for(params, seed=7)
    est = shipped.predict(frames)
    again = shipped.predict(frames.astype(np.int32))
    np.testing.assert_array_equal(est.params(), again.params())
    assert est.usable.all() and est.ok.mean() > 0.8  # the rest: warnings (edge, uncertain) that keep values
    rmse = np.sqrt(np.mean((est.params() - params) ** 2, axis=0))
    assert (rmse < [2e-4, 8e-4, 2.5e-3]).all(), rmse
    single = est[0]
    assert len(single) == 1 and single.status[0] == est.status[0]


def test_refine_passes_estimates_through_fitting():
    params = random_params(48, seed=8)
    frames = frames_for(params, seed=9)
    predictor = Predictor.load(threads=2)
    net = predictor.predict(frames)
    refined = predictor.predict(frames, refine=True)
    assert (refined.usable == net.usable).all() and refined.usable.sum() > 40
    ok = refined.usable
    assert not np.allclose(refined.params()[ok], net.params()[ok])
    rmse_net = np.sqrt(((net.params()[ok] - params[ok]) ** 2).mean(axis=0))
    rmse_ref = np.sqrt(((refined.params()[ok] - params[ok]) ** 2).mean(axis=0))
    assert rmse_ref[1] < rmse_net[1] and rmse_ref[2] < rmse_net[2]
    assert (refined.strain_std[ok] < np.nanmean(net.strain_std) * 5).all()
    untouched = predictor.predict(frames, refine=1e9)  # only frames with a huge spread would be refined
    np.testing.assert_array_equal(untouched.params(), net.params())
    some = predictor.predict(frames, refine=1.5)
    changed = (some.params() != net.params()).any(axis=1)
    assert 0 < changed.sum() < ok.sum()


def test_shipped_thickness_model():
    predictor = Predictor.load(shipped_model_path("thickness"), threads=2)
    assert predictor.outputs == ("strain", "omega", "chi", "thickness")
    meta = predictor.metadata
    assert meta["ranges"]["thickness"][0] <= 60 and meta["ranges"]["thickness"][1] >= 300
    params = sample_params(1200, DEFAULT_RANGES, 4, np.random.default_rng(12))  # the trained ranges, off-grid
    est = predictor.predict(frames_for(params, seed=11))
    assert (est.status == "ok").mean() > 0.9  # the rest: estimates at the edge of the trained range
    assert np.sqrt(np.nanmean((est.thickness - params[:, 3]) ** 2)) <= 3.0  # the target (A)


def test_train_config_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training: {epochs: 2, learning_rate: 1}\n")
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.load(path)
    with pytest.raises(ValueError, match="thickness"):
        TrainConfig(architecture=Architecture(outputs=4), ranges={"strain": (0, 1), "omega": (0, 1), "chi": (0, 1)})


@pytest.mark.slow  # run by .ci/run's second pass
def test_nanopilot_train_tiny(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text("name: tiny\nmodel: {channels: [[2, 4], [4, 8], [8, 8]], outputs: 3}\n"
                      "data: {samples_per_epoch: 256, val_samples: 128}\n"
                      "training: {epochs: 2, batch_size: 64, lr: 2.0e-3, threads: 2}\nseeds: [1, 2]\n")
    out = tmp_path / "tiny"
    assert main(["train", "--config", str(config), "--out", str(out), "--no-progress"]) == 0
    assert "training wall time" in capsys.readouterr().out
    model = load_model(out)
    meta = model.metadata
    assert len(model.networks) == 2 and meta["seeds"] == [1, 2]
    assert meta["config"]["training"]["epochs"] == 2 and meta["counts"] == "published"
    assert set(meta["validation"]) >= {"rmse_strain", "rmse_omega", "rmse_chi"}
    assert meta["instrument"] == Instrument().to_dict() and meta["residual_threshold"] > 0
    assert set(meta["spread_factor"]) == {"strain", "omega", "chi"}
    assert [m["seed"] for m in meta["members"]] == [1, 2]
    # the same seed trains the same network, also when the members train at once in processes of their own
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "again"), "--seeds", "1,2",
                 "--jobs", "2", "--no-progress"]) == 0
    assert "training 2 members in 2 processes" in capsys.readouterr().out
    for a, b in zip(model.networks, load_model(tmp_path / "again").networks):
        for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(ta, tb, msg=name)


def test_loss_weights_weigh_each_output_in_the_loss(tmp_path):
    from nanopilot.model.network import LabelScaler
    from nanopilot.model.training import evaluate

    with pytest.raises(ValueError, match="thickness"):
        TrainConfig(loss_weights={"thickness": 2.0})
    with pytest.raises(ValueError, match="> 0"):
        TrainConfig(loss_weights={"omega": -1.0})
    config = TrainConfig(loss_weights={"omega": 4})
    assert config.output_weights().tolist() == [1.0, 4.0, 1.0]
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert TrainConfig.load(path).loss_weights == {"omega": 4.0}
    torch.manual_seed(0)
    network = NanobeamNN(TINY)
    params = torch.as_tensor(random_params(64, seed=5))
    frames = torch.as_tensor(frames_for(params.numpy(), seed=6), dtype=torch.float32)
    scaler = LabelScaler()
    plain, _ = evaluate(network, frames, params, scaler)
    weighted, _ = evaluate(network, frames, params, scaler, weights=config.output_weights())
    with torch.no_grad():
        squared = (network(frames) - scaler.to_labels(params.float())) ** 2
    assert plain == pytest.approx(float(squared.mean()), rel=1e-5)
    assert weighted == pytest.approx(float((squared * torch.tensor([1.0, 4.0, 1.0])).mean()), rel=1e-5)


def test_keep_best_keeps_the_members_with_the_lowest_validation_loss():
    from nanopilot.model.training import TrainResult, keep_best

    results = [TrainResult(None, seed, {"val_loss": loss}, [], 1, 1.0, {})
               for seed, loss in zip((1, 2, 3, 4, 5), (0.5, 0.1, 0.4, 0.2, 0.3))]
    logged = []
    assert [r.seed for r in keep_best(results, 3, logged.append)] == [2, 4, 5]
    assert "seeds [2, 4, 5]" in logged[0]
    assert keep_best(results, None) == results and keep_best(results, 9) == results
    with pytest.raises(ValueError, match="keep_best"):
        TrainConfig(keep_best=0)


def test_training_within_a_time_budget():
    from nanopilot.model.training import _TimedSchedule, train_model

    config = TrainConfig(name="timed", architecture=Architecture(channels=((2, 4), (4, 8), (8, 8))),
                         samples_per_epoch=256, val_samples=64, epochs=10_000, batch_size=64, minutes=0.05)
    logged = []
    result = train_model(config, 1, progress=False, log=logged.append)
    assert 3.0 <= result.seconds < 10 and len(result.history) < 10_000
    assert any("time budget of 0.05 min spent" in line for line in logged)
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    shape = _TimedSchedule(optimizer, "onecycle", 1e-2, budget=100.0)
    rates = [shape.rate(f) for f in (0.0, 0.15, 0.5, 1.0)]
    assert rates[0] == pytest.approx(4e-4) and rates[1] == pytest.approx(1e-2) and rates[3] == pytest.approx(1e-6)
    assert rates[1] > rates[2] > rates[3] and optimizer.param_groups[0]["lr"] == pytest.approx(4e-4, rel=1e-3)
    with pytest.raises(ValueError, match="minutes"):
        TrainConfig(minutes=0)


def test_training_warm_starts_from_a_model_file(tiny_model):
    from nanopilot.model.files import load_model
    from nanopilot.model.training import _initial_weights, train_model

    config = TrainConfig(name="warm", architecture=TINY, samples_per_epoch=64, val_samples=32, epochs=1,
                         batch_size=64, lr=1e-12, init=str(tiny_model), seeds=(7, 8, 9, 10))
    members = load_model(tiny_model).networks
    for index, seed in enumerate(config.seeds):  # member i starts from the file's member i modulo its 3
        start = _initial_weights(config, seed)
        for name, value in members[index % 3].state_dict().items():
            torch.testing.assert_close(start[name], value)
    trained = train_model(config, 8, progress=False, log=lambda line: None).network
    for name, value in members[1].state_dict().items():  # lr ~ 0: one epoch leaves the start as it was
        torch.testing.assert_close(trained.state_dict()[name], value, rtol=1e-5, atol=1e-7)
    assert TrainConfig.from_dict(config.to_dict()).init == str(tiny_model)
    wider = dataclasses.replace(config, architecture=Architecture(channels=((2, 4), (4, 8), (8, 16))))
    with pytest.raises(ValueError, match="architecture"):
        _initial_weights(wider, 7)
    other = dataclasses.replace(config, instrument={**Instrument().to_dict(), "energy_kev": 11.0})
    with pytest.raises(ValueError, match="energy_kev"):
        _initial_weights(other, 7)


# At the published 7 counts: the 'published' ensemble (one count level) measured 1.24e-4 / 4.71e-4 / 1.40e-3 here,
# the any-flux default 1.41e-4 / 5.33e-4 / 1.52e-3 (2026-12-02); the default's bar guards against regressions, and
# issue 16's bar at 7 counts (no worse than the published ensemble) is not met yet: it needs more training.
@pytest.mark.slow
@pytest.mark.parametrize("name, bar", [("published", [1.4e-4, 5.5e-4, 1.7e-3]), ("default", [1.5e-4, 5.8e-4, 1.7e-3])])
def test_shipped_ensemble_accuracy_on_held_out_set(name, bar):
    from nanopilot.model import Predictor

    params = random_params(2000, seed=12) * np.array([1.25, 1.25, 1.25])
    frames = frames_for(params, seed=13)
    mean, _, _ = Predictor.load(name, threads=2).predict_raw(frames)
    rmse = np.sqrt(((mean - params) ** 2).mean(axis=0))
    assert (rmse <= bar).all(), rmse


def test_shipped_models_load_by_name():
    from nanopilot.model import Predictor

    assert Predictor.load("thickness").outputs == ("strain", "omega", "chi", "thickness")
    assert Predictor.load("default").n_members == Predictor.load().n_members
    with pytest.raises(FileNotFoundError, match="nosuchmodel"):
        Predictor.load("nosuchmodel")


def test_spread_factors_make_rms_z_one():
    from nanopilot.model.calibration import spread_factors

    rng = np.random.default_rng(4)
    spread = rng.uniform(0.5, 2.0, (500, 2))
    error = spread * rng.normal(0, [3.0, 0.5], (500, 2))
    factors = spread_factors(error, spread)
    np.testing.assert_allclose(np.sqrt(((error / (factors * spread)) ** 2).mean(axis=0)), 1.0)


def test_calibration_round_trip_and_old_sidecars(tiny_model, tmp_path):
    import shutil

    from nanopilot.model.calibration import calibrate

    frames = frames_for(random_params(16), seed=5)
    old = Predictor.load(tiny_model)  # a sidecar without spread factors loads with factors 1
    assert "spread_factor" not in old.metadata
    np.testing.assert_array_equal(old.spread_factor, 1.0)
    np.testing.assert_array_equal(old.predict(frames).strain_std, old.predict_raw(frames)[1][:, 0])
    for suffix in (".pt", ".json"):
        shutil.copy(str(tiny_model) + suffix, tmp_path / f"tiny{suffix}")
    path = tmp_path / "tiny"
    assert main(["train", "--calibrate", str(path), "--frames", "64", "--seed", "3"]) == 0
    meta = load_model(path).metadata  # the weights' checksum still holds
    assert meta["spread_calibration"] == {"frames": 64, "seed": 3, "kernel": "box", "counts": "published"}
    assert calibrate(path, frames=64, seed=3, log=lambda line: None) == meta["spread_factor"]
    new = Predictor.load(path)
    factors = np.array([meta["spread_factor"][k] for k in ("strain", "omega", "chi")])
    np.testing.assert_array_equal(new.spread_factor, factors)
    est, (_, raw, _) = new.predict(frames), new.predict_raw(frames)
    np.testing.assert_allclose(np.stack([est.strain_std, est.omega_std, est.chi_std], axis=1), raw * factors)


def test_shipped_default_is_calibrated_and_single_network_refused():
    from nanopilot.model.calibration import calibrate

    factors = Predictor.load().spread_factor
    assert ((factors > 1) & (factors < 10)).all(), factors
    with pytest.raises(ValueError, match="single network"):
        calibrate(shipped_model_path("thickness"), frames=8)


def test_network_passes_run_in_one_inference_thread(tiny_model):
    import threading

    from nanopilot.model.inference_thread import run_in_inference_thread

    seen = []
    predictor = Predictor.load(tiny_model)
    network_pass = predictor._network_pass
    predictor._network_pass = lambda x: (seen.append(threading.current_thread().name), network_pass(x))[1]
    frames = np.ones((3, 64, 64), np.float32)
    caller = threading.Thread(target=predictor.predict, args=(frames,))
    caller.start()
    caller.join()
    predictor.predict(frames)
    assert seen == ["nanopilot-inference"] * 2
    assert run_in_inference_thread(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ZeroDivisionError):
        run_in_inference_thread(lambda: 1 / 0)
    assert run_in_inference_thread(run_in_inference_thread, len, "abc") == 3  # nested calls do not deadlock


def test_one_member_of_an_ensemble_predicts_as_in_the_ensemble(tiny_model):
    model = load_model(tiny_model)
    frames = frames_for(random_params(16, seed=3), seed=4)
    _, _, members = Predictor(model).predict_raw(frames)
    single = Predictor(model.member(1))
    assert single.n_members == 1
    np.testing.assert_allclose(single.predict_raw(frames)[0], members[:, 1], rtol=1e-5, atol=1e-9)


def test_training_from_a_library_holds_out_one_split_for_all_members(tmp_path, monkeypatch):
    import nanopilot.model.training as training
    from nanopilot.physics import Grid, Library

    path = tmp_path / "lib.h5"
    Library.generate(path, Grid.parse("strain=-0.005:0.005:5,omega=-0.05:0.05:3,chi=-0.1:0.1:7"),
                     progress=False).close()
    split_seeds = []
    source = training.LibrarySource

    def recording_source(*args, seed, **kwargs):
        split_seeds.append(seed)
        return source(*args, seed=seed, **kwargs)

    monkeypatch.setattr(training, "LibrarySource", recording_source)
    config = TrainConfig(name="lib", architecture=Architecture(channels=((2, 4), (4, 8), (8, 8))),
                         library=str(path), val_fraction=0.2, epochs=1, batch_size=16, seeds=(3, 4))
    model = load_model(training.train(config, tmp_path / "lib", progress=False, log=lambda line: None))
    assert len(model.networks) == 2 and model.metadata["validation"]["frames"] == 21  # 20% of 105 patterns
    # every member and the calibration use one split, so no member trains on the calibration patterns
    assert split_seeds == [3, 3, 3]


def test_a_frames_estimate_does_not_depend_on_how_the_frames_are_batched():
    """Bit for bit (a replay batches frames otherwise than the live analysis did): a batch of one frame included."""
    params = sample_params(9, DEFAULT_RANGES, 3, np.random.default_rng(5))
    frames = poisson(simulate(params, counts="published"), seed=6).astype(np.float32)
    predictor = Predictor.load()
    whole = predictor.predict(frames)
    for part in (frames[:1], frames[1:2], frames[2:6]):
        alone = predictor.predict(part)
        first = int(np.flatnonzero((frames == part[0]).all(axis=(1, 2)))[0])
        for name in ("strain", "omega", "chi", "strain_std", "omega_std", "chi_std"):
            np.testing.assert_array_equal(getattr(alone, name), getattr(whole, name)[first:first + len(part)])
