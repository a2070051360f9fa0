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
    cell_interest,
    choose_cells,
    coarse_cells,
    collect_points,
    reconstruct,
    split,
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
    ({"fine": 30}, "whole number of coarse cells"),
    ({"coarse_step": 6, "fine": 25}, "power of two"),
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


def test_cell_logic_is_pure_and_ordered():
    cells = coarse_cells(9, 4)
    assert len(cells) == 4
    measured = {(i, j): {"strain": float(i >= 4), "status": "ok"} for i in range(0, 9, 4) for j in range(0, 9, 4)}
    interest = cell_interest(cells, measured, {"strain": 0.1})
    # cells 1 and 3 reach the region's border at i = 8: their one inner second difference (across the wall in
    # cells 0 and 2) counts as curvature, half the change
    assert interest.tolist() == [10.0, 5.0, 10.0, 5.0]
    chosen, new = choose_cells(cells, interest, measured, budget_left=100, threshold=6, max_cells=10)
    assert chosen == [cells[0], cells[2]] and len(new) == 9  # 5 + 5 points, one shared edge midpoint
    sub, points = split((0, 0, 4))
    assert sub == [(0, 0, 2), (2, 0, 2), (0, 2, 2), (2, 2, 2)] and (2, 2) in points
    # a large cell with moderate contrast goes before a small one with more: priority is interest x side
    mixed = [(0, 0, 4), (4, 0, 1)]
    measured_mixed = {**measured, (5, 0): measured[(4, 0)], (4, 1): measured[(4, 0)], (5, 1): measured[(4, 0)]}
    chosen, _ = choose_cells(mixed, np.array([5.0, 15.0]), measured_mixed, 100, 3, 1)
    assert chosen == [(0, 0, 4)]


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


def test_interest_sees_a_crest_between_equal_corners_but_not_a_wall_next_door():
    cells = coarse_cells(13, 4)  # 3 x 3 cells, lattice points every 4 steps
    # a crest at i = 6, measured every 4 steps: the cell from i = 4 to 8 has equal corners either side of it
    crest = {(i, j): {"strain": 1.0 - abs(i - 6) / 4, "status": "ok"} for i in range(0, 13, 4) for j in range(0, 13, 4)}
    assert cell_interest([(4, 0, 4)], crest, {"strain": 0.1})[0] == pytest.approx(5)  # curvature 1 / 2 / 0.1 noise
    wall = {(i, j): {"strain": float(i >= 12), "status": "ok"} for i in range(0, 13, 4) for j in range(0, 13, 4)}
    interest = cell_interest(cells, wall, {"strain": 0.1})
    assert interest[cells.index((4, 0, 4))] == 0  # the wall lies in the next cell (8..12), not in this one
    assert interest[cells.index((8, 0, 4))] == 10
