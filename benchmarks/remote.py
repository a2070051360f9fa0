"""The analysis beside the acquisition: frames/s end to end through bluesky's 0MQ proxy with 1 and 2 `nanopilot
worker` processes, next to the in-process analysis on the same runs, and the latency from frame to analysis
document.

Throughput: ``--runs`` raw runs of ``--frames`` 64 x 64 frames in total (event pages of ``--page``), the same frames
each time, published as fast as they go to the raw proxy; the clock runs from the first document sent to the last
analysis (and texture) run's stop received from the analysis proxy (workers started and connected before: their
start-up is printed apart). Workers divide runs (not frames): the runs' uids are chosen so that each of 2 workers
gets half. The in-process baseline gets the same documents straight from this process (no transport), with the
same stages (analysis with the residual check, texture labels). Each analysis first gets a warm-up run (untimed).

Latency: a step scan of the simulated beamline (``--points``), one event per point; for each frame the time from
the raw event (its ``time``) to its analysis event page received here, remote and in-process. Then to decision: a
plan in a session (``setup``, local or ``analysis="remote"``) that waits for the analysis after every frame, as the
adaptive plans do; the time from the frame's event to the wait's return.

    python benchmarks/remote.py [--frames 8192] [--runs 4] [--page 512] [--points 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
from callback_throughput import make_documents  # this folder's: the benchmarks run as scripts

from nanopilot.model.data import DEFAULT_RANGES, sample_params
from nanopilot.physics import poisson, simulate
from nanopilot.remote.partition import owner
from nanopilot.remote.wire import ANALYSIS_PREFIX, HEARTBEAT_PREFIX, PING_PREFIX, ZmqSink, ZmqSource

BIN = os.path.dirname(sys.executable)


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def raw_runs(frames: np.ndarray, runs: int, page: int, workers: int = 2) -> list[list[tuple[str, dict]]]:
    """``runs`` raw runs sharing ``frames`` (N, H, W) out in event pages; run i's uid has owner i % ``workers``."""
    out = []
    for i, chunk in enumerate(np.array_split(frames, runs)):
        uid = next(u for u in iter(lambda: str(uuid.uuid4()), None) if owner(u, workers) == i % workers)
        out.append(make_documents(chunk, page, uid))
    return out


class Deployment:
    """A raw proxy, an analysis proxy and ``workers`` worker processes (stopped by :meth:`close`)."""

    def __init__(self, workers: int, threads: int):
        self.raw_in, self.raw_out, self.ana_in, self.ana_out = (free_address() for _ in range(4))
        proxy = os.path.join(BIN, "bluesky-0MQ-proxy")
        self.processes = [subprocess.Popen([proxy, "--in-address", a, "--out-address", b], stdout=subprocess.DEVNULL)
                          for a, b in ((self.raw_in, self.raw_out), (self.ana_in, self.ana_out))]
        self.docs, self.beats, self.received_at = [], [], {}
        self.source = ZmqSource(self.ana_out, self._take, prefixes=[ANALYSIS_PREFIX, HEARTBEAT_PREFIX])
        self.thread = threading.Thread(target=self.source.run, daemon=True)
        self.thread.start()
        self.sink = ZmqSink(self.raw_in, prefix=b"")
        t0 = time.perf_counter()
        for i in range(workers):
            self.processes.append(subprocess.Popen(
                [os.path.join(BIN, "nanopilot"), "worker", "--listen", self.raw_out, "--publish", self.ana_in,
                 "--partition", f"{i}/{workers}", "--threads", str(threads)], stdout=subprocess.DEVNULL))
        self.connect(workers)
        self.startup = time.perf_counter() - t0

    def _take(self, prefix, name, doc):
        if prefix == HEARTBEAT_PREFIX:
            self.beats.append(doc)
        else:
            self.docs.append((name, doc))
            if name == "event_page":
                now = time.time()
                for seq in doc["data"]["raw_seq_num"]:
                    self.received_at.setdefault(seq, now)

    def connect(self, workers: int, timeout: float = 180.0) -> None:
        ping, deadline = str(uuid.uuid4()), time.monotonic() + timeout
        while len({b["worker"] for b in list(self.beats) if b.get("ping") == ping}) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{workers} workers did not answer within {timeout} s")
            self.sink("ping", ping, prefix=PING_PREFIX)
            time.sleep(0.1)

    def stops(self) -> int:
        return sum(1 for name, _ in list(self.docs) if name == "stop")

    def close(self) -> None:
        self.sink.close()
        self.source.stop()
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def remote_rate(frames, args, workers: int) -> tuple[float, float]:
    """(frames/s end to end, worker start-up s) with ``workers`` worker processes."""
    deployment = Deployment(workers, args.threads)
    try:
        for docs in raw_runs(frames[:2 * args.page], 2, args.page, 2):  # warm-up: a run for each worker
            for name, doc in docs:
                deployment.sink(name, doc)
        while deployment.stops() < 4:
            time.sleep(0.01)
        runs = raw_runs(frames, args.runs, args.page, 2)
        t0 = time.perf_counter()
        for docs in runs:
            for name, doc in docs:
                deployment.sink(name, doc)
        while deployment.stops() < 4 + 2 * args.runs:  # an analysis run and a texture run per raw run
            time.sleep(0.01)
        return len(frames) / (time.perf_counter() - t0), deployment.startup
    finally:
        deployment.close()


