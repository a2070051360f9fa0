"""Texture classification: features, stable labels, stripes, texture_change, bad input."""

import numpy as np
import pytest

from nanopilot.callbacks import LiveMaps
from nanopilot.estimates import Estimates
from nanopilot.texture import (NOT_ENOUGH_DATA, UNLABELLED, TextureClassifier, detect_stripes, frame_descriptor,
                               neighbourhood, texture_change, texture_features)

NOISE = np.array([2.5e-4, 0.0025, 0.005])


def blobs(rng, centres, n=150, sigma=0.3):
    return np.vstack([rng.normal(c, sigma, (n, len(c))) for c in centres])


def make_map(maps, uid, params_fn, rng, n=24, status=None):
    """An n x n map over [-1, 1]^2 um whose estimates are params_fn(x, y) (N, 3) plus noise."""
    axis = np.linspace(-1, 1, n)
    y, x = (a.ravel() for a in np.meshgrid(axis, axis, indexing="ij"))
    params = params_fn(x, y) + rng.normal(size=(n * n, 3)) * NOISE
    status = np.full(n * n, "ok", dtype=object) if status is None else status
    maps.begin_run(uid, ["stage_y", "stage_x"], (n, n), [(-1, 1), (-1, 1)])
    maps.add(uid, np.arange(1, n * n + 1), np.column_stack([y, x]),
             Estimates.from_params(params, status, std=np.broadcast_to(NOISE, params.shape)))
    return maps[uid]


def uniform(x, y):
    return np.column_stack([np.full_like(x, 0.001), np.zeros_like(x), np.zeros_like(x)])


def patch(x, y):  # a new state in a disc of radius 0.4 um
    out = uniform(x, y)
    out[np.hypot(x - 0.3, y + 0.2) < 0.4, 0] = 0.004
    return out


def test_frame_descriptor_is_count_level_independent_and_flags_empty_frames():
    rng = np.random.default_rng(0)
    frames = rng.uniform(0, 5, (3, 64, 64))
    frames[2] = 0
    d = frame_descriptor(frames)
    assert d.shape == (3, 17)
    np.testing.assert_allclose(d[0, :16], frame_descriptor(10 * frames[:1])[0, :16])
    np.testing.assert_allclose(d[:2, :8].sum(axis=1), 1.0)
    assert np.isnan(d[2]).all()
    with pytest.raises(ValueError, match="multiples"):
        frame_descriptor(np.ones((1, 60, 64)))


def test_neighbourhood_statistics_on_a_plane():
    y, x = (a.ravel() for a in np.meshgrid(np.arange(10.0), np.arange(10.0), indexing="ij"))
    values = np.column_stack([2 * x + 3 * y, np.ones_like(x)])
    mean, spread, gradient = neighbourhood(np.column_stack([x, y]), values)
    inner = (x > 0) & (x < 9) & (y > 0) & (y < 9)
    np.testing.assert_allclose(mean[inner, 0], values[inner, 0])
    np.testing.assert_allclose(gradient[:, 0], np.hypot(2, 3), rtol=1e-6)
    np.testing.assert_allclose(spread[:, 1], 0, atol=1e-12)


def domains(x, y):  # two domains meeting at x = 0.1 um, with a tilted wall one scan point wide between them
    out = uniform(x, y)
    out[x >= 0.1, 0] = 0.005
    out[x >= 0.1, 2] = 0.05
    out[np.abs(x - 0.1) < 0.04, 1] += 0.03  # a tilted wall
    return out


def test_edge_preserving_statistics_describe_the_side_a_point_is_on():
    y, x = (a.ravel() for a in np.meshgrid(np.arange(12.0), np.arange(12.0), indexing="ij"))
    positions = np.column_stack([x, y])
    values = np.column_stack([np.where(x < 6, 0.0, 10.0), np.ones_like(x)])
    mean, spread, gradient = neighbourhood(positions, values)
    edge = (x == 5) | (x == 6)
    assert (spread[edge, 0] > 1).all() and (gradient[edge, 0] > 1).all()  # the centred window straddles the step
    mean, spread, gradient = neighbourhood(positions, values, edge_preserving=True, scale=[1.0, 1.0])
    np.testing.assert_allclose(mean[:, 0], values[:, 0])  # each point takes a window on its own side
    np.testing.assert_allclose(spread, 0, atol=1e-12)
    np.testing.assert_allclose(gradient, 0, atol=1e-9)
    # a pattern finer than the window (stripes of period 2) keeps its spread in every window
    stripes = np.column_stack([(x % 2) * 10.0])
    _, spread, _ = neighbourhood(positions, stripes, edge_preserving=True, scale=[1.0])
    assert (spread[:, 0] > 4).all()


