"""``nanopilot library``: render a simulated pattern library to HDF5."""

from __future__ import annotations

import time


def register(subparsers) -> None:
    p = subparsers.add_parser("library", help="render a simulated pattern library to HDF5",
                              description="Render a grid of patterns (default: the published 41^3 grid) to HDF5.")
    p.add_argument("--grid", default="", help="axes to change, e.g. 'strain=-0.005:0.005:41,thickness=60:300:25' "
                                              "(NAME=START:STOP:N; strain, omega/chi in deg, thickness in A)")
    p.add_argument("--out", default="library.h5", help="output HDF5 file (default: %(default)s)")
    p.add_argument("--instrument", help="instrument YAML/JSON file (default: the published setup)")
    p.add_argument("--kernel", choices=["box", "gauss"], default="box", help="box = the published formula")
    p.add_argument("--counts", default="published",
                   help="'published' (brightest pattern peaks at 7 counts), a peak count level, or 'raw'")
    p.set_defaults(run=run)


def parse_counts(text: str):
    """'raw' -> None, 'published' -> 'published', else a float peak count level."""
    if text == "raw":
        return None
    if text == "published":
        return text
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--counts must be 'published', 'raw' or a number, got {text!r}") from None


def run(args) -> int:
    from ..physics import Grid, Instrument, Library

    grid = Grid.parse(args.grid)
    instrument = Instrument.load(args.instrument) if args.instrument else Instrument()
    t0 = time.perf_counter()
    lib = Library.generate(args.out, grid, instrument, kernel=args.kernel, counts=parse_counts(args.counts))
    print(f"wrote {lib!r} ({len(lib):,} patterns) to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0
