"""Soak test under faults: long fly scans through the live analysis and the storage, with bad frames, malformed,
duplicate and stray documents injected and a storage outage in the middle; every frame must be accounted for.

Per back-pressure policy (block, decimate) one fly scan of the simulated beamline (inline 64 x 64 frames, event pages)
goes to the RunEngine with the raw-run writer (``nanopilot.storage.make_writer``: Tiled behind the backup journal)
and, through a fault injector, to ``NanobeamAnalysis`` (shipped ensemble) whose analysis run is stored too. The
injector replaces frames by bad ones (strings, None, wrong shape, NaN), sends one page with ragged data lists, one
page twice and one page for a descriptor never announced. The catalogue's transport fails (ENOSPC) from 30% to 60%
of the pages. After the scan, ``nanopilot.backup.restore`` puts the journalled runs back. Printed per policy:

- analysis: frames sent by the RunEngine, injected extra frames (duplicate, stray), analysed ok, flagged (by reason),
  skipped (back-pressure), rejected at the door (by reason), lost to errors, and *unaccounted* =
  sent + extra - everything counted (must be 0);
- storage: where the raw and analysis runs went, the raw frames and analysis rows in the catalogue after the
  restore (must equal the frames sent and the frames the analysis received);
- wall time, frames/s, and the peak resident memory (RSS, sampled every 20 ms) during the scan against the RSS
  before it (models loaded, catalogue open).

First, as a baseline measured in the same run, the same scan without faults (block), stored by bluesky-tiled-plugins'
TiledWriter alone, as nanopilot did before its backup journal.

    python benchmarks/soak.py [--frames 20480] [--page 512] [--policies block decimate] [--queue 2048] [--no-baseline]
"""

from __future__ import annotations

import argparse
import copy
import errno
import logging
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from bluesky import RunEngine

from nanopilot.backup import restore
from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.catalog import open_catalog
from nanopilot.model import Predictor
from nanopilot.sim_devices import make_beamline
from nanopilot.storage import make_writer
from sim_beamline import fly_plan  # the benchmark beside this one

BAD_FRAMES = ("strings", "none", "wrong shape", "nan")


class FaultInjector:
    """Passes the RunEngine's documents to ``target``, corrupting some: per page ``bad_per_page`` frames replaced by
    bad ones (cycling through :data:`BAD_FRAMES`), page ``ragged`` with one data list a frame short, page
    ``duplicate`` sent twice, and a copy of page ``stray`` for a descriptor never announced."""

    def __init__(self, target, *, bad_per_page=3, ragged=5, duplicate=9, stray=13, seed=0):
        self.target, self.bad_per_page = target, bad_per_page
        self.ragged, self.duplicate, self.stray = ragged, duplicate, stray
        self.rng = np.random.default_rng(seed)
        self.pages = 0
        self.injected = Counter()  # bad frames by kind; "duplicate" and "stray" frames sent in addition

    def __call__(self, name, doc):
        if name != "event_page":
            return self.target(name, doc)
        self.pages += 1
        key = next(k for k, v in doc["data"].items() if np.ndim(v) == 3 or (np.ndim(v) == 1 and len(v) and
                                                                             np.ndim(v[0]) == 2))
        n = len(doc["seq_num"])
        page = {**doc, "data": {**doc["data"], key: list(doc["data"][key])}}
        for i in self.rng.choice(n, size=min(self.bad_per_page, n), replace=False):
            kind = BAD_FRAMES[sum(self.injected[k] for k in BAD_FRAMES) % len(BAD_FRAMES)]
            page["data"][key][i] = {"strings": np.full((64, 64), "x"), "none": None,
                                    "wrong shape": np.zeros((32, 32)), "nan": np.full((64, 64), np.nan)}[kind]
            self.injected[kind] += 1
        if self.pages == self.ragged:
            other = next(k for k in page["data"] if k != key)
            page["data"][other] = list(page["data"][other])[:-1]
            self.injected["ragged page frames"] += n
        self.target(name, page)
        if self.pages == self.duplicate:
            self.target(name, copy.deepcopy(page))
            self.injected["duplicate"] += n
        if self.pages == self.stray:
            self.target(name, {**page, "descriptor": "never-announced", "uid": "stray-page"})
            self.injected["stray"] += n


