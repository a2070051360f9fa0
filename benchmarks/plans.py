"""Benchmark the closed-loop plans on the simulated beamline, every figure measured in this run.

(a) ``steered_map`` on the ``published`` and ``domains`` scenes with the shipped network (``Predictor.load()``),
    next to a full fine raster and a random sparse sampling of the same number of points; every map is rebuilt
    on the fine raster by the same :func:`nanopilot.agents.steering.reconstruct` (range-clipped cubic on the
    points' triangulation). Printed: the points used (bar: <= 25% of the full fine raster), the RMS error against
    the ground truth *near features* (the fine-raster pixels whose 3 x 3 neighbourhood changes by more than 3
    noise units (the network's median std) in any of strain, omega, chi) and its ratio to the full raster's
    (the fine resolution is reached at a ratio of about 1), and, for ``domains``, the wall-position error: the
    ground-truth labels at the measured
    positions, filled by nearest neighbour, give a label map whose walls (label changes between 4-neighbours)
    are compared with the true walls (``bl.sample.labels``) by the symmetric mean distance (um).
(b) ``grow_until`` over randomised ``growth`` scenes (seeds from ``--growth-seed``, default 1000: the monitor's
    thresholds were chosen on seeds 0-43 and 2000-2049, so the default measures it out of sample, as does 3000)
    with the shipped thickness model (``Predictor.load(shipped_model_path("thickness"))``). Even seeds: target
    below the critical thickness (uniform in 0.5-0.85 h_c): the RMS of (film thickness at the stop - target).
    Odd seeds: target above it (1.3 h_c): the share of runs stopped before the relaxation onset, defined as the
    film reaching the scene's mean critical thickness h_c (patches start earlier: the local critical thickness
    varies by +-10%), and the film thickness at the stop relative to h_c.
(c) ``find_texture_temperature`` over cooling scenes (seeds from ``--cooling-seed``, default 1: the plan was
    developed on scenes 1-24, so 25 and on measure it out of sample; transition temperatures drawn uniformly in
    255-264 K) with the network: found - true transition (RMS, max, how many within 0.5 K) and the maps used,
    against a fixed 0.5 K ramp from the same start (the same plan with ``step=0.5`` and ``zoom=False``: maps
    of the whole region, no bisection, the bracket's middle), both with quick maps of the same size.

    python benchmarks/plans.py [--full] [--parts abc] [--budget 0.25] [--growth-scenes 50] [--growth-seed 1000]
                               [--cooling-scenes 12] [--cooling-seed 1]
                               [--cooling-step 8] [--quick 12]

Torch runs single-threaded (one 64 x 64 frame is too small to share; see benchmarks/sim_beamline.py).
"""

from __future__ import annotations

import argparse
import inspect
import time

import bluesky.plan_stubs as bps
import numpy as np
import torch
from bluesky import RunEngine
from scipy import ndimage

from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.model import Predictor
from nanopilot.model.predictor import shipped_model_path
from nanopilot.plans import find_texture_temperature, grow_until, steered_map
from nanopilot.plans.growth import DEFAULT_GRID
from nanopilot.agents.steering import collect_points, reconstruct, snake_order
from nanopilot.sim_devices import make_beamline
from nanopilot.texture import frame_descriptor

FIELDS = ("strain", "omega", "chi")
#: grow_until's thresholds (z_point, z_spread, window) were chosen on these growth seeds.
TUNING_SEEDS = (*range(44), *range(2000, 2050))
UNITS = {"strain": (1e4, "1e-4"), "omega": (1e3, "mdeg"), "chi": (1e3, "mdeg")}


def run_engine(analysis) -> RunEngine:
    RE = RunEngine({}, call_returns_result=True)
    RE.loop.call_soon_threadsafe(torch.set_num_threads, 1)
    RE.subscribe(analysis)
    return RE


def lattice_plan(bl, lattice, points):
    """Measure the given lattice points (snake order) in one run; returns the run uid."""
    def inner():
        uid = yield from bps.open_run({"plan_name": "benchmark raster", "motors": ["stage_y", "stage_x"]})
        for ij in snake_order(points):
            px, py = lattice.position(ij)
            yield from bps.mv(bl.stage.x, px, bl.stage.y, py)
            yield from bps.trigger_and_read([bl.detector, bl.stage.x, bl.stage.y])
        yield from bps.close_run()
        return uid
    return inner()


