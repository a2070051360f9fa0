"""Tiled storage: the embedded catalogue (default), a catalogue directory, or a Tiled server.

The embedded catalogue is Tiled's app served in-process (no socket, no server thread): SQLite for the
metadata and the appendable tables, zarr files for arrays. Another process can read the same directory
at the same time (SQLite, not DuckDB, for that reason).

Writers that store runs here are made by :mod:`nanopilot.storage`.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import logging
import os
import sqlite3
import threading
import warnings
import weakref
from pathlib import Path
from urllib.parse import urlsplit

from .backup import BACKUP_DIR_ENV

logger = logging.getLogger(__name__)

#: Environment variable that overrides the default data directory of the embedded catalogue.
DATA_DIR_ENV = "NANOPILOT_DATA_DIR"
#: Environment variable holding the API key for a Tiled server (http/https locations).
API_KEY_ENV = "TILED_API_KEY"
#: Tiled's settings are a process-wide singleton, so every embedded app in a process uses this one key.
EMBEDDED_API_KEY = "nanopilotembedded"
#: The directory of each embedded catalogue opened here (id(client) -> directory), for the checks before writing.
_EMBEDDED: dict[int, Path] = {}
_WARNED = set()  # hosts warned about once already


def default_data_dir() -> Path:
    """``$NANOPILOT_DATA_DIR``, else ``$XDG_DATA_HOME/nanopilot`` (``~/.local/share/nanopilot``)."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(xdg) / "nanopilot"


def default_backup_dir() -> Path:
    """``$NANOPILOT_BACKUP_DIR``, else :func:`default_data_dir` ``/ "backup"`` (best put on another disk)."""
    if os.environ.get(BACKUP_DIR_ENV):
        return Path(os.environ[BACKUP_DIR_ENV]).expanduser()
    return default_data_dir() / "backup"


def open_catalog(location: str | os.PathLike | None = None, *, writable: bool = False, create: bool = False):
    """Open a catalogue of Bluesky runs.

    Parameters
    ----------
    location : None, a directory, or an http(s) URI
        None: the embedded catalogue in :func:`default_data_dir` ``/ "catalog"`` (created on first use). A
        directory: the embedded catalogue there. ``http://...``/``https://...``: a Tiled server (set one up with
        ``docs/tiled-server.yaml``, see ``docs/tiled_server.md``); the API key comes from ``$TILED_API_KEY``; a URI
        that points at the server root opens it as is. An API key sent over plain ``http://`` to a host other than
        the loopback warns (once per host): use ``https://``.
    writable : if True, an embedded catalogue that cannot be written raises PermissionError naming the path
        (:func:`nanopilot.storage.make_writer` checks the same before a scan).
    create : if True, a directory that holds no catalogue gets a new, empty one (logged as a warning, in case the
        path was mistyped); if False it raises FileNotFoundError.

    Returns
    -------
    A tiled client node; for embedded catalogues a ``CatalogOfBlueskyRuns`` supporting ``cat[uid]``,
    ``cat[-1]``, ``cat[scan_id]`` and ``run.documents()``. :func:`nanopilot.runs.select_run` chooses raw runs the
    same way on every catalogue.

    Raises
    ------
    FileNotFoundError : no catalogue in the directory (and not ``create``).
    ConnectionError : the server cannot be reached (one line: the URI and what to check).
    PermissionError : the server refuses the API key (or wants one), or (``writable``) the directory is read-only.
    ValueError : the URI answers but is no Tiled API, or the directory cannot be created.
    """
    text = os.fspath(location) if location is not None else None
    if text and text.startswith(("http://", "https://")):
        return _server_client(text)
    directory = (Path(text).expanduser() if text else default_data_dir() / "catalog").resolve()
    if not (directory / "catalog.db").exists():
        if text and not create:
            raise FileNotFoundError(f"no catalogue at {directory}: check the path, or create one there (open_catalog"
                                    "(path, create=True); `nanopilot session --catalog PATH` and `nanopilot demo "
                                    "--catalog PATH` do)")
        (logger.warning if text else logger.info)("creating a new, empty catalogue at %s", directory)
    client = _embedded_client(directory, writable)
    _EMBEDDED[id(client)] = directory
    weakref.finalize(client, _EMBEDDED.pop, id(client), None)
    return client


