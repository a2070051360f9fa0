"""Conventional fitting: library correlation / likelihood fits, Poisson refinement, the ``nanopilot fit`` command."""

import numpy as np
import pytest
import torch

from nanopilot.cli import main
from nanopilot.estimates import EMPTY, NEGATIVE, NONFINITE, NOT_CONVERGED, OK, Estimates
from nanopilot.fitting import correlation_fit, refine
from nanopilot.fitting.box_tilts import _BoxModel
from nanopilot.fitting.likelihood import _Model
from nanopilot.physics import Grid, Instrument, Library, intensity_scale, poisson, simulate

SMALL = "strain=-0.005:0.005:9,omega=-0.05:0.05:9,chi=-0.1:0.1:9"
STEP = np.array([1.25e-3, 0.0125, 0.025])  # grid steps of SMALL: strain, omega (deg), chi (deg)
FINE_STEP = np.array([2.5e-4, 0.0025, 0.005])  # steps of the published 41^3 grid


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    lib = Library.generate(tmp_path_factory.mktemp("fit") / "small.h5", Grid.parse(SMALL), progress=False)
    yield lib
    lib.close()


@pytest.fixture(scope="module")
def scale():
    return intensity_scale(Instrument(), "published")


def published_correlation(frames, lib):
    """The published method written out directly: full score cube, axis sums, minimum removed, centre of mass."""
    patterns = lib.images[()].reshape(len(lib), -1).astype(np.float64)
    patterns /= patterns.sum(axis=1, keepdims=True)
    cube = (frames.reshape(len(frames), -1).astype(np.float64) @ patterns.T).reshape(len(frames), *lib.grid.shape)
    out = []
    for axis, name in enumerate(lib.grid.order):
        profile = cube.sum(axis=tuple(a + 1 for a in range(cube.ndim - 1) if a != axis))
        profile -= profile.min(axis=1, keepdims=True)
        out.append(profile @ getattr(lib.grid, name).values / profile.sum(axis=1))
    return np.stack(out, axis=1)


def random_states(n, seed, margin=0.8):
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-0.005, 0.005, n), rng.uniform(-0.05, 0.05, n), rng.uniform(-0.1, 0.1, n)],
                    axis=1) * margin


# --------------------------------------------------------------------------- correlation_fit
def test_correlation_equals_the_published_method(library, scale):
    truth = random_states(12, seed=1)
    frames = poisson(simulate(truth) * scale, seed=2)
    est = correlation_fit(frames, library, chunk=100, batch=5)  # chunks and batches that do not divide evenly
    np.testing.assert_allclose(est.params(), published_correlation(frames, library), rtol=1e-4, atol=1e-9)
    assert (est.status == OK).all() and np.isnan(est.thickness).all() and np.isnan(est.strain_std).all()
    assert np.isfinite(est.score).all()


def test_likelihood_recovers_every_library_pattern(library):
    est = correlation_fit(library.images[()], library, method="likelihood", chunk=200)
    np.testing.assert_array_equal(est.params(), library.params[:, :3])


def test_correlation_recovers_library_patterns(library):
    """Exact in chi at the grid centre (symmetric profiles), within a fraction of a step in strain and omega
    (the Laue term is not symmetric in strain); within one step next to the centre. Further out its bias toward the
    centre grows past a step (the equality with the published method itself is tested above)."""
    grid = library.grid
    centre = np.ravel_multi_index((4, 4, 4), grid.shape)
    interior = [np.ravel_multi_index(i, grid.shape) for i in [(3, 4, 5), (5, 3, 3), (4, 5, 4), (5, 5, 5), (3, 3, 4)]]
    est = correlation_fit(library.images[()][[centre] + interior], library)
    error = np.abs(est.params() - library.params[[centre] + interior, :3]) / STEP
    assert error[0, 2] < 1e-3 and (error[0] < 0.1).all(), error[0]
    assert (error < 1).all(), error


def test_thickness_axis_is_fitted(tmp_path):
    grid = Grid.parse("strain=-0.004:0.004:5,omega=-0.04:0.04:5,chi=-0.08:0.08:5,thickness=80:160:3")
    with Library.generate(tmp_path / "thick.h5", grid, progress=False) as lib:
        pick = [0, 100, 150, 374]
        est = correlation_fit(lib.images[()][pick], lib, method="likelihood")
        np.testing.assert_array_equal(est.params(with_thickness=True), lib.params[pick])
        est = correlation_fit(lib.images[()][pick], lib)
        assert np.isfinite(est.thickness).all() and (est.thickness > 80).all() and (est.thickness < 160).all()


