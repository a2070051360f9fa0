"""The plans' pictures: each builds from a small simulated run of its plan and shows what the plan decided."""

import math

import numpy as np
import pytest
from bluesky import RunEngine
from matplotlib.lines import Line2D

from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.pictures import LivePictures, RunCollector, collect, plan_figure
from nanopilot.plans import find_texture_temperature, grow_until, steered_map
from nanopilot.sim_devices import make_beamline
from nanopilot.texture import TextureCallback, frame_descriptor
from test_callbacks import CentroidPredictor
from test_plans_growth import TruthPredictor


def run_plan(analysis, make_plan, pictures=None, beamline=None):
    """Run a plan with the analysis and a texture callback; every document (raw, analysis, texture) in order.
    ``beamline``: a simulated beamline whose clock the RunEngine's sleeps run on (simulated time)."""
    docs = []
    textures = TextureCallback()
    for target in (analysis, textures):
        target.subscribe(lambda name, doc: docs.append((name, doc)))
    analysis.add_stage(textures)
    RE = RunEngine({}, call_returns_result=True)
    if beamline is not None:
        beamline.install(RE)
    RE.subscribe(analysis)
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    if pictures is not None:
        RE.subscribe(pictures)
        analysis.subscribe(pictures)
        textures.subscribe(pictures)
    result = RE(make_plan(analysis.maps))
    analysis.close()
    return result, docs


def figure_of(docs, uid):
    return plan_figure(collect(docs).snapshot(uid))


def texts(figure):
    """Every text of the figure: titles, axis and colour-bar labels, legend entries, annotations."""
    out = [t.get_text() for t in figure.texts] + [figure.get_suptitle()]
    for ax in figure.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()] + [t.get_text() for t in ax.texts]
        legend = ax.get_legend()
        if legend is not None:
            out += [t.get_text() for t in legend.get_texts()]
    for legend in figure.legends:
        out += [t.get_text() for t in legend.get_texts()]
    return out


def maps_of(figure):
    """The map panels: axes with equal aspect (colour bars excluded)."""
    return [ax for ax in figure.axes if ax.get_aspect() == 1.0]


@pytest.fixture(scope="module")
def steered():
    bl = make_beamline("domains", seed=1, noise=False)
    analysis = NanobeamAnalysis(CentroidPredictor(), batch_size=32, max_latency=0.02)
    res, docs = run_plan(analysis, lambda maps: steered_map([bl.detector], bl.stage.x, bl.stage.y, (-2, 2), (-2, 2),
                                                            fine=17, coarse_step=4, budget=0.4, maps=maps,
                                                            md={"sample": "domains, seed 1"}))
    return res, docs


def test_steered_map_picture_shows_maps_rounds_and_uncertainty(steered):
    res, docs = steered
    figure = figure_of(docs, res.run_start_uids[0])
    words = texts(figure)
    assert "steered_map" in figure.get_suptitle() and "domains, seed 1" in figure.get_suptitle()
    assert any("uncertainty" in w and "10$^{-3}$" in w for w in words)  # the uncertainty panel, with units
    assert any(w.startswith("omega tilt (deg)") for w in words) and any("(µm)" in w for w in words)
    rounds = res.plan_result["rounds"]
    assert any(w.startswith("coarse raster") for w in words)
    assert sum(w.startswith("round ") for w in words) == rounds >= 1
    assert any(w.startswith("texture 0") for w in words)  # categorical legend, no colour bar for labels
    assert not any("texture" in ax.get_ylabel() for ax in figure.axes)
    assert len(maps_of(figure)) >= 6
    # the tilts' colour maps are centred on zero
    for ax in maps_of(figure):
        if ax.get_title().startswith("omega"):
            low, high = ax.images[0].get_clim()
            assert low == pytest.approx(-high)


@pytest.fixture(scope="module")
def growth():
    bl = make_beamline("growth", seed=1, scene_parameters={"critical_thickness": 190.0})
    analysis = NanobeamAnalysis(TruthPredictor(bl, 1), batch_size=1, threaded=False)
    points = [(x, y) for y in (-1.0, 0.0, 1.0) for x in (-1.0, 0.0, 1.0)]
    res, docs = run_plan(analysis, lambda maps: grow_until([bl.detector], bl.deposition, bl.stage.x, bl.stage.y,
                                                           120.0, points=points, interval=2.0, maps=maps),
                         beamline=bl)
    return res, docs


def test_growth_picture_shows_thickness_target_and_stop(growth):
    res, docs = growth
    figure = figure_of(docs, res.run_start_uids[0])
    thick, relax = figure.axes[:2]
    assert thick.get_ylabel() == "film thickness (Å)" and thick.get_xlabel().endswith("(s)")
    lines = {line.get_label(): line for line in thick.get_lines()}
    target = lines["target 120 Å"]
    assert target.get_ydata()[0] == 120.0
    assert any(label.startswith("anticipated close") for label in lines)
    stop = next(line for label, line in lines.items() if label.startswith("shutter closed"))
    assert stop.get_xdata()[0] > 0
    assert any(w.startswith("stop: target 120 A reached") for w in texts(figure))
    assert len(thick.collections) >= 2  # every frame, and the uncertainty band
    thresholds = [line for line in relax.get_lines() if "threshold" in line.get_label()]
    assert {line.get_ydata()[0] for line in thresholds} == {5.58, 5.0}
    assert relax.get_ylabel() == "ramp statistic (noise units)"


