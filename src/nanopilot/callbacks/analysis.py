"""NanobeamAnalysis: every detector frame of a run -> predictions -> LiveMaps and an analysis run.

Document flow (RunEngine thread)::

    start -> descriptor (find the image key) -> event/event_page, stream_datum, datum -> frames + positions
          -> bounded queue -> worker: batches -> Predictor -> LiveMaps + derived documents -> stop

The worker thread owns the predictor and emits every derived document, so subscribers (a TiledWriter,
a plot) see one ordered stream. ``threaded=False`` does the same work inline (deterministic batching).
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
import weakref

import numpy as np
from event_model import DocumentRouter

from .derived import DerivedRun
from .frame_sources import ExternalFrames, find_image_key, frame_shape_of
from .live_maps import LiveMaps
from .subscribers import Subscribers

logger = logging.getLogger(__name__)

#: Back-pressure policies when the analysis falls behind: "block" slows the stream (the RunEngine waits
#: for room in the queue); "decimate" drops the new frames, counting each one as skipped.
POLICIES = ("block", "decimate")


class _Run:
    """State of one raw run on the RunEngine side."""

    def __init__(self, start: dict, motors: list[str] | None):
        self.start = start
        self.uid = start["uid"]
        dims = [f for fields, _ in (start.get("hints") or {}).get("dimensions", []) for f in fields]
        self.motors = list(motors or start.get("motors") or [d for d in dims if d != "time"])
        self.descriptors: dict[str, dict] = {}  # descriptor uid -> {"key", "external", "units"}
        self.external = ExternalFrames()
        self.datums: dict[str, dict] = {}
        self.frames_by_seq: dict[tuple[str, int], np.ndarray] = {}  # from stream_datum, waiting for events
        self.positions_by_seq: dict[tuple[str, int], list[float]] = {}  # events waiting for frames
        self.unreadable: set[tuple[str, int]] = set()  # frames already counted as lost
        self.derived: DerivedRun | None = None


class NanobeamAnalysis(DocumentRouter):
    """Live analysis of nanodiffraction frames (an ``event_model.DocumentRouter``).

    Parameters
    ----------
    predictor : object with ``instrument``, ``predict(frames, refine=...) -> Estimates``; None loads the
        shipped default (``nanopilot.model.Predictor.load()``).
    image_key : data key of the frames; None finds the (H, W) array key of the model's instrument.
    maps : the LiveMaps to fill (a new one by default; see :attr:`maps`).
    batch_size : frames per Predictor call (flushed earlier after ``max_latency`` s and at stop).
    max_queued_frames : bound of the queue between the RunEngine and the worker (memory bound).
    when_behind : back-pressure policy, one of :data:`POLICIES`.
    refine : passed to ``predictor.predict`` (physics refinement of the network's estimates).
    motors : position data keys, slowest first (default: the start document's ``motors``, else its
        dimension hints).
    frame_features : optional ``f(frames (N, H, W) float32) -> (N, k)`` compact descriptor of each frame
        (e.g. for texture classification), stored per point in the LiveMaps (``RunMap.features()``).
    threaded : analyse in a worker thread (default) or inline in the caller's thread.

    Derived documents go to the callbacks given to :meth:`subscribe` (e.g. a TiledWriter).
    """

    def __init__(self, predictor=None, image_key: str | None = None, *, maps: LiveMaps | None = None,
                 batch_size: int = 512, max_latency: float = 0.5, max_queued_frames: int = 16384,
                 when_behind: str = "block", refine: bool = False, motors: list[str] | None = None,
                 frame_features=None, threaded: bool = True):
        super().__init__()
        if when_behind not in POLICIES:
            raise ValueError(f"when_behind must be one of {POLICIES}, got {when_behind!r}")
        if batch_size < 1 or max_queued_frames < batch_size:
            raise ValueError(f"need 1 <= batch_size ({batch_size}) <= max_queued_frames ({max_queued_frames})")
        if predictor is None:
            from ..model import Predictor

            predictor = Predictor.load()
        self.predictor = predictor
        self.frame_shape = tuple(predictor.instrument.roi_shape)
        self.image_key = image_key
        self.motors = list(motors) if motors else None
        self.frame_features = frame_features
        outputs = tuple(getattr(predictor, "outputs", ("strain", "omega", "chi")))
        self.maps = maps if maps is not None else LiveMaps(predictor.instrument, outputs)
        if self.maps.instrument is None:
            self.maps.instrument, self.maps.outputs = predictor.instrument, outputs
        self.batch_size, self.max_latency, self.refine = int(batch_size), float(max_latency), bool(refine)
        self.max_queued_frames, self.when_behind = int(max_queued_frames), when_behind
        self._emit = Subscribers("analysis")  # derived documents go to each subscriber
        self._runs: dict[str, _Run] = {}
        self._descriptor_run: dict[str, _Run] = {}
        self._room = threading.Condition()
        self._queued = 0
        self._queue: queue.Queue | None = queue.Queue() if threaded else None
        self._pending: list = []  # batch being assembled (worker side)
        self._pending_since = 0.0
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._work, name="nanopilot-analysis", daemon=True)
            self._thread.start()
            # Finish (and store) the analysis before the interpreter shuts down. threading's exit hooks run before
            # other threads' resources (e.g. an in-process Tiled app's portal) are torn down; atexit runs after.
            # The hook holds a weak reference: once closed, the analysis can be freed.
            register = getattr(threading, "_register_atexit", atexit.register)
            register(_close_if_alive, weakref.ref(self), 60.0)

    # ------------------------------------------------------------------ subscribers of derived documents
    def subscribe(self, callback) -> None:
        """Send every derived document to ``callback(name, doc)``."""
        self._emit.append(callback)

    # ------------------------------------------------------------------ RunEngine side
    def start(self, doc):
        self._runs[doc["uid"]] = _Run(doc, self.motors)

    def descriptor(self, doc):
        run = self._runs.get(doc["run_start"])
        if run is None:
            return
        keys = doc["data_keys"]
        key = find_image_key(keys, self.frame_shape, self.image_key)
        if key is None:
            self._check_configuration(keys, doc.get("name"))
            return
        if frame_shape_of(keys[key]) != self.frame_shape:
            raise ValueError(f"data key {key!r} holds frames of shape {keys[key].get('shape')}; the model takes "
                             f"{self.frame_shape}: use a model trained for this detector ROI")
        first = not run.descriptors
        run.descriptors[doc["uid"]] = {"key": key, "external": keys[key].get("external"),
                                       "units": {m: keys.get(m, {}).get("units", "") for m in run.motors}}
        self._descriptor_run[doc["uid"]] = run
        if first:
            start = run.start
            self.maps.begin_run(run.uid, run.motors, start.get("shape"), start.get("extents"), start.get("snaking"))
            run.derived = DerivedRun(run.start, key, run.descriptors[doc["uid"]]["units"], self.predictor)
            self._put(("start", run), 0)

    def _check_configuration(self, keys: dict, stream: str | None) -> None:
        images = {k: v.get("shape") for k, v in keys.items() if frame_shape_of(v) is not None}
        if self.image_key is not None and images:
            raise ValueError(f"image_key {self.image_key!r} is not in stream {stream!r}; its 2-D array keys are "
                             f"{sorted(images)}: pass one of them as image_key")
        if images:
            raise ValueError(f"stream {stream!r} has 2-D frames {images} but the model takes {self.frame_shape}: "
                             f"use a model trained for this detector ROI, or pass image_key")

    def stream_resource(self, doc):
        run = self._runs.get(doc.get("run_start")) or (next(reversed(self._runs.values())) if self._runs else None)
        if run is not None:
            run.external.stream_resource(doc)

    def resource(self, doc):
        run = self._runs.get(doc.get("run_start")) or (next(reversed(self._runs.values())) if self._runs else None)
        if run is not None:
            run.external.resource(doc)

    def datum(self, doc):
        for run in self._runs.values():
            if doc["resource"] in run.external._resources:
                run.datums[doc["datum_id"]] = doc

    def stream_datum(self, doc):
        run = self._descriptor_run.get(doc["descriptor"])
        if run is None or run.external.data_key_of(doc) != run.descriptors[doc["descriptor"]]["key"]:
            return
        try:
            seq_nums, frames = run.external.read_stream_datum(doc)
        except Exception as err:  # an unreadable file loses these frames, not the scan
            seqs = range(doc["seq_nums"]["start"], doc["seq_nums"]["stop"])
            logger.error("could not read frames of stream_datum %s: %s", doc["uid"], err)
            self.maps.count(run.uid, received=len(seqs), errors=len(seqs))
            run.unreadable.update((doc["descriptor"], s) for s in seqs)
            return
        for seq, frame in zip(seq_nums, frames):
            self._join(run, doc["descriptor"], int(seq), frame=frame)

    def event_page(self, doc):
        run = self._descriptor_run.get(doc["descriptor"])
        if run is None:
            return
        try:
            self._event_page(run, doc)
        except Exception:  # never raise into the RunEngine for a data problem
            logger.exception("analysis failed on an event page of run %s", run.uid[:8])
            self.maps.count(run.uid, received=len(doc["seq_num"]), errors=len(doc["seq_num"]))

    def _event_page(self, run: _Run, page: dict) -> None:
        desc = run.descriptors[page["descriptor"]]
        n = len(page["seq_num"])
        positions = np.column_stack([np.asarray(page["data"].get(m, [np.nan] * n), dtype=float)
                                     for m in run.motors]) if run.motors else np.zeros((n, 0))
        values = page["data"].get(desc["key"])
        if desc["external"] and str(desc["external"]).startswith("STREAM"):
            for seq, pos in zip(page["seq_num"], positions):
                self._join(run, page["descriptor"], int(seq), position=pos.tolist())
            return
        if desc["external"]:
            frames = [run.external.read_datum(run.datums.pop(datum_id)) for datum_id in values]
        else:
            frames = values
        self._submit(run, np.asarray(page["seq_num"]), positions, frames)

    def _join(self, run: _Run, descriptor: str, seq: int, *, frame=None, position=None) -> None:
        key = (descriptor, seq)
        if key in run.unreadable:
            run.unreadable.discard(key)
            return
        if frame is not None:
            run.frames_by_seq[key] = frame
        if position is not None:
            run.positions_by_seq[key] = position
        if key in run.frames_by_seq and key in run.positions_by_seq:
            pos = np.asarray([run.positions_by_seq.pop(key)], dtype=float)
            self._submit(run, np.asarray([seq]), pos, [run.frames_by_seq.pop(key)])

    def _submit(self, run: _Run, seq_nums, positions, frames) -> None:
        n = len(seq_nums)
        self.maps.count(run.uid, received=n)
        self._put(("frames", run, seq_nums, positions, frames), n)

    def stop(self, doc):
        run = self._runs.pop(doc["run_start"], None)
        if run is None:
            return
        for uid in run.descriptors:
            self._descriptor_run.pop(uid, None)
        unmatched = len(run.frames_by_seq) + len(run.positions_by_seq)
        if run.derived is None:  # a run without frames for this model: nothing to report
            run.external.close()
            return
        if unmatched:
            logger.error("run %s ended with %d frames or positions never matched", run.uid[:8], unmatched)
            self.maps.count(run.uid, received=unmatched, errors=unmatched)
        self._put(("stop", run, doc), 0)

    def _put(self, item, n_frames: int) -> None:
        if self._queue is None:
            self._handle(item)
            return
        with self._room:
            if n_frames and self._queued + n_frames > self.max_queued_frames:
                if self.when_behind == "decimate":
                    self.maps.count(item[1].uid, skipped=n_frames)
                    return
                self._room.wait_for(lambda: self._queued + n_frames <= self.max_queued_frames or not self._queued)
            self._queued += n_frames
        self._queue.put(item)

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every frame handed over so far has been analysed; False on timeout."""
        if self._queue is None:
            return True
        done = threading.Event()
        self._queue.put(("flush", done))
        return done.wait(timeout)

    def close(self, timeout: float = 60.0) -> bool:
        """Finish the analysis of every frame handed over so far (as :meth:`flush`) and stop the worker thread;
        documents that arrive later are analysed inline, in the caller's thread. Call it between runs (not while
        a RunEngine is feeding this callback). Idempotent; False if the worker did not finish within
        ``timeout`` (s)."""
        if self._queue is None:
            return True
        finished = self.flush(timeout)
        self._queue.put(("close",))
        self._thread.join(timeout)
        self._queue = None
        return finished and not self._thread.is_alive()

    # ------------------------------------------------------------------ worker side
    def _work(self) -> None:
        while True:
            timeout = None
            if self._pending:
                timeout = max(0.0, self._pending_since + self.max_latency - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                self._analyse_pending()
                continue
            if item[0] == "close":
                return
            self._handle(item)
            if item[0] == "frames":
                with self._room:
                    self._queued -= len(item[2])
                    self._room.notify_all()

    def _handle(self, item) -> None:
        kind = item[0]
        try:
            if kind == "start":
                self._analyse_pending()
                item[1].derived.open(self._emit)
            elif kind == "frames":
                _, run, seq_nums, positions, frames = item
                if self._pending and self._pending[0][0] is not run:
                    self._analyse_pending()
                if not self._pending:
                    self._pending_since = time.monotonic()
                self._pending.append((run, seq_nums, positions, frames))
                if sum(len(p[1]) for p in self._pending) >= self.batch_size:
                    self._analyse_pending()
            elif kind == "stop":
                self._analyse_pending()
                _, run, raw_stop = item
                counts = self.maps[run.uid]
                run.derived.close(self._emit, raw_stop, counts.skipped, counts.errors)
                self.maps.end_run(run.uid)
                run.external.close()
            elif kind == "flush":
                self._analyse_pending()
                item[1].set()
        except Exception:
            logger.exception("analysis worker failed handling %r", kind)

    def _analyse_pending(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        run = pending[0][0]
        seq_nums = np.concatenate([p[1] for p in pending])
        positions = np.concatenate([p[2] for p in pending])
        try:
            estimates, batch = run.derived.analyse([p[3] for p in pending], self.refine)
            features = self.frame_features(batch) if self.frame_features is not None else None
            self.maps.add(run.uid, seq_nums, positions, estimates, features)
        except Exception:
            logger.exception("prediction failed for %d frames of run %s", len(seq_nums), run.uid[:8])
            self.maps.count(run.uid, errors=len(seq_nums))
            return
        run.derived.emit_points(self._emit, seq_nums, positions, estimates)


def _close_if_alive(ref: weakref.ref, timeout: float) -> None:
    """Exit hook: close the analysis if it still exists (finishing and storing what it was handed)."""
    analysis = ref()
    if analysis is not None:
        analysis.close(timeout)
