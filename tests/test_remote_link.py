"""A session's link to remote workers (nanopilot.remote.link): a worker that dies, restarts or falls behind mid-scan
is seen within a few seconds; the plan stops safely, waits (the run given again to the new worker), or falls back to
the in-process analysis, as configured; no frame lost or counted twice."""

import threading
import time

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import pytest
from bluesky import RunEngine
from ophyd import Signal

from nanopilot.callbacks import LiveMaps, NanobeamAnalysis
from nanopilot.remote.link import RemoteLink, RemoteOptions
from nanopilot.remote.watch import RemoteAnalysisError
from nanopilot.sim_devices import make_beamline
from remote_deploy import worker_thread, zmq_proxy
from test_callbacks import CentroidPredictor
from test_remote import columns, summary


def slow_scan(bl, shutter, n=40, pause=0.1):
    """Open the shutter, take ``n`` frames ``pause`` s apart (a checkpoint before each), close it on every exit."""
    @bpp.run_decorator(md={"plan_name": "slow_scan", "motors": ["stage_y", "stage_x"]})
    def inner():
        yield from bps.mv(shutter, 1)
        for _ in range(n):
            yield from bps.checkpoint()
            yield from bps.trigger_and_read([bl.detector, bl.stage.x, bl.stage.y])
            yield from bps.sleep(pause)

    return (yield from bpp.finalize_wrapper(inner(), bps.mv(shutter, 0)))


def kill(worker):
    """The worker stops dead: no more heartbeats, no more documents, no stop documents."""
    worker._stopping.set()
    worker.source.stop()


def at_event(k, action):
    """A RunEngine callback calling ``action()`` (in a thread) when the ``k``-th event is sent."""
    def callback(name, doc):
        if name == "event" and doc["seq_num"] == k:
            threading.Thread(target=action).start()
    return callback


def maps_into(docs):
    """The session's LiveMaps (the model's 64 x 64 frames), also collecting the derived documents into ``docs``."""
    maps = LiveMaps(CentroidPredictor.instrument, CentroidPredictor.outputs, frame_shape=(64, 64))
    maps.subscribe(lambda name, doc: docs.append((name, doc)))
    return maps


def wait_done(maps, uid, timeout):
    """Until the analysis (and texture) runs of raw run ``uid`` have stopped, for the maps."""
    deadline = time.monotonic() + timeout
    while not (uid in maps and maps[uid].done):
        assert time.monotonic() < deadline, f"the analysis of run {uid[:8]} did not end within {timeout} s"
        time.sleep(0.05)


@pytest.fixture
def deployment():
    with zmq_proxy() as raw, zmq_proxy() as analysis:
        yield raw, analysis


def options(deployment, **kw):
    (raw_in, _), (_, ana_out) = deployment
    return RemoteOptions(publish=raw_in, listen=ana_out, **{"timeout": 1.0, "connect_timeout": 30, **kw})


def test_a_dead_worker_stops_the_plan_safely_within_seconds(deployment):
    (_, raw_out), (ana_in, _) = deployment
    bl, shutter, docs = make_beamline("domains", seed=1), Signal(name="shutter", value=0), []
    with worker_thread(CentroidPredictor(), raw_out, ana_in, heartbeat=0.1, texture=False) as worker:
        RE = RunEngine({})
        link = RemoteLink(RE, maps_into(docs), options(deployment))
        killed = []
        RE.subscribe(at_event(3, lambda: (killed.append(time.monotonic()), kill(worker))))
        raw = []
        RE.subscribe(lambda name, doc: raw.append((name, doc)))
        with pytest.raises(RemoteAnalysisError, match="sent no heartbeat"):
            RE(slow_scan(bl, shutter))
        seen = time.monotonic() - killed[0]
        link.close()
    assert seen < 3.0, f"the failure was seen {seen:.1f} s after the worker died"
    assert shutter.get() == 0  # closed on the way out
    stop = next(doc for name, doc in raw if name == "stop")
    assert stop["exit_status"] == "fail" and "sent no heartbeat" in stop["reason"]
    assert stop["num_events"]["primary"] < 40  # it stopped, not ran on


