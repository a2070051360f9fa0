"""The structure families of the simulator and their feature masks."""

import numpy as np
import pytest

from nanopilot.sim_devices import (REPORTING_SEEDS, STRUCTURES, TUNING_SEEDS, SimSample, feature_mask, label_walls,
                                   make_beamline, make_scene)

G = np.linspace(-2, 2, 81)
X, Y = np.meshgrid(G, G)
STEP = G[1] - G[0]


@pytest.mark.parametrize("family", sorted(STRUCTURES))
def test_each_family_renders_through_the_beamline(family):
    bl = make_beamline(family, seed=REPORTING_SEEDS[0])
    bl.stage.x.set(0.3)
    bl.stage.y.set(-0.7)
    bl.detector.trigger()
    image = bl.detector.image.get()
    assert image.shape == (64, 64) and image.sum() > 0


@pytest.mark.parametrize("family", sorted(STRUCTURES))
def test_each_family_is_deterministic_per_seed_and_its_mask_marks_its_features(family):
    a, b, c = SimSample(family, seed=7), SimSample(family, seed=7), SimSample(family, seed=8)
    np.testing.assert_array_equal(a.truth(X, Y), b.truth(X, Y))
    np.testing.assert_array_equal(a.labels(X, Y), b.labels(X, Y))
    assert not np.array_equal(a.truth(X, Y), c.truth(X, Y))
    labels, near = a.labels(X, Y), feature_mask(a, X, Y, 0.15)
    assert near.shape == X.shape and near.dtype == bool
    walls = label_walls(labels)
    assert walls.any() and near[walls].all()  # every wall (both sides) is near a feature
    for px, py in a.scene.point_features():
        assert near[np.argmin(np.abs(G - py)), np.argmin(np.abs(G - px))]
    assert not feature_mask(a, X, Y, 0.0)[~walls].any() or len(a.scene.point_features())
    if family != "stripes":  # stripes are features everywhere
        assert near.mean() < 0.8
    # raster points further than distance + a step from every wall are not marked (no point features: exact)
    if not len(a.scene.point_features()):
        from scipy import ndimage
        far = ndimage.distance_transform_edt(~walls) * STEP > 0.15 + STEP
        assert not near[far].any()


def test_seeds_for_tuning_and_reporting_are_apart():
    assert len(REPORTING_SEEDS) >= 5 and not set(TUNING_SEEDS) & set(REPORTING_SEEDS)


def test_inclusions_have_sharp_rims_and_their_own_state_inside():
    scene = make_scene("inclusions", seed=3, n_inclusions=1, background_strain=0.0, background_omega=0.0,
                       background_chi=0.0, rim_strain=0.0)
    sample = SimSample(scene)
    (cx, cy), a = scene.centres_[0], scene.axes_[0, 0]
    inside = sample.truth(cx, cy)
    np.testing.assert_allclose([inside.strain, inside.omega, inside.chi], scene.states_[0], rtol=1e-6)
    assert int(sample.labels(cx, cy)) == 1
    # across the rim along the major axis, the state changes within a few rim widths
    angle = scene.angles_[0]
    t = np.array([a - 3 * scene.rim_width, a + 3 * scene.rim_width])
    x, y = cx + t * np.cos(angle), cy + t * np.sin(angle)
    omega = sample.truth(x, y).omega
    assert abs(omega[0] - scene.states_[0, 1]) < 0.06 * abs(scene.states_[0, 1]) and abs(omega[1]) < 0.06 * abs(
        scene.states_[0, 1])
    assert list(sample.labels(x, y)) == [1, 0]


def test_a_crack_is_a_line_where_both_tilts_jump():
    scene = make_scene("crack", seed=5, n_cracks=1, curvature=0.0)
    sample = SimSample(scene)
    (px, py), d = scene.points_[0], scene.directions_[0]
    normal = np.array([-np.sin(d), np.cos(d)])
    x, y = px + np.array([-1e-3, 1e-3]) * normal[0], py + np.array([-1e-3, 1e-3]) * normal[1]
    truth = sample.truth(x, y)
    np.testing.assert_allclose([truth.omega[1] - truth.omega[0], truth.chi[1] - truth.chi[0]], scene.jumps_[0],
                               atol=1e-4)
    assert truth.strain.max() < scene.background(x, y)[:, 0].max() + 0.5 * scene.relax_strain  # relaxed on it
    assert sample.labels(x, y)[0] != sample.labels(x, y)[1]


def test_stripe_period_changes_across_the_field():
    scene = make_scene("stripes", seed=2, bend=0.0)
    sample = SimSample(scene)
    s = np.linspace(-2.8, 2.8, 4001)
    x, y = s * np.cos(scene.normal_), s * np.sin(scene.normal_)
    walls = np.flatnonzero(np.diff(sample.labels(x, y)))
    spacing = np.diff(s[walls])
    assert spacing[0] == pytest.approx(scene.min_period / 2, rel=0.15)
    assert spacing[-1] == pytest.approx(scene.max_period / 2, rel=0.15)


def test_gradient_defects_are_point_features_with_their_cores_labelled():
    sample = SimSample("gradient", seed=4)
    defects = sample.scene.point_features()
    assert defects.shape == (4, 2)
    assert list(sample.labels(defects[:, 0], defects[:, 1])) == [1, 2, 3, 4]
    assert np.mean(sample.labels(X, Y) == 0) > 0.95


def test_mixture_holds_every_family_and_labels_every_combination_apart():
    sample = SimSample("mixture", seed=1)
    labels = sample.labels(X, Y)
    assert labels.max() < sample.scene.n_labels and len(np.unique(labels)) >= 6
    assert len(sample.scene.point_features()) == 3


def test_bad_structure_parameters_are_named():
    with pytest.raises(ValueError, match="min_radius"):
        make_scene("inclusions", seed=1, min_radius=0.0)
    with pytest.raises(ValueError, match="no parameter"):
        make_scene("walls", seed=1, radius=1.0)
    with pytest.raises(ValueError, match="regular raster"):
        feature_mask(SimSample("crack", seed=1), X[:, ::-1], Y, 0.1)
