"""LiveMaps from documents only: the same maps from the live analysis, from its documents alone (another process),
and the waits a plan relies on."""

import json

import numpy as np
import pytest
from bluesky import RunEngine
from test_callbacks import CentroidPredictor, scan

from nanopilot.callbacks import LiveMaps, NanobeamAnalysis
from nanopilot.sim_devices import make_beamline
from nanopilot.texture import TextureCallback, frame_descriptor


def same_points(a, b):
    pa, pb = a.scattered(), b.scattered()
    assert set(pa) == set(pb)
    for key in pa:
        if pa[key].dtype == object:
            assert list(pa[key]) == list(pb[key]), key
        else:
            np.testing.assert_array_equal(pa[key], pb[key], err_msg=key)
    np.testing.assert_array_equal(a.features(), b.features())


@pytest.mark.parametrize("threaded", [False, True])
def test_maps_from_the_documents_alone_equal_the_analysis_own(threaded):
    bl = make_beamline("domains", seed=2)
    analysis = NanobeamAnalysis(CentroidPredictor(), batch_size=7, frame_features=frame_descriptor,
                                threaded=threaded, max_latency=0.01)
    texture = TextureCallback(update_every=10)
    analysis.add_stage(texture)
    remote = LiveMaps()  # as in another process: the raw documents from the RunEngine, the rest from the stream
    analysis.subscribe(remote)
    texture.subscribe(remote)
    RE = RunEngine({})
    RE.subscribe(remote)
    RE.subscribe(analysis)
    (uid,) = RE(scan(bl, 5, 6))
    analysis.close()
    assert remote.wait_for(uid, timeout=10) and remote[uid].done and analysis.maps[uid].done
    own, other = analysis.maps[uid], remote[uid]
    assert len(own) == 30 and own.taken == own.received == 30 and other.taken == 30
    assert np.isfinite(own.scattered()["texture"]).all() and own.features().shape == (30, 17)
    same_points(own, other)
    assert own.motors == other.motors == ["stage_y", "stage_x"] and own.shape == other.shape == (5, 6)


def test_stored_documents_rebuild_the_maps_without_raw_documents():
    bl = make_beamline("domains", seed=2)
    analysis = NanobeamAnalysis(CentroidPredictor(), batch_size=4, threaded=False)
    docs = []
    analysis.subscribe(lambda name, doc: docs.append((name, json.loads(json.dumps(doc)))))  # as stored: JSON
    RE = RunEngine({})
    RE.subscribe(analysis)
    (uid,) = RE(scan(bl, 3, 4))
    replayed = LiveMaps()
    for name, doc in docs:
        replayed(name, doc)
    same_points(analysis.maps[uid], replayed[uid])
    assert replayed[uid].received == 12 and replayed[uid].done and replayed.caught_up(uid)


def test_a_plan_is_not_caught_up_before_every_frame_taken_is_accounted_for():
    bl = make_beamline("domains", seed=2)
    analysis = NanobeamAnalysis(CentroidPredictor(), threaded=False)
    held = []
    analysis._worker.put = lambda item, n: held.append((item, n))  # the analysis falls behind: nothing handled
    RE = RunEngine({})
    RE.subscribe(analysis)
    (uid,) = RE(scan(bl, 2, 2))
    run = analysis.maps[uid]
    assert run.taken == 4 and len(run) == 0 and not analysis.maps.caught_up(uid) and not run.done
    for item, n in held:  # it catches up
        analysis._worker._handle(item)
    assert len(run) == 4 and analysis.maps.caught_up(uid) and run.done


def test_labels_before_their_points_are_kept_until_the_points_come():
    maps = LiveMaps()
    run = maps.begin_run("u", ["x"])
    run.set_extra("texture", [2], [5.0])
    run.append([1, 2], [[0.0], [1.0]], {"strain": [1e-3, 2e-3]}, ["ok", "ok"])
    points = run.scattered()
    np.testing.assert_array_equal(points["texture"], [np.nan, 5.0])
    np.testing.assert_array_equal(points["strain"], [1e-3, 2e-3])
    assert np.isnan(points["omega"]).all() and len(run) == 2