@pytest.mark.parametrize("method", ["correlation", "likelihood"])
def test_bad_frames_are_flagged_and_the_rest_fitted(library, method):
    pick = [10, 300, 364, 500, 700]
    frames = library.images[()][pick].copy()
    frames[1, 3, 4] = np.nan
    frames[2, 0, 0] = -1.0
    frames[3] = 0.0
    frames[4, 10, 10] = np.inf
    est = correlation_fit(frames, library, method=method)
    assert list(est.status) == [OK, NONFINITE, NEGATIVE, EMPTY, NONFINITE]
    assert np.isnan(est.params()[1:]).all() and np.isnan(est.score[1:]).all()
    reference = correlation_fit(library.images[()][pick[:1]], library, method=method)
    np.testing.assert_allclose(est.params()[0], reference.params()[0], rtol=1e-5)


@pytest.mark.parametrize("frames, expected", [
    (np.zeros((2, 32, 32)), r"\(N, 64, 64\)"),
    (np.zeros((2, 1, 64, 64)), r"\(N, 64, 64\)"),
    (np.zeros((64,)), r"\(N, 64, 64\)"),
    (np.zeros((0, 64, 64)), "empty batch"),
])
def test_bad_batches_raise(library, frames, expected):
    with pytest.raises(ValueError, match=expected):
        correlation_fit(frames, library)
    with pytest.raises(ValueError, match=expected):
        refine(frames, np.zeros((max(len(frames), 1), 3)))


def test_library_for_another_instrument_is_refused(library):
    other = Instrument(energy_kev=11.0)
    with pytest.raises(ValueError, match="energy_kev"):
        correlation_fit(library.images[()][:2], library, instrument=other)
    with pytest.raises(ValueError, match="energy_kev"):
        correlation_fit(library.images[()][:2], library.path, instrument=other)
    with pytest.raises(ValueError, match="method"):
        correlation_fit(library.images[()][:2], library, method="broadcast")


# --------------------------------------------------------------------------- refine
def test_model_matches_simulate_and_its_jacobian_matches_finite_differences():
    model = _Model(Instrument(), True, 1e-4, None)
    params = np.array([[1e-3, 0.01, -0.02, 100.0], [-2e-3, -0.03, 0.05, 140.0]])
    theta = model.to_internal(params, np.array([2e-3, 5e-3]))
    thickness = model.fixed(params)
    mu, jac = model.evaluate(theta, thickness)
    expected = simulate(params, kernel="gauss", dtype=torch.float64).reshape(2, -1) * np.array([[2e-3], [5e-3]])
    np.testing.assert_allclose(mu.numpy() - 1e-4, expected, rtol=1e-9, atol=1e-12)
    for k in range(5):
        h = torch.zeros_like(theta)
        h[:, k] = 1e-4
        numeric = (model.evaluate(theta + h, thickness)[0] - model.evaluate(theta - h, thickness)[0]) / 2e-4
        np.testing.assert_allclose(jac[:, k].numpy(), numeric.numpy(), rtol=1e-4, atol=1e-6 * numeric.abs().max())


@pytest.mark.parametrize("fit_thickness", [False, True])
def test_refine_recovers_noiseless_truth_from_one_step_away(scale, fit_thickness):
    rng = np.random.default_rng(3)
    truth = np.column_stack([random_states(16, seed=4), rng.uniform(90, 140, 16)])
    frames = simulate(truth, kernel="gauss", dtype=torch.float64) * scale
    start = truth[:, :3] + FINE_STEP * rng.choice([-1, 1], size=(16, 3))
    if fit_thickness:
        start = np.column_stack([start, truth[:, 3] * rng.choice([0.9, 1.1], size=16)])
    else:
        start = np.column_stack([start, truth[:, 3]])
    est = refine(frames, start, fit_thickness=fit_thickness)
    assert (est.status == OK).all(), est.counts()
    assert (np.abs(est.params() - truth[:, :3]) / FINE_STEP < 0.01).all()
    np.testing.assert_allclose(est.thickness, truth[:, 3], rtol=1e-3)
    assert (est.score < 1e-3).all()
    assert np.isfinite(est.params(with_thickness=True)).all()
    assert np.isfinite(est.thickness_std).all() == fit_thickness


def test_refine_improves_noisy_frames_with_calibrated_std(scale):
    truth = random_states(60, seed=5)
    frames = poisson(simulate(truth, kernel="gauss") * scale, seed=6)
    start = truth + FINE_STEP * np.random.default_rng(7).choice([-1, 1], size=truth.shape)
    est = refine(frames, start)
    assert (est.status == OK).all(), est.counts()
    error = est.params() - truth
    rmse, rmse_start = np.sqrt((error ** 2).mean(axis=0)), np.sqrt(((start - truth) ** 2).mean(axis=0))
    assert (rmse < 0.6 * rmse_start).all(), (rmse, rmse_start)
    z = error / np.stack([est.strain_std, est.omega_std, est.chi_std], axis=1)
    assert ((z.std(axis=0) > 0.6) & (z.std(axis=0) < 1.6)).all(), z.std(axis=0)
    assert (np.isfinite(est.score) & (est.score > 0)).all()


