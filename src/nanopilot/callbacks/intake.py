"""The analysis' door: the raw-run state kept on the RunEngine side, and the checks every document passes
before its frames reach the analysis (well-formed pages, seq_nums seen once, the instrument the run declares).

The checks are per page and vectorised (a length per data key, one array comparison of the seq_nums), so a
well-formed stream pays almost nothing for them.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
from collections import Counter
from collections.abc import Sized

import numpy as np

from ..estimates import WRONG_INSTRUMENT
from .derived import DerivedRun
from .frame_sources import ExternalFrames, frame_shape_of

logger = logging.getLogger(__name__)

#: Reasons a document (or some of its frames) is refused at the door, as counted in ``FrameCounts.rejected_by_reason``.
MALFORMED = "malformed document"
DUPLICATE = "duplicate seq_num"
UNKNOWN_DESCRIPTOR = "unknown descriptor"
UNKNOWN_RUN = "document of no open run"


class FrameCounts:
    """Every frame of a run, accounted for once: received = analysed + skipped + errors + rejected (by reason).

    Counted from the RunEngine's thread (the door) and the analysis' (the worker), under a lock; the analysis run
    reports them in its progress and summary events.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.received = 0
        self.skipped = 0  # dropped by the back-pressure policy, or left when the analysis gave up
        self.errors = 0  # lost to an unreadable file or an exception inside the analysis
        self.rejected_by_reason: Counter = Counter()  # refused at the door (malformed, duplicate, ...)

    def count(self, *, received: int = 0, skipped: int = 0, errors: int = 0, rejected: str | None = None) -> None:
        """Add frames received, skipped or lost; ``rejected``: the reason the ``received`` ones were refused."""
        with self._lock:
            self.received += received
            self.skipped += skipped
            self.errors += errors
            if rejected is not None:
                self.rejected_by_reason[rejected] += received

    def snapshot(self) -> dict:
        """The counts as the analysis run's event data (rejections by reason as a JSON string)."""
        with self._lock:
            rejected = dict(sorted(self.rejected_by_reason.items()))
            return {"frames_received": self.received, "frames_skipped": self.skipped, "frames_errors": self.errors,
                    "frames_rejected": sum(rejected.values()), "rejected_by_reason": json.dumps(rejected)}


class RawRun:
    """State of one raw run on the RunEngine side."""

    def __init__(self, start: dict, motors: list[str] | None):
        self.start = start
        self.uid = start["uid"]
        dims = [f for fields, _ in (start.get("hints") or {}).get("dimensions", []) for f in fields]
        self.motors = list(motors or start.get("motors") or [d for d in dims if d != "time"])
        self.descriptors: dict[str, dict] = {}  # descriptor uid -> {"key", "external", "units", "status"}
        self.external = ExternalFrames()
        self.datums: dict[str, dict] = {}
        self.seen_events: dict[str, SeqNumSet] = {}  # descriptor uid -> seq_nums of the events received
        self.seen_frames: dict[str, SeqNumSet] = {}  # descriptor uid -> seq_nums of the stream_datum frames
        self.frames_by_seq: dict[tuple[str, int], np.ndarray] = {}  # from stream_datum, waiting for events
        self.positions_by_seq: dict[tuple[str, int], list[float]] = {}  # events waiting for frames
        self.unreadable: set[tuple[str, int]] = set()  # frames already counted as lost, positions not yet seen
        self.counts = FrameCounts()
        self.progress_pending = False  # a progress notice for this run is queued for the worker
        self.logged: set[str] = set()  # rejection reasons already logged for this run
        self.derived: DerivedRun | None = None  # set at the run's first descriptor with frames

    def refuse(self, reason: str, n: int, detail: str) -> bool:
        """Count ``n`` frames refused at the door for ``reason`` (logged the first time per reason); True if any."""
        if reason not in self.logged:
            self.logged.add(reason)
            logger.error("run %s: refused %d frame(s) (%s: %s); further ones are counted in the run's analysis "
                         "summary", self.uid[:8], n, reason, detail)
        if n:
            self.counts.count(received=n, rejected=reason)
        return bool(n)


class SeqNumSet:
    """The seq_nums received from one descriptor, as sorted disjoint ranges [lo, hi] (usually one range)."""

    def __init__(self):
        self._lo: list[int] = []
        self._hi: list[int] = []

    def add_new(self, seq_nums: np.ndarray) -> np.ndarray | None:
        """Add ``seq_nums`` (1-D ints); returns the mask of those not seen before (nor earlier in this call),
        or None when all are new."""
        n = len(seq_nums)
        if n and (n == 1 or (np.diff(seq_nums) == 1).all()):  # a page of consecutive seq_nums
            first, last = int(seq_nums[0]), int(seq_nums[-1])
            if not self._hi or first > self._hi[-1]:
                if self._hi and first == self._hi[-1] + 1:
                    self._hi[-1] = last
                else:
                    self._lo.append(first)
                    self._hi.append(last)
                return None
        fresh = np.array([self._add(int(s)) for s in seq_nums], dtype=bool)
        return None if fresh.all() else fresh

    def _add(self, s: int) -> bool:
        i = bisect.bisect_right(self._lo, s) - 1  # the range starting at or below s
        if i >= 0 and s <= self._hi[i]:
            return False
        joins_left = i >= 0 and self._hi[i] == s - 1
        joins_right = i + 1 < len(self._lo) and self._lo[i + 1] == s + 1
        if joins_left and joins_right:
            self._hi[i] = self._hi.pop(i + 1)
            del self._lo[i + 1]
        elif joins_left:
            self._hi[i] = s
        elif joins_right:
            self._lo[i + 1] = s
        else:
            self._lo.insert(i + 1, s)
            self._hi.insert(i + 1, s)
        return True


