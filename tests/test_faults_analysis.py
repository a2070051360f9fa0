"""Issue 15 (safety and data integrity under faults), the analysis' part: bad frames and documents are flagged,
refused and counted once, never lost in bulk; a run of another instrument is refused or flagged; analyses
release their threads; model files with non-finite or malformed numbers are refused, naming the file."""

import gc
import json
import logging
import threading
import time
import weakref

import bluesky.plans as bp
import numpy as np
import pytest
import torch
from bluesky import RunEngine
from event_model import compose_run
from test_callbacks import CentroidPredictor, run_analysis, scan

from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.plans.common import MAPS_COMMAND
from nanopilot.callbacks.frame_sources import ExternalFrames
from nanopilot.model import Predictor, load_model, shipped_model_path
from nanopilot.physics import Instrument
from nanopilot.session import setup
from nanopilot.sim_devices import make_beamline

OTHER_INSTRUMENT = Instrument(energy_kev=12.0)  # same 64 x 64 ROI, another setup


def raw_run(shape=None, **md):
    """(bundle, descriptor bundle) of a raw run with a 64 x 64 image key and one motor m."""
    bundle = compose_run(metadata={"motors": ["m"], **({"shape": list(shape)} if shape else {}), **md})
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "cam_image": {"source": "t", "dtype": "array", "shape": [64, 64]},
        "m": {"source": "t", "dtype": "number", "shape": []}})
    return bundle, desc


def page(desc, data, seq_num):
    return desc.compose_event_page(data=data, timestamps={k: [0] * len(seq_num) for k in data}, seq_num=seq_num,
                                   time=[0] * len(seq_num), validate=False)


def frames(n, seed=0):
    return list(np.random.default_rng(seed).poisson(1.0, (n, 64, 64)).astype(float))


def feed(analysis, docs):
    """Send documents to the analysis; returns the derived documents it emitted."""
    out = []
    analysis.subscribe(lambda name, doc: out.append((name, doc)))
    for name, doc in docs:
        analysis(name, doc)
    assert analysis.flush(timeout=30)
    return out


def summary_of(derived):
    return [d for n, d in derived if n == "event"][-1]["data"]


def adds_up(summary):
    return summary["frames_received"] == (summary["frames_ok"] + summary["frames_warned"] + summary["frames_flagged"]
                                          + summary["frames_skipped"] + summary["frames_errors"]
                                          + summary["frames_rejected"])


# ---------------------------------------------------------------- 3. one bad frame never discards its batch
def test_a_frame_of_strings_in_a_batch_of_100_is_flagged_and_its_99_neighbours_analysed():
    bundle, desc = raw_run()
    images = frames(100)
    images[37] = np.full((64, 64), "counts", dtype=object)
    analysis = NanobeamAnalysis(CentroidPredictor(), threaded=False, batch_size=128)
    derived = feed(analysis, [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc),
                              ("event_page", page(desc, {"cam_image": images, "m": list(range(100))},
                                                  list(range(1, 101)))),
                              ("stop", bundle.compose_stop())])
    status = analysis.maps[bundle.start_doc["uid"]].scattered()["status"]
    assert (status == "ok").sum() == 99 and status[37] == "bad_type"
    summary = summary_of(derived)
    assert summary["frames_ok"] == 99 and summary["frames_flagged"] == 1 and summary["frames_errors"] == 0


def test_a_page_without_the_image_key_flags_its_frames_and_spares_its_batch():
    bundle, desc = raw_run()
    analysis = NanobeamAnalysis(CentroidPredictor(), threaded=False, batch_size=128)
    derived = feed(analysis, [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc),
                              ("event_page", page(desc, {"m": [0.0, 1.0]}, [1, 2])),  # a replay without the frames
                              ("event_page", page(desc, {"cam_image": frames(3), "m": [2.0, 3.0, 4.0]}, [3, 4, 5])),
                              ("stop", bundle.compose_stop())])
    points = analysis.maps[bundle.start_doc["uid"]].scattered()
    assert points["status"].tolist() == ["missing", "missing", "ok", "ok", "ok"]
    np.testing.assert_array_equal(points["m"], [0, 1, 2, 3, 4])
    summary = summary_of(derived)
    assert summary["frames_ok"] == 3 and json.loads(summary["flagged_by_reason"]) == {"missing": 2}


