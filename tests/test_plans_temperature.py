"""find_texture_temperature on the simulated cooling scene: bracketing with hysteresis, decisions, validation."""

import dataclasses
import json
import math

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.simulators import summarize_plan
from test_callbacks import CentroidPredictor

from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.plans import find_texture_temperature
from nanopilot.agents.zoom import WINDOW_SPACINGS, MapView, next_probe, novel_window, onset_from_radius
from nanopilot.sim_devices import make_beamline
from nanopilot.texture import frame_descriptor

SMALL = {"quick": 6, "fine": 8, "step": 4.0, "tolerance": 1.0}


def run_search(bl, stop=244.0, **kw):
    analysis = NanobeamAnalysis(CentroidPredictor(), frame_features=frame_descriptor, batch_size=64,
                                max_latency=0.02)
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(analysis)
    docs, temperatures = [], []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    bl.temperature.readback.subscribe(lambda value, **_: temperatures.append(value), run=False)
    plan = find_texture_temperature([bl.detector], bl.temperature, bl.stage.x, bl.stage.y, (-2, 2), (-2, 2), stop,
                                    maps=analysis.maps, **{**SMALL, **kw})
    return RE(plan), docs, temperatures


def decisions_of(docs):
    names = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    return [d["data"] for n, d in docs if n == "event" and names[d["descriptor"]] == "decisions"]


