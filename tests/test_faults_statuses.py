"""Statuses that keep values (issue 16, item 5) and the per-frame background (item 2).

An estimate at the edge of the trained range keeps its value and std and says so (status ``edge``, a warning);
only frames that cannot be estimated lose their values. The flat background of each frame is estimated (counts per
pixel) and the residual check does not flag frames merely for having background.
"""

import json

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine

from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.estimates import EDGE, FAILURES, OK, RESIDUAL, Estimates, check_frames
from nanopilot.model import Predictor, fit_background, residual_statistic
from nanopilot.physics import poisson, simulate
from nanopilot.sim_devices import make_beamline

EDGE_PARAMS = [0.0075, 0.0, 0.0]  # strain beyond the trained range: the estimate sits at its edge


@pytest.fixture(scope="module")
def predictor():
    return Predictor.load()


def uniform_params(predictor, n, seed):
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(lo, hi, n) for lo, hi in predictor.ranges])


def test_uniformly_drawn_in_range_frames_have_no_nan_holes(predictor):
    params = uniform_params(predictor, 400, seed=16)
    frames = poisson(simulate(params, counts=7), seed=17)
    est = predictor.predict(frames)
    assert (est.status == EDGE).sum() >= 2  # the frames near a range end, NaN holes before
    failed = np.isin(est.status.astype(str), FAILURES)
    assert not failed.any()
    values = np.column_stack([est.params(), est.strain_std, est.omega_std, est.chi_std])
    assert np.isfinite(values).all()
    assert est.usable.all()


def test_edge_frame_keeps_its_value_and_std(predictor):
    frames = poisson(simulate(np.array([EDGE_PARAMS, [0.0, 0.0, 0.0]]), counts=7), seed=4)
    est = predictor.predict(frames)
    assert list(est.status) == [EDGE, OK]
    assert est.strain[0] > 0.004 and np.isfinite(est.params()[0]).all()
    assert np.isfinite([est.strain_std[0], est.omega_std[0], est.chi_std[0]]).all() and est.usable.all()


def test_from_params_keeps_warning_values_and_drops_failures():
    params, std = np.ones((3, 3)), np.full((3, 3), 0.1)
    est = Estimates.from_params(params, np.array([OK, EDGE, RESIDUAL], dtype=object), std=std)
    assert np.isfinite(est.params()[:2]).all() and np.isfinite(est.strain_std[:2]).all()
    assert np.isnan(est.params()[2]).all() and list(est.usable) == [True, True, False]


def test_edge_frame_that_fails_the_residual_check_is_residual(predictor):
    """Two domains at chi -/+0.08 deg and strain beyond the range: at the edge, and no single pattern explains it."""
    two = simulate(np.array([[0.0075, 0.0, -0.08], [0.0075, 0.0, 0.08]]), counts=7).sum(axis=0)
    frames = poisson(np.stack([two, simulate(np.array([[0.0, 0.0, 0.0]]), counts=7)[0]]), seed=3)
    assert predictor.predict(frames).status[0] == EDGE
    est = predictor.predict(frames, residual=True)
    assert est.status[0] == RESIDUAL and est.usable[1]
    assert np.isnan(est.params()[0]).all() and np.isnan(est.strain_std[0]) and np.isnan(est.background[0])


class ScriptedPredictor:
    """The default model's metadata with scripted estimates: the second frame of each call at the edge."""

    def __init__(self, predictor):
        self.instrument, self.outputs, self.metadata = predictor.instrument, ("strain", "omega", "chi"), {}

    def predict(self, frames, refine=False):
        _, status = check_frames(frames, self.instrument)
        status[1] = EDGE
        est = Estimates.from_params(np.full((len(frames), 3), 0.004), status, std=np.full((len(frames), 3), 1e-4))
        est.background[:], est.background_std[:] = 0.05, 0.004
        return est


def scripted_scan(predictor, cols: int):
    """A 2 x ``cols`` grid scan analysed by a :class:`ScriptedPredictor`: (analysis, its documents, raw uid)."""
    bl = make_beamline("published", seed=3, noise=False)
    analysis = NanobeamAnalysis(ScriptedPredictor(predictor), batch_size=100, threaded=False)
    docs = []
    analysis.subscribe(lambda name, doc: docs.append((name, doc)))
    RE = RunEngine({})
    RE.subscribe(analysis)
    (uid,) = RE(bp.grid_scan([bl.detector], bl.stage.y, -1, 1, 2, bl.stage.x, -1, 1, cols))
    return analysis, docs, uid


