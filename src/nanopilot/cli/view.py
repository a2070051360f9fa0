"""``nanopilot view``: a web page of the catalogue's runs, their maps and decisions, updating while a scan runs."""

from __future__ import annotations

import os

API_KEY_VARIABLE = "NANOPILOT_VIEW_API_KEY"


def register(subparsers) -> None:
    p = subparsers.add_parser("view", help="serve a live web page of the runs' maps and decisions",
                              description="Serve a page showing the newest runs, their maps and decisions, read "
                                          "from the catalogue while scans write to it. Loopback only unless --host "
                                          "is given, and then only with an API key (--api-key or "
                                          f"${API_KEY_VARIABLE}).")
    p.add_argument("--catalog", default=None,
                   help="catalogue directory or http(s) URI (default: the embedded catalogue; see `nanopilot.catalog`)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: %(default)s, this machine only); any other needs an API key")
    p.add_argument("--api-key", default=None,
                   help=f"key every request must carry (header X-API-Key or ?api_key=); default ${API_KEY_VARIABLE}")
    p.set_defaults(run=run)


def check_bind(host: str, api_key: str | None) -> None:
    """ValueError unless ``host`` is the loopback or an API key is given."""
    from ..catalog import _is_loopback

    if not _is_loopback(host) and not api_key:
        raise ValueError(f"--host {host} opens the page beyond this machine: give an API key (--api-key or "
                         f"${API_KEY_VARIABLE}), or leave --host at 127.0.0.1")


def run(args) -> int:
    api_key = args.api_key or os.environ.get(API_KEY_VARIABLE) or None
    check_bind(args.host, api_key)
    import matplotlib

    matplotlib.use("Agg")  # pictures are drawn in the server's threads, never on screen
    import uvicorn

    from ..catalog import open_catalog
    from ..view.app import build_app

    catalog = open_catalog(args.catalog)
    app = build_app(catalog, api_key=api_key)
    shown = "localhost" if args.host in ("127.0.0.1", "::1") else args.host
    print(f"nanopilot view: http://{shown}:{args.port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
