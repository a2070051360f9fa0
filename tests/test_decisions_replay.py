"""Replaying a finished plan's decisions from the catalogue alone reproduces them exactly, for all three plans; a
replay told other points than the plan saw does not."""

import pytest
from bluesky import RunEngine
from test_callbacks import CentroidPredictor
from test_plans_growth import TruthPredictor

import nanopilot.decisions as decisions
from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.decisions import replay_decisions
from nanopilot.plans import find_texture_temperature, grow_until, steered_map
from nanopilot.sim_devices import make_beamline
from nanopilot.storage import make_writer
from nanopilot.texture import TextureCallback, frame_descriptor


def stored_run(catalog, tmp_path, analysis, make_plan, beamline=None):
    """Run a plan with the analysis (and texture labels at its end, as a session does), every run stored in
    ``catalog``; returns (raw uid, plan result)."""
    textures = TextureCallback()
    analysis.add_stage(textures)
    RE = RunEngine({}, call_returns_result=True)
    if beamline is not None:
        beamline.install(RE)
    RE.subscribe(make_writer(catalog, backup_directory=tmp_path / "backup"))
    analysis.subscribe(make_writer(catalog, batch_size=1000, backup_directory=tmp_path / "backup"))
    textures.subscribe(make_writer(catalog, batch_size=1000, backup_directory=tmp_path / "backup"))
    RE.subscribe(analysis)
    result = RE(make_plan(analysis.maps))
    analysis.close()
    return result.run_start_uids[0], result.plan_result


def check_replay(catalog, uid, result, **kwargs):
    rows = replay_decisions(catalog, uid, **kwargs)
    assert len(rows) == len(result["decisions"]) >= 2
    assert [r["differences"] for r in rows] == [[]] * len(rows)
    assert [r["replayed"]["action"] for r in rows] == [d["action"] for d in result["decisions"]]
    return rows


def test_a_steered_map_replays_and_other_points_do_not(catalog, tmp_path, monkeypatch):
    bl = make_beamline("domains", seed=1, noise=False)
    uid, result = stored_run(catalog, tmp_path, NanobeamAnalysis(CentroidPredictor(), batch_size=32,
                                                                max_latency=0.02),
                             lambda maps: steered_map([bl.detector], bl.stage.x, bl.stage.y, (-2, 2), (-2, 2),
                                                      fine=17, coarse_step=8, budget=60, points_per_round=8,
                                                      maps=maps))
    assert result["rounds"] >= 2
    rows = check_replay(catalog, uid, result)
    # told other points than the plan saw (one estimate changed), the replay says where it departs
    real, field = decisions.analysed_points, next(iter(rows[0]["stored"]["evidence"]["noise_scales"]))

    def altered(*args, **kwargs):
        points, motors = real(*args, **kwargs)
        points[field] = points[field].copy()
        points[field][4] = 1e9  # the middle point of the first raster, a corner of every coarse cell
        return points, motors

    monkeypatch.setattr(decisions, "analysed_points", altered)
    rows = replay_decisions(catalog, uid)
    assert not rows[0]["match"] and set(rows[0]["differences"]) & {"reason", "evidence", "value"}


@pytest.mark.slow
def test_a_growth_replays_with_its_looks_within_rounds(catalog, tmp_path):
    bl = make_beamline("growth", seed=2, scene_parameters={"critical_thickness": 130.0})
    grid = [(x, y) for y in (-1.0, 0.0, 1.0) for x in (-1.0, 0.0, 1.0)]
    uid, result = stored_run(catalog, tmp_path, NanobeamAnalysis(TruthPredictor(bl, 2), batch_size=1,
                                                                threaded=False),
                             lambda maps: grow_until([bl.detector], bl.deposition, bl.stage.x, bl.stage.y, 280.0,
                                                     points=grid, look_every=2, interval=2.0, maps=maps),
                             beamline=bl)
    assert result["reason"] == "relaxation"
    rows = check_replay(catalog, uid, result)
    assert rows[-1]["stored"]["evidence"]["thickness"] == result["thickness"]


@pytest.mark.slow
def test_a_temperature_search_replays_with_frame_descriptors(catalog, tmp_path, monkeypatch):
    bl = make_beamline("cooling", seed=1, noise=False, temperature=266.0)
    analysis = NanobeamAnalysis(CentroidPredictor(), frame_features=frame_descriptor, batch_size=64,
                                max_latency=0.02)
    uid, result = stored_run(catalog, tmp_path, analysis, lambda maps: find_texture_temperature(
        [bl.detector], bl.temperature, bl.stage.x, bl.stage.y, (-2, 2), (-2, 2), 244.0, quick=6, fine=8, step=4.0,
        tolerance=1.0, maps=maps))
    assert result["reason"] == "bracketed"
    rows = check_replay(catalog, uid, result)
    assert {r["stored"]["action"] for r in rows} >= {"reference", "step", "classify", "bisect", "fine map"}
    # without the frame descriptors the analysis run holds, the classifications differ, and the replay says so
    real = decisions.analysed_points

    def without_descriptors(*args, **kwargs):
        points, motors = real(*args, **kwargs)
        assert points.pop("features").shape == (len(points["seq_num"]), 17)
        return points, motors

    monkeypatch.setattr(decisions, "analysed_points", without_descriptors)
    assert not all(r["match"] for r in replay_decisions(catalog, uid))


def test_a_quadtree_steered_map_is_refused_with_its_reason():
    args = {"x_range": [-2, 2], "y_range": [-2, 2], "fine": 17, "coarse_step": 4, "budget": 60, "threshold": 3.0,
            "cells_per_round": 16}
    with pytest.raises(ValueError, match="quadtree"):
        decisions.agent_for({"plan_name": "steered_map", "plan_args": args}, ["stage_y", "stage_x"])
    agent = decisions.agent_for({"plan_name": "steered_map", "plan_args": {**args, "points_per_round": 8}},
                                ["stage_y", "stage_x"])
    assert agent.points_per_round == 8 and agent.budget == 60
