"""The analysis side of NanobeamAnalysis: batches frames, runs the predictor and emits the derived documents (to
the subscribers, then to the analysis' LiveMaps), in a worker thread (or inline).

The worker holds no reference to the NanobeamAnalysis that feeds it: an analysis nobody refers to any more is
garbage-collected, and its finaliser tells the worker to finish what it was handed and stop its thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref

import numpy as np

from .live_maps import LiveMaps
from .subscribers import Subscribers

logger = logging.getLogger(__name__)

#: Back-pressure policies when the analysis falls behind: "block" slows the stream (the RunEngine waits
#: for room in the queue); "decimate" drops the new frames, counting each one as skipped.
POLICIES = ("block", "decimate")

_running: weakref.WeakSet = weakref.WeakSet()  # workers whose thread runs, finished at interpreter exit
_exit_hook = threading.Lock()
_exit_hook_registered = False


class AnalysisWorker:
    """Analysis of the frames handed over by :meth:`put`, in order, in one thread (``threaded``) or inline.

    Items: ``("start", run)``, ``("frames", run, seq_nums (n,), positions (n, m), block)`` with ``block`` the
    ``(frames, n, status)`` of :func:`~nanopilot.callbacks.frame_sources.frame_batch`, ``("reference", run,
    block)`` (drift reference frames), ``("progress", run)`` (frames counted at the door), ``("stop", run, doc,
    storage)``. Every document goes to the subscribers (:attr:`emit`) first and to ``maps`` last, so that what a
    subscribed stage (texture) makes of a document reaches the maps before the document itself.
    """

    def __init__(self, maps: LiveMaps, *, batch_size: int, max_latency: float, refine: bool, residual: bool,
                 frame_features,
                 max_queued_frames: int, when_behind: str, threaded: bool):
        self.maps = maps
        self.emit = Subscribers("analysis")  # derived documents go to each subscriber
        self.batch_size, self.max_latency, self.refine, self.residual = batch_size, max_latency, refine, residual
        self.frame_features = frame_features
        self.max_queued_frames, self.when_behind = max_queued_frames, when_behind
        self.queued = 0  # frames handed over and not yet analysed
        #: Why the analysis gave up (set by :meth:`close` on timeout): frames still queued are then counted as
        #: skipped, not analysed, and each run still to stop ends with exit_status "fail" and this reason.
        self.abandoned: str | None = None
        self._stopping = False  # asked to stop: the thread ends after what it was handed
        self._room = threading.Condition()
        self._pending: list = []  # batch being assembled
        self._pending_since = 0.0
        self._queue: queue.Queue | None = None
        self.thread: threading.Thread | None = None
        if threaded:
            self._queue = queue.Queue()
            self.thread = threading.Thread(target=self._loop, name="nanopilot-analysis", daemon=True)
            self.thread.start()
            _running.add(self)
            _register_exit_hook()

    # ------------------------------------------------------------------ feeding side
    def put(self, item, n_frames: int) -> None:
        """Hand over an item of ``n_frames`` frames (applying the back-pressure policy)."""
        if self._queue is None:
            self._handle(item)
            return
        with self._room:
            if n_frames and self.queued + n_frames > self.max_queued_frames:
                if self.when_behind == "decimate":
                    item[1].counts.count(skipped=n_frames)
                    self.notify(item[1])
                    return
                self._room.wait_for(lambda: self.queued + n_frames <= self.max_queued_frames or not self.queued)
            self.queued += n_frames
        self._queue.put(item)

    def notify(self, run) -> None:
        """Have the worker report ``run``'s frame counts (changed at the door) in a progress event; one notice
        pending per run at a time."""
        if not run.progress_pending:
            run.progress_pending = True
            self.put(("progress", run), 0)

    def send(self, name: str, doc: dict) -> None:
        """A derived document to every subscriber, then to the maps."""
        self.emit(name, doc)
        try:
            self.maps(name, doc)
        except Exception:
            logger.exception("the LiveMaps failed on a %s document", name)

    def flush(self, timeout: float) -> bool:
        """Wait until every item handed over so far is done; False on timeout."""
        if self._queue is None:
            return True
        return self._mark().wait(timeout)

    def _mark(self) -> threading.Event:
        """An event set once every item handed over so far is done."""
        done = threading.Event()
        self._queue.put(("flush", done))
        return done

    def close(self, timeout: float) -> bool:
        """Finish every item handed over so far and stop the thread; later items are handled inline.

        If that takes more than ``timeout`` s, the rest is abandoned (:attr:`abandoned`): the frames not analysed
        by then are counted as skipped and every run handed over ends with a stop document (exit_status "fail",
        saying why), waiting up to ``timeout`` s more (for a batch under way). False if the analysis did not
        finish within the first ``timeout``."""
        if self._queue is None:
            return True
        # after stop() (e.g. the analysis' finaliser) the thread ends without reading later items: wait for it
        done = self._mark() if not self._stopping else _Ended(self.thread)
        finished = done.wait(timeout)
        if not finished:
            self.abandoned = (f"the analysis was closed before it had finished (after waiting {timeout:g} s): "
                              f"of the {self.queued} frames still queued then, those not under way were skipped")
            logger.error("%s; their runs end with exit_status 'fail'", self.abandoned)
            done.wait(timeout)
        self.stop()
        self.thread.join(timeout)
        self._queue = None
        return finished and not self.thread.is_alive()

    def stop(self) -> None:
        """Ask the thread to stop once it has handled what it was handed (returns at once)."""
        if self._queue is not None:
            self._queue.put(("close",))
            self._stopping = True

    # ------------------------------------------------------------------ working side
    def _loop(self) -> None:
        work = self._queue
        while True:
            timeout = None
            if self._pending:
                timeout = max(0.0, self._pending_since + self.max_latency - time.monotonic())
            try:
                item = work.get(timeout=timeout)
            except queue.Empty:
                self._analyse_pending()
                continue
            if item[0] == "close":
                self._analyse_pending()
                _running.discard(self)
                return
            self._handle(item)
            if item[0] == "frames":
                with self._room:
                    self.queued -= len(item[2])
                    self._room.notify_all()

    def _handle(self, item) -> None:
        kind = item[0]
        try:
            if kind == "frames" and self.abandoned:
                item[1].counts.count(skipped=len(item[2]))
            elif kind == "start":
                self._analyse_pending()
                item[1].derived.open(self.send)
            elif kind == "progress":
                item[1].progress_pending = False
                if item[1].derived._bundle is not None and not item[1].derived.stopped:
                    item[1].derived.emit_progress(self.send, item[1].counts)
            elif kind == "frames":
                self._add_pending(item[1:])
            elif kind == "reference":  # the frames before it are analysed with the drift they were taken at
                self._analyse_pending()
                item[1].derived.reference(item[2])
            elif kind == "stop":
                self._analyse_pending()
                self._close_run(*item[1:])
            elif kind == "flush":
                self._analyse_pending()
                item[1].set()
        except Exception:
            logger.exception("analysis worker failed handling %r", kind)

    def _add_pending(self, frames) -> None:
        run = frames[0]
        if self._pending and self._pending[0][0] is not run:
            self._analyse_pending()
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(frames)
        if sum(len(p[1]) for p in self._pending) >= self.batch_size:
            self._analyse_pending()

    def _close_run(self, run, raw_stop: dict, storage: str | None) -> None:
        try:
            run.derived.close(self.send, raw_stop, run.counts, storage, failure=self.abandoned)
        except Exception as err:  # the run still ends (plans see it done) if its summary could not be made
            logger.exception("could not close the analysis run of raw run %s", run.uid[:8])
            run.derived.fail(self.send, f"the analysis run could not be completed: {err!r}")
        finally:
            run.external.close()

    def _analyse_pending(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        run = pending[0][0]
        seq_nums = np.concatenate([p[1] for p in pending])
        if self.abandoned:
            run.counts.count(skipped=len(seq_nums))
            return
        positions = np.concatenate([p[2] for p in pending])
        try:
            estimates, batch, roi = run.derived.analyse([p[3] for p in pending], self.refine, self.residual)
            features = self.frame_features(batch) if self.frame_features is not None else None
        except Exception:
            logger.exception("prediction failed for %d frames of run %s", len(seq_nums), run.uid[:8])
            run.counts.count(errors=len(seq_nums))
        else:
            run.derived.emit_points(self.send, seq_nums, positions, estimates, roi, features)
        run.progress_pending = False
        run.derived.emit_progress(self.send, run.counts)


class _Ended:
    """A thread's end, waited on like an event."""

    def __init__(self, thread: threading.Thread):
        self.thread = thread

    def wait(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


def _register_exit_hook() -> None:
    """Once per process: finish (and store) every running analysis before the interpreter shuts down.

    threading's exit hooks run before other threads' resources (e.g. an in-process Tiled app's portal) are torn
    down; atexit runs after.
    """
    global _exit_hook_registered
    with _exit_hook:
        if not _exit_hook_registered:
            at_interpreter_exit(_close_running, 60.0)
            _exit_hook_registered = True


def at_interpreter_exit(fn, *args) -> None:
    """Call ``fn(*args)`` as the interpreter exits, among threading's exit hooks (the last registered first): they
    run before other threads' resources are torn down; atexit (the fallback) runs after."""
    register = getattr(threading, "_register_atexit", None)
    if register is None:
        import atexit

        register = atexit.register
    register(fn, *args)


def _close_running(timeout: float) -> None:
    for worker in list(_running):
        worker.close(timeout)
