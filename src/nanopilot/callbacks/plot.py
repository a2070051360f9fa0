"""LiveMapPlot: matplotlib maps of a run's estimates, redrawn at a bounded rate, saved as PNG.

Subscribe it to the LiveMaps it draws (``analysis.maps.subscribe(plot)``): it redraws from them when analysis or
texture event pages arrive (once the maps hold them), at most once per ``min_interval`` seconds, and always at stop.
Subscribed to the RunEngine too, it names the plan and the sample in the title. Works headless (Agg); with
``save="maps.png"`` the final figure of each run is written there (``{uid}`` in the name is replaced by the first 8
characters of the raw run's uid). The panels follow :mod:`nanopilot.pictures.style`: diverging maps centred on
the reference, a background no colour map uses, categorical texture labels and frame statuses, equal aspect, units.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.patches import Patch

from ..pictures.style import FIELDS, field_panel, map_axes, texture_panel
from .live_maps import LiveMaps, RunMap, status_value

logger = logging.getLogger(__name__)

#: Panels a LiveMapPlot can draw: the estimates of :data:`nanopilot.pictures.style.FIELDS`, the frame status and
#: the texture labels.
PANELS = (*FIELDS, "status", "texture")
RAW_STARTS_KEPT = 4
#: Frame statuses (value of :func:`status_value`, legend, colour), drawn as categories.
STATUSES = ((1.0, "ok", "#1a9850"), (0.5, "warning (values kept)", "#fdae61"), (0.0, "flagged (no values)", "#d73027"))


class LiveMapPlot:
    """Maps of ``fields`` of the current run of ``maps``.

    Parameters
    ----------
    maps : the LiveMaps of the analysis.
    fields : panels to draw, from :data:`PANELS` (fields a run lacks are skipped).
    min_interval : seconds between redraws while a run is going (drawing is synchronous with Agg).
    save : PNG path written at each run's stop (None: nothing written).
    """

    def __init__(self, maps: LiveMaps, fields=("strain", "omega", "chi", "thickness", "strain_std", "status"),
                 *, min_interval: float = 2.0, save: str | Path | None = None):
        unknown = [f for f in fields if f not in PANELS]
        if unknown:
            raise ValueError(f"unknown map fields {unknown}; choose from {sorted(PANELS)}")
        self.maps, self.fields, self.min_interval = maps, tuple(fields), float(min_interval)
        self.save = save
        self.figure = None
        self._raw_uid = None
        self._start: dict = {}  # the analysis run's start document
        self._derived: set[str] = set()  # uids of the analysis and texture runs seen
        self._raw_starts: dict[str, dict] = {}  # raw uid -> plan name, sample, scan id (when subscribed to the RE)
        self._last = 0.0
        self.draws = 0

    def __call__(self, name: str, doc: dict) -> None:
        try:
            if name == "start" and "raw_uid" not in doc:  # a raw run's start, from the RunEngine
                keep = ("plan_name", "sample", "scan_id", "time")
                self._raw_starts[doc["uid"]] = {k: doc[k] for k in keep if k in doc}
                while len(self._raw_starts) > RAW_STARTS_KEPT:  # the analysis may lag a run or two behind
                    self._raw_starts.pop(next(iter(self._raw_starts)))
            elif name == "start":
                if doc["raw_uid"] != self._raw_uid:  # an analysis run (a texture run follows its own)
                    self._raw_uid, self._start, self._last = doc["raw_uid"], doc, 0.0
                self._derived.add(doc["uid"])
            elif name == "event_page" and time.monotonic() - self._last >= self.min_interval:
                self.draw()
            elif name == "stop" and doc.get("run_start") in self._derived:
                self.draw()
                if self.save:
                    self.savefig(str(self.save).replace("{uid}", (self._raw_uid or "run")[:8]))
        except Exception:  # plotting never disturbs the analysis
            logger.exception("live map plot failed on %s", name)

    def _run(self) -> RunMap | None:
        if self._raw_uid and self._raw_uid in self.maps:
            return self.maps[self._raw_uid]
        return self.maps.current

    def _title(self, run: RunMap, n: int) -> str:
        """The plan, the sample, the scan, the start time and the points so far."""
        raw = self._raw_starts.get(run.uid, {})
        plan = raw.get("plan_name", "scan")
        sample = raw.get("sample") or "(not named)"
        scan = raw.get("scan_id", self._start.get("raw_scan_id"))
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(raw.get("time", self._start.get("time", 0))))
        return (f"{plan}: sample {sample}, {f'scan {scan} ' if scan is not None else ''}({run.uid[:8]}), {when}, "
                f"{n} points analysed")

    def draw(self) -> None:
        """Redraw every panel from the current LiveMaps state: one axes per panel, none left empty."""
        import matplotlib.pyplot as plt

        run = self._run()
        points = run.scattered() if run is not None else {"seq_num": ()}
        if not len(points["seq_num"]):
            return
        fields = [f for f in self.fields if f == "status" or np.isfinite(points.get(f, [np.nan])).any()]
        cols = min(3, len(fields))
        rows = -(-len(fields) // cols)
        if self.figure is None:
            self.figure = plt.figure(figsize=(4.6 * cols, 3.9 * rows), layout="constrained")
        self.figure.clear()
        self.figure.set_size_inches(4.6 * cols, 3.9 * rows)
        axes = self.figure.subplots(rows, cols, squeeze=False).ravel()
        for ax in axes[len(fields):]:
            self.figure.delaxes(ax)
        grid = self._grid(run)
        for ax, field in zip(axes, fields):
            self._panel(ax, run, points, field, grid)
        self.figure.suptitle(self._title(run, len(points["seq_num"])))
        self.figure.canvas.draw_idle()
        self._last = time.monotonic()
        self.draws += 1

    def _motors(self, points: dict) -> list[str]:
        """The motors (slowest first) of the analysis start document that the points carry."""
        return [m for m in self._start.get("motors", []) if m in points]

    @staticmethod
    def _grid(run: RunMap):
        """The (left, right, bottom, top) extent (um) of a 2-D grid scan's pixels, centred on its points; None for
        other paths."""
        try:
            slow, fast = run.axes()
        except ValueError:  # not a grid scan over two motors
            return None
        dy, dx = ((a[-1] - a[0]) / max(len(a) - 1, 1) / 2 or 0.5 for a in (slow, fast))
        return fast[0] - dx, fast[-1] + dx, slow[0] - dy, slow[-1] + dy

    def _panel(self, ax, run: RunMap, points: dict, field: str, extent) -> None:
        motors = self._motors(points)
        if len(motors) < 2:  # a line scan or a time series: the values along the scan
            line_panel(ax, points, field, motors)
            return
        xy = dict(motors=(motors[-1], motors[0]))
        if extent is not None:
            values, xy["extent"] = run.gridded(field), extent
        else:
            values = status_value(points["status"]) if field == "status" else points[field]
            xy.update(x=points[motors[-1]], y=points[motors[0]])
        if field == "texture":
            texture_panel(ax, np.where(np.isfinite(values), values, -1), title="texture labels", **xy)
        elif field == "status":
            status_panel(ax, values, status_value(points["status"]), **xy)
        else:
            field_panel(ax, field, values, **xy)

    def savefig(self, path: str | Path) -> Path:
        """Write the current figure as PNG (draws first if needed)."""
        if self.figure is None:
            self.draw()
        if self.figure is None:
            raise ValueError("nothing to plot yet: no analysed points")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.figure.savefig(path, dpi=110)
        return path


def status_panel(ax, values, every, *, x=None, y=None, extent=None, motors=("x", "y")) -> None:
    """The frames' status ``values`` (:func:`status_value`, a grid or per point) as categories (:data:`STATUSES`),
    with the number of frames of each (in ``every``, the status value of every frame) in the legend."""
    cmap = ListedColormap([colour for _, _, colour in reversed(STATUSES)])
    norm = BoundaryNorm([-0.25, 0.25, 0.75, 1.25], cmap.N)
    if extent is not None:
        ax.imshow(values, origin="lower", extent=extent, cmap=cmap, norm=norm, interpolation="nearest")
    else:
        ax.scatter(x, y, c=values, cmap=cmap, norm=norm, s=14, marker="s", linewidths=0)
    map_axes(ax, motors)
    ax.legend(handles=[Patch(color=colour, label=f"{label} ({int(np.sum(every == value))})")
                       for value, label, colour in STATUSES],
              loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize="x-small")
    ax.set_title("frame status")


def line_panel(ax, points: dict, field: str, motors: list[str]) -> None:
    """``field`` along a scan over one motor (or none: against the frame number)."""
    x = points[motors[0]] if motors else points["seq_num"]
    if field == "status":
        values, label = status_value(points["status"]), "status (1 ok, 0.5 warning, 0 flagged)"
    elif field == "texture":
        values, label = points[field], "texture label"
    else:
        values, label = points[field] * FIELDS[field][3], FIELDS[field][0]
    ax.plot(x, values, "o", ms=3)
    ax.set_xlabel(f"{motors[0]} (µm)" if motors else "frame")
    ax.set_ylabel(label)
    ax.set_title(label.split(" (")[0])
