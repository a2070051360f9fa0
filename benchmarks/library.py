"""Benchmark: render the full published 41^3 library to HDF5.

Prints the wall time, the peak memory (RSS) added while generating, and the ratio against a straightforward
per-pattern evaluation of the published formula (every pixel x every pupil grid point) timed in this run.
Target (2 cores): <= 30 s, <= 1.5 GB beside the file.

    python benchmarks/library.py [--out /tmp/library.h5] [--baseline-patterns 3] [--threads 2]
"""

import argparse
import math
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nanopilot.physics import Grid, Instrument, Library, brightest_grid_peak


def published_formula(strain, omega_deg, chi_deg, inst: Instrument) -> np.ndarray:
    """One pattern the straightforward way: the full (y, x, v, u) broadcast over the pupil grid, row block by row
    block."""
    k, theta, g, s = inst.k, inst.bragg_angle, inst.g, inst.pupil_pitch
    rows, cols = inst.roi_shape
    x = np.arange(cols) - (cols - 1) / 2
    y = np.arange(rows) - (rows - 1) / 2
    gamma = np.arcsin(x * inst.pixel_size / inst.detector_distance) + theta
    qx, qz = k * (np.cos(theta) - np.cos(gamma)), k * (np.sin(gamma) + np.sin(theta))
    qy = k * y * inst.pixel_size / inst.detector_distance
    u = np.arange(inst.pupil_size) - (inst.pupil_size - 1) / 2
    t, omega, chi, prec = inst.thickness, math.radians(omega_deg), math.radians(chi_deg), inst.box_precision
    image = np.zeros((rows, cols))
    for v_block in np.array_split(u, 8):
        v = v_block[None, None, :, None]
        uu = u[None, None, None, :]
        donut = (s * np.hypot(uu, v) > inst.theta_in) & (s * np.hypot(uu, v) < inst.theta_out)
        laue_arg = t * (qz[None, :, None, None] - g / (1 + strain) - uu * s * k * np.cos(theta)) / 2
        laue = t * np.sinc(laue_arg / np.pi) ** 2
        box_x = np.abs(qx[None, :, None, None] + g * omega + uu * s * k * np.sin(theta)) < prec
        box_y = np.abs(qy[:, None, None, None] + g * chi - v * s * k) < prec
        image += (laue * box_x * box_y * donut).sum(axis=(2, 3))
    return image


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="library file (default: a temporary file, removed)")
    parser.add_argument("--baseline-patterns", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    inst = Instrument()

    grid = Grid.default()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or Path(tmp) / "library.h5")
        brightest_grid_peak.cache_clear()  # timed from cold: the intensity convention needs the brightest pattern
        t0 = time.perf_counter()
        with Library.generate(out, grid, inst, progress=False) as lib:
            wall = time.perf_counter() - t0
            rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
            size = out.stat().st_size / 1e9
            assert len(lib) == grid.size
    print(f"library 41^3 = {grid.size:,} patterns: {wall:.1f} s ({wall / grid.size * 1e6:.0f} us/pattern), "
          f"file {size:.2f} GB, peak RSS {rss1:.2f} GB (before: {rss0:.2f} GB; added {rss1 - rss0:.2f} GB)")

    t0 = time.perf_counter()
    for i in range(args.baseline_patterns):
        published_formula(0.001 * i, 0.01 * i, -0.02 * i, inst)
    per_pattern = (time.perf_counter() - t0) / args.baseline_patterns
    print(f"straightforward published formula: {per_pattern * 1e3:.0f} ms/pattern "
          f"-> {per_pattern * grid.size / 3600:.1f} h for the 41^3 library")
    print(f"speed-up against the straightforward evaluation: {per_pattern * grid.size / wall:,.0f}x")

if __name__ == "__main__":
    main()
