"""Derived runs are complete when the plan that made them returns, and when the analysis closes (issue 18):
plans wait for the analysis and texture runs of their raw run to stop; closing ends every analysis run with a
stop document, saying why when it could not be finished."""

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import pytest
from bluesky import RunEngine

from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.plans.waiting import analysed_run
from nanopilot.sim_devices import make_beamline
from nanopilot.texture import TextureCallback
from test_callbacks import CentroidPredictor


def slow_analysis(delay: float, **kwargs):
    """A threaded analysis whose every batch takes ``delay`` s, with a texture callback; the derived documents
    (analysis and texture runs) are collected in ``docs``."""
    analysis = NanobeamAnalysis(CentroidPredictor(delay=delay), max_latency=0.01, **kwargs)
    texture = TextureCallback()
    analysis.add_stage(texture)
    docs = []
    analysis.subscribe(lambda name, doc: docs.append(("analysis", name, doc)))
    texture.subscribe(lambda name, doc: docs.append(("texture", name, doc)))
    return analysis, docs


def stops(docs) -> dict:
    return {kind: doc for kind, name, doc in docs if name == "stop"}


def engine(delay: float, **kwargs):
    """(beamline, slow analysis, its derived documents, a RunEngine subscribed to it)."""
    analysis, docs = slow_analysis(delay)
    RE = RunEngine({}, **kwargs)
    RE.subscribe(analysis)
    return make_beamline("domains", seed=1), analysis, docs, RE


def measure(detector, n):
    def body(uid):
        for _ in range(n):
            yield from bps.trigger_and_read([detector])
        return uid
    return body


def test_a_plan_returns_once_its_analysis_and_texture_runs_have_stopped():
    bl, analysis, docs, RE = engine(0.5, call_returns_result=True)
    result = RE(analysed_run(measure(bl.detector, 3), {}, analysis.maps, timeout=30))
    assert set(stops(docs)) == {"analysis", "texture"}  # a batch still under way at close_run is waited for
    assert stops(docs)["analysis"]["exit_status"] == "success"
    assert analysis.maps[result.plan_result].done and len(analysis.maps[result.plan_result]) == 3
    analysis.close()


def test_a_failing_plan_closes_its_run_and_waits_for_its_analysis_before_raising():
    bl, analysis, docs, RE = engine(0.5)

    def failing(uid):
        yield from measure(bl.detector, 2)(uid)
        raise RuntimeError("injected failure in the plan")

    with pytest.raises(RuntimeError, match="injected failure"):
        RE(analysed_run(failing, {}, analysis.maps, timeout=30))
    stop = stops(docs)["analysis"]
    assert stop["exit_status"] == "fail" and "injected failure in the plan" in stop["reason"]
    analysis.close()


def test_a_plan_says_when_its_analysis_does_not_finish_in_time():
    bl, analysis, docs, RE = engine(1.0)
    with pytest.raises(TimeoutError, match="did not finish within 0.1 s"):
        RE(analysed_run(measure(bl.detector, 2), {}, analysis.maps, timeout=0.1))
    assert analysis.close(timeout=30)
    assert stops(docs)["analysis"]["exit_status"] == "success"  # finished later, by close()


def raw_documents(detector, n):
    docs = []
    RE = RunEngine({})
    RE(bp.count([detector], n), lambda name, doc: docs.append((name, doc)))
    return docs


def test_closing_ends_the_analysis_run_of_a_raw_run_still_open_with_abort():
    bl = make_beamline("domains", seed=1)
    analysis, docs = slow_analysis(0.0)
    for name, doc in raw_documents(bl.detector, 3)[:-1]:  # the raw run's stop never comes
        analysis(name, doc)
    assert analysis.close(timeout=30)
    stop = stops(docs)["analysis"]
    assert stop["exit_status"] == "abort" and "the analysis was closed while the run was open" in stop["reason"]
    assert "texture" in stops(docs)


def test_closing_gives_up_on_a_slow_analysis_and_says_so_in_the_stop_document():
    bl = make_beamline("domains", seed=1)
    analysis, docs = slow_analysis(0.6, batch_size=1)
    for name, doc in raw_documents(bl.detector, 8):
        analysis(name, doc)
    assert not analysis.close(timeout=0.5)  # then the batch under way is finished, the rest skipped
    stop = stops(docs)["analysis"]
    assert stop["exit_status"] == "fail" and "closed before it had finished" in stop["reason"]
    (summary,) = [doc for kind, name, doc in docs if name == "event" and "frames_ok" in doc["data"]]
    assert summary["data"]["frames_received"] == 8 and summary["data"]["frames_skipped"] >= 6
    assert sum(summary["data"][f"frames_{k}"] for k in ("ok", "warned", "flagged", "skipped")) == 8


def test_closing_an_analysis_asked_to_stop_waits_for_its_thread_only():
    """A freed analysis asks its worker thread to stop (its finaliser); the exit hook's close then must wait for
    that thread, not for a flush it will never read (that held up every interpreter exit by 60 s)."""
    import time

    bl, analysis, _, RE = engine(0.5)
    RE(bp.count([bl.detector], 2))  # a batch under way: the stop request waits behind it
    worker = analysis._worker
    worker.stop()
    t0 = time.monotonic()
    assert worker.close(10.0) and time.monotonic() - t0 < 5 and not worker.thread.is_alive()
