"""The ASGI app of ``nanopilot view``: one shipped HTML page and the JSON and PNG it polls.

    GET /                         the page (``page.html``, shipped with the package; no file from the internet)
    GET /api/runs?limit=10        the newest raw runs (:func:`nanopilot.view.data.list_runs`)
    GET /api/runs/{uid}           one run: its row, its decisions, the analysis' status counts, whether its
                                  texture run (labels, written when the analysis ends) is stored
    GET /api/runs/{uid}/picture.png  its plan's picture (nanopilot.pictures.plan_figure), drawn from the stored
                                  raw, analysis and texture runs (404 until the first points are stored)

With an ``api_key``, every request must carry it (header ``X-API-Key`` or query ``?api_key=``), else 401.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from importlib.resources import files

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from . import data

MAX_LISTED = 50
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


def build_app(catalog, *, api_key: str | None = None, picture=data.picture) -> Starlette:
    """The app serving ``catalog``'s runs; ``picture(plan_run) -> PNG bytes`` draws a run's picture from its
    :class:`~nanopilot.pictures.PlanRun` (:func:`nanopilot.view.data.plan_run`)."""
    page = files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    def index(request):
        return HTMLResponse(page)

    def runs(request):
        try:
            limit = min(max(int(request.query_params.get("limit", 10)), 1), MAX_LISTED)
        except ValueError:
            return PlainTextResponse("limit must be an integer", status_code=400)
        return JSONResponse(data.list_runs(catalog, limit))

    def _raw(request):
        uid = request.path_params["uid"]
        found = data.raw_runs(catalog).search(_uid_is(uid))
        return found.values().first() if len(found) else None

    def run(request):
        raw = _raw(request)
        if raw is None:
            return PlainTextResponse("no such raw run", status_code=404)
        uid = raw.start["uid"]
        counts = data.status_counts(data.analysis_of(catalog, uid))
        return JSONResponse({**data.run_summary(catalog, raw), "decisions": data.decisions(raw),
                             "status_counts": counts, "texture_stored": data.texture_stored(catalog, uid)})

    lock = threading.Lock()
    drawn: OrderedDict[tuple, bytes] = OrderedDict()  # state of a run (data.state) -> PNG, newest last

    def picture_png(request):
        raw = _raw(request)
        if raw is None:
            return PlainTextResponse("no such raw run", status_code=404)
        run = data.plan_run(catalog, raw)
        if not run.estimates.get("raw_seq_num"):
            return PlainTextResponse("no analysed points stored for this run yet", status_code=404)
        key = data.state(run)
        with lock:
            png = drawn.get(key)
        if png is None:  # each state of a run is drawn once, however many pages show it
            png = picture(run)
            with lock:
                drawn[key] = png
                while len(drawn) > PICTURES_KEPT:
                    drawn.popitem(last=False)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    middleware = [Middleware(_RequireKey, key=api_key)] if api_key else []
    return Starlette(routes=[Route("/", index), Route("/api/runs", runs), Route("/api/runs/{uid}", run),
                             Route("/api/runs/{uid}/picture.png", picture_png)], middleware=middleware)


def serve_in_thread(app, *, host: str = "127.0.0.1", port: int = 8765, timeout: float = 30.0):
    """Serve ``app`` with uvicorn from a daemon thread (e.g. beside a scan in the same process); returns the
    ``uvicorn.Server`` once it listens (``server.should_exit = True`` stops it). RuntimeError if it does not start
    within ``timeout`` s (e.g. the port is taken)."""
    import time

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