def test_a_dead_worker_falls_back_to_the_in_process_analysis(deployment):
    (_, raw_out), (ana_in, _) = deployment
    bl, shutter, remote, local = make_beamline("domains", seed=1), Signal(name="shutter", value=0), [], []
    maps = maps_into(remote)
    analysis = NanobeamAnalysis(CentroidPredictor(), threaded=False, maps=maps)
    analysis.subscribe(lambda name, doc: local.append((name, doc)))
    with worker_thread(CentroidPredictor(), raw_out, ana_in, heartbeat=0.1, texture=False, max_latency=0.05) as w:
        RE = RunEngine({})
        link = RemoteLink(RE, maps, options(deployment, on_failure="fallback"), local=analysis)
        RE.subscribe(at_event(5, lambda: kill(w)))
        (uid,) = RE(slow_scan(bl, shutter, n=25))
        link.close()
    assert link.fell_back and shutter.get() == 0
    assert columns(local, uid)["raw_seq_num"] == list(range(1, 26))  # the whole run, each frame once
    assert summary(local, uid)["frames_received"] == 25
    aborted = [doc for name, doc in remote if name == "stop" and doc["exit_status"] == "abort"]
    assert len(aborted) <= 1  # the dead worker's partial run (if it had begun one), ended for the maps
    run = maps[uid]
    assert run.done and len(run) == 25 and sorted(run.scattered()["seq_num"]) == list(range(1, 26))


def test_a_restarted_worker_is_given_the_run_again_while_the_plan_waits(deployment):
    (_, raw_out), (ana_in, _) = deployment
    bl, shutter, docs = make_beamline("domains", seed=1), Signal(name="shutter", value=0), []
    second = {}

    def restart(worker):
        kill(worker)
        time.sleep(1.5)  # dead for longer than the timeout: the RunEngine waits
        second["cm"] = worker_thread(CentroidPredictor(), raw_out, ana_in, heartbeat=0.1, texture=False,
                                     max_latency=0.05)
        second["worker"] = second["cm"].__enter__()

    try:
        with worker_thread(CentroidPredictor(), raw_out, ana_in, heartbeat=0.1, texture=False) as first:
            RE = RunEngine({})
            maps = maps_into(docs)
            link = RemoteLink(RE, maps, options(deployment, on_failure="wait"))
            waited = []
            link.waiting.subscribe(lambda value, **kw: waited.append(value))
            RE.subscribe(at_event(4, lambda: restart(first)))
            (uid,) = RE(slow_scan(bl, shutter, n=20))
            wait_done(maps, uid, 20)
            link.close()
    finally:
        if "cm" in second:
            second["cm"].__exit__(None, None, None)
    assert 1 in waited  # the RunEngine was suspended while no worker answered
    finished = [d for n, d in docs if n == "stop" and d["exit_status"] == "success"]
    assert len(finished) == 1  # the new worker's analysis run; the first worker's partial one ended as aborted
    assert sorted(maps[uid].scattered()["seq_num"]) == list(range(1, 21))  # all, once
    run = maps[uid]  # a point taken again after the suspension (bluesky re-emits its seq_num) is refused as duplicate
    assert run.accounted == run.received == 20 + run.rejected_by_reason.get("duplicate seq_num", 0)


@pytest.mark.slow  # about 10 s
def test_a_worker_behind_suspends_the_run_engine_and_loses_nothing(deployment):
    (_, raw_out), (ana_in, _) = deployment
    bl, shutter, docs, lags = make_beamline("domains", seed=1), Signal(name="shutter", value=0), [], []
    slow = CentroidPredictor(delay=0.08)  # about 12 frames/s
    with worker_thread(slow, raw_out, ana_in, heartbeat=0.1, texture=False, batch_size=1, max_latency=0.01):
        RE = RunEngine({})
        maps = maps_into(docs)
        link = RemoteLink(RE, maps, options(deployment, max_lag=5))
        waited = []
        link.waiting.subscribe(lambda value, **kw: waited.append(value))
        RE.subscribe(lambda name, doc: lags.append(link.watch.lag()) if name == "event" else None)
        (uid,) = RE(slow_scan(bl, shutter, n=60, pause=0.005))  # about 100 frames/s without the worker
        wait_done(maps, uid, 30)
        link.close()
    assert 1 in waited and max(lags) < 30  # unbounded it would reach about 50
    assert sorted(maps[uid].scattered()["seq_num"]) == list(range(1, 61))


def test_no_worker_is_one_clear_error_before_anything_is_subscribed(deployment):
    RE = RunEngine({})
    with pytest.raises(ConnectionError, match=r"worker\(s\) \[0, 1\] of 2 did not answer within 1 s"):
        RemoteLink(RE, LiveMaps(), options(deployment, workers=2, connect_timeout=1))
    assert not RE.preprocessors and not RE.suspenders
    with pytest.raises(ValueError, match="on_failure must be one of"):
        RemoteLink(RE, LiveMaps(), options(deployment, on_failure="retry"))
    with pytest.raises(ValueError, match="needs the in-process analysis"):
        RemoteLink(RE, LiveMaps(), options(deployment, on_failure="fallback"))
