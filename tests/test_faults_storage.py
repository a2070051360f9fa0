"""Storage under faults: the catalogue or the backup failing mid-scan, torn journals, read-only catalogues,
API keys over plain http, and putting backed-up runs back with ``nanopilot restore``."""

import contextlib
import errno
import logging
import os
import resource
import signal
import sqlite3
import time
import warnings

import bluesky.plans as bp
import h5py
import numpy as np
import pytest
import tiled.client.utils
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter
from event_model import unpack_event_page
from ophyd.sim import det
from conftest import tiled_serve

from nanopilot.catalog import open_catalog
from nanopilot.sim_devices import make_beamline
from nanopilot.storage import make_writer, subscribe_writer

# event-model's misleading "Update the factory function" warning, filtered by nanopilot.storage at import (pytest
# resets the filters per test)
pytestmark = pytest.mark.filterwarnings("ignore:The callback <bluesky_tiled_plugins.writing.tiled_writer.RunNormalizer")


class Outage:
    """Makes the catalogue client's transport fail (no space left on the server's disk) while ``failing``."""

    def __init__(self, client):
        self.failing, self.calls, self._send = False, 0, client.context.http_client.send

    def send(self, *args, **kwargs):
        if self.failing:
            self.calls += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._send(*args, **kwargs)

    def after_events(self, n: int):
        """A RunEngine subscriber (subscribe it before the writer) that starts the outage after event ``n``."""
        def callback(name, doc):
            if name == "event" and doc["seq_num"] == n:
                self.failing = True
        return callback


@pytest.fixture
def outage(catalog, monkeypatch):
    import nanopilot.storage

    outage = Outage(catalog)
    monkeypatch.setattr(catalog.context.http_client, "send", outage.send)
    monkeypatch.setattr(nanopilot.storage, "_OUTAGES", {}, raising=False)  # the writers' shared outage record
    return outage


def inline_scan(RE, n_y=3, n_x=4, mode="inline", directory=None):
    """A grid scan of the simulated beamline with inline uint32 (64, 64) frames (or, ``mode="hdf5"``, frames in an
    HDF5 file in ``directory``); returns (uid, documents)."""
    bl = make_beamline("domains", seed=3, data_mode=mode, hdf5_directory=str(directory or ""))
    docs = []
    token = RE.subscribe(lambda name, doc: docs.append((name, doc)))
    (uid,) = RE(bp.grid_scan([bl.detector], bl.stage.y, -1, 1, n_y, bl.stage.x, -1, 1, n_x))
    RE.unsubscribe(token)
    return uid, docs


def frames(docs):
    return np.stack([doc["data"]["det_image"] for name, doc in docs if name == "event"])


def as_events(docs):
    """The documents with event pages unpacked (the writers route events as pages of one)."""
    for name, doc in docs:
        if name == "event_page":
            yield from (("event", event) for event in unpack_event_page(doc))
        else:
            yield name, doc