class Outage:
    """The catalogue client's transport fails with ENOSPC while ``failing``; a RunEngine subscriber (first in line)
    turns it on at page ``begin`` and off at page ``end``."""

    def __init__(self, client, begin: int, end: int):
        self.begin, self.end, self.failing, self.failed_requests, self.pages = begin, end, False, 0, 0
        self._send = client.context.http_client.send
        client.context.http_client.send = self.send

    def send(self, *args, **kwargs):
        if self.failing:
            self.failed_requests += 1
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return self._send(*args, **kwargs)

    def __call__(self, name, doc):
        if name == "event_page":
            self.pages += 1
            self.failing = self.begin <= self.pages < self.end


class PeakRSS:
    """Samples the resident set size (MB) every ``interval`` s in a thread while in a ``with`` block: ``before``
    (at entry) and ``peak``."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()

    @staticmethod
    def now() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2 ** 20

    def __enter__(self):
        self.before = self.peak = self.now()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.now())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def fly_beamline(frames: int, page: int):
    """The simulated beamline with its flyer set for ``frames`` frames (lines of 128) in pages of ``page``."""
    bl = make_beamline("published", seed=7, count_rate=70_000.0)  # 7 counts peak at 10 kHz
    bl.flyer.configure({"x_start": -1.6, "x_stop": 1.6, "num_x": 128, "y_start": -1.6, "y_stop": 1.6,
                        "num_y": frames // 128, "frame_rate": 10_000.0, "page_size": page})
    bl.stage.x.velocity.put(10_000.0)
    return bl


def scan(RE, bl, analysis, sent: Counter) -> tuple[str, float, PeakRSS]:
    """Run the fly scan and finish its analysis: (uid, wall time s, RSS samples)."""
    RE.subscribe(lambda name, doc: sent.update(frames=len(doc["seq_num"])) if name == "event_page" else None)
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        (uid,) = RE(fly_plan(bl.flyer))
        analysis.close(timeout=600)
        wall = time.perf_counter() - t0
    print(f"  {sent['frames']:,} frames in {wall:.1f} s ({sent['frames'] / wall:,.0f} frames/s), peak RSS "
          f"{rss.peak:,.0f} MB (before the scan {rss.before:,.0f} MB, +{rss.peak - rss.before:,.0f} MB)")
    return uid, wall, rss


def baseline(args, predictor, directory: Path) -> None:
    """The same scan without faults, stored by bluesky-tiled-plugins' TiledWriter alone (no journal)."""
    from bluesky_tiled_plugins import TiledWriter

    print("\n== baseline: block, no faults, TiledWriter without the journal")
    catalog = open_catalog(directory / "catalog", create=True)
    lock = threading.Lock()  # one SQLite catalogue: the raw and the analysis writers take turns

    def serialised(writer):
        def write(name, doc):
            with lock:
                writer(name, doc)
        return write

    RE = RunEngine({})
    RE.subscribe(serialised(TiledWriter(catalog, batch_size=20)))
    analysis = NanobeamAnalysis(predictor, motors=["stage_y", "stage_x"], max_queued_frames=args.queue,
                                batch_size=min(512, args.queue))
    analysis.subscribe(serialised(TiledWriter(catalog, batch_size=1000)))
    RE.subscribe(analysis)
    uid, _, _ = scan(RE, fly_beamline(args.frames, args.page), analysis, Counter())
    print(f"  analysed {len(analysis.maps[uid]):,}")


