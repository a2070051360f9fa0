"""nanopilot worker: the analysis and texture stages beside the RunEngine, over bluesky's 0MQ proxy: the same
documents as in-process, runs divided among workers (each once), frames lost on the way counted, clear errors."""

import os
import time

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine

from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.remote.partition import RunFilter, owner, parse_partition
from nanopilot.remote.wire import ZmqSink, zmq_address
from nanopilot.sim_devices import make_beamline
from nanopilot.texture import TextureCallback, frame_descriptor
from remote_deploy import reader, worker_thread, zmq_proxy
from test_callbacks import CentroidPredictor

KEYS = ("strain", "omega", "chi", "strain_std", "status", "raw_seq_num", "stage_x", "stage_y")


def scan(bl, n_y=3, n_x=4):
    return bp.grid_scan([bl.detector], bl.stage.y, -1, 1, n_y, bl.stage.x, -1, 1, n_x, snake_axes=True)


def in_process(plans):
    """The analysis and texture documents of ``plans`` analysed in-process, as a session does."""
    docs = []
    analysis = NanobeamAnalysis(CentroidPredictor(), frame_features=frame_descriptor, threaded=False)
    texture = TextureCallback()
    analysis.add_stage(texture)
    analysis.subscribe(lambda name, doc: docs.append((name, doc)))
    texture.subscribe(lambda name, doc: docs.append((name, doc)))
    RE = RunEngine({})
    RE.subscribe(analysis)
    uids = [RE(plan)[0] for plan in plans]
    return uids, docs


def columns(docs, raw_uid, plan_name="nanopilot_analysis"):
    """Per data key, the values of the event pages of the derived run of ``raw_uid`` made by ``plan_name``."""
    starts = {d["uid"] for n, d in docs if n == "start" and d.get("raw_uid") == raw_uid
              and d["plan_name"] == plan_name}
    assert len(starts) == 1, f"{len(starts)} {plan_name} runs of raw run {raw_uid[:8]}"
    primary = {d["uid"] for n, d in docs if n == "descriptor" and d["run_start"] in starts and d["name"] == "primary"}
    out = {}
    for name, doc in docs:
        if name == "event_page" and doc["descriptor"] in primary:
            for key, values in doc["data"].items():
                out.setdefault(key, []).extend(values)
    return out


def summary(docs, raw_uid):
    start = next(d["uid"] for n, d in docs if n == "start" and d.get("raw_uid") == raw_uid
                 and d["plan_name"] == "nanopilot_analysis")
    desc = next(d["uid"] for n, d in docs if n == "descriptor" and d["run_start"] == start and d["name"] == "summary")
    return next(d["data"] for n, d in docs if n == "event" and d["descriptor"] == desc)


def test_a_worker_gives_the_in_process_documents_through_the_proxy():
    bl = make_beamline("domains", seed=11)
    with zmq_proxy() as (raw_in, raw_out), zmq_proxy() as (ana_in, ana_out), reader(ana_out) as out, \
            worker_thread(CentroidPredictor(), raw_out, ana_in, batch_size=5, heartbeat=0.1):
        sink = ZmqSink(raw_in, prefix=b"")
        out.connect(sink)
        RE = RunEngine({})
        RE.subscribe(sink)
        uids = [RE(scan(bl))[0], RE(scan(bl, 2, 3))[0]]
        out.wait(lambda: sum(1 for n, d in out.docs if n == "stop") == 4, what="2 analysis and 2 texture runs")
        sink.close()
    beats = out.beats
    assert beats and all(b["partition"] == [0, 1] for b in beats)
    last = beats[-1]["runs"]
    assert last[uids[0]]["events"] == 12 and last[uids[0]]["frames_accounted"] == 12 and last[uids[0]]["done"]
    bl = make_beamline("domains", seed=11)
    local_uids, local = in_process([scan(bl), scan(bl, 2, 3)])
    for remote_uid, local_uid in zip(uids, local_uids):
        remote_cols, local_cols = columns(out.docs, remote_uid), columns(local, local_uid)
        for key in KEYS:
            np.testing.assert_array_equal(remote_cols[key], local_cols[key], err_msg=key)
        assert columns(out.docs, remote_uid, "nanopilot_texture")["texture"] == \
            columns(local, local_uid, "nanopilot_texture")["texture"]
        assert summary(out.docs, remote_uid)["frames_ok"] == summary(local, local_uid)["frames_ok"] > 0


