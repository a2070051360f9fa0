"""Ground-truth scenes and the living sample."""

import numpy as np
import pytest

from nanopilot.sim_devices import SCENES, SimSample, make_scene

RANGES = {"strain": 0.005, "omega": 0.05, "chi": 0.1}
X, Y = np.meshgrid(np.linspace(-2, 2, 41), np.linspace(-2, 2, 41))


def in_training_ranges(truth):
    return (all(np.abs(truth[k]).max() <= v for k, v in RANGES.items())
            and 60 <= truth.thickness.min() and truth.thickness.max() <= 300)


@pytest.mark.parametrize("scene", sorted(SCENES))
def test_scenes_are_seeded_vectorised_and_in_range(scene):
    a, b, c = SimSample(scene, seed=3), SimSample(scene, seed=3), SimSample(scene, seed=4)
    truth = a.truth(X, Y)
    assert truth.shape == X.shape and truth.dtype.names == ("strain", "omega", "chi", "thickness")
    np.testing.assert_array_equal(truth, b.truth(X, Y))
    assert not np.array_equal(truth, c.truth(X, Y)) or scene == "cooling"  # cooling is uniform until cooled
    assert in_training_ranges(truth)
    np.testing.assert_array_equal(a.parameters(X, Y), truth.reshape(-1).view((float, 4)))
    assert a.labels(X, Y).shape == X.shape and a.labels(X, Y).dtype == np.int64
    scalar = a.truth(0.3, -0.2)
    assert scalar.shape == () and float(scalar.strain) == pytest.approx(a.truth([0.3], [-0.2]).strain[0])


def test_domains_have_integer_labels_with_uniform_states_inside():
    sample = SimSample("domains", seed=1, n_defects=0, wall_strain=0.0)
    labels = sample.labels(X, Y)
    assert set(np.unique(labels)) == set(range(5))
    params = sample.parameters(X, Y)
    for label in range(5):
        inside = params[labels.ravel() == label]
        assert np.ptp(inside, axis=0).max() == 0  # no defects, no walls: one state per domain


def test_published_scene_has_a_strain_wave_and_tilt_steps():
    scene = make_scene("published", seed=0)
    sample = SimSample(scene)
    x = np.linspace(-2, 2, 401)
    truth = sample.truth(x, np.zeros_like(x))
    assert np.abs(truth.strain).max() == pytest.approx(scene.strain_amplitude, rel=1e-3)
    assert truth.omega[0] == pytest.approx(-scene.omega_step, rel=1e-3)
    assert truth.omega[-1] == pytest.approx(scene.omega_step, rel=1e-3)
    assert np.all(np.diff(truth.omega) > 0)


def test_cooling_texture_forms_below_the_transition_and_has_hysteresis():
    sample = SimSample("cooling", seed=2)
    scene = sample.scene
    assert (sample.labels(X, Y) == 0).all()
    sample.temperature = scene.transition_temperature + 1
    assert (sample.labels(X, Y) == 0).all()
    coverages = []
    for undercooling in (2, 8, 14, 25):
        sample.temperature = scene.transition_temperature - undercooling
        coverages.append((sample.labels(X, Y) > 0).mean())
    assert coverages == sorted(coverages) and coverages[0] > 0 and coverages[-1] == 1
    assert set(np.unique(sample.labels(X, Y))) == {1, 2}
    strains = np.unique(np.round(sample.truth(X, Y).strain, 6))
    assert strains.min() < scene.uniform_strain - 0.002 and strains.max() > scene.uniform_strain + 0.002
    sample.temperature = scene.transition_temperature + scene.hysteresis / 2  # warming, inside the loop: stays
    assert (sample.labels(X, Y) > 0).all()
    sample.temperature = scene.transition_temperature + scene.hysteresis  # above the warming transition: gone
    assert (sample.labels(X, Y) == 0).all()


def test_growth_relaxes_above_the_critical_thickness_and_is_randomised_by_seed():
    sample = SimSample("growth", seed=5)
    scene = sample.scene
    assert 120 <= scene.critical_thickness <= 200 and 0.5 <= scene.growth_rate <= 2
    assert make_scene("growth", seed=6).critical_thickness != scene.critical_thickness
    assert make_scene("growth", seed=6, critical_thickness=150.0).critical_thickness == 150.0
    coherent = sample.truth(X, Y)
    assert (sample.labels(X, Y) == 0).all()
    np.testing.assert_allclose(coherent.strain, scene.coherent_strain)
    assert np.abs(coherent.omega).max() == 0
    sample.deposited = 240.0 - scene.initial_thickness
    relaxed = sample.truth(X, Y)
    assert (sample.labels(X, Y) == 1).mean() > 0.9
    expected = scene.coherent_strain * scene.critical_thickness / 240.0  # strain relaxes as h_c / t
    assert np.mean(relaxed.strain) == pytest.approx(expected, rel=0.1)
    assert relaxed.omega.std() > 0.002 and relaxed.thickness.mean() == pytest.approx(240, rel=0.02)
    assert in_training_ranges(relaxed)
    with pytest.raises(ValueError, match="only grow"):
        sample.deposited = 10.0


def test_bad_scene_input_is_refused():
    with pytest.raises(ValueError, match="unknown scene 'waves'.*choose one of"):
        SimSample("waves")
    with pytest.raises(ValueError, match="no parameter.*period"):
        SimSample("cooling", period=3)
    with pytest.raises(ValueError, match="temperature"):
        SimSample("cooling", temperature=-4)
    with pytest.raises(ValueError, match="finite"):
        SimSample().truth(np.nan, 0)