def test_edge_frame_is_counted_as_a_warning_in_maps_and_summary(predictor):
    analysis, docs, uid = scripted_scan(predictor, 3)
    run = analysis.maps[uid]
    points = run.scattered()
    assert points["status"][1] == EDGE and points["strain"][1] == 0.004 and points["strain_std"][1] == 1e-4
    assert run.status_counts() == {OK: 5, EDGE: 1}
    assert run.gridded("status").ravel().tolist() == [1.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    summary = [d for n, d in docs if n == "event"][-1]["data"]
    assert summary["frames_ok"] == 5 and summary["frames_warned"] == 1 and summary["frames_flagged"] == 0
    assert json.loads(summary["warned_by_reason"]) == {EDGE: 1}
    assert "1 with a warning (edge: 1)" in docs[-1][1]["reason"]


def test_background_is_a_documented_field_of_the_analysis_run(predictor):
    analysis, docs, uid = scripted_scan(predictor, 2)
    descriptor = next(d for n, d in docs if n == "descriptor")
    assert descriptor["data_keys"]["background"]["units"] == "counts/pixel"
    assert descriptor["data_keys"]["background_std"]["units"] == "counts/pixel"
    page = next(d for n, d in docs if n == "event_page")
    assert page["data"]["background"] == [0.05] * 4 and page["data"]["background_std"] == [0.004] * 4
    assert analysis.maps[uid].scattered()["background"].tolist() == [0.05] * 4


@pytest.mark.parametrize("level", [0.05, 0.2])
def test_background_estimate_is_unbiased_with_calibrated_std(predictor, level):
    params = uniform_params(predictor, 200, seed=int(level * 100))
    frames = poisson(simulate(params, counts=7) + level, seed=5)
    background, std, _ = fit_background(frames, params, predictor.instrument, predictor.kernel)
    assert abs(background.mean() - level) < 3 * std.mean() / np.sqrt(len(params))
    assert 0.75 < background.std() / std.mean() < 1.25  # the Fisher std matches the scatter


def test_clean_frames_have_no_background(predictor):
    params = uniform_params(predictor, 200, seed=6)
    frames = poisson(simulate(params, counts=7), seed=7)
    background, std, _ = fit_background(frames, params, predictor.instrument, predictor.kernel)
    assert background.mean() < 0.003 and (background >= 0).all() and np.isfinite(std).all()


def test_predict_reports_the_background_with_the_residual_check(predictor):
    params = uniform_params(predictor, 100, seed=8)
    frames = poisson(simulate(params, counts=7) + 0.05, seed=9)
    assert np.isnan(predictor.predict(frames).background).all()  # not estimated unless asked
    est = predictor.predict(frames, residual=True)
    kept = est.usable
    assert kept.mean() > 0.9 and np.isfinite(est.background[kept]).all()
    assert abs(np.median(est.background[kept]) - 0.05) < 0.01 and np.isfinite(est.background_std[kept]).all()


def test_residual_check_does_not_flag_frames_for_their_background(predictor):
    params = uniform_params(predictor, 300, seed=10)
    clean = simulate(params, counts=7)
    threshold = predictor.residual_threshold
    flagged = {}
    for level in (0.0, 0.05, 0.2):
        frames = poisson(clean + level, seed=11)
        statistic = residual_statistic(frames, params, predictor.instrument, predictor.kernel)
        flagged[level] = (statistic > threshold).mean()
    assert flagged[0.05] <= flagged[0.0] + 0.01 and flagged[0.2] <= flagged[0.0] + 0.01


def test_refinement_refines_an_edge_estimate_and_keeps_the_warning():
    from nanopilot.fitting import refine

    truth = np.array([[0.0049, 0.01, 0.02], [0.0, 0.0, 0.0]])
    frames = poisson(simulate(truth, kernel="gauss", counts=7), seed=12)
    start = Estimates.from_params(truth + [1e-4, 2e-3, 5e-3], np.array([EDGE, OK], dtype=object))
    result = refine(frames, start)
    assert list(result.status) == [EDGE, OK] and np.isfinite(result.params()).all()
    assert np.isfinite(result.strain_std[0]) and abs(result.strain[0] - truth[0, 0]) < 4 * result.strain_std[0]


def test_live_analysis_with_the_residual_check_reports_background(predictor):
    bl = make_beamline("published", seed=3, noise=True)
    analysis = NanobeamAnalysis(predictor, batch_size=100, threaded=False, residual=True)
    docs = []
    analysis.subscribe(lambda name, doc: docs.append((name, doc)))
    RE = RunEngine({})
    RE.subscribe(analysis)
    (uid,) = RE(bp.grid_scan([bl.detector], bl.stage.y, -1, 1, 3, bl.stage.x, -1, 1, 3))
    points = analysis.maps[uid].scattered()
    kept = np.isin(points["status"].astype(str), (OK, EDGE))
    assert kept.any() and np.isfinite(points["background"][kept]).all()
    assert np.isfinite(points["background_std"][kept]).all() and (points["background"][kept] < 0.02).all()
    page = next(d for n, d in docs if n == "event_page")
    assert np.isfinite(page["data"]["background"]).any()
