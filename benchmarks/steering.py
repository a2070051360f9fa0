"""Steering against honest baselines on structures it was not designed for, with issue 21's bars.

For every structure family (``nanopilot.sim_devices.structures``: inclusions, walls, stripes, gradient, crack,
mixture) and for ``published`` and ``domains``, on the reporting seeds (``REPORTING_SEEDS``, never tuned on):
the full fine raster (n x n over 4 x 4 um) is rendered once by the scene's simulated detector at the published
count level (``make_beamline`` defaults: 70 counts/s x 0.1 s, Poisson noise) and analysed by the shipped
network (``Predictor.load()``, ``residual=True`` as the live analysis does); every method then "measures" a
lattice point by reading that point's analysed frame, so all methods see the same frames. Methods, each given a
budget of points and asked in rounds through the ask/tell shape:

- ``steering``: ``steered_map``'s decisions (its ``SteeringAgent`` with the plan's defaults, every refinement
  approved; no texture labels, as ``benchmarks/plans.py``), its maps rebuilt by ``steering.reconstruct``;
- ``raster``: a uniform raster of the same number of points, linear interpolation;
- ``random``: uniformly random points, range-clipped cubic on the triangulation;
- ``gp``: Gaussian-process uncertainty sampling (scikit-learn), the GP posterior mean;
- ``slads``: SLADS-like ERD sampling, trained on the truth of the tuning seeds (``TUNING_SEEDS``) of all eight
  families, inverse-distance reconstruction.

Budgets: 10% and 20% of the fine raster and "equal": the points of a uniform raster of twice the fine step.
Printed per family (means over seeds, worst seed in brackets where it matters): the RMS error against the truth
near features (raster points within NEAR um of a wall, rim, crack, stripe wall, defect core or point defect,
``sim_devices.feature_mask``) of strain, omega and chi as a multiple of the full raster's; the wall-position
error in fine steps (the true labels at the measured points filled by nearest neighbour: symmetric mean distance
between its walls and the true walls, "missed" where some seed's filled labels have none; 0 for the full raster);
the beamline time (stage moves at the stage's
velocity, its settling time per axis moved, the detector's exposure per point; points in snake order per round)
as a fraction of the full raster's; and issue 21's bars, pass or fail.

    python benchmarks/steering.py [--quick] [--fine 33] [--seeds 5] [--families inclusions,walls] [--tuning]

``--quick``: one reporting seed per family. ``--tuning``: the tuning seeds instead (to develop on; report on the
reporting seeds). Torch and BLAS run single-threaded.
"""

from __future__ import annotations

import argparse
import inspect
import time

import numpy as np
import torch
from scipy import ndimage
from threadpoolctl import threadpool_limits

from nanopilot.model import Predictor
from nanopilot.plans import steered_map
from nanopilot.plans.samplers import GPSampler, RandomSampler, RasterSampler
from nanopilot.plans.slads import SLADSSampler, train_erd
from nanopilot.agents import SteeringAgent
from nanopilot.agents.steering import Lattice, coarse_step_for, reconstruct, snake_order
from nanopilot.sim_devices import REPORTING_SEEDS, STRUCTURES, TUNING_SEEDS, SimSample, feature_mask, label_walls
from nanopilot.sim_devices import make_beamline

FIELDS = ("strain", "omega", "chi")
FAMILIES = (*STRUCTURES, "published", "domains")
#: "near features": within this distance (um) of a feature.
NEAR = 0.15
METHODS = ("steering", "raster", "random", "gp", "slads")
BASELINES = METHODS[1:]
PLAN = {name: p.default for name, p in inspect.signature(steered_map).parameters.items()
        if name in ("coarse_step", "threshold", "points_per_round")}