def test_brackets_the_transition_and_maps_it():
    bl = make_beamline("cooling", seed=1, noise=False, temperature=266.0)
    scene = bl.sample.scene
    res, docs, temperatures = run_search(bl)
    result = res.plan_result
    assert result["reason"] == "bracketed"
    unchanged, changed = result["bracket"]
    assert unchanged - changed <= SMALL["tolerance"]
    assert scene.transition_temperature - 3.0 <= result["transition"] <= scene.transition_temperature + 0.5
    # the fine map is the last map, taken at the changed end of the bracket, and shows the texture
    first, last = result["fine_map"]
    assert last - first + 1 == SMALL["fine"] ** 2
    assert bl.temperature.position == pytest.approx(changed, abs=0.2)
    # every changed map during the bisection was followed by a re-warm beyond the hysteresis
    bisections = [d for d in result["decisions"] if d["action"] == "bisect"]
    assert bisections and any(d["evidence"]["reset"] is not None for d in bisections)
    for d in bisections:
        if d["evidence"]["reset"] is not None:
            assert d["evidence"]["reset"] >= d["evidence"]["unchanged"] + scene.hysteresis
    assert max(temperatures[len(temperatures) // 3:]) >= changed + scene.hysteresis
    # decisions are stored in the run's decisions stream, one per recorded decision
    stored = decisions_of(docs)
    assert [d["decision_action"] for d in stored] == [d["action"] for d in result["decisions"]]
    assert stored[0]["decision_action"] == "reference" and stored[-1]["decision_action"] == "fine map"
    classified = [json.loads(d["decision_evidence"]) for d in stored if d["decision_action"] == "classify"]
    assert len(classified) == len(result["history"]) == result["maps"] - 2
    assert classified[-1]["score"] >= 1 or any(c["score"] >= 1 for c in classified)
    # the stored evidence is the history the plan acted on
    assert [c["score"] for c in classified] == pytest.approx([h[2] for h in result["history"]])
    # one run; the primary stream holds every point of every map
    assert sum(n == "start" for n, _ in docs) == 1
    primary = [d for n, d in docs if n == "event" and "temperature" in d["data"]]
    assert len(primary) == (result["maps"] - 1) * SMALL["quick"] ** 2 + SMALL["fine"] ** 2


def test_no_texture_above_the_transition():
    bl = make_beamline("cooling", seed=1, noise=False, temperature=275.0)
    res, docs, _ = run_search(bl, stop=265.0, step=5.0)
    result = res.plan_result
    assert result["reason"] == "no new texture" and result["bracket"] is None and np.isnan(result["transition"])
    assert result["maps"] == 3 and result["fine_map"] is None
    assert decisions_of(docs)[-1]["decision_action"] == "classify"


def test_restore_goes_back_to_the_start_temperature():
    bl = make_beamline("cooling", seed=1, noise=False, temperature=275.0)
    res, _, _ = run_search(bl, stop=265.0, step=5.0, restore=True)
    assert res.plan_result["reason"] == "no new texture"
    assert bl.temperature.position == pytest.approx(275.0, abs=0.2)


def test_the_approval_hook_can_veto():
    bl = make_beamline("cooling", seed=1, noise=False, temperature=266.0)
    seen = []
    res, docs, _ = run_search(bl, approve=lambda d: seen.append(d["action"]) or False)
    assert res.plan_result["reason"] == "vetoed" and seen == ["step"] and res.plan_result["maps"] == 1
    assert bl.temperature.position == pytest.approx(266.0, abs=0.2)
    assert decisions_of(docs)[-1]["decision_approved"] is False


def test_dry_run_shows_the_reference_map(capsys):
    bl = make_beamline("cooling", seed=1, temperature=266.0)
    analysis = NanobeamAnalysis(CentroidPredictor())
    summarize_plan(find_texture_temperature([bl.detector], bl.temperature, bl.stage.x, bl.stage.y, (-1, 1), (-1, 1),
                                            250.0, start=266.0, quick=5, maps=analysis.maps))
    out = capsys.readouterr().out
    assert out.count("Read ['det', 'stage_x', 'stage_y', 'temperature']") == 25 and "Close Run" in out
    assert "temperature -> 266" in out


@pytest.mark.parametrize("kwargs, message", [
    ({"stop": 5.0}, "limits"),
    ({"hysteresis": 400.0}, "limits"),
    ({"stop": 266.0}, "other than start"),
    ({"step": 0}, "step"),
    ({"tolerance": -1}, "tolerance"),
    ({"quick": 3}, "quick"),
    ({"quick": 10, "fine": 8}, "quick"),
    ({"quick": 6.5}, "quick"),
    ({"hysteresis": -1}, "hysteresis"),
    ({"x_range": (-500, 0)}, "limits"),
    ({"y_range": (1, -1)}, "stop > start"),
])
def test_bad_arguments_fail_before_anything_moves(kwargs, message):
    bl = make_beamline("cooling", seed=1, temperature=266.0)
    analysis = NanobeamAnalysis(CentroidPredictor())
    args = {"x_range": (-1, 1), "y_range": (-1, 1), "stop": 250.0, **kwargs}
    docs = []
    with pytest.raises(ValueError, match=message):  # the plan reads the temperature (a message) before its checks
        RunEngine({})(find_texture_temperature([bl.detector], bl.temperature, bl.stage.x, bl.stage.y,
                                               maps=analysis.maps, **args), lambda name, doc: docs.append(name))
    assert bl.temperature.position == 266.0 and bl.stage.x.position == 0 and docs == []


def test_a_model_for_another_instrument_is_refused():
    bl = make_beamline("cooling", seed=1, temperature=266.0)
    predictor = CentroidPredictor()
    predictor.instrument = dataclasses.replace(predictor.instrument, energy_kev=predictor.instrument.energy_kev + 1)
    analysis = NanobeamAnalysis(predictor)
    with pytest.raises(ValueError, match="energy_kev"):
        RunEngine({})(find_texture_temperature([bl.detector], bl.temperature, bl.stage.x, bl.stage.y, (-1, 1),
                                               (-1, 1), 250.0, maps=analysis.maps))


def test_no_analysis_is_a_clear_error():
    bl = make_beamline("cooling", seed=1)
    with pytest.raises(ValueError, match="no live analysis"):
        RunEngine({})(find_texture_temperature([bl.detector], bl.temperature, bl.stage.x, bl.stage.y, (-1, 1),
                                               (-1, 1), 250.0))


def test_onset_extrapolated_to_zero_radius():
    # cooling: radius 0.1 um at 266 K and 0.3 um at 264 K extrapolates to zero at 267 K, growing 0.1 um/K
    history = [(268.0, False, 0.0, 0.0, 0.0), (264.0, True, 3.0, 0.36, 0.3), (266.0, True, 1.5, 0.04, 0.1),
               (262.0, True, 3.0, 0.5, np.nan)]  # the last one a map of the whole region: no radius
    onset, rate = onset_from_radius(history, cooling=True)
    assert onset == pytest.approx(267.0) and rate == pytest.approx(0.1)
    assert np.isnan(onset_from_radius(history[:2], cooling=True)[0])  # one zoomed map: no line
    shrinking = [(264.0, True, 3.0, 0.36, 0.1), (266.0, True, 3.0, 0.49, 0.3)]  # radius not growing on cooling
    assert np.isnan(onset_from_radius(shrinking, cooling=True)[0])
    warming = [(270.0, True, 1.0, 0.1, 0.2), (271.0, True, 1.0, 0.2, 0.4)]
    assert onset_from_radius(warming, cooling=False)[0] == pytest.approx(269.0)


def test_onset_line_uses_radii_apart():
    # the two radii nearest the transition are 0.1 K apart (a poor slope); with min_spread the line takes the
    # nearest one and the next at least 0.5 K from it
    history = [(264.0, True, 3.0, 0.4, 0.3), (265.9, True, 1.0, 0.1, 0.12), (266.0, True, 1.0, 0.1, 0.1)]
    assert onset_from_radius(history, cooling=True)[0] == pytest.approx(266.5)
    onset, rate = onset_from_radius(history, cooling=True, min_spread=0.5)
    assert onset == pytest.approx(267.0) and rate == pytest.approx(0.1)


@pytest.mark.parametrize("unchanged, changed, onset, expected", [
    (264.0, 260.0, math.nan, (262.0, False)),  # no estimate: the middle
    (264.0, 260.0, 262.0, (262.25, False)),  # half the tolerance on the unchanged side of the onset
    (264.0, 260.0, 264.5, (263.55, True)),  # onset beyond the unchanged end: close the bracket there
    (264.0, 260.0, 263.8, (263.55, True)),
    (264.0, 260.0, 260.1, (260.45, False)),  # onset at the changed end
    (260.0, 264.0, 262.0, (261.75, False)),  # warming
])
def test_next_probe(unchanged, changed, onset, expected):
    t, closing = next_probe(unchanged, changed, onset, 0.5)
    assert (t, closing) == (pytest.approx(expected[0]), expected[1])


class GridMap:
    motors = ["stage_y", "stage_x"]

    def __init__(self, x, y):
        self._points = {"stage_x": x, "stage_y": y, "seq_num": np.arange(1, len(x) + 1)}

    def scattered(self):
        return self._points


def test_the_window_surrounds_the_largest_novel_patch():
    n, region = 5, ((-2.0, 2.0), (-2.0, 2.0))
    ys, xs = np.meshgrid(np.linspace(-2, 2, n), np.linspace(-2, 2, n), indexing="ij")
    view = MapView(GridMap(xs.ravel(), ys.ravel()), 1, n * n)
    novel = np.zeros((n, n), bool)
    novel[1:3, 2:4] = True  # a 2 x 2 patch: x 0..1, y -1..0 um
    novel[4, 0] = True  # a lone point elsewhere
    (x0, x1), (y0, y1) = novel_window(view, novel.ravel(), region, n, region)
    assert (x0, x1, y0, y1) == pytest.approx((-1.0, 2.0, -2.0, 1.0))  # grown by one spacing (1 um) each side
    edge = np.zeros((n, n), bool)
    edge[0, 3:] = True  # at the region's edge: the window is shifted inside
    (x0, x1), (y0, y1) = novel_window(view, edge.ravel(), region, n, region)
    assert x1 == pytest.approx(2.0) and y0 == pytest.approx(-2.0) and x1 - x0 == pytest.approx(y1 - y0)
    assert novel_window(view, np.zeros(n * n, bool), region, n, region) is None


def test_a_patch_wider_than_the_window_limit_is_zoomed_on_around_its_densest_point():
    n, region = 9, ((-4.0, 4.0), (-4.0, 4.0))  # 1 um spacing
    ys, xs = np.meshgrid(np.linspace(-4, 4, n), np.linspace(-4, 4, n), indexing="ij")
    view = MapView(GridMap(xs.ravel(), ys.ravel()), 1, n * n)
    novel = np.zeros((n, n), bool)
    novel[1:8, 1] = True  # a thin strip along y at x = -3 um ...
    novel[4:7, 2:4] = True  # ... with a dense blob at x -2..-1, y 0..2 um
    unlimited = novel_window(view, novel.ravel(), region, n, region)
    assert unlimited[1][1] - unlimited[1][0] == pytest.approx(8.0)  # the strip's 6 um, grown by 1 um each side
    (x0, x1), (y0, y1) = novel_window(view, novel.ravel(), region, n, region, max_spacings=WINDOW_SPACINGS)
    assert x1 - x0 == pytest.approx(WINDOW_SPACINGS) and y1 - y0 == pytest.approx(WINDOW_SPACINGS)
    assert (x0 + x1) / 2 == pytest.approx(-2.0) and (y0 + y1) / 2 == pytest.approx(1.0)  # the point (-2, 1) um


def test_a_window_that_misses_the_texture_is_replaced_by_a_smaller_one(monkeypatch):
    import nanopilot.agents.temperature as temperature

    bl = make_beamline("cooling", seed=1, noise=False, temperature=266.0)
    scene = bl.sample.scene
    corners = [(x, y) for x in (-1.8, 1.8) for y in (-1.8, 1.8)]
    far = max(corners, key=lambda c: np.hypot(*(scene.nuclei_ - c).T).min())
    empty = ((far[0] - 0.2, far[0] + 0.2), (far[1] - 0.2, far[1] + 0.2))  # 0.4 um around no nucleus
    real = temperature.novel_window

    def misplaced(view, novel, window, n, region, max_spacings=None):
        if max_spacings is None and window == region:  # the first zoom window: where the texture is not
            return empty
        return real(view, novel, window, n, region, max_spacings)

    monkeypatch.setattr(temperature, "novel_window", misplaced)
    res, docs, _ = run_search(bl)
    result = res.plan_result
    bisections = [d["evidence"] for d in result["decisions"] if d["action"] == "bisect"]
    confirms = [e for e in bisections if e["confirm"]]
    # the changed end, seen on a whole-region map only, is mapped in the window; the texture is not there, so
    # the window is replaced by the smaller one around the densest novel point, where the texture is found
    assert confirms and confirms[0]["window"] == empty and confirms[0]["temperature"] == confirms[0]["changed"]
    assert any(e["window"] != empty for e in bisections[bisections.index(confirms[0]) + 1:])
    assert any(changed and radius > 0 for _, changed, _, _, radius in result["history"])
    assert result["reason"] == "bracketed"
    assert scene.transition_temperature - 3.0 <= result["transition"] <= scene.transition_temperature + 0.5