# ---------------------------------------------------------------- 4. a malformed page never touches the maps
def test_a_ragged_page_is_rejected_whole_and_the_maps_stay_consistent(caplog):
    bundle, desc = raw_run(shape=(3, 4))
    ragged = page(desc, {"cam_image": frames(6), "m": [0.0] * 6}, [1, 2, 3, 4, 5, 6])
    ragged["data"]["cam_image"].pop()  # 6 seq_nums and positions, 5 frames
    good = page(desc, {"cam_image": frames(6, seed=1), "m": [1.0] * 6}, [7, 8, 9, 10, 11, 12])
    analysis = NanobeamAnalysis(CentroidPredictor(), batch_size=64, max_latency=0.05)
    with caplog.at_level(logging.ERROR):
        derived = feed(analysis, [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc),
                                  ("event_page", ragged), ("event_page", good), ("stop", bundle.compose_stop())])
    run = analysis.maps[bundle.start_doc["uid"]]
    points = run.scattered()
    assert all(len(v) == 6 for v in points.values())  # every field holds the 6 good points, none of the ragged
    assert run.rejected == 6 and "ragged event page" in caplog.text
    grid = run.gridded("strain")
    assert np.isnan(grid.ravel()[:6]).all() and np.isfinite(grid.ravel()[6:]).all()  # seq 7..12 in place
    assert run.done and analysis.maps.wait_for(bundle.start_doc["uid"], timeout=5)
    summary = summary_of(derived)
    assert derived[-1][0] == "stop" and summary["frames_rejected"] == 6 and adds_up(summary)
    assert "6 rejected (malformed document: 6)" in derived[-1][1]["reason"]


# ---------------------------------------------------------------- 5. everything counted exactly once
def test_duplicate_events_are_analysed_and_counted_once():
    bl = make_beamline("published", seed=1)
    analysis = NanobeamAnalysis(CentroidPredictor(), threaded=False)
    derived = []
    analysis.subscribe(lambda name, doc: derived.append((name, doc)))

    def twice(name, doc):  # every document delivered twice (e.g. a replay merged with the live stream)
        analysis(name, doc)
        analysis(name, doc)

    RE = RunEngine({})
    RE.subscribe(twice)
    (uid,) = RE(scan(bl, 2, 5))
    run = analysis.maps[uid]
    summary = summary_of(derived)
    assert len(run) == 10 and summary["frames_ok"] == 10 and summary["frames_received"] == 20
    assert json.loads(summary["rejected_by_reason"]) == {"duplicate seq_num": 10} and adds_up(summary)
    assert [n for n, _ in derived].count("stop") == 1


def test_events_for_an_unknown_descriptor_are_counted_and_logged_once_per_run(caplog):
    analysis = NanobeamAnalysis(CentroidPredictor(), threaded=False)
    for _ in range(2):  # the log line comes once per run
        bundle, desc = raw_run()
        early, stranger = raw_run()[1], raw_run()[1]  # descriptors sent late and never
        docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc),
                ("event_page", page(desc, {"cam_image": frames(2), "m": [0.0, 1.0]}, [1, 2])),
                ("event_page", page(early, {"cam_image": frames(2), "m": [0.0, 1.0]}, [1, 2])),
                ("descriptor", {**early.descriptor_doc, "run_start": bundle.start_doc["uid"]}),
                ("event_page", page(stranger, {"cam_image": frames(3), "m": [0.0, 1.0, 2.0]}, [1, 2, 3])),
                ("stop", bundle.compose_stop())]
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            summary = summary_of(feed(analysis, docs))
        assert json.loads(summary["rejected_by_reason"]) == {"unknown descriptor": 5}
        assert summary["frames_ok"] == 2 and adds_up(summary)
        assert sum("unknown descriptor" in r.getMessage() for r in caplog.records) == 1  # once per run


def test_a_failed_stream_datum_is_counted_once(tmp_path, monkeypatch):
    bl = make_beamline("published", seed=1, data_mode="hdf5", hdf5_directory=str(tmp_path))
    docs = []
    RunEngine({})(scan(bl, 2, 3), lambda name, doc: docs.append((name, doc)))
    # a replay may deliver the events (positions) before the stream_datum (frames); the 2nd stream_datum fails
    failing = [d for n, d in docs if n == "stream_datum"][1]["uid"]
    events = [(n, d) for n, d in docs if n == "event"]
    others = [(n, d) for n, d in docs if n not in ("event", "stop")]
    read = ExternalFrames.read_stream_datum

    def flaky(self, doc):
        if doc["uid"] == failing:
            raise OSError("injected: file unreadable")
        return read(self, doc)

    monkeypatch.setattr(ExternalFrames, "read_stream_datum", flaky)
    analysis = NanobeamAnalysis(CentroidPredictor(), threaded=False)
    start = [(n, d) for n, d in others if n != "stream_datum"]
    derived = feed(analysis, start + events + [(n, d) for n, d in others if n == "stream_datum"] + [docs[-1]])
    run = analysis.maps[docs[0][1]["uid"]]
    summary = summary_of(derived)
    assert run.received == 6 and run.errors == 1 and len(run) == 5
    assert summary["frames_errors"] == 1 and summary["frames_received"] == 6 and adds_up(summary)


# ---------------------------------------------------------------- 7. a model for another instrument
def test_session_setup_refuses_a_model_for_another_instrument_naming_the_field():
    bl = make_beamline("published", seed=1, instrument=OTHER_INSTRUMENT)
    RE = RunEngine({})
    with pytest.raises(ValueError, match="energy_kev"):
        setup(RE, detector=bl.detector, x=bl.stage.x, y=bl.stage.y)
    assert MAPS_COMMAND not in RE.commands and not any(RE.dispatcher.cb_registry.callbacks.values())  # nothing set up