class AgentSampler:
    """``steered_map``'s :class:`~nanopilot.agents.SteeringAgent` (with the plan's defaults) in the samplers'
    ask/tell shape: every refinement approved, the points told as the analysis run's columns."""

    def __init__(self, lattice: Lattice, budget: int, **plan):
        self.lattice = lattice
        plan = {**PLAN, **plan}
        plan["coarse_step"] = plan["coarse_step"] or coarse_step_for(lattice.n, budget)
        self.agent = SteeringAgent(lattice, budget=budget, motors=("stage_y", "stage_x"), **plan)
        self.columns: dict[str, list] = {}

    def __len__(self):
        return len(self.columns.get("seq_num", []))

    def ask(self, n: int) -> np.ndarray:
        proposal = self.agent.ask()
        while proposal.decision:
            self.agent.tell_verdict(True)
            proposal = self.agent.ask()
        if proposal.action != "measure" or len(proposal.points) > n:
            return np.empty((0, 2))
        return np.array(proposal.points, dtype=float).reshape(-1, 2)

    def tell(self, points, values) -> None:
        k = len(self)
        rows = {"seq_num": np.arange(k + 1, k + 1 + len(points)), "stage_x": points[:, 0], "stage_y": points[:, 1],
                **values}
        for key, column in rows.items():
            self.columns.setdefault(key, []).extend(np.asarray(column).tolist())
        self.agent.tell({key: np.asarray(column, dtype=object if key == "status" else None)
                         for key, column in self.columns.items()})

    def reconstruct(self):
        measured = self.agent.measured()
        return {f: reconstruct(self.lattice, measured, f) for f in FIELDS}


def measure_scene(family: str, seed: int, fine: int, predictor) -> dict:
    """The full fine raster of one scene: the lattice, truth maps, labels, near-feature mask, the network's
    values / stds / status per lattice point (rows = y) and the beamline's timing constants."""
    bl = make_beamline(family, seed=seed)
    lattice = Lattice(-2.0, 2.0, -2.0, 2.0, fine)
    g = np.linspace(-2.0, 2.0, fine)
    x, y = np.meshgrid(g, g)
    frames = bl.detector.render(bl.sample.parameters(x, y), bl.detector.exposure_time.get())
    est = predictor.predict(frames, residual=True)
    table = {key: np.asarray(getattr(est, key)).reshape(fine, fine)
             for key in (*FIELDS, *(f + "_std" for f in FIELDS), "status")}
    truth = bl.sample.truth(x, y)
    return {"lattice": lattice, "truth": {f: np.asarray(truth[f]) for f in FIELDS}, "table": table,
            "labels": bl.sample.labels(x, y), "near": feature_mask(bl.sample, x, y, NEAR),
            "timing": (bl.stage.x.velocity.get(), bl.stage.x.settling_time.get(), bl.detector.exposure_time.get())}


def beamline_time(points: np.ndarray, timing) -> np.ndarray:
    """(moves, settling, detector) seconds to visit the points (um) in order from (0, 0), moving an axis only
    where its position changes (bluesky's one_nd_step), each at the stage's velocity then settling, one axis after
    the other as the simulated clock counts them, and exposing each point for the detector's exposure time."""
    velocity, settling, exposure = timing
    path = np.vstack([[0.0, 0.0], points])
    steps = np.abs(np.diff(path, axis=0))
    return np.array([steps.sum() / velocity, settling * np.count_nonzero(steps > 1e-12), exposure * len(points)])


def run_method(sampler, scene: dict, budget: int, batch: int) -> dict:
    """Ask and tell until the budget is spent (or the sampler stops); the points in visit order and the maps."""
    table, lattice = scene["table"], scene["lattice"]
    visited, t = [], time.perf_counter()
    while len(sampler) < budget:
        points = sampler.ask(min(batch, budget - len(sampler)))
        if len(points) == 0:
            break
        ii, jj = lattice.index(points[:, 0], points[:, 1])
        order = snake_order(list(zip(ii.tolist(), jj.tolist())))
        ii, jj = np.array(order).T
        points = np.array([lattice.position(ij) for ij in order])
        sampler.tell(points, {key: column[jj, ii] for key, column in table.items()})
        visited.append(points)
    maps = sampler.reconstruct()
    return {"points": np.vstack(visited), "maps": maps, "seconds": time.perf_counter() - t}


def wall_steps(true_labels: np.ndarray, points_ij: np.ndarray) -> float:
    """Symmetric mean distance (fine steps) between the true walls and those of the true labels at the measured
    points filled by nearest neighbour; nan where the scene has no walls, inf where the filled labels have none
    (every feature missed)."""
    jj, ii = np.mgrid[0:true_labels.shape[0], 0:true_labels.shape[1]]
    nearest = ndimage.distance_transform_edt(~_mask(points_ij, true_labels.shape), return_indices=True)[1]
    labels = true_labels[nearest[0], nearest[1]]
    a, b = label_walls(true_labels), label_walls(labels)
    if not a.any():
        return float("nan")
    if not b.any():
        return float("inf")
    to_b, to_a = ndimage.distance_transform_edt(~b), ndimage.distance_transform_edt(~a)
    return float((to_b[a].mean() + to_a[b].mean()) / 2)