def test_refine_flags_bad_frames_and_starts(scale, library):
    truth = random_states(5, seed=8)
    frames = simulate(truth, kernel="gauss") * scale
    frames[1, 5, 5] = np.nan
    frames[2, 0, 0] = -3.0
    start = truth.copy()
    start[3] = np.nan
    est = refine(frames, start + FINE_STEP / 2)
    assert list(est.status) == [OK, NONFINITE, NEGATIVE, NOT_CONVERGED, OK]
    assert np.isnan(est.params()[1:4]).all()
    assert (np.abs(est.params()[[0, 4]] - truth[[0, 4]]) / FINE_STEP < 0.01).all()
    initial = Estimates.from_params(truth, np.array([OK, OK, OK, OK, EMPTY], dtype=object))
    assert refine(simulate(truth, kernel="gauss") * scale, initial).status[4] == EMPTY
    with pytest.raises(ValueError, match="initial"):
        refine(frames, truth[:3])
    with pytest.raises(ValueError, match="kernel"):
        refine(frames, truth, kernel="lorentz")


def test_refine_from_likelihood_fit_on_box_frames(library, scale):
    truth = random_states(20, seed=9)
    frames = poisson(simulate(truth) * scale, seed=10)
    coarse = correlation_fit(frames, library, method="likelihood")
    est = refine(frames, coarse)
    assert (est.status == OK).all(), est.counts()
    rmse = lambda e: np.sqrt(((e.params() - truth) ** 2).mean(axis=0))  # noqa: E731
    assert (rmse(est) < rmse(coarse)).all(), (rmse(est), rmse(coarse))


# --------------------------------------------------------------------------- refine, box kernel
NET_STD = np.array([1.3e-4, 5e-4, 1.4e-3])  # typical network errors: strain, omega (deg), chi (deg)


def test_box_model_matches_simulate_and_its_jacobian_matches_finite_differences():
    model = _BoxModel(Instrument(), True, 1e-4, None)
    params = np.array([[1e-3, 0.01, -0.02, 100.0], [-2e-3, -0.03, 0.05, 140.0]])
    theta = model.to_internal(params, np.array([2e-3, 5e-3]))
    fixed = model.fixed(params)
    mu, jac = model.evaluate(theta, fixed)
    expected = simulate(params, dtype=torch.float64).reshape(2, -1) * np.array([[2e-3], [5e-3]])
    np.testing.assert_allclose(mu.numpy() - 1e-4, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.to_params(theta, fixed), params, rtol=1e-12)
    for k in range(3):
        h = torch.zeros_like(theta)
        h[:, k] = 1e-4
        numeric = (model.evaluate(theta + h, fixed)[0] - model.evaluate(theta - h, fixed)[0]) / 2e-4
        np.testing.assert_allclose(jac[:, k].numpy(), numeric.numpy(), rtol=1e-4, atol=1e-6 * numeric.abs().max())


def box_start(truth, seed):
    """Starts one network std away from the truth in every parameter, with that std attached."""
    start = truth + NET_STD * np.random.default_rng(seed).choice([-1, 1], size=truth.shape)
    return Estimates.from_params(start, np.full(len(truth), OK, dtype=object), std=np.tile(NET_STD, (len(truth), 1)))


def test_box_refine_recovers_noiseless_box_truth_far_better_than_gauss(scale):
    truth = random_states(24, seed=11)
    frames = simulate(truth, dtype=torch.float64) * scale
    start = box_start(truth, seed=12)
    box, gauss = refine(frames, start, kernel="box"), refine(frames, start.params())
    assert (box.status == OK).all() and (gauss.status == OK).all()
    rmse = lambda e: np.sqrt(((e.params() - truth) ** 2).mean(axis=0))  # noqa: E731
    assert rmse(box)[0] < 0.3 * rmse(gauss)[0], (rmse(box), rmse(gauss))
    assert (rmse(box)[1:] < 0.8 * rmse(gauss)[1:]).all(), (rmse(box), rmse(gauss))
    assert (rmse(box) < 0.7 * NET_STD).all(), rmse(box)
    assert np.median(box.score) < 0.5 * np.median(gauss.score), (np.median(box.score), np.median(gauss.score))


