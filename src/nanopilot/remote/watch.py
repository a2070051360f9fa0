"""The session's side of a remote analysis: the worker's stream followed, its health watched, the current run kept.

:class:`AnalysisFollower` reads the analysis proxy in a thread: analysis and texture documents go to the session's
callbacks (its LiveMaps), heartbeats to a :class:`WorkerWatch`. The watch compares each heartbeat with what the
RunEngine sent (:meth:`WorkerWatch.sent`, subscribed to the RunEngine) and says, for the run under way, whether the
worker that owns it (:func:`~nanopilot.remote.partition.owner`) is

* ``ok``;
* ``behind``: more than ``max_lag`` frames sent and not yet accounted for (the session waits: the RunEngine is
  suspended until it catches up to half of that, so the backlog and memory stay bounded);
* ``dead``: no heartbeat for ``timeout`` s (also: none at the run's start), or ``stalled``: behind and no progress
  for ``timeout`` s;
* ``restarted``: another worker id for the partition than at the run's start (its analysis of the run is lost).

:class:`RunBuffer` keeps the documents of the run under way, so that a worker that restarted, or the in-process
analysis the session falls back to, can be given the whole run again (no frame lost, none counted twice).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from .partition import owner
from .wire import ANALYSIS_PREFIX, HEARTBEAT_PREFIX, ZmqSource

logger = logging.getLogger(__name__)

OK, BEHIND, DEAD, STALLED, RESTARTED = "ok", "behind", "dead", "stalled", "restarted"
#: States that end the remote analysis of the run under way (the configured ``on_failure`` then applies).
FAILURES = (DEAD, STALLED, RESTARTED)


class RemoteAnalysisError(RuntimeError):
    """The remote analysis of the run under way failed (its worker died, restarted or stalled)."""


class WorkerWatch:
    """Health of the workers from their heartbeats and what the RunEngine sent.

    Parameters
    ----------
    workers : how many workers share the stream (the runs' owners are 0 .. workers-1).
    timeout : seconds without a heartbeat (or without progress while behind) after which a worker is dead.
    max_lag : frames (raw events) sent and not yet accounted for by the worker, past which it is behind.
    clock : monotonic seconds (a test may give its own).
    """

    def __init__(self, workers: int = 1, timeout: float = 3.0, max_lag: int = 512, clock=time.monotonic):
        if workers < 1 or timeout <= 0 or max_lag < 1:
            raise ValueError(f"need workers >= 1, timeout > 0 s and max_lag >= 1 frame; got {workers}, {timeout}, "
                             f"{max_lag}")
        self.workers, self.timeout, self.max_lag, self.clock = int(workers), float(timeout), int(max_lag), clock
        self.beats: dict[int, tuple[float, dict]] = {}  # partition index -> (when received, last heartbeat)
        self.run: str | None = None  # the raw run under way (or the last one)
        self.run_open = False  # between its start and stop documents
        self.run_worker: str | None = None  # the id of its owner when it started
        self.events = 0  # raw events of the run sent so far
        self._progress = (0.0, -1)  # (when, frames accounted) of the last progress while behind
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ inputs
    def beat(self, beat: dict) -> None:
        """Take a heartbeat (from the analysis stream)."""
        index, count = beat["partition"]
        if count != self.workers:
            logger.error("a worker of partition %d/%d answers; the session expects %d workers: ignored", index,
                         count, self.workers)
            return
        with self._lock:
            self.beats[index] = (self.clock(), beat)

    def sent(self, name: str, doc: dict) -> None:
        """A RunEngine callback: what was sent on the raw stream."""
        with self._lock:
            if name == "start":
                self.run, self.events, self.run_open = doc["uid"], 0, True
                last = self.beats.get(owner(doc["uid"], self.workers))
                self.run_worker = last[1]["worker"] if last and self._alive(last) else None
                self._progress = (self.clock(), -1)
            elif name == "event":
                self.events += 1
            elif name == "event_page":
                self.events += len(doc["seq_num"])
            elif name == "stop" and doc.get("run_start") == self.run:
                self.run_open = False

    def restart_seen(self) -> None:
        """The run under way was given again to its owner's new worker: watch that one from now."""
        with self._lock:
            last = self.beats.get(owner(self.run, self.workers)) if self.run else None
            self.run_worker = last[1]["worker"] if last else None
            self._progress = (self.clock(), -1)

    # ------------------------------------------------------------------ state
    def _alive(self, last: tuple[float, dict]) -> bool:
        return self.clock() - last[0] <= self.timeout

    def state(self, uid: str | None = None) -> tuple[str, str]:
        """(state, reason) of the owner of run ``uid``; by default of the run under way, or of the last one while its
        analysis goes on, else of every worker (dead if any is)."""
        with self._lock:
            if uid is not None:
                return self._state_of(uid)
            if self.run is not None:
                state = self._state_of(self.run)
                if self.run_open or (state[0] != RESTARTED and not self._done(self.run)):
                    return state
            dead = [i for i in range(self.workers) if i not in self.beats or not self._alive(self.beats[i])]
            return (DEAD, f"no heartbeat from worker(s) {dead} of {self.workers} within {self.timeout:g} s") \
                if dead else (OK, "")

    def _done(self, uid: str) -> bool:
        last = self.beats.get(owner(uid, self.workers))
        return bool(last and last[1]["runs"].get(uid, {}).get("done"))

    def _state_of(self, uid: str) -> tuple[str, str]:
        index = owner(uid, self.workers)
        last = self.beats.get(index)
        name = f"worker {index}/{self.workers}"
        if last is None or not self._alive(last):
            since = "ever" if last is None else f"{self.clock() - last[0]:.1f} s"
            return DEAD, f"{name} (the owner of run {uid[:8]}) sent no heartbeat for {since}"
        beat = last[1]
        if uid == self.run and self.run_worker is not None and beat["worker"] != self.run_worker:
            return RESTARTED, (f"{name} restarted during run {uid[:8]} (pid {beat['pid']} on {beat['host']}): "
                               "the documents it had received are lost")
        if uid == self.run and self.run_worker is None:
            return DEAD, f"{name} was not answering when run {uid[:8]} started"
        report = beat["runs"].get(uid, {})
        lag = self.events - report.get("events", 0) + report.get("frames_received", 0) - \
            report.get("frames_accounted", 0) if uid == self.run else 0
        if lag <= self.max_lag:
            return OK, ""
        accounted = report.get("frames_accounted", 0)
        if accounted != self._progress[1]:
            self._progress = (self.clock(), accounted)
        elif self.clock() - self._progress[0] > self.timeout:
            return STALLED, f"{name} is {lag} frames behind on run {uid[:8]} and made no progress for " \
                            f"{self.clock() - self._progress[0]:.1f} s"
        return BEHIND, f"{name} is {lag} frames behind on run {uid[:8]} (at most {self.max_lag})"

    def lag(self) -> int:
        """Frames of the run under way sent and not yet accounted for by its worker (0 without a run)."""
        with self._lock:
            if self.run is None or owner(self.run, self.workers) not in self.beats:
                return 0
            report = self.beats[owner(self.run, self.workers)][1]["runs"].get(self.run, {})
            return self.events - report.get("events", 0) + report.get("frames_received", 0) - \
                report.get("frames_accounted", 0)


class RunBuffer:
    """The documents sent of the run under way (a RunEngine callback), up to ``max_frames`` frames: past that the
    run cannot be given again (:attr:`complete` False, logged once)."""

    def __init__(self, max_frames: int = 65536):
        self.max_frames = int(max_frames)
        self.docs: list[tuple[str, dict]] = []
        self.frames = 0
        self.complete = True

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            self.docs, self.frames, self.complete = [], 0, True
        if not self.complete:
            return
        n = len(doc["seq_num"]) if name == "event_page" else 1 if name == "event" else 0
        if self.frames + n > self.max_frames:
            logger.warning("run %s: more than %d events; a failed remote analysis of it can no longer be redone",
                           str(self.docs[0][1]["uid"])[:8] if self.docs else "?", self.max_frames)
            self.docs, self.complete = [], False
            return
        self.frames += n
        self.docs.append((name, doc))


class AnalysisFollower:
    """Reads the analysis proxy's output in a thread: documents to each of ``callbacks``, heartbeats to ``watch``.

    :meth:`abort` ends, for the callbacks, the derived runs of a raw run that a failed worker left open (a stop
    document with exit_status "abort" each) and drops whatever else comes of them."""

    def __init__(self, address: str, watch: WorkerWatch, callbacks=()):
        self.watch, self.callbacks = watch, list(callbacks)
        self._open: dict[str, str] = {}  # derived run uid -> its raw uid, while open
        self._dropped: set[str] = set()  # derived run (and descriptor) uids of aborted runs
        self._lock = threading.Lock()
        self.source = ZmqSource(address, self._take, prefixes=[ANALYSIS_PREFIX, HEARTBEAT_PREFIX])
        self.thread = threading.Thread(target=self.source.run, name="nanopilot-follower", daemon=True)
        self.thread.start()

    def abort(self, raw_uid: str, reason: str) -> list[str]:
        """Stop (exit_status "abort", ``reason``) the derived runs of ``raw_uid`` still open; their uids."""
        with self._lock:
            runs = [uid for uid, raw in self._open.items() if raw == raw_uid]
            for uid in runs:
                del self._open[uid]
                self._dropped.add(uid)
                self._deliver("stop", {"run_start": uid, "uid": str(uuid.uuid4()), "time": time.time(),
                                       "exit_status": "abort", "reason": reason, "num_events": {}})
        return runs

    def _take(self, prefix: bytes, name: str, doc) -> None:
        if prefix == HEARTBEAT_PREFIX:
            self.watch.beat(doc)
            return
        with self._lock:
            if name == "start" and "raw_uid" in doc:
                self._open[doc["uid"]] = doc["raw_uid"]
            if name == "descriptor" and doc.get("run_start") in self._dropped:
                self._dropped.add(doc["uid"])
            of = doc.get("descriptor") if name in ("event", "event_page") else doc.get("run_start") or doc.get("uid")
            if of in self._dropped:
                return
            if name == "stop":
                self._open.pop(doc.get("run_start"), None)
            self._deliver(name, doc)

    def _deliver(self, name: str, doc: dict) -> None:
        for callback in self.callbacks:
            try:
                callback(name, doc)
            except Exception:
                logger.exception("%r failed on a remote %s document", callback, name)

    def close(self) -> None:
        self.source.stop()
        self.thread.join(5)
