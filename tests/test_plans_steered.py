"""steered_map on the simulated beamline: the coarse raster, refinement near walls, decisions, validation."""

import json

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.simulators import summarize_plan

from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.plans import steered_map
from nanopilot.agents.steering import (
    Lattice,
    choose_points,
    coarse_points,
    collect_points,
    coarse_step_for,
    edge_interest,
    midpoint,
    reconstruct,
)
from nanopilot.sim_devices import make_beamline
from test_callbacks import CentroidPredictor


def run_steered(bl, **kw):
    analysis = NanobeamAnalysis(CentroidPredictor(), batch_size=32, max_latency=0.02)
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(analysis)
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    res = RE(steered_map([bl.detector], bl.stage.x, bl.stage.y, (-2, 2), (-2, 2), maps=analysis.maps, **kw))
    return res, analysis, docs


def test_refinement_goes_to_the_domain_walls():
    bl = make_beamline("domains", seed=1, noise=False)
    res, analysis, docs = run_steered(bl, fine=33, coarse_step=8, budget=0.3)
    result = res.plan_result
    assert 25 <= result["points"] <= round(0.3 * 33 ** 2) and result["rounds"] >= 2
    lattice = result["lattice"]
    measured = collect_points(analysis.maps[res.run_start_uids[0]], lattice, "stage_x", "stage_y")
    assert len(measured) == result["points"]
    # refined points (off the coarse raster) sit near walls: a neighbour one fine step away has another label
    step = lattice.step[0]

    def near_wall(ij):
        x, y = lattice.position(ij)
        here = bl.sample.labels(np.array([x]), np.array([y]))[0]
        around = bl.sample.labels(np.array([x - 2 * step, x + 2 * step, x, x]),
                                  np.array([y, y, y - 2 * step, y + 2 * step]))
        return (around != here).any()

    refined = [ij for ij in measured if ij[0] % 8 or ij[1] % 8]
    everywhere = [(i, j) for i in range(33) for j in range(33)]
    share_refined = np.mean([near_wall(ij) for ij in refined])
    share_all = np.mean([near_wall(ij) for ij in everywhere])
    assert share_refined > 1.5 * share_all
    # decisions are in the run's decisions stream
    names = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    decisions = [d["data"] for n, d in docs if n == "event" and names[d["descriptor"]] == "decisions"]
    assert len(decisions) == result["rounds"] + 1
    assert decisions[-1]["decision_action"] == "stop"
    assert all(d["decision_action"] == "refine" for d in decisions[:-1])
    assert json.loads(decisions[0]["decision_evidence"])["new_points"] > 0


def test_a_uniform_sample_is_left_alone():
    bl = make_beamline("domains", seed=1, noise=False, scene_parameters={"n_domains": 1, "n_defects": 0})
    res, _, _ = run_steered(bl, fine=17, coarse_step=4, budget=0.5)
    assert res.plan_result["reason"] == "nothing interesting left" and res.plan_result["rounds"] == 0


def test_the_approval_hook_can_veto():
    bl = make_beamline("domains", seed=1, noise=False)
    seen = []
    res, _, _ = run_steered(bl, fine=17, coarse_step=4, approve=lambda d: seen.append(d) or False)
    assert res.plan_result["reason"] == "refinement vetoed" and len(seen) == 1 and res.plan_result["rounds"] == 0


def test_dry_run_shows_the_coarse_raster(capsys):
    bl = make_beamline("domains", seed=1)
    analysis = NanobeamAnalysis(CentroidPredictor())
    summarize_plan(steered_map([bl.detector], bl.stage.x, bl.stage.y, (-1, 1), (-1, 1), fine=9, coarse_step=4,
                               maps=analysis.maps))
    out = capsys.readouterr().out
    assert out.count("Read ['det', 'stage_x', 'stage_y']") == 9 and "Close Run" in out


