"""End-to-end throughput of the live analysis: event pages of 64 x 64 frames in, LiveMaps and derived documents out.

Prints frames/s for NanobeamAnalysis (threaded worker and inline) with the shipped single model and the default
ensemble (with uncertainty), next to the bare Predictor doing the same work (residual check on, as the analysis by
default) on the same frames in the same run (targets on 2 cores: >= 1,500 frames/s ensemble, ratio >= 0.9; the single
model's >= 5,000 frames/s is without the check), then the back-pressure behaviour when the stream
outruns the analysis: peak queue and skipped frames for both policies. The analysis runs as it does by default,
with the residual check and background estimate; their cost is measured apart (on against off, same run).
Then the live page's cost (issue 20, target ratio >= 0.9): the analysis writing its run to a catalogue while the
page of ``nanopilot view`` is served and polled, against without.
Then the frame preparation's cost (issue 17, target <= 15%): the same patterns read out by a simulated 256 x 256
raw detector (dark level, gain, flat field, masked hot and dead pixels), prepared by the analysis (fixed 128 x 128
ROI binned 2 x 2), next to the 64 x 64 path in the same run, and the preparation alone.

    python benchmarks/callback_throughput.py [--frames 8192] [--page 512] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from event_model import compose_run

from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.model import Predictor, load_model, shipped_model_path
from nanopilot.model.data import DEFAULT_RANGES, sample_params
from nanopilot.physics import poisson, simulate
from nanopilot.sim_devices.raw_detector import RawReadout


def make_documents(frames: np.ndarray, page: int, uid: str | None = None) -> list[tuple[str, dict]]:
    """A raw run of ``frames`` (N, H, W) (start uid ``uid``, new by default): start, descriptor (image + stage
    positions), event pages of ``page`` frames, stop."""
    n = len(frames)
    side = int(np.sqrt(n))
    bundle = compose_run(uid=uid, metadata={"motors": ["stage_y", "stage_x"], "shape": [n // side, side],
                                   "extents": [[-1, 1], [-1, 1]], "snaking": [False, False]})
    keys = {"det_image": {"source": "bench", "dtype": "array", "shape": list(frames.shape[1:])},
            "stage_x": {"source": "bench", "dtype": "number", "shape": [], "units": "um"},
            "stage_y": {"source": "bench", "dtype": "number", "shape": [], "units": "um"}}
    desc = bundle.compose_descriptor(name="primary", data_keys=keys)
    docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc)]
    x = np.tile(np.linspace(-1, 1, side), n // side + 1)[:n]
    y = np.repeat(np.linspace(-1, 1, n // side + 1), side)[:n]
    for first in range(0, n, page):
        sl = slice(first, first + page)
        m = len(frames[sl])
        now = [time.time()] * m
        data = {"det_image": frames[sl], "stage_x": x[sl].tolist(), "stage_y": y[sl].tolist()}
        docs.append(("event_page", desc.compose_event_page(
            data=data, timestamps={k: now for k in data}, seq_num=list(range(first + 1, first + m + 1)),
            time=now, validate=False)))
    docs.append(("stop", bundle.compose_stop()))
    return docs


def paged_rate(step, frames: np.ndarray, page: int) -> float:
    """Frames/s of ``step`` called on ``frames`` page by page."""
    t0 = time.perf_counter()
    for first in range(0, len(frames), page):
        step(frames[first:first + page])
    return len(frames) / (time.perf_counter() - t0)


def settled(measure):
    """Run ``measure`` after a pause: the OpenMP pool of the thread that ran the previous measurement keeps
    spinning for a while after its work and would otherwise steal the cores from this one."""
    time.sleep(1.0)
    return measure()


def run_analysis(predictor, docs, n, **kwargs) -> tuple[float, NanobeamAnalysis, int]:
    derived = []
    analysis = NanobeamAnalysis(predictor, **kwargs)
    analysis.subscribe(lambda name, doc: derived.append(name))
    peak = 0
    t0 = time.perf_counter()
    for name, doc in docs:
        analysis(name, doc)
        peak = max(peak, analysis.queued_frames)
    assert analysis.flush(timeout=600)
    wall = time.perf_counter() - t0
    run = analysis.maps.current
    assert len(run) + run.skipped + run.errors == n and derived[-1] == "stop"
    return n / wall, analysis, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8192)
    parser.add_argument("--page", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = sample_params(args.frames, DEFAULT_RANGES, 3, np.random.default_rng(0))
    frames = poisson(simulate(params, counts="published"), seed=1).astype(np.float32)
    docs = make_documents(frames, args.page)
    model = load_model(shipped_model_path())
    predictors = {
        "single model": Predictor(model.member(0), threads=args.threads),
        f"ensemble of {len(model.networks)}": Predictor.load(threads=args.threads),
    }
    print(f"{args.frames} frames of 64 x 64 counts in event pages of {args.page}, {args.threads} threads")
    for label, predictor in predictors.items():
        predictor.predict(frames[:512])  # warm-up

        def bare():  # the same work as the analysis does by default: with the residual check and background
            return paged_rate(lambda page: predictor.predict(page, residual=True), frames, args.page)

        rates = {"bare": [], "threaded": [], "inline": []}
        for _ in range(args.repeats):  # interleaved, best of each: the machine is shared
            rates["bare"].append(settled(bare))
            rates["threaded"].append(settled(lambda: run_analysis(predictor, docs, args.frames,
                                                                  batch_size=args.page)[0]))
            rates["inline"].append(settled(lambda: run_analysis(predictor, docs, args.frames, batch_size=args.page,
                                                                threaded=False)[0]))
        best = {k: max(v) for k, v in rates.items()}
        print(f"{label:18s} bare Predictor {best['bare']:8,.0f} frames/s | NanobeamAnalysis threaded "
              f"{best['threaded']:8,.0f} (ratio {best['threaded'] / best['bare']:.2f}), inline {best['inline']:8,.0f} "
              f"(ratio {best['inline'] / best['bare']:.2f})")

    ensemble = list(predictors.values())[1]
    checked = {"on (default)": [], "off": []}
    for _ in range(args.repeats):
        for label, residual in (("on (default)", True), ("off", False)):
            checked[label].append(settled(lambda: run_analysis(ensemble, docs, args.frames, batch_size=args.page,
                                                               residual=residual)[0]))
    on, off = max(checked["on (default)"]), max(checked["off"])
    print(f"ensemble, threaded: residual check and background estimate on (the default) {on:8,.0f} frames/s, off "
          f"{off:8,.0f}: the check costs {100 * (1 - on / off):.0f}% of the throughput")
    preparation_cost(ensemble, params, docs, args)
    picture_cost(ensemble, docs, args)
    page_cost(ensemble, frames, args)
    print("back-pressure, stream fed as fast as documents can be made, queue bound 2,048 frames:")
    for policy in ("block", "decimate"):
        rate, analysis, peak = run_analysis(ensemble, docs, args.frames, batch_size=args.page,
                                            max_queued_frames=2048, when_behind=policy)
        run = analysis.maps.current
        print(f"  {policy:8s}: {rate:8,.0f} frames/s end to end, peak queue {peak:,} frames, analysed {len(run):,}, "
              f"skipped {run.skipped:,} (reported in the analysis stop document)")


def raw_frames(params: np.ndarray, seed: int = 2) -> tuple[np.ndarray, RawReadout]:
    """(N, 256, 256) uint32 ADU frames of ``params`` on the "medipix-256" preset (dark 100 ADU, gain 2 ADU/photon,
    20 hot and 50 dead pixels, masked), with the readout that made them."""
    readout = RawReadout("medipix-256", dark_current=100.0, gain=2.0, hot_pixels=20, dead_pixels=50, seed=seed)
    expected = readout.expected_photons(simulate(params, counts="published"), background=0.0, hot=40.0)
    return readout.readout(np.random.default_rng(seed).poisson(expected).astype(np.uint32)), readout


def preparation_cost(ensemble: Predictor, params: np.ndarray, docs, args) -> None:
    """Print the analysis' throughput on raw 256 x 256 frames prepared on the way against the 64 x 64 documents
    ``docs`` of the same patterns, and the preparation alone (frames/s and ms/frame)."""
    raw, readout = raw_frames(params)
    flat = np.random.default_rng(3).uniform(0.98, 1.02, readout.shape)
    prepared = Predictor.load(threads=args.threads, preparation=readout.preparation(flat=flat))
    preparation = prepared.preparation
    raw_docs = make_documents(raw, args.page)
    prepared.predict(raw[:512])  # warm-up

    def alone():
        return paged_rate(preparation.prepare, raw, args.page)

    rates = {"64 x 64": [], "raw": [], "alone": []}
    for _ in range(args.repeats):
        rates["64 x 64"].append(settled(lambda: run_analysis(ensemble, docs, args.frames, batch_size=args.page)[0]))
        rates["raw"].append(settled(lambda: run_analysis(prepared, raw_docs, args.frames, batch_size=args.page)[0]))
        rates["alone"].append(settled(alone))
    small, big, prep = (max(rates[k]) for k in ("64 x 64", "raw", "alone"))
    print(f"raw 256 x 256 uint32 frames ({raw.nbytes / len(raw) / 1024:.0f} KiB each), ensemble, threaded: 64 x 64 "
          f"{small:8,.0f} frames/s ({1e3 / small:.3f} ms/frame), raw with preparation {big:8,.0f} "
          f"({1e3 / big:.3f} ms/frame): the preparation adds {100 * (small / big - 1):.0f}% per frame; preparation "
          f"alone {prep:8,.0f} frames/s ({1e3 / prep:.3f} ms/frame, {100 * small / prep:.0f}% of the 64 x 64 "
          f"analysis' per-frame cost)")


def picture_cost(ensemble: Predictor, docs, args) -> None:
    """Print the analysis' throughput with the live picture attached (:class:`nanopilot.pictures.LivePictures`,
    default redraw interval, fed the raw documents as a RunEngine subscriber and the analysis' documents) against
    without, in the same run (target: ratio >= 0.9), and the cost of drawing and saving the final picture once."""
    import tempfile

    from nanopilot.pictures import LivePictures

    def timed(attach: bool):
        pictures = LivePictures() if attach else None
        analysis = NanobeamAnalysis(ensemble, batch_size=args.page)
        if attach:
            analysis.subscribe(pictures)
        t0 = time.perf_counter()
        for name, doc in docs:
            if attach:
                pictures(name, doc)
            analysis(name, doc)
        assert analysis.flush(timeout=600)
        rate = args.frames / (time.perf_counter() - t0)
        if attach:
            pictures.close()
        return rate, pictures

    rates = {"without": [], "with": []}
    for _ in range(args.repeats):
        rates["without"].append(settled(lambda: timed(False)[0]))
        rate, pictures = settled(lambda: timed(True))
        rates["with"].append(rate)
    without, with_ = max(rates["without"]), max(rates["with"])
    redraws = pictures.draws
    with tempfile.TemporaryDirectory() as folder:
        pictures.save = f"{folder}/picture.png"
        t0 = time.perf_counter()
        pictures.draw(save=True)
        final = time.perf_counter() - t0
    print(f"live picture, ensemble, threaded: without {without:8,.0f} frames/s, with it attached {with_:8,.0f} "
          f"(ratio {with_ / without:.2f}, {redraws} redraws in the last run); the final picture of "
          f"{args.frames} points drawn and saved once per run in {final:.2f} s")


VIEW = "import sys; from nanopilot.cli import main; sys.exit(main())"
#: What the page does (page.html), from another process: the runs, the newest run, its picture when it changed.
POLLER = """
import json, sys, time, urllib.request
url, drawn, last = sys.argv[1], 0, None
while True:
    try:  # as the page: an answer that fails (e.g. the catalogue busy) is asked again at the next poll
        runs = json.load(urllib.request.urlopen(url + "api/runs?limit=10"))
        run = json.load(urllib.request.urlopen(url + "api/runs/" + runs[0]["uid"])) if runs else {}
        state = (run.get("uid"), run.get("frames_analysed"), len(run.get("decisions", [])), run.get("status"))
        if run.get("frames_analysed") and state != last:
            urllib.request.urlopen(url + "api/runs/" + run["uid"] + "/picture.png").read()
            drawn, last = drawn + 1, state
            print(drawn, flush=True)
    except OSError as err:
        print("failed:", err, file=sys.stderr, flush=True)
    time.sleep(1.5)