def assert_same(a, b, where="doc"):
    """Documents equal, arrays with the same dtype, shape and values (JSON turns tuples into lists)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def storage_warnings(caplog, level=logging.WARNING):
    """The storage log records of ``level``, but the one about the tests' backups sharing the catalogue's disk."""
    return [r for r in caplog.records if r.name == "nanopilot.storage" and r.levelno == level
            and "same filesystem" not in r.getMessage()]


def test_catalogue_failing_mid_run_keeps_every_document_in_the_backup(catalog, outage, tmp_path, caplog):
    from nanopilot.backup import read_journal, restore

    backup = tmp_path / "backup"
    writer = make_writer(catalog, batch_size=4, backup_directory=backup)
    RE = RunEngine({})
    RE.subscribe(outage.after_events(6))
    RE.subscribe(writer)
    uid, live = inline_scan(RE)
    assert len(live) == 15 and live[-1][1]["exit_status"] == "success"  # the scan went on
    assert writer.status(uid).startswith("backed up") and writer.counts["backed up"] == 1
    assert outage.calls == 1  # the catalogue abandoned for the rest of the run at its first failure
    assert len(storage_warnings(caplog)) == 1
    journal = list(as_events(read_journal(backup / f"{uid}.jsonl")))
    assert [name for name, _ in journal] == [name for name, _ in live]
    assert_same([doc for _, doc in journal], [doc for _, doc in live])
    outage.failing = False
    assert catalog[uid].metadata.get("stop") is None  # the catalogue holds a partial run
    [result] = restore(backup, catalog)
    assert result.action == "replaced", result
    assert catalog[uid].stop["exit_status"] == "success"
    stored = catalog[uid]["primary"]["det_image"].read()
    assert stored.dtype == np.uint32
    np.testing.assert_array_equal(stored, frames(live))


def test_an_outage_is_one_warning_and_one_request_per_run(catalog, outage, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="nanopilot.storage")
    writers = [make_writer(catalog, batch_size=2, backup_directory=tmp_path / name) for name in ("raw", "derived")]
    engines = [RunEngine({}), RunEngine({})]  # e.g. the raw runs and the analysis runs: two writers, one catalogue
    for RE, writer in zip(engines, writers):
        RE.subscribe(writer)
    outage.failing = True
    uids = [(RE(bp.count([det], 6))[0], writer) for _ in range(2) for RE, writer in zip(engines, writers)]
    assert outage.calls == 4  # one failed request per run: no retries per batch
    assert [writer.status(uid).split(":")[0] for uid, writer in uids] == ["backed up"] * 4
    assert len(storage_warnings(caplog)) == 1
    outage.failing = False
    (uid,) = engines[0](bp.count([det], 6))
    assert writers[0].status(uid) == "stored" and not (tmp_path / "raw" / f"{uid}.jsonl").exists()
    assert "works again" in storage_warnings(caplog, logging.INFO)[-1].getMessage()


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Every file of the process stops growing at ``nbytes`` (EFBIG), as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_catalogue_and_backup_both_failing_say_the_run_is_lost(catalog, outage, tmp_path, caplog):
    from nanopilot.backup import read_journal

    backup = tmp_path / "backup"
    writer = make_writer(catalog, batch_size=4, backup_directory=backup)
    RE = RunEngine({})
    RE.subscribe(writer)
    outage.failing = True
    with file_size_limit(60_000):  # the journal fills up at the third frame (22 kB a line)
        uid, live = inline_scan(RE)
    assert live[-1][1]["exit_status"] == "success"
    status = writer.status(uid)
    assert status.startswith("lost") and "File too large" in status and writer.counts["lost"] == 1
    [error] = storage_warnings(caplog, logging.ERROR)
    assert uid in error.getMessage() and "NOT being stored anywhere" in error.getMessage()
    kept = list(read_journal(backup / f"{uid}.jsonl"))  # truncated to whole lines: no torn line
    assert 2 <= len(kept) < len(live) and not [r for r in caplog.records if r.name == "nanopilot.backup"]


def test_the_analysis_run_says_where_its_raw_run_was_stored(catalog, outage, tmp_path, monkeypatch):
    """A session's analysis run reports its raw run "stored"; with Tiled and the backup both failing, "lost" and
    exit_status "fail" instead of success."""
    from nanopilot.session import setup

    monkeypatch.setenv("NANOPILOT_BACKUP_DIR", str(tmp_path / "backup"))
    RE = RunEngine({})
    bl = make_beamline("domains", seed=3, data_mode="inline")
    with setup(RE, detector=bl.detector, x=bl.stage.x, y=bl.stage.y, catalog=catalog) as session:
        stops = []
        session.analysis.subscribe(lambda name, doc: stops.append(doc) if name == "stop" else None)
        scan = bp.grid_scan([bl.detector], bl.stage.y, -1, 1, 3, bl.stage.x, -1, 1, 4)
        RE(scan)
        session.analysis.flush()
        assert stops[-1]["exit_status"] == "success" and stops[-1]["reason"].endswith("raw run storage: stored")
        outage.failing = True
        with file_size_limit(60_000):
            RE(bp.grid_scan([bl.detector], bl.stage.y, -1, 1, 3, bl.stage.x, -1, 1, 4))
            session.analysis.flush()
    assert stops[-1]["exit_status"] == "fail" and "raw run storage: lost: Tiled failed" in stops[-1]["reason"]


def test_torn_last_line_is_skipped_with_a_warning(tmp_path, caplog):
    from nanopilot.backup import RunJournal, encode, read_journal

    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(bp.count([det], 3))
    journal = RunJournal(tmp_path, docs[0][1]["uid"])
    for name, doc in docs[:-1]:
        journal.write(name, doc)
    journal.close(keep=True)
    with open(journal.path, "ab") as file:  # the process died while writing the stop
        file.write(encode(*docs[-1])[:40])
    again = list(as_events(read_journal(journal.path)))
    assert_same([doc for _, doc in again], [doc for _, doc in docs[:-1]])
    [warning] = [r for r in caplog.records if r.name == "nanopilot.backup"]
    assert f"line {len(docs)} skipped" in warning.getMessage()


def test_backup_on_the_catalogues_filesystem_warns(catalog, catalog_dir, caplog):
    make_writer(catalog, backup_directory=catalog_dir / "backup_same_disk")
    assert "same filesystem as the catalogue" in caplog.text
    other = "/dev/shm"
    if os.path.isdir(other) and os.stat(other).st_dev != os.stat(catalog_dir).st_dev:
        caplog.clear()
        make_writer(catalog, backup_directory=f"{other}/nanopilot-test-backup-{os.getpid()}")
        assert "same filesystem" not in caplog.text


@pytest.fixture
def read_only(monkeypatch):
    """Make a directory or an SQLite file read-only: chmod when not root; as root (chmod does not stop root),
    fail the writes as a read-only mount would (EROFS, "attempt to write a readonly database")."""
    restore_modes = []

    def make(path, sqlite_file=False):
        if os.geteuid() != 0:
            restore_modes.append((path, path.stat().st_mode))
            path.chmod(0o444 if sqlite_file else 0o555)
        elif sqlite_file:
            connect = sqlite3.connect
            monkeypatch.setattr(sqlite3, "connect", lambda database, *a, **k: connect(
                database.replace("mode=rw", "mode=ro") if str(path) in str(database) else database, *a, **k))
        else:
            os_open = os.open

            def fake_open(name, flags, *args, **kwargs):
                if str(name).startswith(str(path)) and flags & os.O_CREAT:
                    raise OSError(errno.EROFS, "Read-only file system", str(name))
                return os_open(name, flags, *args, **kwargs)
            monkeypatch.setattr(os, "open", fake_open)

    yield make
    for path, mode in restore_modes:
        path.chmod(mode)


def test_read_only_catalogue_refuses_before_the_scan(catalog, catalog_dir, tmp_path, read_only):
    read_only(catalog_dir)
    RE = RunEngine({})
    with pytest.raises(PermissionError, match=f"catalogue cannot be written: {catalog_dir}"):
        subscribe_writer(RE, catalog, backup_directory=tmp_path / "backup")
    assert not RE.dispatcher.cb_registry.callbacks.get("all")  # nothing subscribed
    with pytest.raises(PermissionError, match=str(catalog_dir)):
        open_catalog(catalog_dir, writable=True)


def test_read_only_catalogue_database_refuses_before_the_scan(catalog, catalog_dir, tmp_path, read_only):
    read_only(catalog_dir / "catalog.db", sqlite_file=True)
    with pytest.raises(PermissionError, match=f"{catalog_dir / 'catalog.db'}.*readonly"):
        make_writer(catalog, backup_directory=tmp_path / "backup")


def test_api_key_over_plain_http_warns(monkeypatch):
    import tiled.client

    import nanopilot.catalog

    monkeypatch.setattr(nanopilot.catalog, "_check_reachable", lambda uri: None)  # no server needed
    monkeypatch.setattr(tiled.client, "from_uri", lambda uri, api_key=None: (uri, api_key))
    monkeypatch.setenv("TILED_API_KEY", "secret")
    with pytest.warns(UserWarning, match="plain text.*https://beamline.example.org:8000/api/v1"):
        assert open_catalog("http://beamline.example.org:8000/api/v1") == (
            "http://beamline.example.org:8000/api/v1", "secret")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for uri in ("https://tiled.example.org/api/v1", "http://127.0.0.1:8000/api/v1", "http://localhost:8000",
                    "http://[::1]:8000/api/v1"):
            open_catalog(uri)


def journal_run(directory, docs):
    from nanopilot.backup import RunJournal

    journal = RunJournal(directory, docs[0][1]["uid"])
    for name, doc in docs:
        journal.write(name, doc)
    journal.close(keep=True)


def test_restore_skips_complete_runs_and_replaces_partial_ones(catalog, tmp_path):
    from nanopilot.backup import RunJournal, restore

    RE = RunEngine({})
    runs = []
    for _ in range(2):
        docs = []
        RE.subscribe(lambda name, doc: docs.append((name, doc)))
        RE(bp.count([det], 8))
        RE.unsubscribe(len(runs))
        runs.append(docs)
        journal_run(tmp_path, docs)
    complete, partial = runs
    for docs, upto in ((complete, len(complete)), (partial, 5)):  # partial: start, descriptor, 3 events
        writer = TiledWriter(catalog, batch_size=1)
        for name, doc in docs[:upto]:
            writer(name, doc)
    partial_uid = partial[0][1]["uid"]
    assert len(catalog[partial_uid]["primary"]["det"].read()) == 3
    running = RunJournal(tmp_path, "a-run-still-being-written")  # locked as by a writer in another session
    running.write(*complete[0])
    results = restore(tmp_path, catalog)
    running.close(keep=True)
    actions = {result.uid: result.action for result in results}
    assert actions == {complete[0][1]["uid"]: "skipped", partial_uid: "replaced", None: "skipped"}
    assert [r.detail for r in results if r.uid is None] == ["still being written by a running session"]
    assert catalog[partial_uid].stop["num_events"] == {"primary": 8}
    assert len(catalog[partial_uid]["primary"]["det"].read()) == 8


def test_cli_restore_puts_every_backed_up_run_back(catalog, catalog_dir, outage, tmp_path, capsys):
    from nanopilot.cli import main

    backup = tmp_path / "backup"
    writer = make_writer(catalog, batch_size=4, backup_directory=backup)
    RE = RunEngine({})
    RE.subscribe(writer)
    outage.failing = True  # the catalogue is down for the whole scan
    uid, live = inline_scan(RE, 2, 3)
    outage.failing = False
    assert uid not in catalog and writer.status(uid).startswith("backed up")
    assert main(["restore", str(backup), "--catalog", str(catalog_dir)]) == 0
    assert f"restored  {uid[:8]}" in capsys.readouterr().out
    np.testing.assert_array_equal(catalog[uid]["primary"]["det_image"].read(), frames(live))
    assert main(["restore", str(backup), "--catalog", str(catalog_dir)]) == 0
    assert f"skipped   {uid[:8]}" in capsys.readouterr().out
    (backup / "garbage.jsonl").write_text("not json\n")
    assert main(["restore", str(backup), "--catalog", str(catalog_dir)]) == 1
    assert "1 failed" in capsys.readouterr().out


@pytest.mark.slow  # run by .ci/run's second pass
@pytest.mark.parametrize("mode", ["inline", "hdf5"])
def test_tiled_server_killed_mid_scan_stalls_once_and_loses_nothing(catalog, catalog_dir, tmp_path, monkeypatch, mode):
    """The server dies at event 5 of 20; after restore the catalogue holds every frame (inline, or registered in
    HDF5 files) and the analysis run (a derived run, written from the analysis' worker thread)."""
    from nanopilot.backup import restore
    from nanopilot.callbacks import NanobeamAnalysis
    from nanopilot.runs import derived_runs
    from test_callbacks import CentroidPredictor

    monkeypatch.setattr(tiled.client.utils, "TILED_RETRY_TIMEOUT", 2.0)  # the client's retry budget (default 45 s)
    files = catalog_dir / f"frames_killed_{mode}"  # HDF5 files: in the catalogue's readable storage
    files.mkdir()
    with tiled_serve(catalog_dir, "faultstestkey", monkeypatch) as (server, remote, _):
        writer = make_writer(remote, batch_size=2, backup_directory=tmp_path / "backup")
        analysis = NanobeamAnalysis(CentroidPredictor(), batch_size=4)
        analysis.subscribe(make_writer(remote, batch_size=2, backup_directory=tmp_path / "backup"))
        RE = RunEngine({})
        stamps = {}

        def kill_at_event_5_and_time_the_stop(name, doc):
            if name == "event" and doc["seq_num"] == 5:
                server.kill()
                server.wait()
                stamps["kill"] = time.monotonic()
            stamps[name] = time.monotonic()
        RE.subscribe(kill_at_event_5_and_time_the_stop)
        RE.subscribe(writer)
        RE.subscribe(analysis)
        uid, live = inline_scan(RE, 4, 5, mode=mode, directory=files)
        assert analysis.close()
    assert live[-1][1]["exit_status"] == "success" and writer.status(uid).startswith("backed up")
    # one retry budget per outage (the raw run's and the analysis run's writers share it), not one per batch (8
    # left) nor one per run in flight
    assert stamps["stop"] - stamps["kill"] < 2.0 + 2.5
    results = restore(tmp_path / "backup", catalog)
    assert len(results) == 2 and all(result.ok for result in results), results
    if mode == "inline":
        expected = frames(live)
    else:
        [path] = files.glob("*.h5")
        with h5py.File(path, "r") as file:
            expected = file["/entry/data/data"][()]
    assert len(expected) == 20
    np.testing.assert_array_equal(catalog[uid]["primary"]["det_image"].read(), expected)
    [derived] = derived_runs(catalog, uid).values()
    assert derived.stop["exit_status"] == "success"
    np.testing.assert_array_equal(derived["primary"]["strain"].read(), analysis.maps[uid].scattered()["strain"])