def test_walls_and_other_lines_are_not_textures():
    rng = np.random.default_rng(7)
    maps = LiveMaps()
    run = make_map(maps, "walls", domains, rng, n=32)
    features = texture_features(run)
    assert features.neighbours.shape == (32 * 32, 9)
    assert (features.neighbours[:, 0] == np.arange(32 * 32)).all()
    x = run.scattered()["stage_x"]
    truth = (x >= 0.1).astype(int)
    model = TextureClassifier(feature_weights=features.weights, feature_scale=features.scale)
    model.fit(features.X)  # without the map: the wall points are a distinct, well separated cluster
    assert model.n_clusters_ == 3
    model = TextureClassifier(feature_weights=features.weights, feature_scale=features.scale)
    model.fit(features.X, neighbours=features.neighbours)  # with it: the wall has no interior, two textures
    assert model.n_clusters_ == 2 and model.interiors_[3] == 0 and model.interiors_[2] >= 9
    labels = model.labels_
    assert all(len(set(labels[truth == side])) == 1 for side in (0, 1)) and labels[0] != labels[-1]
    with pytest.raises(ValueError, match="neighbours"):
        model.fit(features.X, neighbours=features.neighbours[:-1])
    with pytest.raises(ValueError, match="outside"):
        model.fit(features.X, neighbours=features.neighbours + 1)


def test_features_are_standardised_in_noise_units_and_weighted():
    rng = np.random.default_rng(1)
    maps = LiveMaps()
    run = make_map(maps, "u", uniform, rng)
    features = texture_features(run)
    assert features.names[:3] == ["estimate:strain", "estimate:omega", "estimate:chi"]
    assert not any("thickness" in n for n in features.names)  # the estimator gives no thickness
    np.testing.assert_allclose(features.scale[:3], NOISE, rtol=0.15)  # noise measured on the map
    model = TextureClassifier(feature_weights=features.weights, feature_scale=features.scale).fit(features.X)
    Z = model.standardise(features.X)
    assert abs(Z[:, 0].mean()) < 1e-9
    np.testing.assert_allclose(Z[:, :3].std(axis=0), features.weights[:3], rtol=0.15)  # noise -> unit * weight
    assert model.n_clusters_ == 1  # pure noise is one texture
    with pytest.raises(ValueError, match="unknown feature groups"):
        texture_features(run, group_weights={"colour": 1.0})


def test_number_of_textures_is_chosen_and_labels_stay_stable_across_refits():
    rng = np.random.default_rng(2)
    A = blobs(rng, [(0, 0, 0), (4, 0, 0), (0, 4, 0)])
    model = TextureClassifier(random_state=0).fit(A)
    assert model.n_clusters_ == 3 and model.status_ == "ok"
    first = model.predict(A)
    # refit on a new noisy draw of the same textures, rows shuffled: same labels for the same textures
    B = blobs(rng, [(0, 4, 0), (0, 0, 0), (4, 0, 0)])
    model.fit(B)
    np.testing.assert_array_equal(model.predict(A), first)
    # a genuinely new texture gets a new label; the others keep theirs
    C = np.vstack([B, rng.normal((0, 0, 5), 0.3, (150, 3))])
    model.fit(C)
    np.testing.assert_array_equal(model.predict(A), first)
    assert set(model.labels_[-150:]) == {3}
    # streaming updates keep the labels
    model.partial_fit(C[::7])
    np.testing.assert_array_equal(model.predict(A), first)
    assert model.cluster_centers_.shape == (4, 3)