"""


def page_cost(ensemble: Predictor, frames: np.ndarray, args) -> None:
    """Print the analysis' throughput while it writes its run to an embedded catalogue (batches of 1,000 events, as
    the session) with the page attached, against without, in the same run (target: ratio >= 0.9). Attached: the
    page's server in a thread of this process (``nanopilot.view.app.serve_in_thread``) or in its own process
    (``nanopilot view``, as ``nanopilot demo --view`` starts it), and a page polling it from another process as
    page.html does (every 1.5 s: the runs, the newest run, its picture when it changed). The raw run's scalars are
    stored before the timing, its stop after."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from nanopilot.catalog import open_catalog
    from nanopilot.storage import make_writer
    from nanopilot.view.app import build_app, serve_in_thread

    folder = Path(tempfile.mkdtemp(prefix="nanopilot-page-"))
    catalog = open_catalog(folder / "catalog", create=True)

    def timed(attach: str | None):
        docs = make_documents(frames, args.page)  # a new run each time
        raw = make_writer(catalog, batch_size=1000, backup_directory=folder / "backup")
        for name, doc in docs[:-1]:
            raw(name, without_frames(name, doc))
        port, server, processes = free_port(), None, []
        if attach == "thread":
            server = serve_in_thread(build_app(catalog), port=port)
        elif attach == "process":
            processes.append(subprocess.Popen([sys.executable, "-c", VIEW, "view", "--catalog",
                                               str(folder / "catalog"), "--port", str(port)],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if attach:
            wait_for(f"http://127.0.0.1:{port}/api/runs")
            processes.append(subprocess.Popen([sys.executable, "-c", POLLER, f"http://127.0.0.1:{port}/"],
                                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
        analysis = NanobeamAnalysis(ensemble, batch_size=args.page)
        analysis.subscribe(make_writer(catalog, batch_size=1000, backup_directory=folder / "backup"))
        t0 = time.perf_counter()
        for name, doc in docs:
            analysis(name, doc)
        assert analysis.flush(timeout=600)
        rate = args.frames / (time.perf_counter() - t0)
        raw(*docs[-1])
        for process in reversed(processes):
            process.terminate()
        pictures = processes[-1].communicate(timeout=30)[0].split() if attach else []
        if server is not None:
            server.should_exit = True
        return rate, len(pictures)

    rates = {None: [], "thread": [], "process": []}
    pictures = {}
    for _ in range(args.repeats):  # interleaved, best of each: the machine is shared
        for attach in rates:
            rate, pictures[attach] = settled(lambda: timed(attach))
            rates[attach].append(rate)
    without = max(rates[None])
    for attach, where in (("thread", "a thread of the analysing process (serve_in_thread)"),
                          ("process", "its own process (nanopilot view, demo --view)")):
        best = max(rates[attach])
        print(f"live page, ensemble, threaded, analysis run written to the catalogue: without {without:8,.0f} "
              f"frames/s, page served from {where} and polled {best:8,.0f} (ratio {best / without:.2f}, "
              f"{pictures[attach]} pictures drawn in the last run)")


def without_frames(name: str, doc: dict) -> dict:
    """A raw run's document without its frames (``det_image``): what the page reads of it."""
    if name == "descriptor":
        return {**doc, "data_keys": {k: v for k, v in doc["data_keys"].items() if k != "det_image"}}
    if name == "event_page":
        return {**doc, "data": {k: v for k, v in doc["data"].items() if k != "det_image"},
                "timestamps": {k: v for k, v in doc["timestamps"].items() if k != "det_image"}}
    return doc


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


if __name__ == "__main__":
    main()