def test_frames_of_a_run_declaring_another_instrument_are_flagged_not_ok(caplog):
    bl = make_beamline("published", seed=1, instrument=OTHER_INSTRUMENT)
    analysis = NanobeamAnalysis(CentroidPredictor(), threaded=False)  # a model for the published setup
    with caplog.at_level(logging.ERROR):
        uid, derived = run_analysis(bp.grid_scan([bl.detector], bl.stage.y, -1, 1, 2, bl.stage.x, -1, 1, 3), analysis)
    assert set(analysis.maps[uid].scattered()["status"]) == {"wrong_instrument"}
    summary = summary_of(derived)
    assert summary["frames_ok"] == 0 and summary["frames_flagged"] == 6
    assert OTHER_INSTRUMENT.fingerprint() in caplog.text
    bundle, desc = raw_run(instrument_fingerprint=OTHER_INSTRUMENT.fingerprint())  # declared in the start document
    feed(analysis, [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc),
                    ("event_page", page(desc, {"cam_image": frames(2), "m": [0.0, 1.0]}, [1, 2])),
                    ("stop", bundle.compose_stop())])
    assert analysis.maps[bundle.start_doc["uid"]].scattered()["status"].tolist() == ["wrong_instrument"] * 2


# ---------------------------------------------------------------- 8. leaks and lifetime
def analysis_threads():
    return [t for t in threading.enumerate() if t.name == "nanopilot-analysis"]


def test_fifty_unclosed_analyses_release_their_threads_after_gc():
    gc.collect()
    before = len(analysis_threads())
    bundle, desc = raw_run()
    derived = []
    analyses = []
    for i in range(50):
        analysis = NanobeamAnalysis(CentroidPredictor(), max_latency=60.0)
        if i == 0:  # one is dropped with a run in flight: it still finishes it
            analysis.subscribe(lambda name, doc: derived.append(name))
            for name, doc in [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc),
                              ("event_page", page(desc, {"cam_image": frames(4), "m": [0.0] * 4}, [1, 2, 3, 4])),
                              ("stop", bundle.compose_stop())]:
                analysis(name, doc)
        analyses.append(analysis)
    assert len(analysis_threads()) == before + 50
    refs = [weakref.ref(a) for a in analyses]
    del analysis, analyses
    gc.collect()
    deadline = time.monotonic() + 20
    while len(analysis_threads()) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(r() is None for r in refs) and len(analysis_threads()) <= before
    assert derived[-1] == "stop"


def test_analysis_is_a_context_manager_that_finishes_and_stops_its_worker():
    bl = make_beamline("published", seed=1)
    with NanobeamAnalysis(CentroidPredictor(), max_latency=60.0) as analysis:
        RE = RunEngine({})
        RE.subscribe(analysis)
        (uid,) = RE(scan(bl, 2, 3))
        worker = analysis._worker.thread
    assert not worker.is_alive() and len(analysis.maps[uid]) == 6 and analysis.maps[uid].done


def test_session_close_unsubscribes_and_stops_the_analysis():
    bl = make_beamline("published", seed=1)
    RE = RunEngine({})
    with setup(RE, detector=bl.detector, x=bl.stage.x, y=bl.stage.y) as session:
        (first,) = RE(scan(bl, 2, 2))
        worker = session.analysis._worker.thread
    assert not worker.is_alive() and len(session.maps[first]) == 4 and session.closed
    (second,) = RE(scan(bl, 2, 2))
    assert second not in session.maps


def shipped_copy(tmp_path, edit_weights=None, edit_sidecar=None):
    """A copy of the shipped default model under tmp_path, its tensors and sidecar edited (checksum updated)."""
    import hashlib

    sidecar = shipped_model_path()
    state = torch.load(sidecar.with_suffix(".pt"), weights_only=True)
    meta = json.loads(sidecar.read_text())
    if edit_weights:
        edit_weights(state)
    if edit_sidecar:
        edit_sidecar(meta)
    torch.save(state, tmp_path / "edited.pt")
    meta["weights"]["file"] = "edited.pt"
    meta["weights"]["sha256"] = hashlib.sha256((tmp_path / "edited.pt").read_bytes()).hexdigest()
    (tmp_path / "edited.json").write_text(json.dumps(meta))
    return tmp_path / "edited"


def test_nan_weights_are_refused_at_load_naming_the_file(tmp_path):
    def poison(state):
        name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
        state[name].view(-1)[0] = float("nan")

    with pytest.raises(ValueError, match=r"edited\.pt.*NaN"):
        load_model(shipped_copy(tmp_path, edit_weights=poison))


def test_malformed_count_stats_give_a_value_error_naming_the_file_and_field(tmp_path):
    path = shipped_copy(tmp_path, edit_sidecar=lambda meta: meta.update(count_stats=[3572.28, 7222.6]))
    with pytest.raises(ValueError, match=r"edited\.json.*count_stats"):
        Predictor.load(path)
