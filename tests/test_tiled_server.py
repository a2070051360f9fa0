"""Choosing stored runs (nanopilot.runs), the same in the embedded catalogue and through a Tiled server set up as
docs/tiled_server.md says; clear errors for a missing catalogue, an unreachable server, a wrong key or path."""

import glob
import logging
import time

import h5py
import numpy as np
import pytest
from bluesky_tiled_plugins import TiledWriter
from event_model import compose_run
from tiled.client.container import Container
from tiled.queries import Key

from conftest import free_port, tiled_serve
from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.catalog import open_catalog
from nanopilot.cli import main
from nanopilot.replay import replay
from nanopilot.runs import last_scan_id, select_run
from nanopilot.storage import make_writer
from test_callbacks import CentroidPredictor
from test_replay import FIELDS, live_scan

T0 = time.time() - 1000  # the runs stored by assert_selection are older than any scan of the test


def store_run(catalog, uid, when, **start):
    """A run of one start and one stop document with ``uid``, start time ``when`` and more ``start`` metadata."""
    bundle = compose_run(uid=uid, time=when, metadata=start)
    writer = TiledWriter(catalog)
    writer("start", bundle.start_doc)
    writer("stop", bundle.compose_stop())


def assert_selection(catalog):
    """Raw runs by negative index (newest start time first, derived runs skipped), scan id (shared: the newest,
    saying so), uid prefix (digits only: after scan ids); stored out of time order, as restored runs are."""
    a, b, c, d = "23186301-aaaa-4aaa-8aaa-aaaaaaaaaaaa", "abcdef12-bbbb-4bbb-8bbb-bbbbbbbbbbbb", \
        "abcde999-cccc-4ccc-8ccc-cccccccccccc", "d0000000-dddd-4ddd-8ddd-dddddddddddd"
    store_run(catalog, a, T0, scan_id=7, plan_name="grid_scan")
    store_run(catalog, b, T0 + 1, scan_id=7, plan_name="steered_map")
    store_run(catalog, d, T0 + 2, raw_uid=b, plan_name="nanopilot_analysis")  # derived: never chosen
    store_run(catalog, c, T0 - 1, scan_id=8, plan_name="count")  # stored last, started first (restored)

    def uid(key):
        return select_run(catalog, key).run.start["uid"]

    assert [uid("-1"), uid("-2"), uid("-3")] == [b, a, c]
    with pytest.raises(ValueError, match="no raw run -4: the catalogue holds 3 raw run"):
        uid("-4")
    shared = select_run(catalog, "7")
    assert shared.run.start["uid"] == b and "shared by 2 raw runs" in shared.note and "uid 23186301" in shared.note
    assert uid("8") == c and select_run(catalog, "8").note == ""
    assert uid("23186") == a and uid("abcdef") == b and uid(c.upper()) == c  # no scan id 23186: a uid prefix
    with pytest.raises(ValueError, match="abcde matches several runs.*uid abcdef12.*uid abcde999"):
        uid("abcde")
    with pytest.raises(ValueError, match="d0000000 is a derived run .* of raw run abcdef12"):
        uid("d0000")
    with pytest.raises(ValueError, match="no raw run with scan id 99"):
        uid("99")
    for key in ("ab", "-0", "0"):
        with pytest.raises(ValueError, match=f"'{key}' is not a run"):
            uid(key)
    assert last_scan_id(catalog) == 8
    return b


@pytest.mark.slow  # run by .ci/run's second pass
def test_runs_are_selected_in_the_embedded_catalogue(tmp_path, capsys):
    catalog = open_catalog(tmp_path / "catalog", create=True)
    with pytest.raises(ValueError, match="is empty"):
        select_run(catalog, "-1")
    b = assert_selection(catalog)
    assert main(["replay", "7", "--catalog", str(tmp_path / "catalog")]) == 1  # the run has no frames
    out = capsys.readouterr().out
    assert f"replaying scan 7 (uid {b[:8]}), plan steered_map, " in out and "note: scan id 7 is shared" in out