def frames_in(doc: dict) -> int:
    """Number of frames a (possibly malformed) event page or event stands for: its seq_nums, else 1."""
    seq = doc.get("seq_num") if isinstance(doc, dict) else None
    return len(seq) if isinstance(seq, Sized) and not isinstance(seq, (str, bytes)) else 1


def page_problem(page: dict) -> str | None:
    """Why an event page cannot be used whole (seq_num not a list of integers, data/timestamps/time lists of
    other lengths than seq_num), or None if it is well formed."""
    seq, data = page.get("seq_num"), page.get("data")
    if not isinstance(seq, (list, tuple, np.ndarray)) or not isinstance(data, dict):
        return "an event page needs a seq_num list and a data mapping"
    n = len(seq)
    if n == 0:
        return "empty event page"
    if np.asarray(seq).dtype.kind not in "iu":
        return f"seq_num must be integers, got {str(seq)[:60]}"
    columns = {f"data[{k!r}]": v for k, v in data.items()}
    columns.update({f"timestamps[{k!r}]": v for k, v in (page.get("timestamps") or {}).items()})
    if "time" in page:
        columns["time"] = page["time"]
    for name, column in columns.items():
        if not isinstance(column, Sized) or isinstance(column, (str, bytes)) or len(column) != n:
            length = len(column) if isinstance(column, Sized) else "no"
            return f"ragged event page: seq_num has {n} entries, {name} has {length}"
    return None


def stream_datum_frames(doc: dict) -> int | None:
    """Number of frames a stream_datum stands for, or None if its seq_nums and indices are not ranges of the
    same length."""
    try:
        seqs, indices = doc["seq_nums"], doc["indices"]
        n = int(seqs["stop"]) - int(seqs["start"])
        ok = n >= 0 and int(indices["stop"]) - int(indices["start"]) == n
    except (KeyError, TypeError, ValueError):
        return None
    return n if ok else None


def positions_of(page: dict, motors: list[str], n: int) -> np.ndarray:
    """(n, n_motors) float positions of a page; a missing motor or a value that is not a number reads NaN."""
    columns = []
    for motor in motors:
        values = page["data"].get(motor)
        if values is None:
            columns.append(np.full(n, np.nan))
            continue
        try:
            columns.append(np.asarray(values, dtype=float).reshape(n))
        except (ValueError, TypeError):
            columns.append(np.array([_number(v) for v in values], dtype=float))
    return np.column_stack(columns) if columns else np.zeros((n, 0))


def _number(value) -> float:
    try:
        return float(value)
    except (ValueError, TypeError):
        return np.nan


def instrument_status(run: RawRun, descriptor: dict, key: str, fingerprint: str) -> str | None:
    """WRONG_INSTRUMENT (logged) if the run declares another instrument than the model's (``fingerprint``) for the
    frames of ``key`` in ``descriptor``'s stream, else None."""
    declared = declared_fingerprint(run.start, descriptor, key)
    if declared is None or declared == fingerprint:
        return None
    logger.error("run %s declares instrument %s for %r but the model was made for instrument %s: every frame of "
                 "stream %r is flagged %r; use a model trained for this instrument", run.uid[:8], declared, key,
                 fingerprint, descriptor.get("name"), WRONG_INSTRUMENT)
    return WRONG_INSTRUMENT


def declared_fingerprint(start: dict, descriptor: dict, image_key: str) -> str | None:
    """The instrument fingerprint a run declares for its frames, or None.

    From the descriptor's configuration of the device that reads ``image_key`` (a configuration key ending in
    ``instrument_fingerprint``, as the simulated detector has), else the start document's
    ``instrument_fingerprint``.
    """
    for device, keys in (descriptor.get("object_keys") or {}).items():
        if image_key in keys:
            config = ((descriptor.get("configuration") or {}).get(device) or {}).get("data") or {}
            for key, value in config.items():
                if key.endswith("instrument_fingerprint") and value:
                    return str(value)
    declared = start.get("instrument_fingerprint")
    return str(declared) if declared else None


def refuse_other_frames(keys: dict, stream: str | None, image_key: str | None, takes: str) -> None:
    """For a stream without frames the analysis takes (``takes``: what it takes, for the message): ValueError if
    its data keys ``keys`` hold 2-D frames of another shape, or lack the ``image_key`` asked for."""
    images = {k: v.get("shape") for k, v in keys.items() if frame_shape_of(v) is not None}
    if image_key is not None and images:
        raise ValueError(f"image_key {image_key!r} is not in stream {stream!r}; its 2-D array keys are "
                         f"{sorted(images)}: pass one of them as image_key")
    if images:
        raise ValueError(f"stream {stream!r} has 2-D frames {images} but {takes}: use a model trained for this "
                         f"detector ROI, or pass image_key")


def take_where(values, keep: np.ndarray):
    """The entries of a page's data column where ``keep`` is True (an array or a list)."""
    if isinstance(values, np.ndarray):
        return values[keep]
    return [v for v, k in zip(values, keep) if k]


def storage_of(raw_storage, uid: str) -> str | None:
    """Where raw run ``uid`` was stored, from ``raw_storage(uid)`` (None without one; its failure is reported as
    "unknown (...)", never raised)."""
    if raw_storage is None:
        return None
    try:
        return str(raw_storage(uid))
    except Exception as err:  # noqa: BLE001 - a storage report must not break the analysis
        return f"unknown ({type(err).__name__}: {err})"
