"""PlanRun: the tables of one plan's run, gathered from its documents (live, or read back from the catalogue).

A plan's run is three event-model runs: the raw run (``primary`` frames and positions, ``decisions``), the
analysis run of :class:`~nanopilot.callbacks.NanobeamAnalysis` (per-frame estimates, ``raw_seq_num``) and the
texture run of :class:`~nanopilot.texture.TextureCallback` (a label per frame). :class:`RunCollector` routes the
documents of any number of such runs, in any interleaving, to one :class:`PlanRun` per raw run; the picture
functions (:mod:`nanopilot.pictures`) read only PlanRun tables, so they draw a stored run as they draw a live one.
Array data (the frames) are dropped on arrival: only scalar columns are kept.
"""

from __future__ import annotations

import json
import math
import threading
import time

import numpy as np

from ..plans.common import DECISION_STREAM

#: Kinds of the runs that make a plan's run.
RAW, ANALYSIS, TEXTURE = "raw", "analysis", "texture"
#: The documents read (the others, e.g. datum and resource, are ignored).
DOCUMENTS = ("start", "descriptor", "event", "event_page", "stop")


class PlanRun:
    """The tables of one plan's run (see the module notes).

    Attributes
    ----------
    start : the raw run's start document (plan_name, plan_args, motors, sample, scan_id, ...).
    frames : raw ``primary`` scalar columns, plus ``seq_num`` and ``time`` (s since the epoch on the devices'
        clock: the latest reading timestamp of the frame).
    decisions : one dict per event of the ``decisions`` stream: step, action, reason, evidence (dict), value,
        approved, points (frames analysed when deciding).
    estimates : the analysis run's ``primary`` columns (strain, omega (deg), chi (deg), thickness (angstrom), their
        ``_std``, status, raw_seq_num, positions (um)).
    labels : texture label per raw seq_num (-1: unlabelled).
    texture_summary : the texture run's summary event data (stripes, textures), {} before it.
    stopped : the kinds of run (raw, analysis, texture) whose stop document has arrived.
    """

    def __init__(self, uid: str):
        self.uid = uid
        self.start: dict = {}
        self.frames: dict[str, list] = {}
        self.decisions: list[dict] = []
        self.estimates: dict[str, list] = {}
        self.labels: dict[int, int] = {}
        self.texture_summary: dict = {}
        self.stopped: set[str] = set()

    # ------------------------------------------------------------------ reading
    @property
    def plan_name(self) -> str:
        return str(self.start.get("plan_name", "run"))

    @property
    def plan_args(self) -> dict:
        return dict(self.start.get("plan_args", {}))

    def title(self) -> str:
        """The plan, the sample, the scan and the start time: a figure's title."""
        sample = self.start.get("sample")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.start.get("time", 0)))
        scan = f"scan {self.start['scan_id']} " if "scan_id" in self.start else ""
        return (f"{self.plan_name}: sample {sample if sample else '(not named)'}, {scan}({self.uid[:8]}), {when}, "
                f"{len(self.estimates.get('raw_seq_num', []))} frames analysed")

    def points(self) -> dict[str, np.ndarray]:
        """The analysed frames in order of acquisition, one array per column: the estimates and positions, ``seq_num``
        (raw), ``time`` (s since the first frame; NaN if its raw event was not seen), ``texture`` (-1: none)."""
        est = {k: np.asarray(v) for k, v in self.estimates.items()}
        seq = est.pop("raw_seq_num", np.zeros(0, dtype=int)).astype(int)
        order = np.argsort(seq, kind="stable")
        out = {k: (v[order].astype(float) if k != "status" else v[order]) for k, v in est.items()}
        out["seq_num"] = seq[order]
        when = dict(zip(self.frames.get("seq_num", []), self.frames.get("time", [])))
        first = min(self.frames.get("time", [math.nan]))
        out["time"] = np.array([when.get(s, math.nan) - first for s in out["seq_num"]], dtype=float)
        out["texture"] = np.array([self.labels.get(s, -1) for s in out["seq_num"]], dtype=int)
        return out

    def copy(self) -> PlanRun:
        """An independent copy of the tables (drawn from while the documents keep arriving)."""
        other = PlanRun(self.uid)
        other.start, other.texture_summary = dict(self.start), dict(self.texture_summary)
        other.stopped = set(self.stopped)
        other.frames = {k: list(v) for k, v in self.frames.items()}
        other.estimates = {k: list(v) for k, v in self.estimates.items()}
        other.decisions, other.labels = list(self.decisions), dict(self.labels)
        return other


