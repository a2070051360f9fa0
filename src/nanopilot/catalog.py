"""Tiled storage: the embedded catalogue (default), a catalogue directory, or a Tiled server.

The embedded catalogue is Tiled's app served in-process (no socket, no server thread): SQLite for the
metadata and the appendable tables, zarr files for arrays. Another process can read the same directory
at the same time (SQLite, not DuckDB, for that reason).
"""

from __future__ import annotations

import copy
import os
import threading
from pathlib import Path

#: Environment variable that overrides the default data directory of the embedded catalogue.
DATA_DIR_ENV = "NANOPILOT_DATA_DIR"
#: Environment variable holding the API key for a Tiled server (http/https locations).
API_KEY_ENV = "TILED_API_KEY"
#: Tiled's settings are a process-wide singleton, so every embedded app in a process uses this one key.
EMBEDDED_API_KEY = "nanopilotembedded"
#: TiledWriter batch size used by :func:`subscribe_writer`: data become visible every this many events,
#: at about one round trip per batch instead of one per event.
DEFAULT_BATCH_SIZE = 20


def default_data_dir() -> Path:
    """``$NANOPILOT_DATA_DIR``, else ``$XDG_DATA_HOME/nanopilot`` (``~/.local/share/nanopilot``)."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(xdg) / "nanopilot"


def open_catalog(location: str | os.PathLike | None = None):
    """Open a catalogue of Bluesky runs.

    Parameters
    ----------
    location : None, a directory, or an http(s) URI
        None: the embedded catalogue in :func:`default_data_dir` ``/ "catalog"``. A directory: an embedded
        catalogue there (created on first use). ``http://...``/``https://...``: a Tiled server; the API key
        comes from ``$TILED_API_KEY``; a URI that points at the server root opens it as is.

    Returns
    -------
    A tiled client node; for embedded catalogues a ``CatalogOfBlueskyRuns`` supporting ``cat[uid]``,
    ``cat[-1]``, ``cat[scan_id]`` and ``run.documents()``.
    """
    text = os.fspath(location) if location is not None else None
    if text and text.startswith(("http://", "https://")):
        from tiled.client import from_uri

        return from_uri(text, api_key=os.environ.get(API_KEY_ENV))
    directory = Path(text).expanduser() if text else default_data_dir() / "catalog"
    return _embedded_client(directory)


def _embedded_client(directory: Path):
    from bluesky_tiled_plugins.exporters import json_seq_exporter
    from bluesky_tiled_plugins.routers.validator import router as validate_router
    from tiled.catalog import from_uri as catalog_from_uri
    from tiled.client import Context, from_context
    from tiled.config import Authentication
    from tiled.media_type_registration import default_serialization_registry
    from tiled.server.app import build_app

    directory = directory.resolve()
    try:
        (directory / "data").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the catalogue directory {directory}: {err}") from err
    catalog = catalog_from_uri(
        f"sqlite:///{directory / 'catalog.db'}",
        writable_storage=[directory / "data", f"sqlite:///{directory / 'storage.sqlite'}"],
        readable_storage=[directory],
        init_if_not_exists=not (directory / "catalog.db").exists(),  # init spawns a subprocess: only once
        specs=[{"name": "CatalogOfBlueskyRuns", "version": "3.0"}],
    )
    registry = copy.deepcopy(default_serialization_registry)
    registry.register("BlueskyRun", "application/json-seq", json_seq_exporter)  # enables run.documents()
    app = build_app(catalog, authentication=Authentication(single_user_api_key=EMBEDDED_API_KEY),
                    serialization_registry=registry, include_routers=[validate_router])
    return from_context(Context.from_app(app))


#: One lock for every writer made here: the raw-run writer (RunEngine thread) and the analysis writers
#: (worker threads) must not write to one SQLite catalogue at the same time ("database is locked").
_WRITE_LOCK = threading.RLock()


class SerializedWriter:
    """A document callback (e.g. a TiledWriter) called under the module's write lock."""

    def __init__(self, callback):
        self.callback = callback

    def __call__(self, name: str, doc: dict):
        with _WRITE_LOCK:
            return self.callback(name, doc)


def make_writer(catalog, *, batch_size: int = DEFAULT_BATCH_SIZE,
                backup_directory: str | os.PathLike | None = None) -> SerializedWriter:
    """bluesky-tiled-plugins' TiledWriter for ``catalog``, serialised with every other writer made here.

    ``batch_size`` bounds both latency (data visible every ``batch_size`` events) and cost. With a
    ``backup_directory`` (default: ``default_data_dir() / "backup"``) a storage failure does not abort the
    scan: the documents are written there as JSON lines.
    """
    from bluesky_tiled_plugins import TiledWriter

    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1 event, got {batch_size!r}")
    backup = Path(backup_directory) if backup_directory is not None else default_data_dir() / "backup"
    try:
        backup.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the backup directory {backup}: {err}") from err
    return SerializedWriter(TiledWriter(catalog, batch_size=int(batch_size), backup_directory=str(backup)))


def subscribe_writer(RE, catalog, *, batch_size: int = DEFAULT_BATCH_SIZE,
                     backup_directory: str | os.PathLike | None = None) -> int:
    """Subscribe a :func:`make_writer` writer to ``RE``; returns the subscription token."""
    return RE.subscribe(make_writer(catalog, batch_size=batch_size, backup_directory=backup_directory))