def test_a_fixed_number_of_textures_and_bad_arguments():
    rng = np.random.default_rng(3)
    X = blobs(rng, [(0, 0), (3, 0), (0, 3), (3, 3)], n=50)
    assert TextureClassifier(2).fit(X).n_clusters_ == 2
    with pytest.raises(ValueError, match="n_clusters"):
        TextureClassifier((3, 2)).fit(X)
    with pytest.raises(ValueError, match="2-D"):
        TextureClassifier().fit(X[:, 0])
    with pytest.raises(ValueError, match="fitted with 2"):
        TextureClassifier().fit(X).predict(np.zeros((3, 5)))


def test_bad_input_gives_not_enough_data_never_a_label():
    rng = np.random.default_rng(4)
    model = TextureClassifier()
    model.fit(rng.normal(size=(5, 3)))  # too few points
    assert model.status_ == NOT_ENOUGH_DATA and (model.predict(rng.normal(size=(4, 3))) == UNLABELLED).all()
    nan = np.full((100, 3), np.nan)
    assert model.fit(nan).status_ == NOT_ENOUGH_DATA and (model.labels_ == UNLABELLED).all()
    X = rng.normal(size=(100, 3))
    X[::2, 1] = np.nan  # NaN features: those rows only are unlabelled
    model.fit(X)
    assert model.status_ == "ok" and (model.labels_[::2] == UNLABELLED).all() and (model.labels_[1::2] >= 0).all()
    # all frames flagged: no features, no labels, a clear status from texture_change
    maps = LiveMaps()
    flagged = make_map(maps, "f", uniform, rng, n=8, status=np.full(64, "nonfinite", dtype=object))
    good = make_map(maps, "g", uniform, rng, n=8)
    change = texture_change(good, flagged)
    assert change.status == NOT_ENOUGH_DATA and not change.changed and "not enough data" in change.reason
    assert texture_change(flagged, good).status == NOT_ENOUGH_DATA


def test_stripe_detection_recovers_period_orientation_and_coverage():
    rng = np.random.default_rng(5)
    step = 0.05
    y, x = np.meshgrid(np.arange(60) * step, np.arange(60) * step, indexing="ij")
    for period, angle in ((0.3, 30.0), (0.5, 125.0)):
        a = np.deg2rad(angle)
        wave = np.sin(2 * np.pi * (x * np.cos(a) + y * np.sin(a)) / period)
        grid = np.where(x < 1.5, wave, 0.0) + rng.normal(0, 0.2, x.shape)
        grid[::7, ::5] = np.nan  # unmeasured points are tolerated
        stripes = detect_stripes(grid, (step, step))
        assert stripes.found
        assert stripes.period == pytest.approx(period, rel=0.05)
        assert min(abs(stripes.orientation - angle), 180 - abs(stripes.orientation - angle)) < 3
        assert stripes.coverage == pytest.approx(0.5, abs=0.08)
    assert not detect_stripes(rng.normal(size=(40, 40)), (step, step)).found


def test_texture_change_detects_a_new_texture_and_stays_quiet_otherwise():
    rng = np.random.default_rng(6)
    maps = LiveMaps()
    reference = make_map(maps, "ref", uniform, rng)
    alarms = [texture_change(reference, make_map(maps, f"same{i}", uniform, rng)).changed for i in range(10)]
    assert not any(alarms)
    change = texture_change(reference, make_map(maps, "new", patch, rng))
    assert change.changed and change.score >= 1 and change.status == "ok"
    x, y = maps["new"].scattered()["stage_x"], maps["new"].scattered()["stage_y"]
    inside = np.hypot(x - 0.3, y + 0.2) < 0.35
    assert change.novel[inside].mean() > 0.9 and change.novel[np.hypot(x - 0.3, y + 0.2) > 0.6].mean() < 0.01
    assert change.new_coverage == pytest.approx(np.pi * 0.4 ** 2 / 4, rel=0.3)
    # a known texture that moved as a whole is a change too
    shifted = texture_change(reference, make_map(maps, "shift", lambda x, y: uniform(x, y) + [0.0008, 0, 0], rng))
    assert shifted.changed and shifted.max_shift >= 1
