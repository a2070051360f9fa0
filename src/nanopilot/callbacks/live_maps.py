"""LiveMaps: the maps that plans, plots and the page read, built from documents only.

A LiveMaps is a document consumer (an ``event_model.DocumentRouter``): it reads the analysis runs' documents (the
points, the analysis' progress and its end), the texture runs' (the labels) and, to know what was taken, the raw
runs' (frames of the model's shape per run). In one process the :class:`~nanopilot.callbacks.NanobeamAnalysis`
hands it the raw documents it receives and, after every other subscriber, the documents it makes; with the analysis
in another process, subscribe it to the RunEngine and to the analysis' document stream. Thread-safe: documents
arrive from the RunEngine's and the analysis' threads, plans and plots read snapshots. A plan waits for the analysis
with a future from :meth:`LiveMaps.when` (awaited in a RunEngine ``wait_for`` message, so the RunEngine stays
responsive); code outside the RunEngine may block in :meth:`LiveMaps.wait_for`.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np
from event_model import DocumentRouter

from ..estimates import Estimates
from .derived import ANALYSIS_PLAN, DRIFT_STREAM, FRAME_FEATURES, PROGRESS_STREAM
from .frame_sources import find_image_key, frame_shape_of
from .run_map import FIELDS, RunMap, status_value
from .subscribers import Subscribers

__all__ = ["FIELDS", "LiveMaps", "RunMap", "status_value"]

#: ``plan_name`` of the texture runs (see :class:`nanopilot.texture.TextureCallback`).
TEXTURE_PLAN = "nanopilot_texture"


class LiveMaps(DocumentRouter):
    """All runs seen, by raw-run uid; :attr:`current` is the latest.

    ``instrument`` and ``outputs`` describe the model that fills the maps, so that plans can check the detector
    against it before anything moves; ``frame_shape`` (H, W) and ``image_key`` pick the raw streams whose frames the
    analysis takes (None: any stream with 2-D frames). The analysis sets them on the maps it fills.
    """

    def __init__(self, instrument=None, outputs: tuple[str, ...] = (), *, frame_shape=None,
                 image_key: str | None = None):
        super().__init__()
        self.instrument = instrument
        self.outputs = tuple(outputs)
        self.frame_shape = tuple(frame_shape) if frame_shape else None
        self.image_key = image_key
        self._cond = threading.Condition()
        self._runs: dict[str, RunMap] = {}
        self._order: list[str] = []
        self._waiters: list[tuple[Callable[[LiveMaps], bool], Future]] = []
        self._raw_starts: dict[str, dict] = {}  # open raw runs
        self._raw_streams: dict[str, str] = {}  # raw descriptor with the model's frames -> raw uid
        self._derived: dict[str, tuple[str, str]] = {}  # analysis / texture start uid -> (raw uid, plan name)
        self._streams: dict[str, tuple[str, str, str]] = {}  # their descriptor uid -> (raw uid, plan name, stream)
        self._open: Counter = Counter()  # raw uid -> its derived runs not yet stopped
        self._analysed: set[str] = set()  # raw uids whose analysis run has stopped
        self._subscribers = Subscribers("maps")

    def subscribe(self, callback) -> None:
        """Send every analysis and texture document to ``callback(name, doc)`` once the maps hold what it brings
        (for readers of the maps that redraw on documents, e.g. a :class:`~nanopilot.callbacks.plot.LiveMapPlot`)."""
        self._subscribers.append(callback)

    # ------------------------------------------------------------------ waiting
    def _changed(self) -> None:
        """Wake the blocking waiters and complete the futures whose condition now holds (lock held)."""
        self._cond.notify_all()
        pending = []
        for predicate, future in self._waiters:
            if future.done():  # cancelled by its waiter
                continue
            try:
                if predicate(self):
                    future.set_result(None)
                    continue
            except Exception as error:  # a broken condition fails its waiter, not the analysis
                future.set_exception(error)
                continue
            pending.append((predicate, future))
        self._waiters = pending

    def when(self, predicate: Callable[[LiveMaps], bool]) -> Future:
        """A future that completes (result None) as soon as ``predicate(maps)`` holds: now, or after the change
        of the maps that makes it hold. Never blocks; ``predicate`` runs under the maps' lock, in the thread that
        changed them. Cancel the future to withdraw the wait."""
        future = Future()
        with self._cond:
            self._waiters.append((predicate, future))
            self._changed()
        return future

    # ------------------------------------------------------------------ documents
    def __call__(self, name: str, doc: dict, validate: bool = False):
        with self._cond:
            derived = self._of_derived_run(name, doc)
            out = super().__call__(name, doc, validate)
            derived = derived or name == "start" and doc.get("uid") in self._derived
            self._changed()
        if derived:
            self._subscribers(name, doc)
        return out

    def _of_derived_run(self, name: str, doc: dict) -> bool:
        """Does ``doc`` (not a start) belong to an open analysis or texture run? (lock held)"""
        if name in ("descriptor", "stop"):
            return doc.get("run_start") in self._derived
        return name in ("event", "event_page") and doc.get("descriptor") in self._streams

    def start(self, doc):
        kind = doc.get("plan_name")
        if kind not in (ANALYSIS_PLAN, TEXTURE_PLAN) or "raw_uid" not in doc:
            self._raw_starts[doc["uid"]] = doc
            return
        raw = doc["raw_uid"]
        self._derived[doc["uid"]] = (raw, kind)
        run = self._runs[raw] if raw in self._runs else self.begin_run(raw)
        self._open[raw] += 1
        run.done = False
        if kind == ANALYSIS_PLAN:
            run.describe(doc.get("motors", []), doc.get("shape"), doc.get("extents"), doc.get("snaking"))

    def descriptor(self, doc):
        run_start = doc.get("run_start")
        if run_start in self._derived:
            self._streams[doc["uid"]] = (*self._derived[run_start], doc.get("name"))
        elif run_start in self._raw_starts and doc.get("name") != DRIFT_STREAM and self._takes(doc["data_keys"]):
            self._raw_streams[doc["uid"]] = run_start
            if run_start not in self._runs:
                start = self._raw_starts[run_start]
                self.begin_run(run_start, (), start.get("shape"), start.get("extents"), start.get("snaking"))

    def _takes(self, data_keys: dict) -> bool:
        """Does a raw stream with these data keys carry frames the analysis takes?"""
        if self.frame_shape is not None or self.image_key is not None:
            key = find_image_key(data_keys, self.frame_shape or (0, 0), self.image_key)
            return key is not None
        return any(frame_shape_of(k) for k in data_keys.values())

    def event_page(self, doc):
        descriptor = doc.get("descriptor")
        if descriptor in self._raw_streams:
            self._runs[self._raw_streams[descriptor]].taken += len(doc.get("seq_num", ()))
            return
        if descriptor not in self._streams:
            return
        raw, kind, stream = self._streams[descriptor]
        run, data = self._runs[raw], doc["data"]
        if kind == TEXTURE_PLAN:
            if "texture" in data:
                run.set_extra("texture", data["raw_seq_num"], data["texture"])
        elif stream == "primary":
            n = len(data["raw_seq_num"])
            positions = np.column_stack([data[m] for m in run.motors]) if run.motors else np.zeros((n, 0))
            run.append(data["raw_seq_num"], positions, {f: data[f] for f in FIELDS if f in data}, data["status"],
                       data.get(FRAME_FEATURES))
        elif stream in (PROGRESS_STREAM, "summary"):
            self._progress(run, {k: v[-1] for k, v in data.items()})

    @staticmethod
    def _progress(run: RunMap, counts: dict) -> None:
        run.received = max(run.received, int(counts.get("frames_received", 0)))
        run.skipped = max(run.skipped, int(counts.get("frames_skipped", 0)))
        run.errors = max(run.errors, int(counts.get("frames_errors", 0)))
        rejected = json.loads(counts.get("rejected_by_reason") or "{}")
        run.rejected_by_reason = Counter({k: max(int(v), run.rejected_by_reason[k]) for k, v in rejected.items()})

    def stop(self, doc):
        run_start = doc.get("run_start")
        self._raw_starts.pop(run_start, None)
        if run_start not in self._derived:
            self._raw_streams = {d: r for d, r in self._raw_streams.items() if r != run_start}
            return
        raw, kind = self._derived.pop(run_start)
        self._streams = {d: s for d, s in self._streams.items() if s[:2] != (raw, kind)}
        self._open[raw] -= 1
        if kind == ANALYSIS_PLAN:
            self._analysed.add(raw)
        self._runs[raw].done = raw in self._analysed and self._open[raw] <= 0

    # ------------------------------------------------------------------ tables built by hand (stored runs)
    def begin_run(self, uid: str, motors=(), shape=None, extents=None, snaking=None) -> RunMap:
        """A new, empty run ``uid`` (the current one from now on); one of that uid already here is replaced (e.g. a
        run analysed again from its start)."""
        with self._cond:
            if uid in self._runs:
                self._order.remove(uid)
                self._analysed.discard(uid)
            run = self._runs[uid] = RunMap(uid, motors, shape, extents, snaking)
            self._order.append(uid)
            self._changed()
            return run

    def add(self, uid: str, seq_nums, positions, estimates: Estimates, features=None) -> None:
        """Store analysed points of run ``uid`` (positions: (N, n_motors) um; features: (N, k) or None), e.g. read
        from a stored analysis run's table."""
        with self._cond:
            values = {f: getattr(estimates, f) for f in FIELDS}
            self._runs[uid].append(seq_nums, positions, values, estimates.status, features)
            self._changed()

    # ------------------------------------------------------------------ reading
    def __getitem__(self, uid: str) -> RunMap:
        with self._cond:
            return self._runs[uid]

    def __contains__(self, uid: str) -> bool:
        return uid in self._runs

    def __len__(self) -> int:
        return len(self._order)

    @property
    def current(self) -> RunMap | None:
        with self._cond:
            return self._runs[self._order[-1]] if self._order else None

    def caught_up(self, uid: str | None = None, n: int | None = None) -> bool:
        """Has run ``uid`` (default: current) accounted for ``n`` frames (default: every frame taken or received)?

        A frame is accounted for once analysed, skipped, lost to an error or rejected (:attr:`RunMap.accounted`).
        False while the run is unknown.
        """
        with self._cond:
            run = self._runs.get(uid) if uid else (self._runs[self._order[-1]] if self._order else None)
            return run is not None and run.accounted >= (max(run.taken, run.received) if n is None else n)

    def wait_for(self, uid: str | None = None, n: int | None = None, timeout: float = 30.0) -> bool:
        """Block until :meth:`caught_up` (``uid``, ``n``); False on timeout. Not for plans: it would block the
        RunEngine (they wait with :func:`nanopilot.plans.waiting.wait_for_analysis`)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.caught_up(uid, n), timeout=timeout)