def _server_client(uri: str):
    """A client of the Tiled server at ``uri``, or one line saying what is wrong (see :func:`open_catalog`)."""
    from tiled.client import from_uri
    from tiled.client.utils import ClientError

    _check_reachable(uri)
    api_key = os.environ.get(API_KEY_ENV)
    if api_key:
        _warn_plain_http(uri)
    try:
        return from_uri(uri, api_key=api_key)
    except ClientError as err:
        status = err.response.status_code
        if status in (401, 403):
            raise PermissionError(f"the Tiled server at {uri} refused the API key in ${API_KEY_ENV} (HTTP {status}): "
                                  "set it to the server's key") from None
        raise ValueError(f"{uri} is not a Tiled catalogue (HTTP {status}): check the path; a server started with "
                         "`tiled serve config` answers at http://HOST:PORT/api/v1") from None
    except RuntimeError as err:
        if "API key" not in str(err):
            raise
        raise PermissionError(f"the Tiled server at {uri} requires an API key: set ${API_KEY_ENV}") from None


def _check_reachable(uri: str, timeout: float = 10.0) -> None:
    """ConnectionError naming ``uri`` and what to check unless it answers one request (no retries: the Tiled
    client would retry for up to ``TILED_RETRY_TIMEOUT``, 45 s, before failing)."""
    import httpx

    try:
        httpx.get(uri, timeout=timeout)
    except httpx.TransportError as err:
        raise ConnectionError(f"cannot reach the Tiled server at {uri} ({err or type(err).__name__}): check that "
                              "it is running (docs/tiled_server.md), the host name and port, and the network") from None


def _warn_plain_http(uri: str) -> None:
    host = urlsplit(uri).hostname or ""
    if not uri.startswith("http://") or host in _WARNED or _is_loopback(host):
        return
    _WARNED.add(host)
    warnings.warn(f"the Tiled API key for {host} travels in plain text over http://; use https://{uri[7:]}",
                  UserWarning, stacklevel=3)


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_writable(directory: str | os.PathLike) -> None:
    """Raise PermissionError naming the path if the embedded catalogue in ``directory`` cannot be written.

    Tries it: a probe file in the directory and in ``data/``, and a write transaction on its SQLite files
    (permissions alone do not tell for root or a read-only mount).
    """
    directory = Path(directory)
    for folder in (directory, directory / "data"):
        check_directory_writable(folder, "the catalogue")
    for database in (directory / "catalog.db", directory / "storage.sqlite"):
        if database.exists():
            _probe_sqlite(database)


def embedded_directory(client) -> Path | None:
    """The directory of an embedded catalogue opened by :func:`open_catalog`, None for any other client."""
    return _EMBEDDED.get(id(client))


def check_directory_writable(folder: Path, what: str) -> None:
    """Raise PermissionError naming ``what`` and ``folder`` unless a file can be written there (tried)."""
    probe = folder / f".nanopilot-write-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise PermissionError(f"{what} cannot be written: {folder}: {err.strerror or err}") from err


