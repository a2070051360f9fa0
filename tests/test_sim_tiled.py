"""The simulated beamline's runs in the embedded Tiled catalogue, inline and HDF5 (stream_resource) data modes."""

import os

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter
from event_model import DocumentNames, schema_validators

from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.estimates import OK, Estimates
from nanopilot.physics import Instrument
from nanopilot.sim_devices import make_beamline


def run_grid(beamline, catalog=None):
    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    if catalog is not None:
        RE.subscribe(TiledWriter(catalog))
    stage = beamline.stage
    (uid,) = RE(bp.grid_scan([beamline.detector], stage.y, -0.3, 0.3, 3, stage.x, -0.4, 0.4, 4))
    return uid, docs


def test_hdf5_mode_writes_the_same_pixels_with_valid_stream_documents(catalog, catalog_dir):
    directory = catalog_dir / "hdf5"
    directory.mkdir(exist_ok=True)
    inline_uid, inline_docs = run_grid(make_beamline("domains", seed=3), catalog)
    uid, docs = run_grid(make_beamline("domains", seed=3, data_mode="hdf5", hdf5_directory=directory), catalog)
    for name, doc in docs:
        schema_validators[DocumentNames[name]].validate(doc)
    names = [name for name, _ in docs]
    assert names.count("stream_resource") == 1 and names.count("stream_datum") == 12
    descriptor = next(doc for name, doc in docs if name == "descriptor")
    assert descriptor["data_keys"]["det_image"]["external"] == "STREAM:"
    events = [doc for name, doc in docs if name == "event"]
    assert "det_image" not in events[0]["data"] and len(events) == 12
    resource = next(doc for name, doc in docs if name == "stream_resource")
    path = resource["uri"].removeprefix("file://localhost")
    inline_frames = np.stack([doc["data"]["det_image"] for name, doc in inline_docs if name == "event"])
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f[resource["parameters"]["dataset"]][()], inline_frames)
    # both runs read back from the catalogue with the right frames
    np.testing.assert_array_equal(catalog[uid]["primary"]["det_image"].read(), inline_frames)
    np.testing.assert_array_equal(catalog[inline_uid]["primary"]["det_image"].read(), inline_frames)
    totals = catalog[uid]["primary"]["det_total"].read()
    np.testing.assert_array_equal(totals, inline_frames.sum(axis=(1, 2)))


@pytest.mark.parametrize("problem", ["missing", "unset", "unwritable"])
def test_bad_hdf5_directory_fails_at_stage_time(tmp_path, problem):
    unwritable = "/proc" if os.geteuid() == 0 else tmp_path  # root writes anywhere but in a pseudo-filesystem
    directory = {"missing": tmp_path / "nowhere", "unset": None, "unwritable": unwritable}[problem]
    if problem == "unwritable" and unwritable is tmp_path:
        tmp_path.chmod(0o500)
    beamline = make_beamline(data_mode="hdf5", hdf5_directory=directory)
    RE = RunEngine({})
    docs = []
    with pytest.raises((FileNotFoundError, PermissionError, ValueError), match="directory"):
        RE(bp.grid_scan([beamline.detector], beamline.stage.y, 1, 2, 2, beamline.stage.x, 1, 2, 2),
           lambda name, doc: docs.append(name))
    assert "event" not in docs and beamline.stage.position == (0.0, 0.0)
    with pytest.raises(RuntimeError, match="stage it"):
        beamline.detector.trigger()


def fly_scan(beamline, catalog, *callbacks):
    """Run a staged fly scan (stream "fly") of 50 x 2 frames in pages of 32 into the catalogue; its documents."""
    flyer = beamline.flyer
    flyer.configure({"num_x": 50, "num_y": 2, "y_stop": 0.1, "page_size": 32})
    RE = RunEngine({})
    RE.subscribe(TiledWriter(catalog))
    docs = []
    for callback in (lambda name, doc: docs.append((name, doc)), *callbacks):
        RE.subscribe(callback)

    @bpp.stage_decorator([flyer])
    @bpp.run_decorator(md={"motors": ["stage_y", "stage_x"]})
    def fly():
        yield from bps.declare_stream(flyer, name="fly", collect=True)
        yield from bps.kickoff(flyer, wait=True)
        yield from bps.complete(flyer, wait=True)
        yield from bps.collect(flyer, name="fly")

    (uid,) = RE(fly())
    return uid, docs


def test_fly_scan_pages_are_stored(catalog):
    uid, docs = fly_scan(make_beamline("published", seed=1), catalog)
    frames = np.concatenate([doc["data"]["det_image"] for name, doc in docs if name == "event_page"])
    np.testing.assert_array_equal(catalog[uid]["fly"]["det_image"].read(), frames)
    assert frames.shape == (100, 64, 64)


class TotalCounts:
    """A stand-in predictor for the analysis plumbing: every estimate is the frame's total counts."""

    instrument = Instrument()

    def predict(self, frames, refine=False):
        total = np.asarray(frames, dtype=np.float64).sum(axis=(1, 2))
        return Estimates.from_params(np.repeat(total[:, None], 3, axis=1), np.full(len(total), OK, dtype=object))


def test_hdf5_fly_scan_is_stored_and_analysed_frame_by_frame(catalog, catalog_dir):
    directory = catalog_dir / "hdf5"
    directory.mkdir(exist_ok=True)
    _, inline_docs = fly_scan(make_beamline("published", seed=8, count_rate=7000.0), catalog)
    frames = np.concatenate([doc["data"]["det_image"] for name, doc in inline_docs if name == "event_page"])
    analysis = NanobeamAnalysis(TotalCounts(), threaded=False)
    uid, docs = fly_scan(make_beamline("published", seed=8, count_rate=7000.0, data_mode="hdf5",
                                       hdf5_directory=directory), catalog, analysis)
    for name, doc in docs:
        schema_validators[DocumentNames[name]].validate(doc)
    assert [name for name, _ in docs].count("stream_datum") == 1
    np.testing.assert_array_equal(catalog[uid]["fly"]["det_image"].read(), frames)
    np.testing.assert_array_equal(catalog[uid]["fly"]["det_total"].read(), frames.sum(axis=(1, 2)))
    points = analysis.maps[uid]
    assert len(points) == 100 and points.received == 100 and points.errors == points.skipped == 0
    np.testing.assert_array_equal(points.scattered()["chi"], frames.sum(axis=(1, 2)))
    np.testing.assert_allclose(points.scattered()["stage_y"], np.repeat([0.0, 0.1], 50))