def test_box_refine_improves_noisy_frames_with_calibrated_std(scale):
    truth = random_states(40, seed=13)
    frames = poisson(simulate(truth) * scale, seed=14)
    start = box_start(truth, seed=15)
    est = refine(frames, start, kernel="box")
    assert (est.status == OK).all(), est.counts()
    error = est.params() - truth
    rmse = np.sqrt((error ** 2).mean(axis=0))
    assert (rmse < 0.9 * NET_STD).all(), rmse
    z = error / np.stack([est.strain_std, est.omega_std, est.chi_std], axis=1)
    assert ((z.std(axis=0) > 0.5) & (z.std(axis=0) < 2.0)).all(), z.std(axis=0)
    assert np.isnan(est.thickness_std).all() and np.isnan(est.thickness).all()


# --------------------------------------------------------------------------- nanopilot fit
def test_fit_command_prints_the_table(library, capsys):
    assert main(["fit", "--library", str(library.path), "--n", "20", "--method", "likelihood"]) == 0
    out = capsys.readouterr().out
    assert "strain RMSE" in out and "ms/pattern" in out and "likelihood" in out
    row = next(line for line in out.splitlines() if line.startswith("likelihood")).split()
    assert float(row[1]) < 1.25e-3 and float(row[2]) < 0.0125 and int(row[-1]) == 0


def test_fit_command_fits_and_saves_recorded_frames(library, tmp_path, capsys):
    frames = library.images[()][[5, 200, 400]].copy()
    frames[1] = np.nan
    np.save(tmp_path / "frames.npy", frames)
    out = tmp_path / "est.csv"
    assert main(["fit", "--library", str(library.path), "--frames", str(tmp_path / "frames.npy"),
                 "--method", "likelihood", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("strain,omega,chi,thickness") and len(lines) == 4
    assert lines[2].endswith(NONFINITE) and "flagged frames by status: nonfinite: 1" in capsys.readouterr().out
    assert float(lines[3].split(",")[0]) == library.params[400, 0]
    assert main(["fit", "--library", str(library.path), "--frames", str(tmp_path / "frames.npy")]) == 0
    saved = np.load(tmp_path / "frames_fit.npz")
    assert list(saved["status"]) == [OK, NONFINITE, OK]
    assert main(["fit", "--library", str(library.path), "--out", str(tmp_path / "x.txt")]) == 1


def test_box_strain_prior_pulls_towards_the_start_and_narrows_the_std(scale):
    truth = random_states(16, seed=21)
    frames = poisson(simulate(truth) * scale, seed=22)
    start = box_start(truth, seed=23)
    free, tight = refine(frames, start, kernel="box"), refine(frames, start, kernel="box", strain_prior=True)
    assert (free.status == OK).all() and (tight.status == OK).all()
    assert (np.abs(tight.strain - start.strain) <= np.abs(free.strain - start.strain) + 1e-9).all()
    assert (tight.strain_std < free.strain_std).all()
    np.testing.assert_allclose(1 / tight.strain_std ** 2, 1 / free.strain_std ** 2 + 1 / NET_STD[0] ** 2, rtol=0.2)


@pytest.mark.slow  # run by .ci/run's second pass
def test_box_omega_average_lowers_the_strain_error_and_widens_its_std(scale):
    # strain and omega both move the Bragg peak: averaging strain over the omega posterior, rather than fitting it
    # at the most probable omega, takes out part of the error omega's uncertainty carries into it. Starts as the
    # predictor gives them: network-like errors, priors 1.5 / 2 / 2 times the network's std.
    n = 256
    truth = random_states(n, seed=61)
    frames = poisson(simulate(truth) * scale, seed=62)
    noisy = truth + NET_STD * np.random.default_rng(63).standard_normal(truth.shape)
    start = Estimates.from_params(noisy, np.full(n, OK, dtype=object), std=np.tile(NET_STD * [1.5, 2, 2], (n, 1)))
    at_best = refine(frames, start, kernel="box", strain_prior=True)
    averaged = refine(frames, start, kernel="box", strain_prior=True, omega_average=True)
    assert (at_best.status == OK).all() and (averaged.status == OK).all()
    squared = lambda e: ((e.strain - truth[:, 0]) ** 2).mean()  # noqa: E731
    assert squared(averaged) < 0.97 * squared(at_best), (squared(averaged), squared(at_best))
    assert averaged.strain_std.mean() > at_best.strain_std.mean()  # the nodes' spread adds to the std
    np.testing.assert_array_equal(averaged.omega, at_best.omega)  # the tilts are the same posterior means
    np.testing.assert_array_equal(averaged.chi, at_best.chi)