def _probe_sqlite(database: Path) -> None:
    try:
        connection = sqlite3.connect(f"{database.as_uri()}?mode=rw", uri=True, timeout=1.0, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("CREATE TABLE main.nanopilot_write_probe (x)")  # rolled back: nothing changes
            connection.execute("ROLLBACK")
        finally:
            connection.close()
    except sqlite3.OperationalError as err:
        if "locked" not in str(err):  # locked: another writer holds it, which proves it writable
            raise PermissionError(f"the catalogue cannot be written: {database}: {err}") from err


def _embedded_client(directory: Path, writable: bool):
    from bluesky_tiled_plugins.exporters import json_seq_exporter
    from bluesky_tiled_plugins.routers.validator import router as validate_router
    from tiled.catalog import from_uri as catalog_from_uri
    from tiled.client import from_context
    from tiled.config import Authentication
    from tiled.media_type_registration import default_serialization_registry
    from tiled.server.app import build_app

    try:
        (directory / "data").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the catalogue directory {directory}: {err}") from err
    if writable:
        check_writable(directory)
    uri = f"sqlite:///{directory / 'catalog.db'}"
    new = not (directory / "catalog.db").exists() and not _initialise(uri)
    catalog = catalog_from_uri(
        uri, writable_storage=[directory / "data", f"sqlite:///{directory / 'storage.sqlite'}"],
        readable_storage=[directory], init_if_not_exists=new,  # Tiled's own init: a subprocess (seconds)
        specs=[{"name": "CatalogOfBlueskyRuns", "version": "3.0"}],
    )
    registry = copy.deepcopy(default_serialization_registry)
    registry.register("BlueskyRun", "application/json-seq", json_seq_exporter)  # enables run.documents()
    app = build_app(catalog, authentication=Authentication(single_user_api_key=EMBEDDED_API_KEY),
                    serialization_registry=registry, include_routers=[validate_router])
    return from_context(_quiet_context(app))


def _initialise(uri: str) -> bool:
    """Create a new catalogue database's tables and stamp its schema revision in this process, as ``tiled catalog
    init`` does (Tiled runs that command in a subprocess, which costs seconds of start-up); in a thread of its own,
    so that a caller's running event loop does not matter. False (nothing done) if this Tiled has not the same
    functions: then Tiled's own subprocess initialises it."""
    try:
        from sqlalchemy.ext.asyncio import create_async_engine
        from tiled.alembic_utils import stamp_head
        from tiled.catalog.alembic_constants import ALEMBIC_DIR, ALEMBIC_INI_TEMPLATE_PATH
        from tiled.catalog.core import initialize_database
        from tiled.utils import ensure_specified_sql_driver
    except ImportError:
        return False
    uri = ensure_specified_sql_driver(uri)

    async def create_tables():
        engine = create_async_engine(uri)
        try:
            await initialize_database(engine)
        finally:
            await engine.dispose()

    failure = []

    def run():
        try:
            asyncio.run(create_tables())
            stamp_head(ALEMBIC_INI_TEMPLATE_PATH, ALEMBIC_DIR, uri)
        except Exception as err:  # noqa: BLE001 - reported below, in the caller's thread
            failure.append(err)

    thread = threading.Thread(target=run, name="nanopilot-catalog-init")
    thread.start()
    thread.join()
    if failure:
        raise ValueError(f"could not create the catalogue {uri}: {failure[0]}") from failure[0]
    return True


def _quiet_context(app):
    """``Context.from_app(app)`` without the in-process server's start-up chatter on stderr: Starlette's warning
    that its test client runs on httpx, and the app's INFO lines ("Tiled version ...")."""
    from tiled.client import Context

    def warnings_and_above(record: logging.LogRecord) -> bool:  # one filter per call: safe across threads
        return record.levelno >= logging.WARNING

    server_logger = logging.getLogger("tiled.server.app")  # has a handler of its own, at level INFO
    server_logger.addFilter(warnings_and_above)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
            return Context.from_app(app)
    finally:
        server_logger.removeFilter(warnings_and_above)


def v1_broker(catalog):
    """databroker's v1 ``Broker`` over ``catalog`` (e.g. ``v1_broker(catalog)[uid].table()``), on a client of its own.

    databroker's v1 and v2 views (``Broker(catalog)``, ``catalog.v1``, ``catalog.v2``) switch the structure clients
    that every client of the process shares to the v2 API (databroker 2.0.2, bluesky-tiled-plugins 2.0.12, tiled
    0.2.20: a shallow copy of a shared map is changed), after which ``run["primary"]["key"]`` fails everywhere,
    nanopilot's replay included. The broker made here gets a copy of those structure clients instead.
    """
    from databroker.v1 import Broker

    return Broker(catalog.new_variation(structure_clients=copy.deepcopy(catalog.structure_clients)))