@pytest.fixture(scope="module")
def cooling():
    bl = make_beamline("cooling", seed=1, noise=False, temperature=266.0)
    analysis = NanobeamAnalysis(CentroidPredictor(), frame_features=frame_descriptor, batch_size=64,
                                max_latency=0.02)
    pictures = LivePictures(min_interval=0.2)
    res, docs = run_plan(analysis, lambda maps: find_texture_temperature(
        [bl.detector], bl.temperature, bl.stage.x, bl.stage.y, (-2, 2), (-2, 2), 244.0, quick=6, fine=8, step=4.0,
        tolerance=1.0, maps=maps), pictures)
    return res, docs, pictures


def test_temperature_picture_marks_the_transition_and_every_map(cooling):
    res, docs, _ = cooling
    result = res.plan_result
    figure = figure_of(docs, res.run_start_uids[0])
    statistic = figure.axes[0]
    assert statistic.get_xlabel() == "temperature (K)"
    lines = {line.get_label(): line for line in statistic.get_lines()}
    transition = lines[f"transition {result['transition']:.2f} K"]
    assert transition.get_xdata()[0] == pytest.approx(result["transition"])
    assert any(label.startswith("bracket ") for label in (p.get_label() for p in statistic.patches))
    assert "threshold (score 1)" in lines and "bracketing probes" in lines
    # one small multiple per map, each titled with its temperature, the fine one last, on one colour scale
    small = [ax for ax in maps_of(figure) if " K, " in ax.get_title()]
    assert len(small) == result["maps"]
    assert small[-1].get_title().endswith("fine (changed)")
    assert len({ax.images[0].get_clim() for ax in small if ax.images}) == 1
    assert "omega tilt (deg)" in texts(figure)
    assert any(w.startswith("texture 0") for w in texts(figure))  # the last map's labels, categorical


def test_live_pictures_redraw_and_draw_the_same_as_the_stored_documents(cooling):
    res, docs, pictures = cooling
    pictures.close()
    uid = res.run_start_uids[0]
    assert pictures.draws >= 2 and uid in pictures.figures
    live = pictures.figures[uid]
    assert texts(live) == texts(figure_of(docs, uid))


def test_pictures_are_saved_once_the_analysis_has_ended(tmp_path):
    bl = make_beamline("domains", seed=1, noise=False)
    analysis = NanobeamAnalysis(CentroidPredictor(), batch_size=32, max_latency=0.02)
    pictures = LivePictures(tmp_path / "run_{uid}.png", min_interval=60)
    res, _ = run_plan(analysis, lambda maps: steered_map([bl.detector], bl.stage.x, bl.stage.y, (-1, 1), (-1, 1),
                                                         fine=9, coarse_step=4, budget=0.9, maps=maps), pictures)
    pictures.close()
    assert (tmp_path / f"run_{res.run_start_uids[0][:8]}.png").stat().st_size > 10_000


def test_a_run_without_a_plan_is_drawn_as_maps():
    """A grid scan (no decisions): maps of the estimates with units, on equal axes."""
    import bluesky.plans as bp

    bl = make_beamline("domains", seed=1, noise=False)
    analysis = NanobeamAnalysis(CentroidPredictor(), batch_size=32, max_latency=0.02)
    res, docs = run_plan(analysis, lambda maps: bp.grid_scan([bl.detector], bl.stage.y, -1, 1, 5,
                                                             bl.stage.x, -1, 1, 5))
    figure = figure_of(docs, res.run_start_uids[0])
    assert len(maps_of(figure)) >= 3 and "strain (10$^{-3}$)" in texts(figure)
    assert all(not math.isnan(ax.get_xlim()[0]) for ax in maps_of(figure))
    assert not [line for line in figure.axes[0].get_lines() if isinstance(line, Line2D)]
    assert np.isfinite(figure.axes[0].images[0].get_array()).all()


def test_the_collector_keeps_the_latest_runs_and_ignores_what_it_cannot_route():
    from event_model import compose_run

    collector = RunCollector(keep=2)
    bundles = [compose_run(metadata={"plan_name": "count"}) for _ in range(3)]
    for bundle in bundles:
        collector("start", bundle.start_doc)
    assert list(collector.runs) == [b.start_doc["uid"] for b in bundles[1:]]
    collector("event_page", {"descriptor": "unknown", "seq_num": [1], "data": {}, "timestamps": {}})
    collector("stop", bundles[0].compose_stop())  # a forgotten run's stop
    collector("datum", {"datum_id": "x"})
    assert collector.latest == bundles[-1].start_doc["uid"]
