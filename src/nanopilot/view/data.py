"""What the page shows, read from the catalogue: the raw runs, their analysis and texture runs, decisions, pictures.

Everything here reads stored runs only (the analysis' hot path never waits for it), so the page works the same
for a scan being written and for runs stored long ago. Only scalar columns are read, never the frames.
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections import Counter

import numpy as np

from ..pictures.record import ANALYSIS, RAW, TEXTURE, PlanRun
from ..pictures.record import _json as parse_evidence
from ..plans.common import DECISION_STREAM
from ..runs import derived_runs

ANALYSIS_PLAN = "nanopilot_analysis"
TEXTURE_PLAN = "nanopilot_texture"
DECISION_FIELDS = ("step", "action", "reason", "value", "approved", "points")
_DRAWING = threading.Lock()  # one picture drawn at a time: the server's threads never take more than one core


def _table(run, stream: str, columns=None) -> dict[str, np.ndarray]:
    """The scalar ``columns`` (None: all) of ``run``'s event ``stream`` that it holds ({} without the run or the
    stream), in one request where the stream keeps its scalars in one table (bluesky-tiled-plugins' ``internal``
    table, which never holds a frame), else one per column."""
    if run is None or stream not in run:
        return {}
    node = run[stream]
    base = getattr(node, "base", None)
    if base is not None and "internal" in base:
        table = base["internal"]
        wanted = list(table.columns) if columns is None else [c for c in columns if c in table.columns]
        frame = table.read(columns=wanted) if wanted else {}
        return {c: np.asarray(frame[c]) for c in wanted}
    return {c: np.asarray(node[c].read()) for c in (columns or ()) if c in node}


def _json_number(value):
    value = float(value)
    return value if math.isfinite(value) else None


def derived_of(catalog, raw_uid: str) -> tuple:
    """(analysis, texture): the newest analysis run stored for raw run ``raw_uid`` and the texture run of that
    analysis (None where not stored), in one search."""
    found = sorted(derived_runs(catalog, raw_uid).values(), key=lambda run: run.start.get("time", 0))
    analysis = next((r for r in reversed(found) if r.start.get("plan_name") == ANALYSIS_PLAN), None)
    texture = next((r for r in reversed(found) if r.start.get("plan_name") == TEXTURE_PLAN and analysis is not None
                    and r.start.get("analysis_uid") == analysis.start["uid"]), None)
    return analysis, texture


def _stopped(run) -> bool:
    return run is not None and bool(run.metadata.get("stop"))


def _long_ago(run, seconds: float = 60.0) -> bool:
    """Whether ``run`` stopped more than ``seconds`` ago (an analysis without texture labels is finished then)."""
    return time.time() - run.metadata["stop"].get("time", time.time()) > seconds


def frames_analysed(analysis) -> int:
    """Events in the analysis run's primary stream so far (0 before its first page is written; once the run has
    stopped, from its stop document)."""
    if _stopped(analysis):
        return int(analysis.metadata["stop"].get("num_events", {}).get("primary", 0))
    return len(_table(analysis, "primary", ["raw_seq_num"]).get("raw_seq_num", ()))


def run_summary(catalog, raw, derived: tuple | None = None) -> dict:
    """One row of the runs table: scan id, plan, sample, uid, start time (s since the epoch), exit status
    ("running" before the stop document), the analysis run's uid and its frames analysed so far, whether the row is
    settled (raw and analysis runs stopped: it no longer changes) and whether the run is finished (its texture run
    stopped too, or none a minute after the analysis' stop: nothing about it changes any more). ``derived``:
    :func:`derived_of` when known."""
    start, stop = raw.start, raw.metadata.get("stop")  # no stop key while the run is written
    analysis, texture = derived or derived_of(catalog, start["uid"])
    return {"uid": start["uid"], "scan_id": start.get("scan_id"), "plan": start.get("plan_name", "?"),
            "sample": start.get("sample"), "time": start.get("time"),
            "status": stop["exit_status"] if stop else "running",
            "analysis_uid": analysis.start["uid"] if analysis is not None else None,
            "frames_analysed": frames_analysed(analysis),
            "settled": bool(stop) and _stopped(analysis),
            "finished": bool(stop) and _stopped(analysis) and (_stopped(texture) or _long_ago(analysis))}


def run_detail(catalog, raw) -> dict:
    """:func:`run_summary` with the run's decisions, the analysis' status counts and whether its texture run (labels,
    written when the analysis ends) is stored."""
    derived = derived_of(catalog, raw.start["uid"])
    return {**run_summary(catalog, raw, derived), "decisions": decisions(raw),
            "status_counts": status_counts(derived[0]), "texture_stored": _stopped(derived[1])}


def status_counts(analysis) -> dict[str, int]:
    """Frames analysed per status (ok, warnings, failures) in the analysis run so far."""
    return dict(Counter(str(s) for s in _table(analysis, "primary", ["status"]).get("status", ())))


def _rows(table: dict[str, np.ndarray], prefix: str) -> list[dict]:
    """The rows of the columns named ``prefix + field`` as dicts of plain Python values keyed by ``field``."""
    columns = {k[len(prefix):]: v for k, v in table.items() if k.startswith(prefix) and not k.startswith("ts_")}
    n = min((len(c) for c in columns.values()), default=0)
    return [{f: c[i].item() if hasattr(c[i], "item") else c[i] for f, c in columns.items()} for i in range(n)]


def decisions(raw) -> list[dict]:
    """The raw run's ``decisions`` stream as rows of :data:`DECISION_FIELDS` ([] for a plan that decides nothing),
    JSON-ready (a NaN value is None)."""
    rows = _rows(_table(raw, DECISION_STREAM, [f"decision_{f}" for f in DECISION_FIELDS]), "decision_")
    for row in rows:
        if "value" in row:
            row["value"] = _json_number(row["value"])
    return rows


def plan_run(catalog, raw) -> PlanRun:
    """The :class:`~nanopilot.pictures.PlanRun` of stored raw run ``raw``, as :class:`~nanopilot.pictures.
    RunCollector` gathers it from the live documents: the raw run's start, frame times and positions (not the
    frames), its decisions stream (every column, the evidence parsed), the newest analysis run's estimates and the
    labels and summary of that analysis' texture run, so far."""
    run = PlanRun(raw.start["uid"])
    run.start = dict(raw.start)
    run.stopped = {RAW} if raw.metadata.get("stop") else set()
    table = _table(raw, "primary", _frame_times(raw))
    stamps = [v for k, v in table.items() if k.startswith("ts_")]
    n = len(table.get("seq_num", ()))
    run.frames["seq_num"] = table["seq_num"].astype(int).tolist() if n else []
    run.frames["time"] = np.max(stamps, axis=0).tolist() if stamps else [math.nan] * n
    for row in _rows(_table(raw, DECISION_STREAM), "decision_"):
        row["evidence"] = parse_evidence(row.get("evidence", "{}"))
        run.decisions.append(row)
    analysis, texture = derived_of(catalog, run.uid)
    estimates = _table(analysis, "primary")
    run.estimates = {k: v.tolist() for k, v in estimates.items() if k not in ("seq_num", "time")
                     and not k.startswith("ts_")}
    if "status" in run.estimates:
        run.estimates["status"] = [str(s) for s in run.estimates["status"]]
    for stream in ("labels", "primary"):  # the labels while the run went on, then the final ones: later rows win
        labels = _table(texture, stream, ["raw_seq_num", "texture"])
        run.labels.update(zip(labels.get("raw_seq_num", np.zeros(0)).astype(int).tolist(),
                              labels.get("texture", np.zeros(0)).astype(int).tolist()))
    summary = _table(texture, "summary")
    run.texture_summary = {k: v[-1].item() if hasattr(v[-1], "item") else v[-1] for k, v in summary.items()
                           if len(v) and k not in ("seq_num", "time") and not k.startswith("ts_")}
    for kind, stored in ((ANALYSIS, analysis), (TEXTURE, texture)):
        if stored is not None and stored.metadata.get("stop"):
            run.stopped.add(kind)
    return run


def _frame_times(raw) -> list[str]:
    """The columns of the raw primary stream that give each frame's number and time: ``seq_num`` and the reading
    timestamps of its scalar keys (the frames' own keys are not in the table)."""
    node = raw["primary"] if "primary" in raw else None
    base = getattr(node, "base", None)
    if base is None or "internal" not in base:
        return ["seq_num"]
    columns = base["internal"].columns
    return ["seq_num"] + [f"ts_{k}" for k in columns if f"ts_{k}" in columns]


def state(run: PlanRun) -> tuple:
    """What a picture of ``run`` is drawn from, in a few numbers: equal states draw equal pictures."""
    return (run.uid, len(run.estimates.get("raw_seq_num", ())), len(run.decisions), len(run.labels),
            tuple(sorted(run.stopped)))


def picture(run: PlanRun) -> bytes:
    """PNG of the plan's picture (:func:`nanopilot.pictures.plan_figure`) of ``run``."""
    from ..pictures import plan_figure

    if not run.estimates.get("raw_seq_num"):
        raise ValueError(f"run {run.uid[:8]} holds no analysed points yet")
    with _DRAWING:
        buffer = io.BytesIO()
        plan_figure(run).savefig(buffer, format="png", dpi=72)
    return buffer.getvalue()
