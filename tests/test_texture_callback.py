"""TextureCallback end to end on the simulated beamline: labels in LiveMaps, texture documents, plot."""

import json

import bluesky.plans as bp
import numpy as np
from bluesky import RunEngine
from test_callbacks import CentroidPredictor, validate

from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.sim_devices import make_beamline
from nanopilot.texture import UNLABELLED, TextureCallback, TextureClassifier, frame_descriptor


def setup(update_every=None, classifier=None):
    analysis = NanobeamAnalysis(CentroidPredictor(), threaded=False, batch_size=16, frame_features=frame_descriptor)
    textures = TextureCallback(classifier, update_every=update_every)
    analysis.add_stage(textures)
    docs = []
    textures.subscribe(lambda name, doc: docs.append((name, doc)))
    RE = RunEngine({})
    RE.subscribe(analysis)
    return RE, analysis, textures, docs


def grid(bl, n, half=1.5):
    return bp.grid_scan([bl.detector], bl.stage.y, -half, half, n, bl.stage.x, -half, half, n, snake_axes=True)


def test_labels_are_written_to_live_maps_and_emitted_as_a_valid_texture_run(tmp_path):
    bl = make_beamline("domains", seed=3)
    RE, analysis, textures, docs = setup(update_every=20)
    plot = textures.live_plot(analysis.maps, save=tmp_path / "tex_{uid}.png", min_interval=0)
    (uid,) = RE(grid(bl, 8))
    points = analysis.maps[uid].scattered()
    labels = points["texture"]
    assert len(labels) == 64 and (labels >= 0).all()
    assert np.isfinite(analysis.maps[uid].gridded("texture")).all()
    validate(docs)
    names = [n for n, _ in docs]
    # labels while the run goes on (after 32, 48 and 64 of its points, in pages of 16), then the final ones
    assert names == ["start", "descriptor", *["event_page"] * 3, "descriptor", "event_page", "descriptor", "event",
                     "stop"]
    streams = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    assert [streams[d["descriptor"]] for n, d in docs if n == "event_page"] == ["labels"] * 3 + ["primary"]
    assert [len(d["data"]["texture"]) for n, d in docs if n == "event_page"] == [32, 48, 64, 64]
    start, page = docs[0][1], docs[6][1]
    assert start["raw_uid"] == uid and start["analysis_uid"] != uid
    order = np.argsort(page["data"]["raw_seq_num"])
    np.testing.assert_array_equal(np.asarray(page["data"]["texture"])[order],
                                  labels[np.argsort(points["seq_num"])])
    np.testing.assert_allclose(np.asarray(page["data"]["stage_x"])[order], points["stage_x"][np.argsort(
        points["seq_num"])])
    summary = docs[8][1]["data"]
    assert summary["status"] == "ok" and summary["n_textures"] == len(set(labels)) and summary["unlabelled"] == 0
    assert json.loads(summary["features"])[0] == "estimate:strain"
    assert docs[-1][1]["exit_status"] == "success"
    assert (tmp_path / f"tex_{uid[:8]}.png").stat().st_size > 10_000 and plot.draws >= 1


def test_labels_keep_their_meaning_over_a_series_of_runs():
    bl = make_beamline("domains", seed=3)
    RE, analysis, textures, docs = setup()
    first, second = RE(grid(bl, 8)), RE(grid(bl, 8))
    a, b = (analysis.maps[u[0]].scattered() for u in (first, second))
    la, lb = a["texture"][np.argsort(a["seq_num"])], b["texture"][np.argsort(b["seq_num"])]
    # the same sample scanned twice: each texture of the first scan is mostly the same label in the second
    for label in set(la):
        if (la == label).sum() >= 5:
            values, counts = np.unique(lb[la == label], return_counts=True)
            assert values[np.argmax(counts)] == label
    validate(docs)


def test_too_few_points_give_a_not_enough_data_run_not_a_label():
    bl = make_beamline("domains", seed=3)
    RE, analysis, textures, docs = setup(classifier=TextureClassifier(min_points=20))
    (uid,) = RE(grid(bl, 3))
    assert (analysis.maps[uid].scattered()["texture"] == UNLABELLED).all()
    validate(docs)
    summary = next(d for n, d in docs if n == "event")["data"]
    assert summary["status"] == "not_enough_data" and summary["unlabelled"] == 9
    assert docs[-1][1]["exit_status"] == "fail" and "not_enough_data" in docs[-1][1]["reason"]
