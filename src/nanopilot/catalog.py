"""Tiled storage: the embedded catalogue (default), a catalogue directory, or a Tiled server.

The embedded catalogue is Tiled's app served in-process (no socket, no server thread): SQLite for the
metadata and the appendable tables, zarr files for arrays. Another process can read the same directory
at the same time (SQLite, not DuckDB, for that reason).

Writers made here (:func:`make_writer`) journal every document to a backup directory ahead of the catalogue, so
a storage failure never stops or loses a scan; ``nanopilot restore`` (:func:`nanopilot.backup.restore`) puts the
journalled runs back.
"""

from __future__ import annotations

import collections
import copy
import ipaddress
import logging
import os
import sqlite3
import threading
import types
import warnings
import weakref
from pathlib import Path
from urllib.parse import urlsplit

from .backup import BACKUP_DIR_ENV, RunJournal

logger = logging.getLogger(__name__)

#: Environment variable that overrides the default data directory of the embedded catalogue.
DATA_DIR_ENV = "NANOPILOT_DATA_DIR"
#: Environment variable holding the API key for a Tiled server (http/https locations).
API_KEY_ENV = "TILED_API_KEY"
#: Tiled's settings are a process-wide singleton, so every embedded app in a process uses this one key.
EMBEDDED_API_KEY = "nanopilotembedded"
#: TiledWriter batch size used by :func:`subscribe_writer`: data become visible every this many events,
#: at about one round trip per batch instead of one per event.
DEFAULT_BATCH_SIZE = 20
#: The directory of each embedded catalogue opened here (id(client) -> directory), for the checks before writing.
_EMBEDDED: dict[int, Path] = {}
_WARNED = set()  # hosts and backup directories warned about once already
# A TiledWriter whose catalogue fails on a run's start makes event-model's RunRouter warn that its factory is out
# of date ("Update the factory function"); it is not, and StorageWriter reports the failure itself.
warnings.filterwarnings("ignore", message=r"The callback <bluesky_tiled_plugins\.writing\.tiled_writer\.RunNormalizer "
                        r".* when RunRouter passed it a 'start' document", category=UserWarning)


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


def open_catalog(location: str | os.PathLike | None = None, *, writable: bool = False):
    """Open a catalogue of Bluesky runs.

    Parameters
    ----------
    location : None, a directory, or an http(s) URI
        None: the embedded catalogue in :func:`default_data_dir` ``/ "catalog"``. A directory: an embedded
        catalogue there (created on first use). ``http://...``/``https://...``: a Tiled server; the API key
        comes from ``$TILED_API_KEY``; a URI that points at the server root opens it as is. An API key sent over
        plain ``http://`` to a host other than the loopback warns (once per host): use ``https://``.
    writable : if True, an embedded catalogue that cannot be written raises PermissionError naming the path
        (:func:`make_writer` checks the same before a scan).

    Returns
    -------
    A tiled client node; for embedded catalogues a ``CatalogOfBlueskyRuns`` supporting ``cat[uid]``,
    ``cat[-1]``, ``cat[scan_id]`` and ``run.documents()``.
    """
    text = os.fspath(location) if location is not None else None
    if text and text.startswith(("http://", "https://")):
        from tiled.client import from_uri

        api_key = os.environ.get(API_KEY_ENV)
        if api_key:
            _warn_plain_http(text)
        return from_uri(text, api_key=api_key)
    directory = (Path(text).expanduser() if text else default_data_dir() / "catalog").resolve()
    client = _embedded_client(directory, writable)
    _EMBEDDED[id(client)] = directory
    weakref.finalize(client, _EMBEDDED.pop, id(client), None)
    return client


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
        _probe_directory(folder, "the catalogue")
    for database in (directory / "catalog.db", directory / "storage.sqlite"):
        if database.exists():
            _probe_sqlite(database)