@pytest.mark.parametrize("kwargs, message", [
    ({"x_range": (-500, 0)}, "limits"),
    ({"fine": 30}, "whole number of coarse steps"),
    ({"budget": 10}, "smaller than the coarse raster"),
    ({"budget": -1}, "budget"),
    ({"x_range": (1, -1)}, "stop > start"),
])
def test_bad_arguments_fail_before_anything_moves(kwargs, message):
    bl = make_beamline("domains", seed=1)
    analysis = NanobeamAnalysis(CentroidPredictor())
    args = {"x_range": (-1, 1), "y_range": (-1, 1), "fine": 17, "coarse_step": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        next(steered_map([bl.detector], bl.stage.x, bl.stage.y, maps=analysis.maps, **args))
    assert bl.stage.x.position == 0


def test_no_analysis_is_a_clear_error():
    bl = make_beamline("domains", seed=1)
    with pytest.raises(ValueError, match="no live analysis"):
        RunEngine({})(steered_map([bl.detector], bl.stage.x, bl.stage.y, (-1, 1), (-1, 1)))  # no session


def test_edges_across_a_wall_are_bisected_first_and_down_to_lattice_neighbours():
    assert coarse_points(9, 4) == [(0, 0), (4, 0), (8, 0), (0, 4), (4, 4), (8, 4), (0, 8), (4, 8), (8, 8)]
    measured = {ij: {"strain": float(ij[0] >= 4), "status": "ok"} for ij in coarse_points(9, 4)}
    keys, edges, interest = edge_interest(measured, {"strain": 0.1})
    across = (keys[edges[:, 0], 0] < 4) != (keys[edges[:, 1], 0] < 4)
    assert across.any() and np.all(interest[across] == 10) and np.all(interest[~across] == 0)
    points, chosen, top = choose_points(measured, {"strain": 0.1}, threshold=3, most=100)
    assert top == 10 and len(points) == across.sum()  # one midpoint per crossing edge, none elsewhere
    assert all(min(e[0], e[2]) == 0 and max(e[0], e[2]) == 4 for e in chosen)
    assert all(i == 2 for i, _ in points)
    # long crossings first (priority: interest squared times length): the diagonals come before the straight ones
    lengths = [np.hypot(e[2] - e[0], e[3] - e[1]) for e in chosen]
    assert lengths == sorted(lengths, reverse=True)
    assert choose_points(measured, {"strain": 0.1}, threshold=3, most=2)[0] == points[:2]
    assert choose_points(measured, {"strain": 0.1}, threshold=10, most=100)[0] == []  # at the threshold: left
    # texture labels that differ and frames that are not ok make an edge interesting without a change in value
    flat = {ij: {"strain": 0.0, "status": "ok", "texture": int(ij[1] >= 4)} for ij in coarse_points(9, 4)}
    flat[(8, 8)]["status"] = "flagged"
    keys, edges, interest = edge_interest(flat, {"strain": 0.1})
    touches = (keys[edges] == (8, 8)).all(axis=2).any(axis=1)
    labels = (keys[edges[:, 0], 1] >= 4) != (keys[edges[:, 1], 1] >= 4)
    np.testing.assert_array_equal(interest, 10.0 * labels + 5.0 * touches)


def test_the_coarse_spacing_leaves_most_of_the_budget_to_bisection():
    assert coarse_step_for(65, 1056) == 4  # 17 x 17 = 289 points, 27% of the budget
    assert coarse_step_for(33, 218) == 4 and coarse_step_for(33, 109) == 8  # 81 points are 37% and 74% of them
    assert coarse_step_for(9, 3) == 8  # too small a budget for any raster: the corners


def test_a_wall_ends_bracketed_by_lattice_neighbours():
    measured = {ij: {"strain": float(ij[0] >= 3), "status": "ok"} for ij in coarse_points(9, 4)}
    for _ in range(10):
        points, _, _ = choose_points(measured, {"strain": 0.1}, threshold=3, most=100)
        measured.update({ij: {"strain": float(ij[0] >= 3), "status": "ok"} for ij in points})
    assert points == []
    crossings = {j for (i, j) in measured if i == 2 and (3, j) in measured}
    assert len(crossings) >= 5  # bracketed by lattice neighbours along the wall, not only at the coarse rows
    assert midpoint((2, 0), (3, 0), set()) is None and midpoint((0, 0), (4, 0), {(2, 0)}) is None
    assert midpoint((2, 0), (3, 1), set()) == (2, 1)  # a diagonal step: another corner of its square
    assert midpoint((0, 0), (3, 0), set()) == (1, 0)


def test_reconstruct_is_exact_for_linear_fields_and_never_overshoots_a_wall():
    lattice = Lattice(-1, 1, -1, 1, 9)
    points = [(i, j) for i in range(0, 9, 2) for j in range(0, 9, 2)] + [(3, 3), (5, 6)]
    ramp = {k: {"strain": 0.5 * k[0] - 0.25 * k[1]} for k in points}
    truth = 0.5 * np.arange(9.0)[None, :] - 0.25 * np.arange(9.0)[:, None]
    for method in ("cubic", "linear"):
        np.testing.assert_allclose(reconstruct(lattice, ramp, "strain", method), truth, atol=1e-6)
    assert not np.allclose(reconstruct(lattice, ramp, "strain", "nearest"), truth)
    wall = {k: {"strain": float(k[0] >= 4), "label": 1.0 + (k[0] >= 4)} for k in points}
    cubic = reconstruct(lattice, wall, "strain")
    assert cubic.min() >= 0 and cubic.max() <= 1 and cubic[:, :3].max() == 0 and cubic[:, 5:].min() == 1
    assert set(np.unique(reconstruct(lattice, wall, "label", "nearest"))) == {1.0, 2.0}
    bowl = {k: {"strain": (k[0] - 4.0) ** 2 / 16} for k in points}  # smooth: the cubic beats the linear one
    smooth = (np.arange(9.0)[None, :] - 4) ** 2 / 16 + 0 * truth
    errors = {m: np.abs(reconstruct(lattice, bowl, "strain", m) - smooth).max() for m in ("cubic", "linear")}
    assert errors["cubic"] < 0.6 * errors["linear"]
    with pytest.raises(ValueError, match="method"):
        reconstruct(lattice, ramp, "strain", "spline")
