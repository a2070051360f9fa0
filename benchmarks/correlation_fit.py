"""Benchmark: conventional fitting of noisy patterns against the full published 41^3 library.

Times :func:`nanopilot.fitting.correlation_fit` (both methods) on N noisy off-grid patterns at the published count
level, prints ms per pattern, peak memory (RSS), RMS errors, the extrapolation to a 165 x 165 scan (published:
~10 h and ~1 TB RAM, 1,034 ms per pattern), and the ratio against the published broadcast approach (the library as
one in-memory array, each frame broadcast-multiplied with it and summed, numpy) timed in this run on a few patterns.
Target (2 cores): <= 10 ms per pattern, <= 2 GB peak RSS for 1,000 patterns.

    python benchmarks/correlation_fit.py [--library library.h5] [--n 1000] [--baseline-patterns 3] [--threads 2]
"""

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nanopilot.fitting import correlation_fit
from nanopilot.physics import Grid, Library, poisson, simulate

SCAN_POINTS = 165 * 165


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # ru_maxrss is in kB on Linux


def broadcast_baseline(frames: np.ndarray, lib: Library) -> tuple[float, np.ndarray]:
    """The published approach: library in memory as one array, each frame broadcast against it. Returns s/pattern."""
    library = lib.images[()]  # (68921, 64, 64) float32, 1.13 GB
    library /= library.sum(axis=(1, 2), keepdims=True)
    values = [getattr(lib.grid, name).values for name in lib.grid.order]
    out = []
    t0 = time.perf_counter()
    for frame in frames:
        cube = (library * frame[None]).sum(axis=(1, 2)).reshape(lib.grid.shape)
        estimate = []
        for axis, grid_values in enumerate(values):
            profile = cube.sum(axis=tuple(a for a in range(cube.ndim) if a != axis))
            profile = profile - profile.min()
            estimate.append(profile @ grid_values / profile.sum())
        out.append(estimate)
    return (time.perf_counter() - t0) / len(frames), np.array(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", help="existing 41^3 library file (default: render one to a temporary file)")
    parser.add_argument("--n", type=int, default=1000, help="noisy patterns to fit")
    parser.add_argument("--baseline-patterns", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        if args.library:
            lib = Library.load(args.library)
        else:
            t0 = time.perf_counter()
            lib = Library.generate(Path(tmp) / "library.h5", Grid.default(), progress=False)
            print(f"rendered the 41^3 library in {time.perf_counter() - t0:.1f} s")
        print(f"library: {lib!r}, {len(lib):,} patterns, {lib.path.stat().st_size / 1e9:.2f} GB on disk")
        rng = np.random.default_rng(args.seed)
        truth = np.stack([rng.uniform(a.start, a.stop, args.n) for a in (lib.grid.strain, lib.grid.omega,
                                                                          lib.grid.chi)], axis=1)
        frames = poisson(simulate(truth, lib.instrument) * lib.scale, seed=args.seed + 1)
        print(f"{args.n:,} noisy off-grid patterns at the library's count level ({lib.counts}; "
              f"mean {frames.sum(axis=(1, 2)).mean():.0f} counts per pattern), box kernel, Poisson noise")
        rss_before = peak_rss_gb()
        print(f"peak RSS before fitting: {rss_before:.2f} GB")
        print(f"{'method':<12}{'ms/pattern':>11}{'peak RSS GB':>12}{'strain RMSE':>13}{'omega RMSE deg':>16}"
              f"{'chi RMSE deg':>14}{'165x165 scan':>14}")
        results = {}
        for method in ("correlation", "likelihood"):
            correlation_fit(frames[:8], lib, method=method)  # warm up (threads, file cache)
            t0 = time.perf_counter()
            est = correlation_fit(frames, lib, method=method)
            per_pattern = (time.perf_counter() - t0) / args.n
            rmse = np.sqrt(np.mean((est.params() - truth) ** 2, axis=0))
            results[method] = (per_pattern, est)
            print(f"{method:<12}{per_pattern * 1e3:>11.2f}{peak_rss_gb():>12.2f}{rmse[0]:>13.3g}{rmse[1]:>16.3g}"
                  f"{rmse[2]:>14.3g}{per_pattern * SCAN_POINTS / 60:>11.1f} min")
        print("published: 1,034 ms/pattern; a 165 x 165 scan took ~10 h and ~1 TB RAM")
        for method, (per_pattern, _) in results.items():
            print(f"{method}: {1.034 / per_pattern:,.0f}x faster than the published 1,034 ms/pattern")

        k = args.baseline_patterns
        base, base_est = broadcast_baseline(frames[:k], lib)
        ours = results["correlation"][1].params()[:k]
        steps = np.array([lib.grid.strain.step, lib.grid.omega.step, lib.grid.chi.step])
        print(f"published broadcast approach (numpy, library in memory as one array) on {k} patterns: "
              f"{base * 1e3:,.0f} ms/pattern, peak RSS now {peak_rss_gb():.2f} GB; "
              f"correlation_fit is {base / results['correlation'][0]:,.0f}x faster "
              f"(same estimates: max difference {(np.abs(base_est - ours) / steps).max():.2g} grid steps)")
        lib.close()


if __name__ == "__main__":
    main()
