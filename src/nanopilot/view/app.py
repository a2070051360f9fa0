"""The ASGI app of ``nanopilot view``: one shipped HTML page and the JSON and PNG it polls.

    GET /                         the page (``page.html``, shipped with the package; no file from the internet)
    GET /api/runs?limit=10        the newest raw runs (:data:`SUMMARY` of :func:`nanopilot.view.data.run_summary`)
    GET /api/runs/{uid}           one run (:func:`nanopilot.view.data.run_detail`): its row, decisions, the
                                  analysis' status counts, whether its texture run is stored
    GET /api/runs/{uid}/picture.png  its plan's picture (nanopilot.pictures.plan_figure), drawn from the stored
                                  raw, analysis and texture runs (404 until the first points are stored)

A run's row is read until its raw and analysis runs have stopped; a finished run (its texture run stopped too) is
read once more and its picture drawn once.
With an ``api_key``, every request must carry it (header ``X-API-Key`` or query ``?api_key=``), else 401.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from importlib.resources import files

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..runs import raw_runs
from . import data

logger = logging.getLogger(__name__)
MAX_LISTED = 50
#: The columns of the runs table (:func:`nanopilot.view.data.run_summary`).
SUMMARY = ("uid", "scan_id", "plan", "sample", "time", "status", "analysis_uid", "frames_analysed")
PICTURES_KEPT = 8


class _RequireKey(BaseHTTPMiddleware):
    def __init__(self, app, key: str):
        super().__init__(app)
        self.key = key

    async def dispatch(self, request, call_next):
        given = request.headers.get("x-api-key") or request.query_params.get("api_key") or ""
        if not secrets.compare_digest(given.encode(), self.key.encode()):
            return PlainTextResponse("missing or wrong API key (header X-API-Key or ?api_key=)", status_code=401)
        return await call_next(request)


class _Unavailable(BaseHTTPMiddleware):
    """A request the catalogue could not answer (e.g. an embedded catalogue's SQLite "database is locked" while a
    scan writes) gets 503 and one line in the log, not a traceback: the page asks again at its next refresh."""

    async def dispatch(self, request, call_next):
        try:
            return await call_next(request)
        except Exception as err:  # noqa: BLE001 - any failure to read the catalogue
            logger.info("the page's %s was not answered: %s: %s", request.url.path, type(err).__name__,
                        str(err).splitlines()[0] if str(err) else "")
            return PlainTextResponse(f"the catalogue did not answer ({type(err).__name__}); ask again",
                                     status_code=503)


def build_app(catalog, *, api_key: str | None = None, picture=data.picture, min_interval: float = 2.0,
              duty: float = 0.1) -> Starlette:
    """The app serving ``catalog``'s runs; ``picture(plan_run) -> PNG bytes`` draws a run's picture from its
    :class:`~nanopilot.pictures.PlanRun` (:func:`nanopilot.view.data.plan_run`). A scan going on is read and drawn
    again at most once per ``min_interval`` s, and then only after a pause that keeps reading and drawing to a
    ``duty`` fraction of the time (a request for a newer state waits, then gets the newest), so that the page takes
    a bounded share of the machine whatever the size of the run; once its raw run has stopped, each new state at
    once."""
    page = files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    def index(request):
        return HTMLResponse(page)

    finished: OrderedDict[str, dict] = OrderedDict()  # raw uid -> run_detail of a finished run (it never changes)

    def detail(raw) -> dict:
        uid = raw.start["uid"]
        if uid in finished:
            return finished[uid]
        found = data.run_detail(catalog, raw)
        if found["finished"]:
            finished[uid] = found
            while len(finished) > MAX_LISTED:
                finished.popitem(last=False)
        return found

    settled: OrderedDict[str, dict] = OrderedDict()  # raw uid -> the row of a run whose row no longer changes

    def keep_row(uid: str, row: dict) -> None:
        settled[uid] = row
        while len(settled) > MAX_LISTED:
            settled.popitem(last=False)

    def runs(request):
        try:
            limit = min(max(int(request.query_params.get("limit", 10)), 1), MAX_LISTED)
        except ValueError:
            return PlainTextResponse("limit must be an integer", status_code=400)
        rows = []
        for raw in raw_runs(catalog).values().head(limit):
            uid = raw.start["uid"]
            row = finished.get(uid) or settled.get(uid) or data.run_summary(catalog, raw)
            if row["settled"] and uid not in settled:
                keep_row(uid, row)
            rows.append({k: row[k] for k in SUMMARY})
        return JSONResponse(rows)

    def _raw(request):
        uid = request.path_params["uid"]
        found = raw_runs(catalog).search(_uid_is(uid))
        return found.values().first() if len(found) else None

    def run(request):
        raw = _raw(request)
        if raw is None:
            return PlainTextResponse("no such raw run", status_code=404)
        return JSONResponse(detail(raw))

    lock = threading.Lock()  # held while a run is read and drawn: one at a time, each state drawn once
    drawn: OrderedDict[tuple, bytes] = OrderedDict()  # state of a run (data.state) -> PNG, newest last
    next_draw: dict[str, float] = {}  # raw uid -> time.monotonic() before which it is not read again
    final: OrderedDict[str, bytes] = OrderedDict()  # raw uid of a finished run -> its picture

    def keep(cache: OrderedDict, key, png: bytes) -> bytes:
        cache[key] = png
        while len(cache) > PICTURES_KEPT:
            cache.popitem(last=False)
        return png

    def picture_png(request):
        raw = _raw(request)
        if raw is None:
            return PlainTextResponse("no such raw run", status_code=404)
        uid = raw.start["uid"]
        if not raw.metadata.get("stop"):  # a scan going on (its last few states, once it stopped, at once)
            with lock:
                wait = next_draw.get(uid, -math.inf) - time.monotonic()
            time.sleep(max(0.0, wait))  # in the server's thread pool: the other requests go on
        with lock:
            if uid in final:
                return _png(final[uid])
            began = time.monotonic()
            run = data.plan_run(catalog, raw)  # the newest state
            if not run.estimates.get("raw_seq_num"):
                return PlainTextResponse("no analysed points stored for this run yet", status_code=404)
            key = data.state(run)
            png = drawn[key] if key in drawn else keep(drawn, key, picture(run))
            took = time.monotonic() - began
            next_draw[uid] = time.monotonic() + max(min_interval - took, took * (1 / duty - 1))
            if uid in finished:  # drawn from the finished run: kept by uid, the run is not read again
                keep(final, uid, png)
        return _png(png)

    middleware = [Middleware(_RequireKey, key=api_key)] if api_key else []
    middleware.append(Middleware(_Unavailable))
    return Starlette(routes=[Route("/", index), Route("/api/runs", runs), Route("/api/runs/{uid}", run),
                             Route("/api/runs/{uid}/picture.png", picture_png)], middleware=middleware)


def _png(png: bytes) -> Response:
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


def serve_in_thread(app, *, host: str = "127.0.0.1", port: int = 8765, timeout: float = 30.0):
    """Serve ``app`` with uvicorn from a daemon thread (e.g. beside a scan in the same process); returns the
    ``uvicorn.Server`` once it listens (``server.should_exit = True`` stops it). RuntimeError if it does not start
    within ``timeout`` s (e.g. the port is taken)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="nanopilot-view", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the page's server did not start on {host}:{port} (is the port taken?)")
        time.sleep(0.05)
    return server


def _uid_is(uid: str):
    from tiled.queries import Key

    return Key("start.uid") == uid
