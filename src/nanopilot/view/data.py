"""What the page shows, read from the catalogue: the raw runs, their analysis runs, decisions and maps.

Everything here reads stored runs only (the analysis' hot path never waits for it), so the page works the same
for a scan being written and for runs stored long ago.
"""

from __future__ import annotations

import io
import math
import threading
from collections import Counter

import numpy as np

from ..runs import derived_runs, raw_runs

ANALYSIS_PLAN = "nanopilot_analysis"
DECISION_FIELDS = ("step", "action", "reason", "value", "approved", "points")
_DRAWING = threading.Lock()  # pyplot's figure manager is shared by the server's threads


def _table(run, stream: str, columns) -> dict[str, np.ndarray]:
    """The scalar ``columns`` of ``run``'s event ``stream`` that it holds ({} without the stream), in one request where
    the stream keeps its scalars in one table (bluesky-tiled-plugins' ``internal`` table), else one per column."""
    if stream not in run:
        return {}
    node = run[stream]
    base = getattr(node, "base", None)
    if base is not None and "internal" in base:
        table = base["internal"]
        wanted = [c for c in columns if c in table.columns]
        frame = table.read(columns=wanted) if wanted else {}
        return {c: np.asarray(frame[c]) for c in wanted}
    return {c: np.asarray(node[c].read()) for c in columns if c in node}


def _json_number(value):
    value = float(value)
    return value if math.isfinite(value) else None


def analysis_of(catalog, raw_uid: str):
    """The newest analysis run stored for raw run ``raw_uid``, or None."""
    found = [run for run in derived_runs(catalog, raw_uid).values() if run.start.get("plan_name") == ANALYSIS_PLAN]
    return max(found, key=lambda run: run.start.get("time", 0)) if found else None


def frames_analysed(analysis) -> int:
    """Events in the analysis run's primary stream so far (0 before its first page is written)."""
    if analysis is None:
        return 0
    return len(_table(analysis, "primary", ["raw_seq_num"]).get("raw_seq_num", ()))


def run_summary(catalog, raw) -> dict:
    """One row of the runs table: scan id, plan, uid, start time (s since the epoch), exit status ("running" before
    the stop document), the analysis run's uid and its frames analysed so far."""
    start, stop = raw.start, raw.metadata.get("stop")  # no stop key while the run is written
    analysis = analysis_of(catalog, start["uid"])
    return {"uid": start["uid"], "scan_id": start.get("scan_id"), "plan": start.get("plan_name", "?"),
            "time": start.get("time"), "status": stop["exit_status"] if stop else "running",
            "analysis_uid": analysis.start["uid"] if analysis is not None else None,
            "frames_analysed": frames_analysed(analysis)}


def list_runs(catalog, limit: int = 10) -> list[dict]:
    """:func:`run_summary` of the ``limit`` newest raw runs, newest first."""
    return [run_summary(catalog, raw) for raw in raw_runs(catalog).values().head(limit)]


def status_counts(analysis) -> dict[str, int]:
    """Frames analysed per status (ok, warnings, failures) in the analysis run so far."""
    status = _table(analysis, "primary", ["status"]).get("status", ()) if analysis is not None else ()
    return dict(Counter(str(s) for s in status))


def decisions(raw) -> list[dict]:
    """The raw run's ``decisions`` stream as rows of :data:`DECISION_FIELDS` ([] for a plan that decides nothing)."""
    table = _table(raw, "decisions", [f"decision_{f}" for f in DECISION_FIELDS])
    columns = {f: table[f"decision_{f}"] for f in DECISION_FIELDS if f"decision_{f}" in table}
    n = min((len(c) for c in columns.values()), default=0)
    rows = []
    for i in range(n):
        row = {f: c[i].item() if hasattr(c[i], "item") else c[i] for f, c in columns.items()}
        if "value" in row:
            row["value"] = _json_number(row["value"])
        rows.append(row)
    return rows


def maps_of(analysis):
    """A :class:`~nanopilot.callbacks.live_maps.LiveMaps` holding the stored analysis run's points (the same
    object the live analysis fills), for the plotting code."""
    from ..callbacks.live_maps import LiveMaps
    from ..estimates import PARAMETERS, Estimates

    start = analysis.start
    maps = LiveMaps()
    run = maps.begin_run(start["raw_uid"], start.get("motors", []), start.get("shape"), start.get("extents"),
                         start.get("snaking"))
    names = [p + suffix for p in PARAMETERS for suffix in ("", "_std")] + ["background", "background_std"]
    table = _table(analysis, "primary", ["raw_seq_num", "status", *names, *run.motors])
    if not table:
        return maps, run
    n = len(table["raw_seq_num"])
    nan = np.full(n, np.nan)

    def field(name):
        return table[name][:n].astype(float) if name in table else nan

    estimates = Estimates(**{name: field(name) for name in names}, score=nan,
                          status=table["status"][:n].astype(str).astype(object))
    positions = np.column_stack([field(m) for m in run.motors]) if run.motors else np.zeros((n, 0))
    maps.add(run.uid, table["raw_seq_num"][:n], positions, estimates)
    return maps, run


def picture(analysis) -> bytes:
    """PNG of the stored analysis run's maps: one call, so the figure code can be swapped for another."""
    from ..callbacks.plot import LiveMapPlot

    maps, run = maps_of(analysis)
    if not len(run):
        raise ValueError(f"analysis run {analysis.start['uid'][:8]} holds no analysed points yet")
    with _DRAWING:
        import matplotlib.pyplot as plt

        plot = LiveMapPlot(maps, min_interval=0.0)
        plot.draw()
        try:
            buffer = io.BytesIO()
            plot.figure.savefig(buffer, format="png", dpi=80)
        finally:
            plt.close(plot.figure)
    return buffer.getvalue()