def test_two_workers_divide_the_runs_each_analysed_once():
    bl = make_beamline("domains", seed=3)
    with zmq_proxy() as (raw_in, raw_out), zmq_proxy() as (ana_in, ana_out), reader(ana_out) as out, \
            worker_thread(CentroidPredictor(), raw_out, ana_in, partition=(0, 2), texture=False, heartbeat=0.1), \
            worker_thread(CentroidPredictor(), raw_out, ana_in, partition=(1, 2), texture=False, heartbeat=0.1):
        sink = ZmqSink(raw_in, prefix=b"")
        out.connect(sink, workers=2)
        RE = RunEngine({})
        RE.subscribe(sink)
        uids = [RE(scan(bl, 2, 2))[0] for _ in range(6)]
        out.wait(lambda: sum(1 for n, d in out.docs if n == "stop") == 6, what="6 analysis runs")
        sink.close()
    made_by = {}
    for beat in out.beats:
        for uid in beat["runs"]:
            made_by.setdefault(uid, set()).add(beat["partition"][0])
    for uid in uids:
        assert made_by[uid] == {owner(uid, 2)}  # one worker, the owner
        assert len(columns(out.docs, uid)["raw_seq_num"]) == 4
    assert {owner(uid, 2) for uid in uids} == {0, 1}  # (6 random uids: both workers had work)


def test_events_that_never_arrived_are_counted_as_lost():
    """The stop document's num_events says how many events were sent; those missing are lost frames, counted."""
    analysis = NanobeamAnalysis(CentroidPredictor(), threaded=False)
    docs, lost = [], []
    analysis.subscribe(lambda name, doc: docs.append((name, doc)))

    def on_lost(stop, missing):
        lost.append(missing)
        run = analysis._runs[stop["run_start"]]  # as RemoteWorker._count_lost
        run.counts.count(received=missing["primary"], errors=missing["primary"])

    keep = RunFilter(analysis, on_lost=on_lost)
    dropped = iter([False, True, False, True, False, False])

    def transport(name, doc):
        if name == "event" and next(dropped):
            return  # lost on the way
        keep(name, doc)

    RE = RunEngine({})
    RE.subscribe(transport)
    (uid,) = RE(scan(make_beamline("domains", seed=2), 2, 3))
    assert lost == [{"primary": 2}]
    data = summary(docs, uid)
    assert data["frames_received"] == 6 and data["frames_errors"] == 2 and data["frames_ok"] == 4


def test_partitions_and_addresses_are_checked():
    assert parse_partition("1/3") == (1, 3)
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError, match="INDEX/COUNT"):
            parse_partition(bad)
    assert zmq_address("127.0.0.1:5578") == "tcp://127.0.0.1:5578"
    with pytest.raises(ValueError, match="HOST:PORT"):
        zmq_address("5578")
    uids = [f"{i:08x}-aaaa-4aaa-8aaa-aaaaaaaaaaaa" for i in range(40)]
    counts = np.bincount([owner(u, 4) for u in uids], minlength=4)
    assert counts.sum() == 40 and (counts > 0).all()
    assert owner("not-a-uuid", 3) == owner("not-a-uuid", 3) in range(3)


def test_a_device_torch_cannot_use_fails_before_anything_runs(capsys):
    from nanopilot.cli import main

    code = main(["worker", "--device", "cuda", "--listen", "127.0.0.1:1", "--publish", "none"])
    err = capsys.readouterr().err
    if code == 0:
        pytest.skip("this machine has a CUDA GPU")
    assert code == 1 and "device 'cuda' is not available here" in err and "use device 'cpu'" in err
    assert main(["worker", "--device", "tpu", "--publish", "none"]) == 1
    assert "use 'cpu' or" in capsys.readouterr().err
    assert main(["worker", "--partition", "2/2"]) == 1
    assert "the index must be 0 .. 1" in capsys.readouterr().err


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def beat(worker="w1", index=0, count=1, runs=None):
    return {"worker": worker, "partition": [index, count], "pid": 1, "host": "h", "runs": runs or {}}