def _mask(points_ij, shape):
    out = np.zeros(shape, bool)
    out[points_ij[:, 1], points_ij[:, 0]] = True
    return out


def samplers(lattice, budget, scales, slads_model, seed):
    """The methods for one budget: (sampler, batch per ask)."""
    per_round = max(8, budget // 10)
    return {"steering": (AgentSampler(lattice, budget), budget),
            "raster": (RasterSampler(lattice, budget), budget),
            "random": (RandomSampler(lattice, seed=seed), budget),
            "gp": (GPSampler(lattice, n_initial=budget // 4, seed=seed), per_round),
            "slads": (SLADSSampler(lattice, slads_model, scales, n_initial=budget // 4), per_round)}


def bench_scene(family: str, seed: int, fine: int, predictor, scales, slads_model, budgets: dict) -> dict:
    """Every method at every budget on one scene: {(method, budget name): {"ratio": {field: x full raster},
    "walls": steps, "time": (moves, settling, detector) s, "points": k, "seconds": wall s}}, plus "full"."""
    scene = measure_scene(family, seed, fine, predictor)
    lattice, near, truth = scene["lattice"], scene["near"], scene["truth"]
    everything = snake_order([(i, j) for j in range(fine) for i in range(fine)])
    full_points = np.array([lattice.position(ij) for ij in everything])
    full_measured = {ij: {f: scene["table"][f][ij[1], ij[0]] for f in FIELDS} for ij in everything}
    full_rms = {f: _rms(reconstruct(lattice, full_measured, f), truth[f], near) for f in FIELDS}
    out = {"full": {"rms": full_rms, "time": beamline_time(full_points, scene["timing"]),
                    "near": float(near.mean())}}
    for name, budget in budgets.items():
        for method, (sampler, batch) in samplers(lattice, budget, scales, slads_model, seed).items():
            result = run_method(sampler, scene, budget, batch)
            ii, jj = lattice.index(result["points"][:, 0], result["points"][:, 1])
            out[method, name] = {
                "ratio": {f: _rms(result["maps"][f], truth[f], near) / full_rms[f] for f in FIELDS},
                "walls": wall_steps(scene["labels"], np.stack([ii, jj], axis=1)),
                "time": beamline_time(result["points"], scene["timing"]), "points": len(result["points"]),
                "seconds": result["seconds"]}
    return out


def _rms(estimate, truth, near) -> float:
    return float(np.sqrt(np.nanmean((estimate[near] - truth[near]) ** 2)))


def network_scales(predictor, fine: int) -> dict[str, float]:
    """Each field's measurement noise: the network's median std on a tuning scene (walls, first tuning seed)."""
    table = measure_scene("walls", TUNING_SEEDS[0], fine, predictor)["table"]
    return {f: float(np.nanmedian(table[f + "_std"])) for f in FIELDS}


def train_slads(fine: int, scales: dict, n_seeds: int = 3):
    """SLADS's regressor, trained on the truth of the first tuning seeds of every family (noise units)."""
    g = np.linspace(-2.0, 2.0, fine)
    x, y = np.meshgrid(g, g)
    images = []
    for family in FAMILIES:
        for seed in TUNING_SEEDS[:n_seeds]:
            truth = SimSample(family, seed).truth(x, y)
            images.append(np.stack([truth[f] / scales[f] for f in FIELDS], axis=-1))
    return train_erd(images, seed=0)


def summarise(rows: list[dict], key) -> dict:
    """Means over seeds (and the worst seed's ratios) of one (method, budget)."""
    ratios = np.array([[row[key]["ratio"][f] for f in FIELDS] for row in rows])
    walls = np.array([row[key]["walls"] for row in rows])
    time_share = np.mean([row[key]["time"].sum() / row["full"]["time"].sum() for row in rows])
    return {"ratio": ratios.mean(axis=0), "worst": ratios.max(axis=0),
            "walls": float(np.nan if np.isnan(walls).all() else np.nanmean(walls)),
            "time": time_share, "points": np.mean([row[key]["points"] for row in rows]),
            "seconds": np.mean([row[key]["seconds"] for row in rows])}


def bars(s: dict, budgets) -> dict[str, bool | None]:
    """Issue 21's bars for one family from its summaries s[(method, budget)]."""
    steer20, steer10, steer_eq = s["steering", "20%"], s["steering", "10%"], s["steering", "equal"]
    walls_ok = None if np.isnan(steer20["walls"]) else bool(steer20["walls"] <= 1.0)
    return {"20%: <= 1.5x full in every field": bool((steer20["ratio"] <= 1.5).all()),
            "20%: walls within 1 fine step": walls_ok,
            "10%: better than every baseline at 20%": all(bool((steer10["ratio"] < s[m, "20%"]["ratio"]).all())
                                                          for m in BASELINES),
            "equal points: better than raster and GP": all(bool((steer_eq["ratio"] < s[m, "equal"]["ratio"]).all())
                                                           for m in ("raster", "gp"))}


def report(family: str, seeds, rows: list[dict], budgets: dict, fine: int) -> dict:
    full = rows[0]["full"]
    near = np.mean([row["full"]["near"] for row in rows])
    rms = ", ".join(f"{f} {np.mean([row['full']['rms'][f] for row in rows]):.2e}" for f in FIELDS)
    print(f"\n{family} (seeds {', '.join(map(str, seeds))}): {100 * near:.0f}% of the raster near features; "
          f"full raster {fine} x {fine}: RMS near features {rms}, beamline time {full['time'].sum():.0f} s "
          f"(moves {full['time'][0]:.1f}, settling {full['time'][1]:.1f}, detector {full['time'][2]:.1f})")
    print(f"  {'budget':7s}{'method':10s}{'points':>7s}   RMS near features x full (strain omega chi) [worst seed]"
          f"   walls (steps)  time x full  compute s")
    s = {}
    for name in budgets:
        for method in METHODS:
            s[method, name] = v = summarise(rows, (method, name))
            ratios = " ".join(f"{r:5.2f}" for r in v["ratio"])
            worst = " ".join(f"{r:5.2f}" for r in v["worst"])
            walls = "missed" if np.isinf(v["walls"]) else f"{v['walls']:.2f}"
            print(f"  {name:7s}{method:10s}{v['points']:7.0f}   {ratios}  [{worst}]   {walls:>9s}      "
                  f"{v['time']:6.3f}   {v['seconds']:8.2f}")
    verdict = bars(s, budgets)
    for bar, ok in verdict.items():
        print(f"  bar {bar}: {'n/a (no walls)' if ok is None else 'PASS' if ok else 'FAIL'}")
    print(f"  beamline time of steering: {s['steering', '20%']['time']:.3f} (20%), "
          f"{s['steering', 'equal']['time']:.3f} (equal points) of the full raster's")
    return verdict


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one reporting seed per family")
    parser.add_argument("--fine", type=int, default=33, help="points per side of the fine raster (8 k + 1)")
    parser.add_argument("--seeds", type=int, default=len(REPORTING_SEEDS), help="reporting seeds per family")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated families")
    parser.add_argument("--tuning", action="store_true", help="the tuning seeds instead of the reporting seeds")
    args = parser.parse_args(argv)
    seeds = (TUNING_SEEDS if args.tuning else REPORTING_SEEDS)[:1 if args.quick else args.seeds]
    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {list(FAMILIES)}")
    torch.set_num_threads(1)
    threadpool_limits(1)  # BLAS on one thread: GP fits run ~10x faster on a shared 2-core machine
    t = time.perf_counter()
    predictor = Predictor.load()
    fine = args.fine
    budgets = {"10%": round(0.1 * fine ** 2), "20%": round(0.2 * fine ** 2), "equal": ((fine + 1) // 2) ** 2}
    scales = network_scales(predictor, fine)
    slads_model = train_slads(fine, scales)
    print(f"network {predictor}; fine raster {fine} x {fine} over 4 x 4 um; budgets {budgets} points; near "
          f"features: within {NEAR} um; noise scales (median network std, tuning scene walls/{TUNING_SEEDS[0]}): "
          + ", ".join(f"{f} {v:.2e}" for f, v in scales.items())
          + f"; steering: steered_map's defaults {PLAN}; SLADS trained on the truth of tuning seeds "
            f"{TUNING_SEEDS[:3]} of every family ({time.perf_counter() - t:.0f} s so far)")
    verdicts = {}
    for family in families:
        rows = [bench_scene(family, seed, fine, predictor, scales, slads_model, budgets) for seed in seeds]
        verdicts[family] = report(family, seeds, rows, budgets, fine)
    print("\nbars (issue 21) for today's steering, per family:")
    for family, verdict in verdicts.items():
        print(f"  {family:11s} " + "  ".join(f"{'-' if ok is None else 'pass' if ok else 'FAIL'}" for ok in
                                             verdict.values()))
    print("  columns: " + " | ".join(next(iter(verdicts.values()))))
    print(f"total {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