def _probe_directory(folder: Path, what: str) -> None:
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
    from tiled.client import Context, from_context
    from tiled.config import Authentication
    from tiled.media_type_registration import default_serialization_registry
    from tiled.server.app import build_app

    try:
        (directory / "data").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the catalogue directory {directory}: {err}") from err
    if writable:
        check_writable(directory)
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
_OUTAGES: dict[int, types.SimpleNamespace] = {}  # id(client context) -> its outage, see _outage_of


class SerializedWriter:
    """A document callback (e.g. a TiledWriter) called under the module's write lock."""

    def __init__(self, callback):
        self.callback = callback

    def __call__(self, name: str, doc: dict):
        with _WRITE_LOCK:
            return self.callback(name, doc)


class StorageWriter:
    """Stores runs in a Tiled catalogue, journalling every document to a backup directory first.

    A failing catalogue never stops the scan: it is abandoned for the rest of the run (no retries per batch),
    one warning is logged per outage, and the run's journal is kept for ``nanopilot restore``. A run that is
    stored has its journal removed. A run stored nowhere (catalogue and backup both failed) is logged as an error.
    ``status(uid)`` and ``counts`` tell which runs were stored where. Memory per run: one batch of events.
    """

    def __init__(self, catalog, *, batch_size: int, backup_directory: Path):
        from event_model import RunRouter

        self.backup_directory = backup_directory
        self.batch_size = batch_size
        self.counts = collections.Counter()  # runs "stored", "backed up", "lost"
        self._client = catalog.include_data_sources()  # the one round trip TiledWriter makes: done once, here
        self._status: dict[str, str] = {}
        self._outage = _outage_of(catalog.context)  # shared by the writers of one catalogue: one warning
        self._router = RunRouter([self._factory])

    def __call__(self, name: str, doc: dict):
        self._router(name, doc)

    def status(self, uid: str) -> str:
        """Where run ``uid`` went: "writing", "stored", "backed up: ..." (its journal kept: Tiled failed) or
        "lost: ..." (Tiled and the backup both failed; why). KeyError for a run this writer has not seen."""
        return self._status[uid]

    def _factory(self, name, start):
        return [_RunStorage(self, start["uid"])], []

    def _primary(self):
        """A TiledWriter for one run; None while an outage lasts and the server does not answer at once."""
        from bluesky_tiled_plugins import TiledWriter

        if self._outage.reason is not None and not self._answers():
            return None
        return TiledWriter(self._client, batch_size=self.batch_size)

    def _answers(self) -> bool:
        """One request, no retries (the client's retries would stall the scan for up to ``TILED_RETRY_TIMEOUT``)."""
        try:
            return self._client.context.http_client.get(self._client.uri).status_code < 500
        except Exception:  # noqa: BLE001 - any failure: still out
            return False

    def _catalogue_failed(self, uid: str, reason: str) -> None:
        with _WRITE_LOCK:
            if self._outage.reason is None:
                logger.warning("Tiled storage failed (%s): run %s and any other run while it fails are written to "
                               "the backup %s only; put them back with `nanopilot restore %s`",
                               reason, uid, self.backup_directory, self.backup_directory)
            self._outage.reason = reason

    def _finished(self, uid: str, status: str) -> None:
        self._status[uid] = status
        self.counts[status.split(":")[0]] += 1
        with _WRITE_LOCK:
            if status == "stored" and self._outage.reason is not None:
                logger.info("Tiled storage works again (run %s stored)", uid)
                self._outage.reason = None


def _outage_of(context) -> types.SimpleNamespace:
    """The outage record (``reason``: why Tiled failed, None while it works) shared by the writers of a context."""
    with _WRITE_LOCK:
        if id(context) not in _OUTAGES:
            _OUTAGES[id(context)] = types.SimpleNamespace(reason=None)
            weakref.finalize(context, _OUTAGES.pop, id(context), None)
        return _OUTAGES[id(context)]


