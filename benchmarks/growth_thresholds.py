"""Derive grow_until's relaxation thresholds (``Z_POINT``, ``Z_SPREAD``) from the tests' values on coherent films.

Runs ``grow_until`` with the tests disarmed (thresholds 1e9) on growth scenes of the tuning seeds (0-43 and
2000-2049 by default) with the shipped thickness model, the plan's default points, interval and looks, until the
film reaches 1.15 times the scene's mean critical thickness, and records both tests' values at every look (full
and partial rounds) with whether any measured point had already passed its local critical thickness. Prints per
scene the largest values while every measured point was coherent, and the thresholds: 1.1 times the largest over
all scenes. ``benchmarks/plans.py --parts b`` then checks them on seeds never used here.

    python benchmarks/growth_thresholds.py [--seeds 0-43,2000-2049]

Torch runs single-threaded (one 64 x 64 frame is too small to share; see benchmarks/sim_beamline.py).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from plans import run_engine

import nanopilot.agents.growth_monitor as growth
from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.model import Predictor
from nanopilot.model.predictor import shipped_model_path
from nanopilot.plans import grow_until
from nanopilot.sim_devices import make_beamline

MARGIN = 1.1


def parse_seeds(text: str) -> list[int]:
    """'0-43,2000-2049' -> [0, ..., 43, 2000, ..., 2049]."""
    seeds = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds.extend(range(int(low), int(high or low) + 1))
    return seeds


def coherent_maxima(seed: int, predictor) -> tuple[float, float, float]:
    """The largest one-point and spread values while every measured point was coherent, and h_c (angstrom)."""
    bl = make_beamline("growth", seed=seed)
    scene = bl.sample.scene
    grid = np.array([(x, y) for y in growth.DEFAULT_GRID for x in growth.DEFAULT_GRID])
    looks = []
    relaxation = growth.GrowthMonitor.relaxation

    def recorded(monitor, partial=None):
        relaxed, evidence = relaxation(monitor, partial)
        if "one point" in evidence:
            relaxed_points = bl.sample.labels(grid[:, 0], grid[:, 1])  # 1 where past the local critical thickness
            looks.append((evidence["one point"], evidence["spread"], bool(relaxed_points.any())))
        return relaxed, evidence

    growth.GrowthMonitor.relaxation = recorded
    try:
        analysis = NanobeamAnalysis(predictor, batch_size=16, max_latency=0.02)
        RE = run_engine(analysis)
        bl.install(RE)  # the plan's bps.sleep on the simulated clock
        RE(grow_until([bl.detector], bl.deposition, bl.stage.x, bl.stage.y,
                      1.15 * scene.critical_thickness, z_point=1e9, z_spread=1e9, maps=analysis.maps))
    finally:
        growth.GrowthMonitor.relaxation = relaxation
    coherent = [(point, spread) for point, spread, relaxed in looks if not relaxed]
    return max(p for p, _ in coherent), max(s for _, s in coherent), scene.critical_thickness


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0-43,2000-2049", help="growth scene seeds, e.g. 0-43,2000-2049")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    predictor = Predictor.load(shipped_model_path("thickness"))
    seeds = parse_seeds(args.seeds)
    print(f"grow_until's tests on coherent films: {len(seeds)} growth scenes ({args.seeds}), {predictor}, "
          f"{len(growth.DEFAULT_GRID) ** 2} default points")
    t0, rows = time.perf_counter(), []
    for seed in seeds:
        point, spread, h_c = coherent_maxima(seed, predictor)
        rows.append((point, spread))
        print(f"  seed {seed}: h_c {h_c:.1f} A, largest one-point {point:.2f}, spread {spread:.2f}", flush=True)
    point, spread = np.max(rows, axis=0)
    print(f"largest while coherent: one-point {point:.3f}, spread {spread:.3f}; thresholds ({MARGIN:g} x): "
          f"Z_POINT {MARGIN * point:.2f}, Z_SPREAD {MARGIN * spread:.2f} (in use: {growth.Z_POINT}, "
          f"{growth.Z_SPREAD}); {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
