"""Accuracy of the NanobeamNN models on a held-out set of random off-grid film states.

Held-out set: N random parameter sets (uniform over the published ranges, never on the grid), box kernel,
published count level, Poisson noise (seeded). Prints the RMSE per parameter for: one member of the default
ensemble (the one with the lowest validation loss at training time), the default ensemble, the ensemble + physics
refinement; the ensemble spread against the actual error; the accuracy at 10x and 0.3x the training count level;
and the thickness model's RMSE (thickness 60-300 A), alone and with refinement.

    python benchmarks/accuracy.py [--frames 2000] [--seed 0] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from nanopilot.model import Predictor, load_model, shipped_model_path
from nanopilot.model.data import DEFAULT_RANGES, sample_params
from nanopilot.physics import poisson, simulate

BARS = {"single model": (1.4e-4, 5.5e-4, 1.7e-3), "default ensemble": (1.25e-4, 4.8e-4, 1.6e-3),
        "ensemble + refine": (1.05e-4, 4.0e-4, 1.45e-3)}


def held_out(n: int, seed: int, outputs: int = 3, counts="published"):
    params = sample_params(n, DEFAULT_RANGES, outputs, np.random.default_rng([seed, 7]))
    return params, poisson(simulate(params, counts=counts), seed)


def rmse(est: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.sqrt(((est - truth) ** 2).mean(axis=0))


def row(name: str, values, bars=None, extra: str = "") -> str:
    cells = "".join(f"{v:>12.3e}" for v in values)
    mark = "" if bars is None else ("  meets bar" if (np.asarray(values) <= bars).all() else
                                    "  MISSES bar " + " / ".join(f"{b:.3g}" for b in bars))
    return f"{name:<26}{cells}{mark}{extra}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    ensemble = Predictor.load(threads=args.threads)
    model = load_model(shipped_model_path())
    # the single model: the member with the lowest loss on its own validation set (recorded in the sidecar at
    # training time; never chosen on this held-out set)
    best = min(range(len(model.networks)), key=lambda k: model.metadata["members"][k]["validation"]["val_loss"])
    single = Predictor(model.member(best), threads=args.threads)
    params, frames = held_out(args.frames, args.seed)
    print(f"held-out set: {args.frames} random off-grid states, box kernel, published count level, seed {args.seed}")
    print(f"single model: member {best} (seed {model.metadata['members'][best]['seed']}), the lowest validation loss")
    print(f"{'mode':<26}{'strain':>12}{'omega (deg)':>12}{'chi (deg)':>12}")
    mean_single, _, _ = single.predict_raw(frames)
    print(row("single model", rmse(mean_single, params), BARS["single model"]))
    mean, std, _ = ensemble.predict_raw(frames)
    print(row(f"default ensemble ({ensemble.n_members})", rmse(mean, params), BARS["default ensemble"]))
    t0 = time.perf_counter()
    refined = ensemble.predict(frames, refine=True)
    seconds = time.perf_counter() - t0
    ok = refined.ok
    print(row("ensemble + refine", rmse(refined.params()[ok], params[ok]), BARS["ensemble + refine"],
              f"  ({ok.sum()} ok frames, {1e3 * seconds / len(frames):.1f} ms/frame)"))
    est = ensemble.predict(frames)
    print(f"statuses (ensemble): {est.counts()}")

    print("\nuncertainty calibration (ensemble spread vs actual error; calibrated = spread x the sidecar's factor):")
    err = np.abs(mean - params)
    for i, name in enumerate(ensemble.outputs):
        z = err[:, i] / std[:, i]
        corr = np.corrcoef(std[:, i], err[:, i])[0, 1]
        spread, error = np.sqrt((std[:, i] ** 2).mean()), rmse(mean, params)[i]
        factor = ensemble.spread_factor[i]
        print(f"  {name:<8} RMS spread {spread:.3e}  RMS error {error:.3e}  ratio {error / spread:.2f}"
              f"  |error| < 1 spread: {100 * (z < 1).mean():.0f}% (68% if calibrated)"
              f"  corr(spread, |error|) {corr:.2f}")
        print(f"  {'':<8} calibrated (factor {factor:.2f}): RMS(error / std) {np.sqrt((z ** 2).mean()) / factor:.2f}"
              f" (1 if calibrated)  |error| < 1 std: {100 * (z < factor).mean():.0f}%"
              f"  < 2 std: {100 * (z < 2 * factor).mean():.0f}% (95% if normal)")

    print("\ncount level (ensemble, raw network output on every frame; flagged = status count_level):")
    for factor in (10.0, 0.3):
        p, f = held_out(args.frames, args.seed + 1, counts=7.0 * factor)
        m, _, _ = ensemble.predict_raw(f)
        flagged = (ensemble.predict(f).status == "count_level").mean()
        print(row(f"{factor:g}x training counts", rmse(m, p), extra=f"  flagged {100 * flagged:.0f}%"))

    thick = Predictor.load(shipped_model_path("thickness"), threads=args.threads)
    p4, f4 = held_out(args.frames, args.seed + 2, outputs=4)
    m4, _, _ = thick.predict_raw(f4)
    r4 = rmse(m4, p4)
    print(f"\nthickness model (thickness 60-300 A, published count level): RMSE strain {r4[0]:.3e}, omega {r4[1]:.3e}"
          f" deg, chi {r4[2]:.3e} deg, thickness {r4[3]:.2f} A (target <= 3 A)")
    t0 = time.perf_counter()
    refined = thick.predict(f4, refine=True)
    seconds = time.perf_counter() - t0
    ok = refined.ok
    r4, n4 = rmse(refined.params(with_thickness=True)[ok], p4[ok]), rmse(m4[ok], p4[ok])
    print(f"thickness model + refine ({ok.sum()} ok frames, {1e3 * seconds / len(f4):.1f} ms/frame): RMSE strain "
          f"{r4[0]:.3e}, omega {r4[1]:.3e} deg, chi {r4[2]:.3e} deg, thickness {r4[3]:.2f} A "
          f"(network alone on the same frames: {n4[3]:.2f} A)")


if __name__ == "__main__":
    main()