class _RunStorage:
    """One run: each document to the journal first, then to the catalogue (a per-run TiledWriter) until it fails."""

    def __init__(self, writer: StorageWriter, uid: str):
        self.writer, self.uid = writer, uid
        self.primary, outage = writer._primary(), writer._outage.reason
        self.primary_failure = None if self.primary is not None else f"Tiled still unavailable ({outage})"
        self.journal, self.journal_failure = None, None
        writer._status[uid] = "writing"
        try:
            self.journal = RunJournal(writer.backup_directory, uid)
        except OSError as err:
            self._journal_failed(err)

    def __call__(self, name: str, doc: dict):
        if self.journal is not None and self.journal_failure is None:
            try:
                self.journal.write(name, doc)
            except OSError as err:
                self._journal_failed(err)
        if self.primary is not None:
            try:
                with _WRITE_LOCK:
                    self.primary(name, doc)
            except Exception as err:  # noqa: BLE001 - any storage error; the journal holds the documents
                self.primary, self.primary_failure = None, f"{type(err).__name__}: {err}"
                self.writer._catalogue_failed(self.uid, self.primary_failure)
                self._error_if_lost()
        if name == "stop":
            self.writer._finished(self.uid, self._finish())

    def _journal_failed(self, err: OSError) -> None:
        self.journal_failure = f"{err.strerror or err} ({self.writer.backup_directory})"
        if self.primary is not None:
            logger.warning("run %s: the backup journal failed (%s); the run is still being stored in Tiled",
                           self.uid, self.journal_failure)
        self._error_if_lost()

    def _error_if_lost(self) -> None:
        if self.primary_failure and self.journal_failure:
            logger.error("run %s is NOT being stored anywhere: Tiled failed (%s) and the backup failed (%s)",
                         self.uid, self.primary_failure, self.journal_failure)

    def _finish(self) -> str:
        """Close the journal (removed once the catalogue holds the run) and say where the run is stored."""
        if self.journal is not None:
            try:
                self.journal.close(keep=self.primary is None)
            except OSError as err:
                self._journal_failed(err)
        if self.primary is not None:
            return "stored"
        if self.journal_failure is None:
            return f"backed up: {self.journal.path} (Tiled failed: {self.primary_failure})"
        kept = f"; what was journalled is in {self.journal.path}" if self.journal is not None else ""
        return f"lost: Tiled failed ({self.primary_failure}) and the backup failed ({self.journal_failure}){kept}"


def make_writer(catalog, *, batch_size: int = DEFAULT_BATCH_SIZE,
                backup_directory: str | os.PathLike | None = None) -> StorageWriter:
    """A :class:`StorageWriter` (bluesky-tiled-plugins' TiledWriter behind a backup journal) for ``catalog``.

    ``batch_size`` bounds both latency (data visible every ``batch_size`` events) and cost. The journal goes to
    ``backup_directory`` (default :func:`default_backup_dir`); one on the same filesystem as an embedded catalogue
    warns, as a full disk would take both. An unwritable catalogue or backup directory raises before the scan.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1 event, got {batch_size!r}")
    backup = Path(backup_directory) if backup_directory is not None else default_backup_dir()
    try:
        backup.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the backup directory {backup}: {err}") from err
    _probe_directory(backup, "the backup directory")
    directory = _EMBEDDED.get(id(catalog))
    if directory is not None:
        check_writable(directory)
        _warn_same_filesystem(backup, directory)
    return StorageWriter(catalog, batch_size=int(batch_size), backup_directory=backup)


def _warn_same_filesystem(backup: Path, directory: Path) -> None:
    if os.stat(backup).st_dev != os.stat(directory).st_dev or backup in _WARNED:
        return
    _WARNED.add(backup)
    warnings.warn(f"the backup directory {backup} is on the same filesystem as the catalogue {directory}: a full or "
                  f"failing disk loses both; set ${BACKUP_DIR_ENV} (or backup_directory=) to another disk",
                  UserWarning, stacklevel=3)


def subscribe_writer(RE, catalog, *, batch_size: int = DEFAULT_BATCH_SIZE,
                     backup_directory: str | os.PathLike | None = None) -> int:
    """Subscribe a :func:`make_writer` writer to ``RE``; returns the subscription token."""
    return RE.subscribe(make_writer(catalog, batch_size=batch_size, backup_directory=backup_directory))
