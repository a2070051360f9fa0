"""Benchmark: gradient-based Poisson refinement of noisy patterns.

Prints ms per pattern for :func:`nanopilot.fitting.refine` and the RMS errors before and after refinement, from a
start one grid step (of the published 41^3 grid) away in every parameter and from the likelihood library fit, on
noisy patterns at the published count level rendered with the box kernel (the published formula; the refinement
model uses the smooth kernel) and, to show the noise floor, with the smooth kernel. The median standard deviation
reported by refine (inverse Fisher information) is printed beside the errors.

    python benchmarks/refine.py [--library library.h5] [--n 500] [--threads 2]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nanopilot.fitting import correlation_fit, refine
from nanopilot.physics import Grid, Library, poisson, simulate


def rmse(params: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.sqrt(np.nanmean((params - truth) ** 2, axis=0))


def row(label: str, values: np.ndarray, extra: str = "") -> None:
    print(f"{label:<40}{values[0]:>12.3g}{values[1]:>16.3g}{values[2]:>14.3g}  {extra}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", help="existing 41^3 library file (default: render one to a temporary file)")
    parser.add_argument("--n", type=int, default=500, help="noisy patterns to refine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        lib = Library.load(args.library) if args.library else \
            Library.generate(Path(tmp) / "library.h5", Grid.default(), progress=False)
        grid = lib.grid
        steps = np.array([grid.strain.step, grid.omega.step, grid.chi.step])
        rng = np.random.default_rng(args.seed)
        truth = np.stack([rng.uniform(a.start, a.stop, args.n) for a in (grid.strain, grid.omega, grid.chi)], axis=1)
        step_start = truth + steps * rng.choice([-1, 1], size=truth.shape)
        print(f"{args.n} noisy off-grid patterns at the library's count level ({lib.counts}), Poisson noise; "
              f"grid steps {steps[0]:g}, {steps[1]:g} deg, {steps[2]:g} deg")
        print(f"{'RMSE':<40}{'strain':>12}{'omega (deg)':>16}{'chi (deg)':>14}")
        for kernel in ("box", "gauss"):
            frames = poisson(simulate(truth, lib.instrument, kernel=kernel) * lib.scale, seed=args.seed + 1)
            print(f"-- frames rendered with the {kernel} kernel")
            starts = [("one grid step away", step_start)]
            if kernel == "box":
                t0 = time.perf_counter()
                coarse = correlation_fit(frames, lib, method="likelihood")
                fit_ms = (time.perf_counter() - t0) / args.n * 1e3
                starts.append((f"likelihood fit ({fit_ms:.2f} ms/pattern)", coarse.params()))
            for label, start in starts:
                refine(frames[:8], start[:8], lib.instrument)  # warm up
                t0 = time.perf_counter()
                est = refine(frames, start, lib.instrument)
                per_pattern = (time.perf_counter() - t0) / args.n * 1e3
                std = np.nanmedian(np.stack([est.strain_std, est.omega_std, est.chi_std], axis=1), axis=0)
                row(f"start: {label}", rmse(start, truth))
                row("refined", rmse(est.params(), truth),
                    f"{per_pattern:.1f} ms/pattern, statuses {est.counts()}")
                row("median std reported by refine", std)
        lib.close()


if __name__ == "__main__":
    main()