def test_the_watch_tells_ok_behind_stalled_dead_and_restarted():
    from nanopilot.remote.watch import BEHIND, DEAD, OK, RESTARTED, STALLED, WorkerWatch

    clock = Clock()
    watch = WorkerWatch(timeout=3.0, max_lag=10, clock=clock)
    assert watch.state()[0] == DEAD  # nobody answered yet
    watch.beat(beat())
    assert watch.state() == (OK, "")
    uid = "5e1f0c2a-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
    watch.sent("start", {"uid": uid})
    watch.sent("event_page", {"seq_num": list(range(1, 21))})  # 20 frames sent, none seen by the worker
    state, reason = watch.state()
    assert state == BEHIND and "20 frames behind" in reason and watch.lag() == 20
    clock.now += 2
    watch.beat(beat(runs={uid: {"events": 20, "frames_received": 20, "frames_accounted": 5}}))
    assert watch.state()[0] == BEHIND and watch.lag() == 15
    clock.now += 2
    watch.beat(beat(runs={uid: {"events": 20, "frames_received": 20, "frames_accounted": 12}}))
    assert watch.state() == (OK, "")  # 8 frames behind: within max_lag
    watch.sent("event_page", {"seq_num": list(range(21, 41))})
    for _ in range(5):  # behind, and no progress for more than the timeout: stalled
        clock.now += 1
        watch.beat(beat(runs={uid: {"events": 40, "frames_received": 40, "frames_accounted": 12}}))
        last = watch.state()
    assert last[0] == STALLED and "no progress" in last[1]
    clock.now += 3.5  # no heartbeat for 3.5 s
    state, reason = watch.state()
    assert state == DEAD and "sent no heartbeat for 3.5 s" in reason
    watch.beat(beat(worker="w2", runs={}))  # a new process for partition 0: the run's documents it had are lost
    state, reason = watch.state()
    assert state == RESTARTED and "restarted during run 5e1f0c2a" in reason
    watch.restart_seen()  # the run was given again to the new worker
    watch.beat(beat(worker="w2", runs={uid: {"events": 40, "frames_received": 40, "frames_accounted": 40}}))
    assert watch.state() == (OK, "")


def test_the_watch_knows_which_worker_owns_the_run():
    from nanopilot.remote.watch import DEAD, OK, WorkerWatch

    clock = Clock()
    watch = WorkerWatch(workers=2, clock=clock)
    uids = [f"{i:08x}-aaaa-4aaa-8aaa-aaaaaaaaaaaa" for i in range(20)]
    mine = next(u for u in uids if owner(u, 2) == 1)
    other = next(u for u in uids if owner(u, 2) == 0)
    watch.beat(beat(index=1, count=2))
    watch.beat(beat(index=0, count=3))  # a worker of another deployment: ignored
    assert watch.state()[0] == DEAD and "[0]" in watch.state()[1]
    assert watch.state(mine) == (OK, "")
    state, reason = watch.state(other)
    assert state == DEAD and "worker 0/2" in reason


def test_the_run_buffer_keeps_the_run_under_way_up_to_a_bound():
    from nanopilot.remote.watch import RunBuffer

    buffer = RunBuffer(max_frames=5)
    buffer("start", {"uid": "a"})
    buffer("descriptor", {"uid": "d"})
    for i in range(5):
        buffer("event", {"seq_num": i + 1})
    assert buffer.complete and len(buffer.docs) == 7
    buffer("event", {"seq_num": 6})
    assert not buffer.complete and buffer.docs == []
    buffer("start", {"uid": "b"})
    assert buffer.complete and buffer.docs == [("start", {"uid": "b"})]


KAFKA = os.environ.get("NANOPILOT_KAFKA_BOOTSTRAP")


@pytest.mark.skipif(not KAFKA, reason="no Kafka broker: none can run on the test machines (Kafka needs Java and "
                                      "a Kafka distribution, not on PyPI); NANOPILOT_KAFKA_BOOTSTRAP=HOST:PORT runs it")
def test_a_worker_reads_and_publishes_through_kafka():  # pragma: no cover - needs a broker
    import threading

    from bluesky_kafka import Publisher

    from nanopilot.remote.wire import KafkaSink, KafkaSource
    from nanopilot.remote.worker import RemoteWorker

    topic, out, docs = f"nanopilot.test.{os.getpid()}", f"nanopilot.test.analysis.{os.getpid()}", []
    worker = RemoteWorker(CentroidPredictor(), lambda handle: KafkaSource(KAFKA, [topic], "worker", handle),
                          sinks=[KafkaSink(KAFKA, out)], texture=False)
    reader = KafkaSource(KAFKA, [out], "reader", lambda prefix, name, doc: docs.append((name, doc)))
    threads = [threading.Thread(target=t.run, daemon=True) for t in (worker, reader)]
    for t in threads:
        t.start()
    time.sleep(5)  # the consumers join their groups ("latest" offsets)
    RE = RunEngine({})
    RE.subscribe(Publisher(topic=topic, bootstrap_servers=KAFKA, key="test", flush_on_stop_doc=True))
    (uid,) = RE(scan(make_beamline("domains", seed=2), 2, 3))
    deadline = time.monotonic() + 60
    while not any(name == "stop" for name, _ in docs) and time.monotonic() < deadline:
        time.sleep(0.1)
    worker.stop()
    reader.stop()
    assert columns(docs, uid)["raw_seq_num"] == list(range(1, 7))