def walls(labels: np.ndarray) -> np.ndarray:
    out = np.zeros(labels.shape, bool)
    out[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    out[1:, :] |= labels[1:, :] != labels[:-1, :]
    return out


def wall_error(true_labels, labels, step) -> float:
    """Symmetric mean distance (um) between the walls of two label maps."""
    a, b = walls(true_labels), walls(labels)
    if not a.any() or not b.any():
        return float("nan")
    to_b, to_a = ndimage.distance_transform_edt(~b), ndimage.distance_transform_edt(~a)
    return float(step * (to_b[a].mean() + to_a[b].mean()) / 2)


def bench_steering(fine: int, coarse_step: int, budget: float, seed: int, predictor) -> None:
    print(f"(a) steered_map vs full fine raster vs random sparse: fine raster {fine} x {fine} = {fine ** 2} points, "
          f"region 4 x 4 um, coarse_step {coarse_step}, budget {budget:g}, scene seed {seed}; maps rebuilt by "
          f"reconstruct (range-clipped cubic on the triangulation); wall labels: nearest point")
    for scene in ("published", "domains"):
        bl = make_beamline(scene, seed=seed)
        analysis = NanobeamAnalysis(predictor, batch_size=256, max_latency=0.05)
        RE = run_engine(analysis)
        t = time.perf_counter()
        res = RE(steered_map([bl.detector], bl.stage.x, bl.stage.y, (-2, 2), (-2, 2), fine=fine,
                             coarse_step=coarse_step, budget=budget, maps=analysis.maps))
        steer_s = time.perf_counter() - t
        lattice = res.plan_result["lattice"]
        n = res.plan_result["points"]
        everything = [(i, j) for j in range(fine) for i in range(fine)]
        rng = np.random.default_rng(seed)
        sparse = [everything[k] for k in rng.choice(len(everything), n, replace=False)]
        runs = {name: RE(lattice_plan(bl, lattice, points)).plan_result
                for name, points in (("full raster", everything), ("random sparse", sparse))}
        uids = {"full raster": runs["full raster"], "steered": res.run_start_uids[0],
                "random sparse": runs["random sparse"]}
        jj, ii = np.mgrid[0:fine, 0:fine]
        gx, gy = lattice.x0 + ii * lattice.step[0], lattice.y0 + jj * lattice.step[1]
        truth = bl.sample.truth(gx, gy)
        true_labels = bl.sample.labels(gx.ravel(), gy.ravel()).reshape(fine, fine)
        full = collect_points(analysis.maps[uids["full raster"]], lattice, "stage_x", "stage_y")
        noise = {f: float(np.nanmedian([p[f + "_std"] for p in full.values()])) for f in FIELDS}
        near = np.zeros((fine, fine), bool)
        for f in FIELDS:
            local = ndimage.maximum_filter(truth[f], 3) - ndimage.minimum_filter(truth[f], 3)
            near |= local > 3 * noise[f]
        print(f"  {scene}: {near.sum()} of {fine ** 2} pixels near features; steered_map took {steer_s:.1f} s, "
              f"{res.plan_result['rounds']} rounds, stop: {res.plan_result['reason']}")
        rms = {}
        for name, uid in uids.items():
            measured = collect_points(analysis.maps[uid], lattice, "stage_x", "stage_y")
            rms[name] = {f: np.sqrt(np.nanmean((reconstruct(lattice, measured, f)[near] - truth[f][near]) ** 2))
                         for f in FIELDS}
            errors = ", ".join(f"{f} {UNITS[f][0] * rms[name][f]:.2f} {UNITS[f][1]}" for f in FIELDS)
            ratios = ", ".join(f"{rms[name][f] / rms['full raster'][f]:.2f}" for f in FIELDS)
            line = (f"    {name:13s}: {len(measured):5d} points ({100 * len(measured) / fine ** 2:5.1f}%), "
                    f"RMS error near features: {errors} (x full raster: {ratios})")
            if scene == "domains":
                for ij, p in measured.items():
                    x, y = lattice.position(ij)
                    p["label"] = float(bl.sample.labels(np.array([x]), np.array([y]))[0])
                labels = reconstruct(lattice, measured, "label", "nearest")
                line += (f"; walls: mean distance {wall_error(true_labels, labels, lattice.step[0]):.3f} um, "
                         f"labels wrong {100 * np.mean(labels != true_labels):.1f}%")
            print(line)
    print("  bar: steered_map uses <= 25% of the full raster's points")


def bench_growth(n_scenes: int, first_seed: int, predictor) -> None:
    seeds = range(first_seed, first_seed + n_scenes)
    tuned = "used to tune" if set(seeds) & set(TUNING_SEEDS) else "not used to tune"
    defaults = inspect.signature(grow_until).parameters
    interval, look_every = defaults["interval"].default, defaults["look_every"].default
    print(f"(b) grow_until over {n_scenes} growth scenes (seeds {seeds[0]}..{seeds[-1]}: {tuned} the monitor's "
          f"thresholds, which were set on seeds 0..43 and 2000..2049), thickness model, the plan's default points "
          f"({len(DEFAULT_GRID)} x {len(DEFAULT_GRID)} over +-{max(DEFAULT_GRID):g} um), interval ({interval:g} s) "
          f"and looks at the relaxation tests (every {look_every} points); onset = the scene's mean critical "
          f"thickness h_c")
    target_errors, before, ratios, reasons = [], [], [], {}
    t = time.perf_counter()
    for seed in seeds:
        bl = make_beamline("growth", seed=seed)
        scene = bl.sample.scene
        h_c = scene.critical_thickness
        rng = np.random.default_rng(1000 + seed)
        target_first = seed % 2 == 0
        target = rng.uniform(max(0.5 * h_c, scene.initial_thickness + 20), 0.85 * h_c) if target_first else 1.3 * h_c
        analysis = NanobeamAnalysis(predictor, batch_size=16, max_latency=0.02)
        RE = run_engine(analysis)
        bl.install(RE)  # the plan's bps.sleep on the simulated clock
        result = RE(grow_until([bl.detector], bl.deposition, bl.stage.x, bl.stage.y, target,
                               maps=analysis.maps)).plan_result
        film = scene.initial_thickness + bl.sample.deposited
        key = ("target first" if target_first else "relaxation first", result["reason"])
        reasons[key] = reasons.get(key, 0) + 1
        if target_first:
            target_errors.append(film - target)
        else:
            before.append(film < h_c)
            ratios.append(film / h_c)
        print(f"  seed {seed}: h_c {h_c:.1f} A, target {target:.1f} A, stop: {result['reason']} at film "
              f"{film:.1f} A ({film / h_c:.3f} h_c){'' if target_first or film < h_c else ', AFTER the onset'}")
    errors = np.array(target_errors)
    print(f"  {len(errors)} target-first scenes: film thickness at the stop - target: "
          f"RMS {np.sqrt(np.mean(errors ** 2)):.2f} A, mean {errors.mean():+.2f} A, "
          f"max |err| {np.abs(errors).max():.2f} A")
    print(f"  {len(before)} relaxation-first scenes: stopped before the onset (film < h_c) in {sum(before)} / "
          f"{len(before)} = {100 * np.mean(before):.0f}%; film / h_c at the stop: median {np.median(ratios):.3f}, "
          f"max {np.max(ratios):.3f}")
    print(f"  stop reasons: {', '.join(f'{a} -> {b}: {c}' for (a, b), c in sorted(reasons.items()))}; "
          f"{time.perf_counter() - t:.0f} s")


def bench_cooling(n_scenes: int, first_seed: int, quick: int, step: float, predictor) -> None:
    start, stop = 272.0, 240.0
    # scene k (seeds from 1) has the k-th transition of one seeded stream, whichever scenes a run takes
    seeds = range(first_seed, first_seed + n_scenes)
    transitions = np.round(np.random.default_rng(7).uniform(255.0, 264.0, seeds[-1])[first_seed - 1:], 2)
    print(f"(c) find_texture_temperature vs a fixed 0.5 K ramp: {n_scenes} cooling scenes (seeds {seeds[0]}.."
          f"{seeds[-1]}, "
          f"transition uniform in 255-264 K), start {start:g} K, quick maps {quick} x {quick}, fine map 24 x 24, "
          f"hysteresis allowance 10 K, tolerance 0.5 K; maps counted without the fine map, the reference included")
    adaptive = f"adaptive (step {step:g} K)"
    rows = {adaptive: [], "fixed 0.5 K ramp": []}
    for seed, t_c in zip(seeds, transitions):
        for name, plan_step, zoom in ((adaptive, step, True), ("fixed 0.5 K ramp", 0.5, False)):
            bl = make_beamline("cooling", seed=seed, temperature=start,
                               scene_parameters={"transition_temperature": t_c})
            analysis = NanobeamAnalysis(predictor, frame_features=frame_descriptor, batch_size=256, max_latency=0.05)
            RE = run_engine(analysis)
            t0, clock0 = time.perf_counter(), bl.clock.now()
            result = RE(find_texture_temperature([bl.detector], bl.temperature, bl.stage.x, bl.stage.y, (-2, 2),
                                                 (-2, 2), stop, step=plan_step, quick=quick, fine=24, zoom=zoom,
                                                 maps=analysis.maps)).plan_result
            quick_maps = result["maps"] - (result["fine_map"] is not None)
            error = result["transition"] - t_c
            rows[name].append((error, quick_maps))
            bracket = "none" if result["bracket"] is None else "{:.2f}..{:.2f} K".format(*result["bracket"])
            print(f"  seed {seed:2d}, true {t_c:.2f} K, {name:19s}: {result['reason']}, bracket {bracket}, "
                  f"found {result['transition']:.2f} K, error {error:+.2f} K, {quick_maps} quick maps, "
                  f"beamline time {(bl.clock.now() - clock0) / 60:.0f} min, {time.perf_counter() - t0:.0f} s")
    for name, values in rows.items():
        errors, counts = np.array(values).T
        print(f"  {name:19s}: found - true: RMS {np.sqrt(np.mean(errors ** 2)):.2f} K, max |error| "
              f"{np.abs(errors).max():.2f} K, within 0.5 K in {np.sum(np.abs(errors) <= 0.5)} / {len(errors)}; "
              f"quick maps mean {counts.mean():.1f} (max {counts.max():.0f})")
    ratio = np.mean([a[1] / r[1] for a, r in zip(rows[adaptive], rows["fixed 0.5 K ramp"])])
    print(f"  bar: within 0.5 K with <= 1/3 of the ramp's maps; maps adaptive / ramp per scene: mean {ratio:.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="65 x 65 fine raster, >= 50 growth scenes, >= 20 cooling")
    parser.add_argument("--fine", type=int, default=33, help="points per side of the fine raster (8 k + 1)")
    parser.add_argument("--coarse-step", type=int, default=None,
                        help="steered_map's first raster spacing (steps; default: the plan's, from the budget)")
    parser.add_argument("--budget", type=float, default=0.25, help="steered_map's point budget (share of the raster)")
    parser.add_argument("--growth-scenes", type=int, default=50)
    parser.add_argument("--growth-seed", type=int, default=1000,
                        help="first growth seed (default 1000: seeds 0..43 and 2000..2049 tuned grow_until)")
    parser.add_argument("--cooling-scenes", type=int, default=12)
    parser.add_argument("--cooling-seed", type=int, default=1, help="first cooling scene (the plan was developed "
                        "on scenes 1-24)")
    defaults = inspect.signature(find_texture_temperature).parameters
    parser.add_argument("--cooling-step", type=float, default=defaults["step"].default,
                        help="search step (K) of the adaptive plan (default: the plan's)")
    parser.add_argument("--quick", type=int, default=defaults["quick"].default,
                        help="points per side of the quick temperature maps, both plans (default: the plan's)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--parts", default="abc", help="which parts to run, e.g. 'bc' for (b) and (c) only")
    args = parser.parse_args(argv)
    if args.full:
        args.fine, args.growth_scenes = 65, max(args.growth_scenes, 50)
        args.cooling_scenes = max(args.cooling_scenes, 20)
    torch.set_num_threads(1)
    t = time.perf_counter()
    network = Predictor.load()
    print(f"network: {network}")
    if "a" in args.parts:
        bench_steering(args.fine, args.coarse_step, args.budget, args.seed, network)
    if "b" in args.parts:
        thickness = Predictor.load(shipped_model_path("thickness"))
        print(f"thickness model: {thickness}")
        bench_growth(args.growth_scenes, args.growth_seed, thickness)
    if "c" in args.parts:
        bench_cooling(args.cooling_scenes, args.cooling_seed, args.quick, args.cooling_step, network)
    print(f"total {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
