"""How several workers on one stream divide the work: by raw run.

Every worker receives every document (0MQ's publish/subscribe); worker ``index`` of ``count`` analyses the runs
whose start uid's hash is ``index`` modulo ``count`` (:func:`owner`), whole: one analysis run per raw run,
made by one worker, in the raw run's order, with the same drift following and texture labels as in-process. No
frame is analysed twice, and the session knows which worker must be alive for a run (:mod:`.watch`). Runs, not
frames, are the unit: one long scan is analysed by one worker (frames divided by ``seq_num`` modulo N would need a
merger of the partial analysis runs, the drift reference and the texture labels of the whole map; not done).

:class:`RunFilter` passes a worker's runs' documents on and counts their raw events per stream, so that frames lost
on the way (the stop document's ``num_events`` says how many there were) are counted, not missed silently.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter

logger = logging.getLogger(__name__)


def owner(uid: str, count: int) -> int:
    """The index (0 .. count-1) of the worker that analyses the raw run with start uid ``uid``: a stable hash of the
    uid (SHA-1, the same in every process) modulo ``count``, so that uids alike in some digits still spread."""
    return int.from_bytes(hashlib.sha1(str(uid).encode()).digest()[:8], "big") % int(count)


def parse_partition(text: str) -> tuple[int, int]:
    """``"i/N"`` -> (i, N); ValueError saying what to write for anything else."""
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ValueError(f"partition {text!r} must be INDEX/COUNT, e.g. 0/2 for the first of two workers") from None
    if not 0 <= index < count:
        raise ValueError(f"partition {text!r}: the index must be 0 .. {count - 1} (INDEX/COUNT, counting from 0)")
    return index, count


class RunFilter:
    """A ``callback(name, doc)`` that passes the documents of the raw runs of partition ``index``/``count`` to
    ``target`` and drops the others'; documents of no known run (a descriptor whose start was never seen) are
    passed on, so that the target counts them.

    :attr:`events` counts the raw events received per run and stream (for the heartbeats and the stop check);
    ``on_lost(stop_doc, {stream: events missing})`` is called before a stop whose ``num_events`` says more events
    were sent than arrived.
    """

    def __init__(self, target, index: int = 0, count: int = 1, on_lost=None):
        self.target, self.index, self.count, self.on_lost = target, int(index), int(count), on_lost
        self.events: dict[str, Counter] = {}  # run uid (this partition's) -> events received per stream name
        self._runs: dict[str, bool] = {}  # open run uid -> this partition's?
        self._descriptors: dict[str, tuple[str, str]] = {}  # descriptor uid -> (run uid, stream name)
        self._resources: dict[str, str] = {}  # resource uid -> run uid

    def owns(self, uid: str) -> bool:
        return owner(uid, self.count) == self.index

    def is_open(self, uid: str) -> bool:
        """Has run ``uid`` started and not stopped?"""
        return uid in self._runs

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            self._runs[doc["uid"]] = mine = self.owns(doc["uid"])
            if mine:
                self.events[doc["uid"]] = Counter()
        run = doc["uid"] if name == "start" else self._run_of(name, doc)
        if run not in self._runs:  # unknown: the target counts what it refuses
            self.target(name, doc)
            return
        if name == "descriptor":
            self._descriptors[doc["uid"]] = (run, doc.get("name", "primary"))
        elif name == "resource" or name == "stream_resource":
            self._resources[doc["uid"]] = run
        if not self._runs[run]:
            if name == "stop":
                self._forget(run)
            return
        if name in ("event", "event_page"):
            self.events[run][self._descriptors[doc["descriptor"]][1]] += \
                len(doc["seq_num"]) if name == "event_page" else 1
        elif name == "stop":
            self._check_stop(run, doc)
        self.target(name, doc)
        if name == "stop":
            self._forget(run)

    def _run_of(self, name: str, doc: dict) -> str | None:
        if name in ("descriptor", "stop", "resource", "stream_resource"):
            return doc.get("run_start")
        if name in ("event", "event_page", "stream_datum"):
            return self._descriptors.get(doc.get("descriptor"), (None,))[0]
        if name in ("datum", "datum_page"):
            return self._resources.get(doc.get("resource"))
        return None

    def _check_stop(self, run: str, doc: dict) -> None:
        expected, got = doc.get("num_events") or {}, self.events.get(run, Counter())
        lost = {stream: int(n) - got[stream] for stream, n in expected.items() if int(n) > got[stream]}
        if lost:
            logger.error("run %s: %s event(s) were sent and never arrived (stream: missing)", run[:8], lost)
            if self.on_lost is not None:
                self.on_lost(doc, lost)

    def _forget(self, run: str) -> None:
        self._runs.pop(run, None)
        self._descriptors = {d: v for d, v in self._descriptors.items() if v[0] != run}
        self._resources = {r: v for r, v in self._resources.items() if v != run}