@pytest.mark.slow  # run by .ci/run's second pass
def test_the_shipped_server_config_stores_selects_exports_and_replays(tmp_path, monkeypatch, capsys):
    detector = tmp_path / "detector"  # the detector's HDF5 directory, outside the server's own directory
    with tiled_serve(tmp_path / "server", "configtestkey", monkeypatch, detector) as (_, remote, uri):
        assert type(remote).__name__ == "CatalogOfBlueskyRuns"  # the top level is declared a catalogue of runs
        assert_selection(remote)
        uid, live = live_scan(remote, detector, "hdf5", 2, 4)  # scan id 1, frames in HDF5 files
        # the server reads the frames from the detector's directory
        [h5] = glob.glob(str(detector / "*.h5"))
        with h5py.File(h5, "r") as file:
            np.testing.assert_array_equal(remote[uid]["primary"]["det_image"].read(), file["/entry/data/data"][()])
        analysis = NanobeamAnalysis(CentroidPredictor(), batch_size=5, threaded=False)
        analysis.subscribe(make_writer(remote, backup_directory=tmp_path / "backup"))  # a derived run, stored
        assert replay(remote[select_run(remote, uid[:6]).run.start["uid"]], analysis) == 8
        again = analysis.maps[uid].scattered()
        for field in FIELDS:
            np.testing.assert_array_equal(again[field], live[field], err_msg=field)
        assert select_run(remote, "-1").run.start["uid"] == uid  # the newer analysis run is skipped
        # derived runs: Key("start.raw_uid") on any catalogue; Key("raw_uid") only where the top level is
        # declared a catalogue of Bluesky runs (a plain container's search takes the key as it is)
        assert len(remote.search(Key("start.raw_uid") == uid)) == 1
        assert len(remote.search(Key("raw_uid") == uid)) == 1
        assert len(Container.search(remote, Key("raw_uid") == uid)) == 0
        second, _ = live_scan(remote, tmp_path / "inline", "inline", 2, 2)  # scan id 1 again (a new RunEngine)
        names = [name for name, _ in remote[second].documents()]  # the JSON-seq exporter of the config
        assert names[0] == "start" and names[-1] == "stop" and names.count("event") == 4
        shared = select_run(remote, "1")
        assert shared.run.start["uid"] == second and f"uid {uid[:8]}" in shared.note
        capsys.readouterr()
        assert main(["replay", "-2", "--catalog", uri, "--model", "default"]) == 0
        assert f"replaying scan 1 (uid {uid[:8]}), plan grid_scan, " in capsys.readouterr().out
        monkeypatch.setenv("TILED_API_KEY", "wrongkey")
        with pytest.raises(PermissionError, match="refused the API key in \\$TILED_API_KEY"):
            open_catalog(uri)
        monkeypatch.setenv("TILED_API_KEY", "configtestkey")
        with pytest.raises(ValueError, match="is not a Tiled catalogue \\(HTTP 404\\): check the path"):
            open_catalog(uri.replace("/api/v1", "/api/v9"))


@pytest.mark.slow  # run by .ci/run's second pass
def test_a_missing_catalogue_is_refused_unless_created(tmp_path, caplog, capsys):
    missing = tmp_path / "typo"
    with pytest.raises(FileNotFoundError, match=f"no catalogue at {missing}: check the path"):
        open_catalog(missing)
    assert main(["replay", "-1", "--catalog", str(missing)]) == 1
    assert f"error: no catalogue at {missing}" in capsys.readouterr().err
    assert not missing.exists()  # nothing created
    with caplog.at_level(logging.WARNING, logger="nanopilot.catalog"):
        assert len(open_catalog(missing, create=True)) == 0
    assert f"creating a new, empty catalogue at {missing}" in caplog.text
    assert len(open_catalog(missing)) == 0  # now it exists


def test_an_unreachable_server_is_one_line_naming_it(capsys):
    uri = f"http://127.0.0.1:{free_port()}/api/v1"  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=f"cannot reach the Tiled server at {uri} .*check that it is running"):
        open_catalog(uri)
    assert time.monotonic() - t0 < 5  # no retries
    assert main(["replay", "-1", "--catalog", uri]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and uri in err and "Traceback" not in err