class RunCollector:
    """Callback ``(name, doc)`` that gathers the raw, analysis and texture documents into :class:`PlanRun` tables.

    Subscribe it to the RunEngine, the analysis and the texture callback (or feed it a stored run's documents);
    thread-safe: read with :meth:`snapshot`. ``on_change(raw_uid, name)`` is called after each document. Only
    the latest ``keep`` runs are kept (a long session's memory stays bounded).
    """

    def __init__(self, on_change=None, keep: int = 20):
        self.keep = int(keep)
        self.runs: dict[str, PlanRun] = {}
        self._starts: dict[str, tuple[str, str]] = {}  # start uid -> (raw uid, kind)
        self._descriptors: dict[str, tuple[str, str, str, list[str]]] = {}  # uid -> (raw uid, kind, stream, keys)
        self._lock = threading.Lock()
        self.on_change = on_change

    def __call__(self, name: str, doc: dict) -> None:
        if name not in DOCUMENTS:
            return
        with self._lock:
            raw_uid = getattr(self, "_" + name)(doc)
        if raw_uid is not None and self.on_change is not None:
            self.on_change(raw_uid, name)

    def snapshot(self, raw_uid: str) -> PlanRun:
        """A copy of the tables of raw run ``raw_uid`` (KeyError if never seen)."""
        with self._lock:
            return self.runs[raw_uid].copy()

    @property
    def latest(self) -> str | None:
        """The raw uid of the run seen last (None before any)."""
        return next(reversed(self.runs), None)

    # ------------------------------------------------------------------ documents
    def _start(self, doc):
        kind = TEXTURE if "analysis_uid" in doc else ANALYSIS if "raw_uid" in doc else RAW
        raw_uid = doc.get("raw_uid", doc["uid"])
        self._starts[doc["uid"]] = (raw_uid, kind)
        run = self.runs.setdefault(raw_uid, PlanRun(raw_uid))
        while len(self.runs) > self.keep:  # forget the oldest run and the routes to it
            old = next(iter(self.runs))
            del self.runs[old]
            self._starts = {k: v for k, v in self._starts.items() if v[0] != old}
            self._descriptors = {k: v for k, v in self._descriptors.items() if v[0] != old}
        if kind == RAW:
            run.start = dict(doc)
        elif not run.start:  # the raw run was not seen: keep what the analysis repeats of it
            run.start = {k: doc[k] for k in ("sample", "time", "motors") if k in doc}
        return raw_uid

    def _descriptor(self, doc):
        if doc.get("run_start") not in self._starts:
            return None
        raw_uid, kind = self._starts[doc["run_start"]]
        keys = [k for k, v in doc["data_keys"].items() if not v.get("shape")]  # scalars only: no frames
        self._descriptors[doc["uid"]] = (raw_uid, kind, doc.get("name", "primary"), keys)
        return raw_uid

    def _event(self, doc):
        page = {"descriptor": doc["descriptor"], "seq_num": [doc["seq_num"]],
                "data": {k: [v] for k, v in doc["data"].items()},
                "timestamps": {k: [v] for k, v in doc.get("timestamps", {}).items()}}
        return self._event_page(page)

    def _event_page(self, doc):
        if doc["descriptor"] not in self._descriptors:
            return None
        raw_uid, kind, stream, keys = self._descriptors[doc["descriptor"]]
        run, data = self.runs[raw_uid], doc["data"]
        if kind == RAW and stream == DECISION_STREAM:
            for k in range(len(doc["seq_num"])):
                row = {key[len("decision_"):]: data[key][k] for key in keys if key.startswith("decision_")}
                row["evidence"] = _json(row.get("evidence", "{}"))
                run.decisions.append(row)
        elif kind == RAW and stream == "primary":
            _extend(run.frames, {k: data[k] for k in keys if k in data})
            stamps = [doc["timestamps"][k] for k in keys if k in doc.get("timestamps", {})]
            run.frames.setdefault("seq_num", []).extend(int(s) for s in doc["seq_num"])
            run.frames.setdefault("time", []).extend(np.max(stamps, axis=0).tolist() if stamps else
                                                     [math.nan] * len(doc["seq_num"]))
        elif kind == ANALYSIS and stream == "primary":
            _extend(run.estimates, {k: data[k] for k in keys if k in data})
        elif kind == TEXTURE and stream in ("labels", "primary"):  # labels while the run goes on, then final
            run.labels.update(zip((int(s) for s in data["raw_seq_num"]), (int(v) for v in data["texture"])))
        elif kind == TEXTURE and stream == "summary":
            run.texture_summary = {k: v[-1] for k, v in data.items()}
        else:
            return None
        return raw_uid

    def _stop(self, doc):
        if doc.get("run_start") not in self._starts:
            return None
        raw_uid, kind = self._starts[doc["run_start"]]
        self.runs[raw_uid].stopped.add(kind)
        return raw_uid


def _extend(table: dict[str, list], columns: dict) -> None:
    for key, values in columns.items():
        table.setdefault(key, []).extend(list(values))


def _json(text) -> dict:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def collect(documents) -> RunCollector:
    """A :class:`RunCollector` fed with ``documents``, an iterable of (name, doc) (e.g. a stored raw run's
    documents followed by its analysis and texture runs')."""
    collector = RunCollector()
    for name, doc in documents:
        collector(name, doc)
    return collector
