"""Reading stored runs back the ways the README documents: databroker's v1 API, and per-key reads of square frames."""

import bluesky.plans as bp
import numpy as np
from bluesky import RunEngine
from ophyd.sim import det, motor

from nanopilot.catalog import open_catalog, v1_broker
from nanopilot.sim_devices import make_beamline
from nanopilot.storage import subscribe_writer


def stored_run(catalog, tmp_path, plan_of):
    """(uid, documents) of ``plan_of(devices)`` run and stored in ``catalog``."""
    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    subscribe_writer(RE, catalog, batch_size=5, backup_directory=tmp_path / "backup")
    (uid,) = RE(plan_of())
    return uid, docs


def test_databroker_v1_table_has_the_scan_rows_and_leaves_the_catalogue_as_it_was(catalog, catalog_dir, tmp_path):
    uid, docs = stored_run(catalog, tmp_path, lambda: bp.scan([det], motor, -1, 1, 5))
    events = [doc for name, doc in docs if name == "event"]
    db = v1_broker(catalog)
    table = db[uid].table()
    assert list(table.index) == [1, 2, 3, 4, 5]  # seq_num
    np.testing.assert_allclose(table["motor"], np.linspace(-1, 1, 5))
    np.testing.assert_allclose(table["det"], [e["data"]["det"] for e in events])
    assert db[-1].start["uid"] == uid
    # this client and new ones still give the v3 runs (per-key reads) that nanopilot's replay reads
    for client in (catalog, open_catalog(catalog_dir)):
        np.testing.assert_allclose(client[uid]["primary"]["motor"].read(), np.linspace(-1, 1, 5))


def test_square_inline_frames_read_key_by_key(catalog, tmp_path):
    bl = make_beamline("published", seed=1)
    uid, docs = stored_run(catalog, tmp_path, lambda: bp.grid_scan([bl.detector], bl.stage.y, -0.3, 0.3, 3,
                                                                   bl.stage.x, -0.4, 0.4, 4))
    events = [doc for name, doc in docs if name == "event"]
    frames = np.stack([e["data"]["det_image"] for e in events])
    assert frames.shape[1] == frames.shape[2]  # square: the case whose whole-stream xarray repeats a dimension
    primary = catalog[uid]["primary"]
    np.testing.assert_array_equal(primary["det_image"].read(), frames)
    np.testing.assert_array_equal(primary["det_image"][2], frames[2])
    scalars = primary.read(["stage_x", "stage_y", "det_total"]).to_dataframe()
    np.testing.assert_allclose(scalars["stage_x"], [e["data"]["stage_x"] for e in events])
    np.testing.assert_allclose(scalars["det_total"], [e["data"]["det_total"] for e in events])
    table = primary.base["internal"].read()
    assert "det_image" not in table and list(table["seq_num"]) == list(range(1, len(events) + 1))
