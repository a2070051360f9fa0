"""``nanopilot demo``: the closed-loop plans on the simulated beamline, stored in the embedded Tiled catalogue."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import numpy as np

PARTS = ("steer", "grow", "temperature")


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the closed-loop plans on the simulated beamline",
                              description="A steered map of a domain structure, a growth stopped at its target "
                                          "thickness, and a search for the temperature where a stripe texture "
                                          "forms, on simulated devices, analysed live and stored in Tiled.")
    p.add_argument("--only", choices=PARTS, action="append", help="run only this part (repeatable)")
    p.add_argument("--catalog", default=None, help="catalogue directory or URI (default: the embedded catalogue)")
    p.add_argument("--out", default="nanopilot-demo", help="folder for the PNG maps (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated samples")
    p.add_argument("--view", action="store_true",
                   help="serve the live page of the runs (`nanopilot view`, loopback only) while the demo runs and "
                        "after it, until Ctrl-C; a browser is opened where there is a display")
    p.add_argument("--port", type=int, default=8765, help="TCP port of the page with --view (default: %(default)s)")
    p.set_defaults(run=run)


def run(args) -> int:
    import torch
    from bluesky import RunEngine

    from ..catalog import open_catalog
    from ..runs import last_scan_id
    from ..session import setup

    parts = args.only or list(PARTS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("opening the catalogue ...", flush=True)
    catalog = open_catalog(args.catalog, create=True)
    with page_served(args.catalog, args.port) if args.view else contextlib.nullcontext() as page:
        rows = []
        for part in parts:
            # each part's run continues the catalogue's scan ids, so that every run has its own
            RE = RunEngine({"scan_id": last_scan_id(catalog)}, call_returns_result=True)
            RE.loop.call_soon_threadsafe(torch.set_num_threads, 1)  # devices render in the RunEngine's thread
            print(f"-- {part}: running ...", flush=True)
            t0 = time.perf_counter()
            row = DEMOS[part](RE, setup, catalog, out, args.seed)
            row["seconds"] = time.perf_counter() - t0
            row["scan_id"] = catalog[row["uid"]].start["scan_id"]
            rows.append(row)
            print(f"   {row['result']}  ({row['seconds']:.0f} s)", flush=True)
        print_summary(rows, args.catalog)
        if page is not None:
            keep_serving(page)
    return 0


def print_summary(rows: list[dict], location_given) -> None:
    """The table of the demo's runs, where they are stored and how to replay each."""
    from ..catalog import default_data_dir

    print()
    print(f"{'scan':>4s}  {'plan':26s} {'decisions':>9s} {'points':>7s}  {'seconds':>7s}  result against the scene's "
          "truth")
    for row in rows:
        print(f"{row['scan_id']:4d}  {row['plan']:26s} {row['decisions']:9d} {row['points']:7d}  "
              f"{row['seconds']:7.0f}  {row['result']}")
    location = location_given or default_data_dir() / "catalog"
    print(f"\nmaps: {', '.join(str(r['png']) for r in rows)}")
    print(f"data: Tiled catalogue at {location}")
    option = f" --catalog {location_given}" if location_given else ""
    for row in rows:  # a uid prefix names exactly this run; replay analyses it with the model its analysis used
        print(f"replay the {row['plan']} run (scan {row['scan_id']}): nanopilot replay{option} {row['uid'][:8]}")


@contextlib.contextmanager
def page_served(location, port: int):
    """``nanopilot view`` of the catalogue at ``location`` on the loopback, in a process of its own (the page's
    reading and drawing never take the scans' interpreter), for the duration of the ``with`` block; prints the URL
    and opens a browser where there is a display. ValueError, before anything moves, if it does not start (e.g. the
    port is taken)."""
    import socket
    import subprocess
    import sys
    import urllib.request
    import webbrowser

    with socket.socket() as probe:  # a taken port is refused here: an answer on it would be another server's
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as err:
            raise ValueError(f"port {port} is taken ({err.strerror}): give another --port") from None
    command = [sys.executable, "-c", "import sys; from nanopilot.cli import main; sys.exit(main())", "view",
               "--port", str(port)] + (["--catalog", str(location)] if location is not None else [])
    page = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url + "api/runs?limit=1", timeout=10)
                break
            except OSError:
                if page.poll() is not None or time.monotonic() > deadline:
                    raise ValueError(f"the page did not start on port {port} (its error, if any, is above)") from None
                time.sleep(0.3)
        print(f"the page of the runs: {url}", flush=True)
        if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform in ("darwin", "win32"):
            webbrowser.open(url)
        yield page
    finally:
        page.terminate()
        page.wait(30)


