"""LivePictures: each plan's picture, redrawn while its documents arrive and saved when its analysis has ended.

Off the analysis' hot path: the callback only files the documents' scalar columns (:class:`RunCollector`); a
thread of its own redraws, at most once per ``min_interval`` seconds, on the Agg canvas. The final picture is
drawn and saved by the callback itself, once per run, when the run's analysis (and texture) run has stopped.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from matplotlib.figure import Figure

from .growth import growth_figure
from .record import ANALYSIS, TEXTURE, PlanRun, RunCollector
from .steered import map_figure, steered_map_figure
from .temperature import temperature_figure

logger = logging.getLogger(__name__)

#: plan_name -> the function that draws its picture (any other run: :func:`map_figure`).
PICTURES = {"steered_map": steered_map_figure, "grow_until": growth_figure,
            "find_texture_temperature": temperature_figure}


def plan_figure(run: PlanRun) -> Figure:
    """The picture of ``run``'s plan (:data:`PICTURES`), or :func:`map_figure` for other scans."""
    return PICTURES.get(run.plan_name, map_figure)(run)


class LivePictures:
    """Callback that keeps each plan's picture up to date, and saves it when the run's analysis has ended.

    Subscribe it to the RunEngine (raw runs, with the decisions stream), the analysis and the texture callback
    (``nanopilot.session.setup(..., plot=...)`` does). Its own thread redraws a run whose documents changed, at
    most once per ``min_interval`` s; when the run's analysis and texture runs have stopped (the analysis run alone
    when ``texture=False``) the callback draws the final picture and writes ``save`` (``{uid}`` replaced by the raw
    run's first 8 characters) before it returns; without ``save`` the thread draws it.

    Attributes
    ----------
    figures : raw uid -> the latest Figure drawn (of the runs the collector keeps); draws : redraws so far.
    """

    def __init__(self, save: str | Path | None = None, *, min_interval: float = 5.0, texture: bool = True):
        self.save, self.min_interval, self.texture = save, float(min_interval), texture
        self.collector = RunCollector(on_change=self._changed)
        self.figures: dict[str, Figure] = {}
        self.draws = 0
        self._dirty: set[str] = set()
        self._ended: set[str] = set()
        self._closed = False
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def __call__(self, name: str, doc: dict) -> None:
        try:
            self.collector(name, doc)
        except Exception:  # pictures never disturb the analysis
            logger.exception("live pictures could not file a %s document", name)

    def _changed(self, raw_uid: str, name: str) -> None:
        ended = {ANALYSIS, TEXTURE} if self.texture else {ANALYSIS}
        run = self.collector.runs.get(raw_uid)
        if name == "stop" and run is not None and ended <= run.stopped and self.save:
            with self._wake:
                self._ended.add(raw_uid)
                self._dirty.discard(raw_uid)
            self.draw(raw_uid, save=True)  # once per run, so that the file is there when the analysis has ended
            return
        with self._wake:
            if raw_uid in self._ended:
                return
            self._dirty.add(raw_uid)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="nanopilot-pictures", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._closed, timeout=min(self.min_interval, threading.TIMEOUT_MAX))
                if self._closed:
                    return
                if not self._dirty:
                    continue
                uid = self._dirty.pop()
            try:
                figure = plan_figure(self.collector.snapshot(uid))
            except Exception:
                logger.exception("could not draw the picture of run %s", uid[:8])
                continue
            with self._wake:
                if uid not in self._ended:  # the final picture, drawn meanwhile, stays
                    self.figures[uid] = figure
                    self.draws += 1

    def draw(self, raw_uid: str | None = None, *, save: bool = False) -> Figure | None:
        """Draw the picture of raw run ``raw_uid`` (default: the latest) now; with ``save``, write it too (a failure
        is logged: pictures never disturb the analysis)."""
        raw_uid = raw_uid or self.collector.latest
        if raw_uid is None:
            return None
        try:
            figure = plan_figure(self.collector.snapshot(raw_uid))
            if save and self.save:
                path = Path(str(self.save).replace("{uid}", raw_uid[:8]))
                path.parent.mkdir(parents=True, exist_ok=True)
                figure.savefig(path, dpi=100)
        except Exception:
            logger.exception("could not draw or save the picture of run %s", raw_uid[:8])
            return None
        with self._wake:
            self.figures = {uid: f for uid, f in self.figures.items() if uid in self.collector.runs}
            self.figures[raw_uid] = figure
            self.draws += 1
        return figure

    def close(self, timeout: float = 10.0) -> None:
        """Stop the drawing thread, then draw the runs changed since its last redraw (the pictures of ended runs
        are saved already)."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._wake:
            pending, self._dirty = set(self._dirty), set()
        for uid in pending:
            self.draw(uid)
