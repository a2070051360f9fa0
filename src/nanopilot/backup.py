"""The backup journal of Bluesky runs, and ``restore``: every document of a run, arrays included, as JSON lines.

One file per run, ``<start uid>.jsonl``, one document per line: ``{"name": ..., "doc": ...}`` (the layout of
bluesky-tiled-plugins' JSONLinesWriter, whose backups :func:`restore` also reads). NumPy arrays are stored as
``{"__ndarray__": [descr, shape, base64 bytes]}`` and come back with the same dtype, shape and values. Each line
is written whole with one system call and reaches the operating system before the next document is handled;
the file is fsynced when the run stops. A line torn by a crash is skipped on reading, with a warning, and never
glued to the next document: after a failed write the journal takes no more writes.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock, restore cannot tell a run in progress
    fcntl = None

logger = logging.getLogger(__name__)

#: Environment variable naming the backup directory (best on another disk than the catalogue).
BACKUP_DIR_ENV = "NANOPILOT_BACKUP_DIR"
_ARRAY_KEY = "__ndarray__"


def _to_json(obj):
    if isinstance(obj, np.ndarray) and not obj.dtype.hasobject:
        data = base64.b64encode(np.ascontiguousarray(obj).tobytes()).decode("ascii")
        return {_ARRAY_KEY: [np.lib.format.dtype_to_descr(obj.dtype), list(obj.shape), data]}
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _from_json(obj: dict):
    if len(obj) == 1 and _ARRAY_KEY in obj:
        descr, shape, data = obj[_ARRAY_KEY]
        dtype = np.lib.format.descr_to_dtype(descr if isinstance(descr, str) else [tuple(f) for f in descr])
        return np.frombuffer(bytearray(base64.b64decode(data)), dtype=dtype).reshape(shape)
    return obj


def encode(name: str, doc: dict) -> bytes:
    """One journal line (ending in a newline) holding the document ``(name, doc)``."""
    return (json.dumps({"name": name, "doc": doc}, default=_to_json, separators=(",", ":")) + "\n").encode()


def decode(line: bytes | str) -> tuple[str, dict]:
    """The ``(name, doc)`` of one journal line; ValueError if the line is not one whole document."""
    item = json.loads(line, object_hook=_from_json)
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not isinstance(item.get("doc"), dict):
        raise ValueError("not a {'name': ..., 'doc': ...} line")
    return item["name"], item["doc"]


class RunJournal:
    """The journal file of one run, written ahead of the catalogue: one flushed line per document.

    The file is locked (``flock``) while the run is written, so that :func:`restore` in another process leaves
    a run in progress alone. After a failed write it is truncated back to its last whole line and takes no more
    writes (``failure`` says why).
    """

    def __init__(self, directory: str | os.PathLike, uid: str):
        self.path = Path(directory) / f"{uid}.jsonl"
        self.failure: str | None = None
        self._size = 0
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(self._fd)
                raise

    def write(self, name: str, doc: dict) -> None:
        """Append one document; OSError (and the journal closed to writes) if it cannot be written whole."""
        if self.failure:
            raise OSError(f"the journal {self.path} failed earlier: {self.failure}")
        data = encode(name, doc)
        rest = memoryview(data)
        try:
            while rest:
                rest = rest[os.write(self._fd, rest):]
        except OSError as err:
            self.failure = f"{err.strerror or err} ({self.path})"
            self._truncate()
            raise
        self._size += len(data)

    def _truncate(self) -> None:
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            pass  # the reader skips the torn line

    def close(self, keep: bool) -> None:
        """Close the file: fsynced and kept if ``keep``, else removed (the catalogue holds the run)."""
        if self._fd < 0:
            return
        try:
            if keep:
                os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = -1
            if not keep:
                self.path.unlink(missing_ok=True)


def read_journal(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """The documents of one journal file, in order; torn or unreadable lines are skipped with a warning."""
    with open(path, "rb") as file:
        for number, line in enumerate(file, 1):
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("the line is cut short (a crash while it was written?)")
                yield decode(line)
            except ValueError as err:
                logger.warning("%s, line %d skipped: %s", path, number, err)


@dataclasses.dataclass
class RestoredRun:
    """What :func:`restore` did with one journal file: ``action`` is "restored", "replaced" (a partial run),
    "skipped" (complete in the catalogue, or still being written) or "failed"; ``detail`` says more."""

    path: Path
    uid: str | None
    action: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.action != "failed"


def restore(backup_directory: str | os.PathLike, catalog, *, batch_size: int = 200) -> list[RestoredRun]:
    """Write every run journalled in ``backup_directory`` into ``catalog``.

    Runs already complete there (with a stop document) are skipped; a run stored partially (the catalogue failed
    during the run) is deleted and written again from the journal. Journals still locked by a writer are skipped.
    """
    directory = Path(backup_directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no backup directory {directory}")
    return [_restore_file(path, catalog, batch_size) for path in sorted(directory.glob("*.jsonl"))]


def _restore_file(path: Path, catalog, batch_size: int) -> RestoredRun:
    from bluesky_tiled_plugins import TiledWriter

    with open(path, "rb") as lock, contextlib.closing(read_journal(path)) as docs:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return RestoredRun(path, None, "skipped", "still being written by a running session")
        first = next(docs, None)
        if first is None or first[0] != "start":
            return RestoredRun(path, None, "failed", "no start document: nothing to restore")
        uid = first[1]["uid"]
        action = "restored"
        try:
            if uid in catalog:
                if catalog[uid].metadata.get("stop") is not None:
                    return RestoredRun(path, uid, "skipped", "already complete in the catalogue")
                catalog[uid].delete(recursive=True, external_only=False)
                action = "replaced"
            writer = TiledWriter(catalog, batch_size=batch_size)
            counts = collections.Counter()
            for name, doc in itertools.chain([first], docs):
                writer(name, doc)
                counts[name] += 1
        except Exception as err:  # noqa: BLE001 - any storage error: reported per run, the others still restored
            return RestoredRun(path, uid, "failed", f"{type(err).__name__}: {err}")
    detail = f"{sum(counts.values())} documents ({counts['event'] + counts['event_page']} event documents)"
    if not counts["stop"]:
        detail += "; no stop document (the run was interrupted)"
    return RestoredRun(path, uid, action, detail)