def keep_serving(page) -> None:
    """Serve the page until Ctrl-C (or until its process ends)."""
    print("the page stays up for the stored runs: Ctrl-C stops it", flush=True)
    try:
        page.wait()
    except KeyboardInterrupt:
        pass


def _count(result) -> int:
    return len(result.plan_result["decisions"])


def demo_steer(RE, setup, catalog, out, seed) -> dict:
    from ..plans import steered_map
    from ..agents.steering import collect_points
    from ..sim_devices import make_beamline

    bl = make_beamline("domains", seed=seed)
    png = out / "steered_map.png"
    session = setup(RE, detector=bl.detector, x=bl.stage.x, y=bl.stage.y, catalog=catalog, plot=png)
    res = RE(steered_map([bl.detector], bl.stage.x, bl.stage.y, (-2, 2), (-2, 2), fine=33, budget=0.25,
                         md={"sample": f"simulated domains, seed {seed}"}))
    result = res.plan_result
    session.close()  # finishes the analysis (stored) and unsubscribes it before the next demo
    points = collect_points(session.maps[res.run_start_uids[0]], result["lattice"], "stage_x", "stage_y")
    xy = np.array([result["lattice"].position(k) for k in points])
    truth = bl.sample.truth(xy[:, 0], xy[:, 1])
    est = {f: np.array([p[f] for p in points.values()]) for f in ("strain", "omega", "chi")}
    rms = {f: float(np.sqrt(np.nanmean((est[f] - truth[f]) ** 2))) for f in est}
    text = (f"{result['points']} of {33 * 33} raster points ({result['points'] / 33 ** 2:.0%}), {result['rounds']} "
            f"refinement rounds; RMS error strain {rms['strain']:.2e}, omega {rms['omega']:.2e} deg, "
            f"chi {rms['chi']:.2e} deg")
    return {"plan": "steered_map (domains)", "decisions": _count(res), "points": result["points"],
            "result": text, "uid": res.run_start_uids[0], "png": png}


def demo_grow(RE, setup, catalog, out, seed) -> dict:
    from ..model import THICKNESS_MODEL
    from ..plans import grow_until
    from ..sim_devices import make_beamline

    bl = make_beamline("growth", seed=seed)
    png = out / "growth.png"
    session = setup(RE, detector=bl.detector, x=bl.stage.x, y=bl.stage.y, deposition=bl.deposition,
                    catalog=catalog, plot=png, model=THICKNESS_MODEL)
    target = 100.0
    bl.install(RE)  # the plan's bps.sleep on the simulated clock
    res = RE(grow_until([bl.detector], bl.deposition, bl.stage.x, bl.stage.y, target,
                        md={"sample": f"simulated growth, seed {seed}"}))
    result = res.plan_result
    session.close()
    film = bl.sample.scene.initial_thickness + bl.sample.deposited
    text = (f"stopped ({result['reason']}) at {film:.1f} A for a target of {target:g} A "
            f"(estimated {result['thickness']:.1f} A; critical thickness {bl.sample.scene.critical_thickness:.0f} A); "
            f"shutter {bl.deposition.shutter.get()}")
    points = len(session.maps[res.run_start_uids[0]])
    return {"plan": "grow_until (growth)", "decisions": _count(res), "points": points, "result": text,
            "uid": res.run_start_uids[0], "png": png}


def demo_temperature(RE, setup, catalog, out, seed) -> dict:
    from ..plans import find_texture_temperature
    from ..sim_devices import make_beamline

    bl = make_beamline("cooling", seed=seed, temperature=272.0)
    png = out / "texture_temperature.png"
    session = setup(RE, detector=bl.detector, x=bl.stage.x, y=bl.stage.y, temperature=bl.temperature,
                    catalog=catalog, plot=png)
    res = RE(find_texture_temperature([bl.detector], bl.temperature, bl.stage.x, bl.stage.y, (-2, 2), (-2, 2),
                                      240.0, quick=10, fine=24,
                                      md={"sample": f"simulated cooling film, seed {seed}"}))
    result = res.plan_result
    session.close()
    true = bl.sample.scene.transition_temperature
    text = (f"{result['reason']}: transition at {result['transition']:.2f} K (true {true:.2f} K, error "
            f"{abs(result['transition'] - true):.2f} K) with {result['maps']} maps")
    points = len(session.maps[res.run_start_uids[0]])
    return {"plan": "find_texture_temperature", "decisions": _count(res), "points": points, "result": text,
            "uid": res.run_start_uids[0], "png": png}


DEMOS = {"steer": demo_steer, "grow": demo_grow, "temperature": demo_temperature}
