"""LiveMapPlot: matplotlib maps of a run's estimates, redrawn at a bounded rate, saved as PNG.

Subscribe it to the LiveMaps it draws (``analysis.maps.subscribe(plot)``): it redraws from them when analysis or
texture event pages arrive (once the maps hold them), at most once per ``min_interval`` seconds, and always at stop.
Works headless (Agg); with ``save="maps.png"`` the final figure of each run is written there
(``{uid}`` in the name is replaced by the first 8 characters of the raw run's uid).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from .live_maps import LiveMaps, RunMap, status_value

logger = logging.getLogger(__name__)

PANELS = {  # field -> (title, colour map)
    "strain": ("strain", "RdBu_r"),
    "omega": ("omega (deg)", "PuOr_r"),
    "chi": ("chi (deg)", "PiYG"),
    "thickness": ("thickness (A)", "viridis"),
    "strain_std": ("strain uncertainty", "magma"),
    "status": ("frame ok (1) / warning (0.5) / flagged (0)", "gray"),
    "texture": ("texture label", "tab10"),
}


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
        self._last = 0.0
        self.draws = 0

    def __call__(self, name: str, doc: dict) -> None:
        try:
            if name == "start":
                self._raw_uid, self._last = doc.get("raw_uid"), 0.0
            elif name == "event_page" and time.monotonic() - self._last >= self.min_interval:
                self.draw()
            elif name == "stop":
                self.draw()
                if self.save:
                    self.savefig(str(self.save).replace("{uid}", (self._raw_uid or "run")[:8]))
        except Exception:  # plotting never disturbs the analysis
            logger.exception("live map plot failed on %s", name)

    def _run(self) -> RunMap | None:
        if self._raw_uid and self._raw_uid in self.maps:
            return self.maps[self._raw_uid]
        return self.maps.current

    def draw(self) -> None:
        """Redraw every panel from the current LiveMaps state."""
        import matplotlib.pyplot as plt

        run = self._run()
        if run is None or not len(run):
            return
        points = run.scattered()
        fields = [f for f in self.fields if f == "status" or np.isfinite(points.get(f, [np.nan])).any()]
        if self.figure is None or len(self.figure.axes) < len(fields):
            if self.figure is not None:
                plt.close(self.figure)
            cols = min(3, len(fields))
            rows = -(-len(fields) // cols)
            self.figure, _ = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
        for ax in self.figure.axes:
            ax.clear()
            ax.set_visible(False)
        for ax, field in zip(self.figure.axes, fields):
            ax.set_visible(True)
            self._panel(ax, run, points, field)
        self.figure.suptitle(f"run {run.uid[:8]}: {len(run)} points analysed")
        self.figure.tight_layout()
        self.figure.canvas.draw_idle()
        self._last = time.monotonic()
        self.draws += 1

    def _panel(self, ax, run: RunMap, points: dict, field: str) -> None:
        title, cmap = PANELS[field]
        values = status_value(points["status"]) if field == "status" else points[field].astype(float)
        motors = run.motors
        if run.shape and len(run.shape) == 2 and run.extents:
            grid = run.gridded(field)
            (y0, y1), (x0, x1) = run.extents
            dy, dx = ((hi - lo) / max(n - 1, 1) / 2 for (lo, hi), n in zip(run.extents, run.shape))
            image = ax.imshow(grid, origin="lower", cmap=cmap, aspect="auto", interpolation="nearest",
                              extent=(x0 - dx, x1 + dx, y0 - dy, y1 + dy))  # pixel centres on the scan points
        elif len(motors) >= 2:
            image = ax.scatter(points[motors[-1]], points[motors[0]], c=values, cmap=cmap, s=12)
        else:
            image = ax.scatter(np.arange(len(values)), values, c=values, cmap=cmap, s=8)
        if len(motors) >= 2:
            ax.set_xlabel(f"{motors[-1]} (um)")
            ax.set_ylabel(f"{motors[0]} (um)")
        ax.set_title(title)
        self.figure.colorbar(image, ax=ax, shrink=0.85)

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
