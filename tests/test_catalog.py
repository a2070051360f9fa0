"""The embedded Tiled catalogue and the TiledWriter subscription."""

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd.sim import det, motor

from nanopilot.catalog import default_backup_dir, default_data_dir, open_catalog
from nanopilot.storage import subscribe_writer


def test_default_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NANOPILOT_DATA_DIR", str(tmp_path / "np"))
    assert default_data_dir() == tmp_path / "np"
    monkeypatch.delenv("NANOPILOT_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "nanopilot"
    assert default_backup_dir() == tmp_path / "xdg" / "nanopilot" / "backup"
    monkeypatch.setenv("NANOPILOT_BACKUP_DIR", str(tmp_path / "other_disk"))
    assert default_backup_dir() == tmp_path / "other_disk"


def test_scan_is_stored_and_read_back(tmp_path):
    cat = open_catalog(tmp_path / "catalog", create=True)
    RE = RunEngine({})
    subscribe_writer(RE, cat, batch_size=2, backup_directory=tmp_path / "backup")
    (uid,) = RE(bp.scan([det], motor, -1, 1, 5))
    run = cat[uid]
    np.testing.assert_allclose(run["primary"]["motor"].read(), np.linspace(-1, 1, 5))
    assert run.stop["exit_status"] == "success"
    names = [name for name, _ in run.documents()]
    assert names[0] == "start" and names[-1] == "stop" and names.count("event") == 5
    # reopening the same directory sees the run (no re-initialisation)
    assert open_catalog(tmp_path / "catalog")[uid].start["uid"] == uid


def test_bad_locations_fail_clearly(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="catalogue directory"):
        open_catalog(blocker / "catalog", create=True)
    with pytest.raises(ValueError, match="batch_size"):
        subscribe_writer(RunEngine({}), None, batch_size=0)
    with pytest.raises(ValueError, match="backup directory"):
        subscribe_writer(RunEngine({}), None, backup_directory=blocker / "backup")

