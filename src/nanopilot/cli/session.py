"""``nanopilot session``: an IPython beamline session with the live analysis, plans and Tiled catalogue."""

from __future__ import annotations

import runpy
from pathlib import Path

CHEAT_SHEET = """\
nanopilot session: live analysis, texture labels and live maps are subscribed; runs go to the catalogue.
  RE(bp.grid_scan([det], y, -1, 1, 32, x, -1, 1, 32))          a raster, analysed live
  RE(steered_map([det], x, y, (-2, 2), (-2, 2)))                 coarse raster, then fine scans at the structure
  RE(grow_until([det], deposition, x, y, 120))                   growth stopped at 120 A or at relaxation
  RE(find_texture_temperature([det], temperature, x, y, (-2, 2), (-2, 2), 240))
  maps.current.gridded("strain")   maps.current.scattered()      the live maps (plans read the same object)
  run = select_run(catalog, -1).run   replay(run, analysis)      the newest raw run; replay it through the analysis
  summarize_plan(steered_map(...))                               dry run: the first stage of a plan
"""

#: Names a --devices file must define (temperature and deposition are optional).
DEVICE_NAMES = ("detector", "x", "y")


def register(subparsers) -> None:
    p = subparsers.add_parser("session", help="open an IPython beamline session (simulated devices by default)",
                              description="IPython with a RunEngine, the catalogue, the devices, the live analysis "
                                          "and texture callbacks subscribed, live maps, and the plans imported.")
    p.add_argument("script", nargs="?", help="run this Python file in the session and exit (non-interactive)")
    p.add_argument("--devices", help="Python file defining detector, x, y (and optionally temperature, deposition, "
                                     "RE) for a real beamline; default: the simulated beamline")
    p.add_argument("--scene", default="domains", help="scene of the simulated sample (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated sample")
    p.add_argument("--catalog", default=None, help="catalogue directory or URI (default: the embedded catalogue)")
    p.add_argument("--model", default=None, help="model for the analysis (default: the shipped ensemble)")
    p.add_argument("--mask", default=None, help="detector pixels to ignore: .npy, NeXus/HDF5 pixel_mask or mask image")
    p.add_argument("--plot", default="nanopilot-maps/maps_{uid}.png", help="PNG of the live maps per run")
    p.set_defaults(run=run)


def namespace(args) -> dict:
    """Everything the session offers, by name."""
    import bluesky.plan_stubs as bps
    import bluesky.plans as bp
    from bluesky import RunEngine
    from bluesky.simulators import summarize_plan

    from ..catalog import open_catalog
    from ..plans import find_texture_temperature, grow_until, steered_map
    from ..replay import replay
    from ..runs import last_scan_id, select_run
    from ..session import setup

    ns = {"bp": bp, "bps": bps, "summarize_plan": summarize_plan, "steered_map": steered_map,
          "grow_until": grow_until, "find_texture_temperature": find_texture_temperature, "replay": replay,
          "select_run": select_run}
    if args.devices:
        user = runpy.run_path(str(Path(args.devices)))
        missing = [n for n in DEVICE_NAMES if n not in user]
        if missing:
            raise ValueError(f"{args.devices} must define {', '.join(DEVICE_NAMES)}; missing: {', '.join(missing)}")
        devices = {k: user.get(k) for k in DEVICE_NAMES + ("temperature", "deposition")}
        RE = user.get("RE") or RunEngine({})
    else:
        from ..sim_devices import make_beamline

        bl = make_beamline(args.scene, seed=args.seed)
        devices = {"detector": bl.detector, "x": bl.stage.x, "y": bl.stage.y, "temperature": bl.temperature,
                   "deposition": bl.deposition}
        ns.update(beamline=bl, stage=bl.stage, flyer=bl.flyer, sample=bl.sample)
        RE = RunEngine({})
        bl.install(RE)  # bps.sleep on the simulated clock
    catalog = open_catalog(args.catalog, create=True)
    if "scan_id" not in RE.md:  # continue the catalogue's scan ids instead of starting again at 1
        RE.md["scan_id"] = last_scan_id(catalog)
    session = setup(RE, catalog=catalog, model=args.model, plot=args.plot, mask=args.mask, **devices)
    ns.update(RE=RE, catalog=catalog, session=session, analysis=session.analysis, maps=session.maps,
              texture=session.texture, det=devices["detector"], **{k: v for k, v in devices.items() if v is not None})
    return ns


def run(args) -> int:
    import IPython

    ns = namespace(args)
    print(CHEAT_SHEET)
    argv = ["--quick", "--no-banner", "--colors=nocolor"]
    if args.script:
        if not Path(args.script).is_file():
            raise FileNotFoundError(f"session script {args.script} not found")
        argv.append(str(args.script))
    try:
        IPython.start_ipython(argv=argv, user_ns=ns)
    finally:
        ns["session"].close()  # the analysis finishes (and is stored) before the process exits
    return 0
