"""Writers that store runs in a Tiled catalogue behind a backup journal, so that a storage failure never stops or
loses a scan.

Every document goes to the run's journal (:class:`nanopilot.backup.RunJournal`) first, then to bluesky-tiled-plugins'
TiledWriter; a failing catalogue is abandoned for the rest of the run and its journal kept for ``nanopilot restore``
(:func:`nanopilot.backup.restore`). ``StorageWriter.status(uid)`` says where each run went.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import types
import warnings
import weakref
from pathlib import Path

from .backup import BACKUP_DIR_ENV, RunJournal
from .catalog import check_directory_writable, check_writable, default_backup_dir, embedded_directory

logger = logging.getLogger(__name__)

#: TiledWriter batch size of :func:`make_writer`: data become visible every this many events,
#: at about one round trip per batch instead of one per event.
DEFAULT_BATCH_SIZE = 20
# A TiledWriter whose catalogue fails on a run's start makes event-model's RunRouter warn that its factory is out
# of date ("Update the factory function"); it is not, and StorageWriter reports the failure itself.
warnings.filterwarnings("ignore", message=r"The callback <bluesky_tiled_plugins\.writing\.tiled_writer\.RunNormalizer "
                        r".* when RunRouter passed it a 'start' document", category=UserWarning)

#: One lock for every writer made here: the raw-run writer (RunEngine thread) and the analysis writers
#: (worker threads) must not write to one SQLite catalogue at the same time ("database is locked").
_WRITE_LOCK = threading.RLock()
_OUTAGES: dict[int, types.SimpleNamespace] = {}  # id(client context) -> its outage, see _outage_of
_WARNED: set[Path] = set()  # backup directories warned about (on the catalogue's filesystem) once already


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
            self._outage.failures += 1

    def _finished(self, uid: str, status: str) -> None:
        self._status[uid] = status
        self.counts[status.split(":")[0]] += 1
        with _WRITE_LOCK:
            if status == "stored" and self._outage.reason is not None:
                logger.info("Tiled storage works again (run %s stored)", uid)
                self._outage.reason = None


def _outage_of(context) -> types.SimpleNamespace:
    """The outage record (``reason``: why Tiled failed, None while it works; ``failures``: how many runs' writing
    failed so far) shared by the writers of a context."""
    with _WRITE_LOCK:
        if id(context) not in _OUTAGES:
            _OUTAGES[id(context)] = types.SimpleNamespace(reason=None, failures=0)
            weakref.finalize(context, _OUTAGES.pop, id(context), None)
        return _OUTAGES[id(context)]


class _RunStorage:
    """One run: each document to the journal first, then to the catalogue (a per-run TiledWriter) until it fails."""

    def __init__(self, writer: StorageWriter, uid: str):
        self.writer, self.uid = writer, uid
        self.primary, outage = writer._primary(), writer._outage.reason
        self._failures_seen = writer._outage.failures  # a failure after this start: another writer saw Tiled fail
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
            with _WRITE_LOCK:  # the outage is recorded before another writer may try: one stall per outage
                self._write_primary(name, doc)
        if name == "stop":
            self.writer._finished(self.uid, self._finish())

    def _write_primary(self, name: str, doc: dict) -> None:
        """Write to the catalogue, unless another writer of it has seen it fail since this run began (then this run
        is backed up only, without a retry of its own); a failure ends the run's writing to the catalogue."""
        outage = self.writer._outage
        if outage.failures != self._failures_seen:  # already recorded (and warned about) by that writer
            self.primary, self.primary_failure = None, f"the catalogue failed for another run ({outage.reason})"
            self._error_if_lost()
            return
        try:
            self.primary(name, doc)
        except Exception as err:  # noqa: BLE001 - any storage error; the journal holds the documents
            self.primary, self.primary_failure = None, f"{type(err).__name__}: {err}"
            self.writer._catalogue_failed(self.uid, self.primary_failure)
            self._error_if_lost()

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
    check_directory_writable(backup, "the backup directory")
    directory = embedded_directory(catalog)
    if directory is not None:
        check_writable(directory)
        _warn_same_filesystem(backup, directory)
    return StorageWriter(catalog, batch_size=int(batch_size), backup_directory=backup)


def _warn_same_filesystem(backup: Path, directory: Path) -> None:
    if os.stat(backup).st_dev != os.stat(directory).st_dev or backup in _WARNED:
        return
    _WARNED.add(backup)
    logger.warning("the backup directory %s is on the same filesystem as the catalogue %s: a full or failing disk "
                   "loses both; set $%s (or backup_directory=) to another disk", backup, directory, BACKUP_DIR_ENV)


def subscribe_writer(RE, catalog, *, batch_size: int = DEFAULT_BATCH_SIZE,
                     backup_directory: str | os.PathLike | None = None) -> int:
    """Subscribe a :func:`make_writer` writer to ``RE``; returns the subscription token."""
    return RE.subscribe(make_writer(catalog, batch_size=batch_size, backup_directory=backup_directory))