def soak(policy: str, args, predictor, directory: Path) -> bool:
    """One scan with every fault; True if every frame is accounted for and, after the restore, stored."""
    print(f"\n== policy {policy}, with faults")
    catalog = open_catalog(directory / "catalog", create=True)
    backup = directory / "backup"
    pages = -(-args.frames // 128 * 128 // args.page)
    RE = RunEngine({})
    outage = Outage(catalog, int(0.3 * pages), int(0.6 * pages))
    raw_writer = make_writer(catalog, backup_directory=backup)
    analysis = NanobeamAnalysis(predictor, motors=["stage_y", "stage_x"], when_behind=policy,
                                max_queued_frames=args.queue, batch_size=min(512, args.queue),
                                raw_storage=raw_writer.status)
    derived_writer = make_writer(catalog, batch_size=1000, backup_directory=backup)
    analysis.subscribe(derived_writer)
    derived = []
    analysis.subscribe(lambda name, doc: derived.append((name, doc)) if name in ("start", "stop") else None)
    injector = FaultInjector(analysis)
    for callback in (outage, raw_writer, injector):
        RE.subscribe(callback)
    sent = Counter()
    uid, _, _ = scan(RE, fly_beamline(args.frames, args.page), analysis, sent)
    run = analysis.maps[uid]
    flagged = Counter({k: v for k, v in Counter(run.scattered()["status"]).items() if k != "ok"})
    ok = len(run) - sum(flagged.values())
    extra = injector.injected["duplicate"] + injector.injected["stray"]
    stray = sum(analysis.unattributed.values())
    counted = ok + sum(flagged.values()) + run.skipped + run.errors + run.rejected + stray
    unaccounted = sent["frames"] + extra - counted
    print(f"  injected: {dict(injector.injected)}; storage outage on pages {outage.begin}-{outage.end - 1} "
          f"({outage.failed_requests} failed requests)")
    print(f"  analysis: sent {sent['frames']:,} + extra {extra:,} | ok {ok:,} | flagged {sum(flagged.values()):,} "
          f"{dict(flagged)} | skipped {run.skipped:,} | rejected {run.rejected:,} {dict(run.rejected_by_reason)} "
          f"(+ {stray:,} of no run) | errors {run.errors:,} | UNACCOUNTED {unaccounted:,}")
    stop = derived[-1][1]
    print(f"  analysis stop: exit_status {stop['exit_status']!r}; reason: {stop['reason']}")
    print(f"  storage: raw run {raw_writer.status(uid)[:60]}...; analysis run "
          f"{derived_writer.status(derived[0][1]['uid'])[:60]}...")
    t0 = time.perf_counter()
    restored = restore(backup, catalog)
    print(f"  restore ({time.perf_counter() - t0:.1f} s): " + "; ".join(f"{r.uid[:8]} {r.action}" for r in restored))
    raw_rows = len(catalog[uid]["fly"]["stage_x"].read())
    analysis_rows = len(catalog[derived[0][1]["uid"]]["primary"]["status"].read())
    expected_rows = ok + sum(flagged.values())
    lost = sent["frames"] - raw_rows + expected_rows - analysis_rows
    print(f"  catalogue after restore: raw frames {raw_rows:,} of {sent['frames']:,} sent; analysis rows "
          f"{analysis_rows:,} of {expected_rows:,} analysed; LOST {lost:,}")
    return unaccounted == 0 and raw_rows == sent["frames"] and analysis_rows == expected_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20480, help="frames per scan (a multiple of 128)")
    parser.add_argument("--page", type=int, default=512, help="frames per event page")
    parser.add_argument("--queue", type=int, default=2048, help="bound of the analysis queue (frames)")
    parser.add_argument("--policies", nargs="+", default=["block", "decimate"])
    parser.add_argument("--no-baseline", action="store_true", help="skip the fault-free baseline scan")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="  log %(levelname)s %(name)s: %(message)s")
    predictor = Predictor.load()
    if not args.no_baseline:
        with tempfile.TemporaryDirectory() as directory:
            baseline(args, predictor, Path(directory))
    results = []
    for policy in args.policies:
        with tempfile.TemporaryDirectory() as directory:
            results.append(soak(policy, args, predictor, Path(directory)))
    print(f"\n{'PASS' if all(results) else 'FAIL'}: every frame accounted for and stored after the restore "
          f"in {sum(results)} of {len(results)} scans")
    raise SystemExit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