def in_process_rate(frames, args) -> float:
    import torch

    from nanopilot.callbacks import NanobeamAnalysis
    from nanopilot.model import Predictor
    from nanopilot.texture import TextureCallback, frame_descriptor

    torch.set_num_threads(args.threads)
    analysis = NanobeamAnalysis(Predictor.load(), frame_features=frame_descriptor)
    analysis.add_stage(TextureCallback())
    try:
        for docs in raw_runs(frames[:2 * args.page], 2, args.page, 2):  # warm-up, as the workers'
            for name, doc in docs:
                analysis(name, doc)
        analysis.flush(600)
        runs = raw_runs(frames, args.runs, args.page, 2)
        t0 = time.perf_counter()
        for docs in runs:
            for name, doc in docs:
                analysis(name, doc)
        analysis.flush(600)
        return len(frames) / (time.perf_counter() - t0)
    finally:
        analysis.close()


def step_scan_latency(args, remote: bool) -> np.ndarray:
    """Seconds from each raw event to its analysis event page, for a step scan of ``args.points`` points."""
    import bluesky.plans as bp
    from bluesky import RunEngine

    from nanopilot.callbacks import NanobeamAnalysis
    from nanopilot.sim_devices import make_beamline

    bl, RE, sent = make_beamline("domains", seed=4), RunEngine({}), {}
    RE.subscribe(lambda name, doc: sent.setdefault(doc["seq_num"], doc["time"]) if name == "event" else None)
    side = int(np.ceil(np.sqrt(args.points)))
    plan = bp.grid_scan([bl.detector], bl.stage.y, -1, 1, side, bl.stage.x, -1, 1, side)
    if remote:
        deployment = Deployment(1, args.threads)
        try:
            RE.subscribe(deployment.sink)
            RE(plan)
            while deployment.stops() < 2:
                time.sleep(0.01)
            received = deployment.received_at
        finally:
            deployment.close()
    else:
        from nanopilot.model import Predictor

        analysis, received = NanobeamAnalysis(Predictor.load()), {}

        def note(name, doc):
            if name == "event_page":
                received.update({s: time.time() for s in doc["data"]["raw_seq_num"]})

        analysis.subscribe(note)
        RE.subscribe(analysis)
        RE(plan)
        analysis.close()
    return np.array([received[s] - sent[s] for s in sorted(sent)])


def decision_latency(args, remote: bool) -> np.ndarray:
    """Seconds from each frame (a step of the plan, its event sent) to the plan's wait for the analysis returning
    (``wait_for_analysis``: the moment a plan can decide), in a session, ``args.points`` steps."""
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp
    from bluesky import RunEngine

    from nanopilot.plans.waiting import wait_for_analysis
    from nanopilot.remote.link import RemoteOptions
    from nanopilot.session import setup
    from nanopilot.sim_devices import make_beamline

    bl, RE, latencies = make_beamline("domains", seed=4), RunEngine({}), []
    deployment = Deployment(1, args.threads) if remote else None
    options = dict(analysis="remote", remote=RemoteOptions(publish=deployment.raw_in, listen=deployment.ana_out)) \
        if remote else {}

    @bpp.run_decorator(md={"motors": ["stage_y", "stage_x"]})
    def plan(maps):
        for x in np.linspace(-1, 1, args.points):
            yield from bps.mv(bl.stage.x, x)
            yield from bps.trigger_and_read([bl.detector, bl.stage.x, bl.stage.y])
            taken = time.perf_counter()  # the event has been sent (the RunEngine emits it at the save)
            yield from wait_for_analysis(maps, timeout=60)
            latencies.append(time.perf_counter() - taken)

    try:
        with setup(RE, detector=bl.detector, x=bl.stage.x, y=bl.stage.y, **options) as session:
            RE(plan(session.maps))
    finally:
        if deployment is not None:
            deployment.close()
    return np.array(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=8192)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--page", type=int, default=512)
    parser.add_argument("--points", type=int, default=36)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per analysis (each worker's too)")
    args = parser.parse_args()
    params = sample_params(args.frames, DEFAULT_RANGES, 3, np.random.default_rng(0))
    frames = poisson(simulate(params, counts="published"), 1).astype(np.float32)
    print(f"{args.frames} frames of 64 x 64 in {args.runs} runs (event pages of {args.page}), the default ensemble, "
          f"{os.cpu_count()} CPU cores, torch threads {args.threads} per analysis")
    local = in_process_rate(frames, args)
    print(f"  in-process analysis (baseline, same runs):     {local:8,.0f} frames/s")
    for workers in (1, 2):
        rate, startup = remote_rate(frames, args, workers)
        print(f"  through the proxy, {workers} worker(s):               {rate:8,.0f} frames/s ({rate / local:.2f} of "
              f"in-process; workers up and connected in {startup:.1f} s)")
    for remote in (False, True):
        lat = step_scan_latency(args, remote)
        print(f"  frame -> analysis document, step scan of {len(lat)} points, {'remote' if remote else 'in-process'}: "
              f"median {1e3 * np.median(lat):.0f} ms, 95th percentile {1e3 * np.percentile(lat, 95):.0f} ms, "
              f"max {1e3 * lat.max():.0f} ms")
    for remote in (False, True):
        lat = decision_latency(args, remote)
        print(f"  frame -> decision (the plan's wait for the analysis returns), {len(lat)} steps, "
              f"{'remote' if remote else 'in-process'}: median {1e3 * np.median(lat):.0f} ms, 95th percentile "
              f"{1e3 * np.percentile(lat, 95):.0f} ms, max {1e3 * lat.max():.0f} ms")


if __name__ == "__main__":
    main()
