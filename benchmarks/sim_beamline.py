"""Benchmark the simulated beamline: a step grid scan with the inline detector, and the flyer's frame rate.

Targets (the sim_devices issue): rendering adds <= 20% to the RunEngine's own per-point cost of a 64 x 64 step
grid scan; the flyer generates and emits >= 5,000 frames/s of 64 x 64 frames. For scale, the fly scan is run a
second time with its frames rendered beforehand: the rate of the sweep and the RunEngine alone (its schema
validation of every event-page item dominates), measured in the same conditions. A third run uses the detector's
HDF5 data mode, the way high-rate detectors stream: frames to a file, announced by stream_resource/stream_datum,
with event pages of statistics and positions only.

    python benchmarks/sim_beamline.py [--grid 64] [--fly-lines 64] [--page-size 512] [--threads 1]
                                      [--fly-repeats 3]

Torch runs single-threaded by default: one 64 x 64 pattern is too small to share between threads, and on a
loaded machine two spinning torch threads made a single render ~30x slower (16 ms instead of 0.5 ms).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import torch
from bluesky import RunEngine

from nanopilot.sim_devices import make_beamline


def run_engine(threads: int) -> tuple[RunEngine, "Counter"]:
    """A RunEngine with a frame counter; torch's thread count is per OS thread, so set it in the RE's loop too."""
    RE, counter = RunEngine({}), Counter()
    RE.subscribe(counter)
    RE.loop.call_soon_threadsafe(torch.set_num_threads, threads)
    return RE, counter


class Counter:
    """Counts the rows of event and event_page documents (one per frame) and the frames announced by
    stream_datum documents (a stand-in for a live consumer)."""

    def __init__(self):
        self.frames = self.stream_frames = 0

    def __call__(self, name, doc):
        if name == "event":
            self.frames += 1
        elif name == "event_page":
            self.frames += len(doc["seq_num"])
        elif name == "stream_datum":
            self.stream_frames += doc["indices"]["stop"] - doc["indices"]["start"]


def grid_scan(n: int) -> None:
    beamline = make_beamline("published", seed=0)
    detector = beamline.detector
    detector.trigger()  # warm up: intensity scale and torch kernels
    render_time = 0.0
    render = detector.render

    def timed_render(*args, **kwargs):
        nonlocal render_time
        start = time.perf_counter()
        try:
            return render(*args, **kwargs)
        finally:
            render_time += time.perf_counter() - start

    detector.render = timed_render
    RE, counter = run_engine(torch.get_num_threads())
    stage = beamline.stage
    start = time.perf_counter()
    RE(bp.grid_scan([detector], stage.y, -1.6, 1.6, n, stage.x, -1.6, 1.6, n))
    wall = time.perf_counter() - start
    overhead = wall - render_time
    print(f"step grid scan {n} x {n}, inline detector: {counter.frames} frames in {wall:.2f} s "
          f"= {counter.frames / wall:.0f} frames/s ({1e3 * wall / counter.frames:.2f} ms/point)")
    print(f"  rendering {1e3 * render_time / counter.frames:.2f} ms/point ({100 * render_time / wall:.0f}% of the "
          f"scan), RunEngine and devices {1e3 * overhead / counter.frames:.2f} ms/point")
    print(f"  rendering adds {100 * render_time / overhead:.0f}% to the RunEngine's own per-point cost "
          f"(target <= 20%)")


def fly_beamline(lines: int, page_size: int, **options):
    """A beamline whose flyer sweeps 64 x ``lines`` frames at a simulated 10 kHz, warmed up."""
    beamline = make_beamline("published", seed=0, count_rate=70_000.0, **options)  # 7 counts peak at 10 kHz
    beamline.flyer.configure({"x_start": -1.6, "x_stop": 1.6, "num_x": 64, "y_start": -1.6, "y_stop": 1.6,
                              "num_y": lines, "frame_rate": 10_000.0, "page_size": page_size})
    beamline.stage.x.velocity.put(10_000.0)
    detector = beamline.detector
    detector.render(detector.sample.parameters(*detector.beam_positions(0.0, 0.0)), 1e-4)  # warm up
    return beamline


def fly_plan(flyer):
    @bpp.stage_decorator([flyer])
    @bpp.run_decorator()
    def fly():
        yield from bps.declare_stream(flyer, name="fly", collect=True)
        yield from bps.kickoff(flyer, wait=True)
        yield from bps.complete(flyer, wait=True)
        yield from bps.collect(flyer, name="fly", return_payload=False)

    return fly()


def timed_fly(RE, counter: Counter, beamline) -> float:
    """Wall time (s) of one fly scan; checks that every frame was emitted (as a row, and in HDF5 mode also
    announced by stream_datum)."""
    counter.frames = counter.stream_frames = 0
    start = time.perf_counter()
    RE(fly_plan(beamline.flyer))
    wall = time.perf_counter() - start
    frames = beamline.flyer.num_x.get() * beamline.flyer.num_y.get()
    assert counter.frames == frames and counter.stream_frames in (0, frames), (counter.frames, counter.stream_frames)
    return wall


def fly_scan(lines: int, page_size: int, repeats: int) -> None:
    RE, counter = run_engine(torch.get_num_threads())
    inline, prerendered, hdf5 = [], [], []
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(repeats):  # interleaved, so that the three see the same load; the best of each is kept
            inline.append(timed_fly(RE, counter, fly_beamline(lines, page_size)))
            # baseline: the same scan with every page's frames rendered beforehand
            beamline = fly_beamline(lines, page_size)
            detector = beamline.detector
            frames = detector.render(detector.sample.parameters(*detector.beam_positions(
                *beamline.stage.position)).repeat(page_size, axis=0), 1 / 10_000.0)
            detector.render = lambda parameters, exposure: frames[:len(parameters)]
            prerendered.append(timed_fly(RE, counter, beamline))
            # the detector's HDF5 data mode: frames to a file, stream_datum + event pages of statistics
            hdf5.append(timed_fly(RE, counter, fly_beamline(lines, page_size, data_mode="hdf5",
                                                            hdf5_directory=directory)))
    n, wall, emit = 64 * lines, min(inline), min(prerendered)
    print(f"fly scan 64 x {lines} at a simulated 10 kHz, pages of {page_size} (best of {repeats}): {n} frames in "
          f"{wall:.2f} s = {n / wall:.0f} frames/s generated and emitted (target >= 5,000)")
    print(f"  the same scan with pre-rendered frames: {n / emit:.0f} frames/s (sweep, statistics and "
          f"RunEngine alone); generating adds {1e6 * (wall - emit) / n:.0f} us/frame "
          f"({100 * (wall - emit) / emit:.0f}% of their cost)")
    print(f"  HDF5 mode (frames to a file, stream_resource/stream_datum, event pages of statistics and positions): "
          f"{n} frames in {min(hdf5):.2f} s = {n / min(hdf5):.0f} frames/s generated, written and emitted "
          f"(target >= 5,000)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=64, help="points per side of the step grid scan")
    parser.add_argument("--fly-lines", type=int, default=64, help="lines of 64 frames in the fly scan")
    parser.add_argument("--page-size", type=int, default=512, help="frames per event page")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--fly-repeats", type=int, default=3, help="runs of each fly scan (the best is shown)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"torch threads: {torch.get_num_threads()}, CPUs: {os.cpu_count()}, load average before: {load}")
    grid_scan(args.grid)
    fly_scan(args.fly_lines, args.page_size, args.fly_repeats)


if __name__ == "__main__":
    main()
