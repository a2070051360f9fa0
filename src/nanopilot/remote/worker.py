"""RemoteWorker: the analysis and texture stages in a process of their own, fed by a document stream.

    raw documents (0MQ proxy or Kafka) -> RunFilter (this worker's runs) -> NanobeamAnalysis -> TextureCallback
        analysis and texture documents -> the output stream (prefix ``analysis``) and the catalogue
        heartbeats every ``heartbeat`` s -> the output stream (prefix ``heartbeat``)

A heartbeat is a dict: ``worker`` (an id new at each start: a restart is seen as a new id), ``partition`` [index,
count], ``pid``, ``host``, ``device``, ``model``, ``time`` (s since the epoch), ``started``, ``queued`` (frames
waiting for the analysis) and ``runs``: per raw run uid this worker analyses (open, and the last few ended) the raw
``events`` received, the ``frames_received`` and ``frames_accounted`` (analysed, skipped, lost or rejected) and
``done``; ``ping``: the last ping received on the raw stream (:data:`~nanopilot.remote.wire.PING_PREFIX`). The
session compares them with what its RunEngine sent (:mod:`nanopilot.remote.watch`).
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
import uuid

from ..callbacks import NanobeamAnalysis
from ..callbacks.derived import DRIFT_STREAM
from ..callbacks.frame_sources import find_image_key
from .partition import RunFilter
from .wire import ANALYSIS_PREFIX, HEARTBEAT, HEARTBEAT_PREFIX, PING_PREFIX

logger = logging.getLogger(__name__)

#: Ended runs still reported in the heartbeats (so that a session sees their last counts).
REPORTED_ENDED_RUNS = 8


class RemoteWorker:
    """The analysis (and texture labels) of the raw runs of one partition of a document stream.

    Parameters
    ----------
    predictor : a :class:`nanopilot.model.Predictor` (on its device) or any predictor NanobeamAnalysis takes.
    source_factory : ``f(handle) -> source`` with ``run()`` (blocking) and ``stop()``, handing each message to
        ``handle(prefix, name, doc)`` (:class:`~nanopilot.remote.wire.ZmqSource`, ``KafkaSource``).
    sinks : callables ``sink(name, doc, prefix=None)`` that get every analysis and texture document and (prefix
        :data:`HEARTBEAT_PREFIX`) the heartbeats (:class:`~nanopilot.remote.wire.ZmqSink`), each closed at the end.
    writers : callbacks ``(name, doc)`` that get the analysis and texture documents (catalogue writers).
    partition : (index, count): this worker analyses the runs :func:`~nanopilot.remote.partition.owner` gives it.
    heartbeat : seconds between heartbeats.
    texture : also label textures (a texture run per analysis run), as the in-process session does.
    analysis_options : more keyword arguments for :class:`~nanopilot.callbacks.NanobeamAnalysis` (``image_key``,
        ``batch_size``, ``max_latency``, ``motors``, ...).
    """

    def __init__(self, predictor, source_factory, *, sinks=(), writers=(), partition=(0, 1), heartbeat=0.25,
                 texture=True, device: str = "cpu", **analysis_options):
        from ..texture import TextureCallback, frame_descriptor

        if heartbeat <= 0:
            raise ValueError(f"heartbeat must be a positive number of seconds, got {heartbeat!r}")
        self.id = str(uuid.uuid4())
        self.partition, self.heartbeat, self.device = tuple(partition), float(heartbeat), device
        self.sinks, self.started = list(sinks), time.time()
        self.ping = None  # the last ping received on the raw stream (echoed in the heartbeats)
        self.analysis = NanobeamAnalysis(predictor, frame_features=frame_descriptor if texture else None,
                                         **analysis_options)
        self.texture = TextureCallback() if texture else None
        if self.texture is not None:  # first, as in-process: its labels go out before the document they follow
            self.analysis.add_stage(self.texture)
        for out in (*writers, *self.sinks):  # stored first: a document on the stream is in the catalogue
            self.analysis.subscribe(out)
            if self.texture is not None:
                self.texture.subscribe(out)
        self.filter = RunFilter(self._document, *self.partition, on_lost=self._count_lost)
        self._frame_streams: dict[str, set[str]] = collections.defaultdict(set)  # run uid -> streams with frames
        self._ended: collections.deque = collections.deque(maxlen=REPORTED_ENDED_RUNS)
        self._stopping = threading.Event()
        self.source = source_factory(self._message)
        self._beats = threading.Thread(target=self._beat_loop, name="nanopilot-heartbeat", daemon=True)

    # ------------------------------------------------------------------ receiving
    def _message(self, prefix: bytes, name: str, doc) -> None:
        if prefix == PING_PREFIX:
            self.ping = doc
            self._beat()
        elif prefix not in (ANALYSIS_PREFIX, HEARTBEAT_PREFIX):  # not a worker's output on a shared proxy
            self.filter(name, doc)  # no lock held: the door may wait for room, the heartbeats must go on

    def _document(self, name: str, doc: dict) -> None:
        if name == "descriptor" and doc.get("name") != DRIFT_STREAM:
            keys = doc.get("data_keys", {})
            if find_image_key(keys, self.analysis.frame_shape, self.analysis.image_key) is not None:
                self._frame_streams[doc["run_start"]].add(doc.get("name", "primary"))
        self.analysis(name, doc)
        if name == "stop":
            run = doc.get("run_start")
            self._frame_streams.pop(run, None)
            self._ended.append(run)
            for uid in [u for u in self.filter.events if not self.filter.is_open(u) and u not in self._ended]:
                del self.filter.events[uid]  # ended long ago

    def _count_lost(self, stop: dict, lost: dict) -> None:
        """Frames sent and never received: counted as received and lost to errors in the run's analysis (its
        progress and summary events say so)."""
        run_uid = stop["run_start"]
        frames = sum(n for stream, n in lost.items() if stream in self._frame_streams.get(run_uid, ()))
        self.analysis.count_lost(run_uid, frames)

    # ------------------------------------------------------------------ heartbeats
    def status(self) -> dict:
        """The heartbeat dict (see the module's docstring)."""
        maps, events = self.analysis.maps, {}
        for _ in range(10):  # the receiving thread may add a run or a stream meanwhile: then read again
            try:
                events = {uid: sum(streams.values()) for uid, streams in list(self.filter.events.items())}
                break
            except RuntimeError:
                continue
        report = {}
        for uid, n in events.items():
            entry = {"events": n, "frames_received": 0, "frames_accounted": 0, "done": False,
                     "ended": uid in self._ended}
            if uid in maps:
                run = maps[uid]
                entry.update(frames_received=max(run.taken, run.received), frames_accounted=run.accounted,
                             done=run.done)
            report[uid] = entry
        return {"worker": self.id, "partition": list(self.partition), "pid": os.getpid(), "host": socket.gethostname(),
                "device": self.device, "model": str(getattr(self.analysis.predictor, "path", "")),
                "time": time.time(), "started": self.started, "queued": self.analysis.queued_frames, "ping": self.ping,
                "runs": report}

    def _beat(self) -> None:
        beat = self.status()
        for sink in self.sinks:
            try:
                sink(HEARTBEAT, beat, prefix=HEARTBEAT_PREFIX)
            except Exception:  # noqa: BLE001 - a failing sink must not stop the beats to the others
                logger.exception("could not send a heartbeat to %r", sink)

    def _beat_loop(self) -> None:
        while not self._stopping.wait(self.heartbeat):
            self._beat()

    # ------------------------------------------------------------------ lifetime
    def run(self) -> None:
        """Receive and analyse until :meth:`stop` (from another thread or a signal handler); then finish the
        analysis of everything received (:meth:`close`)."""
        self._beats.start()
        self._beat()
        try:
            self.source.run()
        finally:
            self.close()

    def stop(self) -> None:
        """Ask :meth:`run` to return (returns at once)."""
        self.source.stop()

    def close(self, timeout: float = 60.0) -> bool:
        """Finish the analysis of what was received (runs still open end with exit_status "abort"), send the last
        heartbeat and close the sinks. False if the analysis did not finish within ``timeout`` s."""
        if self._stopping.is_set():
            return True
        finished = self.analysis.close(timeout)
        self._stopping.set()
        self._beat()
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                close()
        return finished
