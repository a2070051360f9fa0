"""Texture classification benchmark on the simulated scenes, at the default count level (peak 7 counts).

Prints:
- ``domains``: adjusted Rand index of the texture labels against the scene's ground-truth domains (bar >= 0.9,
  with the default ``TextureCallback``; also shown with ``regions=True``);
- ``cooling``: the temperature at which ``texture_change`` (reference: a map above the transition) first
  declares a new texture on cooling, and its offset from the texture's formation (bar <= 2 K);
- false alarms of ``texture_change`` over noisy maps of an unchanged sample (bar < 1%);
- cost per scan point of the texture work against the network's (bar <= 20%).

The network outputs come from ``nanopilot.model.Predictor.load()`` when it can be loaded; otherwise (and with
``--estimator truth``) they are the scene's ground truth plus Gaussian noise of the network's expected precision
(:data:`NOISE`), and the network's cost is timed on a 10-member ensemble of the published architecture. The
script says which. Frames are the forward model at the true parameters (rounded to a tenth of the library grid
step, far below the noise, to render each distinct pattern once) with Poisson noise.

    python benchmarks/texture.py [--estimator auto|truth] [--false-alarm-maps 100] [--domain-seeds 1 2 3]

The bar is measured on the default ``--domain-seeds`` (1 2 3); other seeds check that it generalises.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import adjusted_rand_score

from nanopilot.callbacks import LiveMaps
from nanopilot.estimates import Estimates, check_frames
from nanopilot.physics import simulate
from nanopilot.sim_devices import make_beamline
from nanopilot.texture import TextureCallback, frame_descriptor, run_stripes, texture_change

#: Standard deviation of the stand-in "network outputs": strain, omega (deg), chi (deg), thickness (angstrom).
NOISE = np.array([2.5e-4, 0.0025, 0.005, 5.0])
#: Rounding of the true parameters before rendering (a tenth of the library grid steps; thickness 1 angstrom).
QUANTUM = np.array([2.5e-5, 2.5e-4, 5e-4, 1.0])
COUNTS = 7.0  # the detector's default: 70 counts/s x 0.1 s


class Renderer:
    """Noisy frames of a sample at positions, each distinct (rounded) parameter set rendered once."""

    def __init__(self, rng):
        self.rng, self.cache = rng, {}

    def __call__(self, truth: np.ndarray) -> np.ndarray:
        keys = np.round(truth / QUANTUM).astype(np.int64)
        unique, inverse = np.unique(keys, axis=0, return_inverse=True)
        missing = [tuple(k) for k in unique if tuple(k) not in self.cache]
        if missing:
            images = simulate(np.array(missing) * QUANTUM, counts=COUNTS)
            self.cache.update(zip(missing, images))
        expected = np.stack([self.cache[tuple(k)] for k in unique])[inverse.ravel()]
        return self.rng.poisson(expected).astype(np.float32)


class Estimator:
    """The network (Predictor) when available, else ground truth plus :data:`NOISE`."""

    def __init__(self, kind: str, rng):
        self.rng, self.predictor = rng, None
        if kind == "auto":
            try:
                from nanopilot.model import Predictor

                self.predictor = Predictor.load()
            except Exception as err:  # not shipped yet: say so and use the stand-in
                print(f"(nanopilot.model.Predictor unavailable: {type(err).__name__}: {err})")
        self.name = ("nanopilot.model.Predictor.load() (the network)" if self.predictor is not None else
                     "STAND-IN: ground truth + Gaussian noise (strain 2.5e-4, omega 0.0025 deg, chi 0.005 deg, "
                     "thickness 5 A), NOT the network")

    def __call__(self, frames, truth) -> Estimates:
        if self.predictor is not None:
            return self.predictor.predict(frames)
        _, status = check_frames(frames)
        noisy = truth + self.rng.normal(size=truth.shape) * NOISE
        return Estimates.from_params(noisy, status, std=np.broadcast_to(NOISE, truth.shape))

    def network_seconds_per_frame(self, frames) -> float:
        if self.predictor is not None:
            self.predictor.predict(frames[:64])
            t = time.perf_counter()
            self.predictor.predict(frames)
            return (time.perf_counter() - t) / len(frames)
        import torch

        from nanopilot.model.network import NanobeamNN, StackedEnsemble

        ensemble = StackedEnsemble([NanobeamNN() for _ in range(10)]).eval()
        with torch.no_grad():
            batch = torch.as_tensor(frames)
            ensemble(batch[:64])
            t = time.perf_counter()
            for i in range(0, len(batch), 512):
                ensemble(batch[i:i + 512])
        return (time.perf_counter() - t) / len(frames)


def grid_map(maps, uid, bl, render, estimate, n, half):
    """A rectilinear n x n map over [-half, half]^2 (um) of the beamline's sample, into LiveMaps; its frames."""
    axis = np.linspace(-half, half, n)
    y, x = (a.ravel() for a in np.meshgrid(axis, axis, indexing="ij"))
    truth = bl.sample.parameters(x, y)
    frames = render(truth)
    maps.begin_run(uid, ["stage_y", "stage_x"], (n, n), [(-half, half), (-half, half)])
    maps.add(uid, np.arange(1, n * n + 1), np.column_stack([y, x]), estimate(frames, truth),
             frame_descriptor(frames))
    return frames, x, y


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--estimator", choices=("auto", "truth"), default="auto")
    parser.add_argument("--false-alarm-maps", type=int, default=100)
    parser.add_argument("--size", type=int, default=40, help="points per side of the cooling maps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--domain-seeds", type=int, nargs="+", default=[1, 2, 3],
                        help="scene seeds of the domains maps (the bar: 1 2 3)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    render, estimate = Renderer(rng), Estimator(args.estimator, rng)
    print(f"network outputs from: {estimate.name}")
    maps = LiveMaps()

    # ---- domains: ARI against the ground-truth domains, and the cost per point
    aris = []
    for seed in args.domain_seeds:
        bl = make_beamline("domains", seed=seed)
        frames, x, y = grid_map(maps, f"domains{seed}", bl, render, estimate, 48, 2.0)
        textures = TextureCallback()
        t = time.perf_counter()
        frame_descriptor(frames)
        result = textures.classify(maps[f"domains{seed}"])
        cost = (time.perf_counter() - t) / len(frames)
        ari = adjusted_rand_score(bl.sample.labels(x, y), result["labels"])
        aris.append(ari)
        regions = TextureCallback(regions=True)  # textures must be regions of the map (not the default)
        regions_ari = adjusted_rand_score(bl.sample.labels(x, y), regions.classify(maps[f"domains{seed}"])["labels"])
        print(f"domains seed {seed}: 48 x 48 points, {textures.classifier.n_clusters_} textures "
              f"(scene: {bl.sample.scene.n_domains} domains), ARI = {ari:.3f}; with regions=True "
              f"{regions.classifier.n_clusters_} textures, ARI = {regions_ari:.3f}")
    network = estimate.network_seconds_per_frame(frames)
    print(f"domains: mean ARI = {np.mean(aris):.3f}, lowest {np.min(aris):.3f} (bar >= 0.9)")

    # ---- cooling: onset detection against a reference map above the transition
    bl = make_beamline("cooling", seed=args.seed, temperature=270.0)
    scene, half, n = bl.sample.scene, bl.sample.scene.field_of_view / 2, args.size
    grid_map(maps, "ref", bl, render, estimate, n, half)
    detected, change_cost = None, []
    for temperature in np.arange(266.0, 249.9, -0.5):
        bl.sample.temperature = temperature
        uid = f"T{temperature:.1f}"
        grid_map(maps, uid, bl, render, estimate, n, half)
        t = time.perf_counter()
        change = texture_change(maps["ref"], maps[uid])
        change_cost.append((time.perf_counter() - t) / (2 * n * n))
        coverage = float((bl.sample.labels(*np.meshgrid(np.linspace(-half, half, n), np.linspace(-half, half, n)))
                          > 0).mean())
        if detected is None and change.changed:
            detected = temperature
            print(f"cooling: first detection at {temperature:.1f} K (true textured coverage {100 * coverage:.1f}%): "
                  f"{change.reason}")
    offset = scene.transition_temperature - detected if detected is not None else np.inf
    print(f"cooling: texture forms below {scene.transition_temperature:.1f} K, detected at "
          f"{detected} K: offset {offset:.1f} K (bar <= 2 K; maps every 0.5 K, {n} x {n} points)")
    stripes = run_stripes(maps[uid])
    print(f"cooling at {temperature:.1f} K: stripes period {stripes.period:.3f} um (scene {scene.stripe_period}), "
          f"orientation {stripes.orientation:.1f} deg (scene {scene.stripe_angle}), coverage {stripes.coverage:.2f}")

    # ---- false alarms over noisy maps of an unchanged sample (untextured above, textured below the transition)
    for temperature in (275.0, 240.0):
        bl = make_beamline("cooling", seed=args.seed, temperature=temperature)
        grid_map(maps, "fa_ref", bl, render, estimate, n, half)
        alarms, scores = 0, []
        for i in range(args.false_alarm_maps):
            grid_map(maps, f"fa{i}", bl, render, estimate, n, half)
            change = texture_change(maps["fa_ref"], maps[f"fa{i}"])
            alarms += change.changed
            scores.append(change.score)
        print(f"false alarms at {temperature:.0f} K (unchanged sample, "
              f"{'untextured' if temperature > scene.transition_temperature else 'textured'}): {alarms} / "
              f"{args.false_alarm_maps} = {100 * alarms / args.false_alarm_maps:.1f}% (bar < 1%); score median "
              f"{np.median(scores):.2f}, max {np.max(scores):.2f} (declared at >= 1)")

    texture_cost = cost + float(np.mean(change_cost))
    print(f"cost per scan point: texture {1e6 * texture_cost:.1f} us (descriptor + features + clustering + "
          f"stripes {1e6 * cost:.1f}, texture_change {1e6 * np.mean(change_cost):.1f}), network "
          f"{1e6 * network:.1f} us: ratio {100 * texture_cost / network:.1f}% (bar <= 20%)")


if __name__ == "__main__":
    main()
