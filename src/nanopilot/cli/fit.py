"""``nanopilot fit``: conventional library fitting (and optional refinement) of simulated or recorded frames."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .library import parse_counts

if TYPE_CHECKING:  # the package's modules import torch: only when a command runs, so that --help stays fast
    from ..estimates import Estimates
    from ..physics import Instrument, Library

_COLUMNS = ("strain", "omega", "chi", "thickness")
#: ``nanopilot.fitting.METHODS``, spelled out so that building the parser imports no torch (a test keeps them equal).
METHODS = ("correlation", "likelihood")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fit", help="fit frames against a library (correlation or likelihood), optionally refine",
        description="Fit detector frames against a simulated library. Without --frames, simulates N random off-grid "
                    "film states over the library's ranges (box kernel, Poisson noise) and prints the errors.")
    p.add_argument("--library", required=True, help="library HDF5 file (from 'nanopilot library')")
    p.add_argument("--n", type=int, default=200, help="number of simulated frames (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated states and noise")
    p.add_argument("--counts", default="published",
                   help="count level of simulated frames: 'published' (peak 7 counts), a peak count level, or 'raw'")
    p.add_argument("--method", choices=METHODS, default="correlation",
                   help="'correlation' = the published centre-of-mass method; 'likelihood' = Poisson best grid point")
    p.add_argument("--refine", action="store_true", help="refine each estimate by Poisson maximum likelihood")
    p.add_argument("--frames", help="fit these frames instead: .npy file of (N, H, W) counts")
    p.add_argument("--out", help="save the estimates (.npz or .csv; default with --frames: FRAMES_fit.npz)")
    p.add_argument("--instrument", help="instrument YAML/JSON file the frames come from (default: the library's)")
    p.add_argument("--preparation", help="frame preparation YAML (ROI, binning, dark, flat, gain, mask, orientation): "
                                         "--frames are raw detector frames, prepared first")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..fitting import correlation_fit, refine
    from ..physics import Instrument, Library, poisson, simulate

    if args.out and Path(args.out).suffix not in (".npz", ".csv"):
        raise ValueError(f"--out must end in .npz or .csv, got {args.out}")
    instrument = Instrument.load(args.instrument) if args.instrument else None
    if args.preparation and not args.frames:
        raise ValueError("--preparation prepares raw --frames: give --frames too")
    with Library.load(args.library, instrument) as lib:
        prepared_status = None
        if args.frames:
            frames, truth = np.load(args.frames, allow_pickle=False), None
            source = f"{len(frames):,} frames from {args.frames}"
            if args.preparation:
                frames, prepared_status = prepare_frames(frames, args.preparation, lib.instrument)
                source += f" prepared by {args.preparation}"
        else:
            if args.n < 1:
                raise ValueError(f"--n must be at least 1, got {args.n}")
            truth = random_states(lib, args.n, args.seed)
            frames = poisson(simulate(truth, lib.instrument, counts=parse_counts(args.counts)), seed=args.seed)
            source = (f"{args.n:,} simulated off-grid frames (counts={args.counts}, box kernel, Poisson noise, "
                      f"seed {args.seed})")
        print(f"fitting {source} against {lib!r}")
        stages = []
        t0 = time.perf_counter()
        est = flag(correlation_fit(frames, lib, method=args.method, progress=True), prepared_status)
        stages.append((args.method, est, time.perf_counter() - t0))
        if args.refine:
            t0 = time.perf_counter()
            est = refine(frames, est, lib.instrument, fit_thickness=lib.grid.thickness is not None, progress=True)
            stages.append(("+ refine", est, time.perf_counter() - t0))
        with_thickness = lib.grid.thickness is not None
    print_table(stages, truth, with_thickness)
    out = args.out or (str(Path(args.frames).with_suffix("")) + "_fit.npz" if args.frames else None)
    if out:
        save_estimates(est, out)
        print(f"saved {len(est):,} estimates to {out}")
    return 0


def prepare_frames(raw: np.ndarray, path: str, instrument: Instrument) -> tuple[np.ndarray, np.ndarray]:
    """(frames (N, H, W) photons, the preparation's status (N,)) of raw detector frames (N, R, C) prepared by the
    frame preparation in ``path``, its masked pixels filled from their good neighbours."""
    from ..model.bad_pixels import fill_pixels
    from ..physics import FramePreparation

    preparation = FramePreparation.load(path)
    preparation.check(instrument)
    prepared = preparation.prepare(raw)
    return fill_pixels(prepared.frames, prepared.mask), prepared.status


def flag(est: Estimates, status: np.ndarray | None) -> Estimates:
    """``est`` with the frames whose ``status`` (N,) is not ok flagged so (values NaN); None: ``est`` itself."""
    from ..estimates import OK

    if status is None or (status == OK).all():
        return est
    bad = status != OK
    est.status[bad] = status[bad]
    for f in dataclasses.fields(est):
        if f.name != "status":
            getattr(est, f.name)[bad] = np.nan
    return est


def random_states(lib: Library, n: int, seed: int) -> np.ndarray:
    """(n, 4) uniform random strain, omega (deg), chi (deg), thickness (A) over the library's grid ranges."""
    rng = np.random.default_rng(seed)
    columns = []
    for name in _COLUMNS:
        axis = getattr(lib.grid, name)
        if axis is None:
            columns.append(np.full(n, lib.instrument.thickness))
        else:
            columns.append(rng.uniform(axis.start, axis.stop, n))
    return np.stack(columns, axis=1)


def print_table(stages, truth: np.ndarray | None, with_thickness: bool) -> None:
    """One row per stage: RMSE per parameter (when the truth is known), ms per pattern, flagged frames."""
    from ..estimates import OK, WARNINGS

    names = _COLUMNS if with_thickness else _COLUMNS[:3]
    heads = {"strain": "strain RMSE", "omega": "omega RMSE (deg)", "chi": "chi RMSE (deg)",
             "thickness": "thickness RMSE (A)"}
    if truth is not None:
        print(f"{'stage':<12}" + "".join(f"{heads[n]:>20}" for n in names) + f"{'ms/pattern':>12}{'flagged':>9}")
    else:
        print(f"{'stage':<12}" + "".join(f"{'median ' + n:>20}" for n in names) + f"{'ms/pattern':>12}{'flagged':>9}")
    for label, est, seconds in stages:
        values = est.params(with_thickness=with_thickness)
        if truth is not None:
            cells = np.sqrt(np.nanmean((values - truth[:, :len(names)]) ** 2, axis=0)) if est.usable.any() \
                else np.full(len(names), np.nan)
        else:
            cells = np.nanmedian(values, axis=0) if est.usable.any() else np.full(len(names), np.nan)
        flagged = int((~est.usable).sum())  # failures (values NaN); warnings keep their values
        print(f"{label:<12}" + "".join(f"{v:>20.3g}" for v in cells)
              + f"{seconds / len(est) * 1e3:>12.2f}{flagged:>9}")
    final = stages[-1][1]
    counts = final.counts()
    for label, kept in (("flagged frames by status", False), ("frames with a warning (values kept)", True)):
        found = {k: v for k, v in counts.items() if k != OK and (k in WARNINGS) == kept}
        if found:
            print(f"{label}: " + ", ".join(f"{k}: {v}" for k, v in found.items()))


def save_estimates(est: Estimates, path: str | Path) -> None:
    """Write every field of ``est`` to ``.npz`` (arrays) or ``.csv`` (one row per frame, with a header)."""
    path = Path(path)
    fields = {f.name: getattr(est, f.name) for f in dataclasses.fields(est) if f.name != "status"}
    fields["status"] = est.status.astype(str)  # the last column
    if path.suffix == ".npz":
        np.savez(path, **fields)
    elif path.suffix == ".csv":
        names = list(fields)
        lines = [",".join(names)]
        for i in range(len(est)):
            lines.append(",".join(str(fields[n][i]) if n == "status" else repr(float(fields[n][i])) for n in names))
        path.write_text("\n".join(lines) + "\n")
    else:
        raise ValueError(f"estimates can be saved to .npz or .csv, got {path}")
