"""The session installer and the closed-loop demo."""

import bluesky.plans as bp
import numpy as np
from bluesky import RunEngine
from tiled.queries import Key

from nanopilot.callbacks import published_maps, publish_maps
from nanopilot.cli import main
from nanopilot.session import setup
from nanopilot.sim_devices import make_beamline


def test_setup_installs_analysis_texture_storage_and_publishes_the_maps(catalog, tmp_path):
    bl = make_beamline("domains", seed=2)
    RE = RunEngine({})
    try:
        session = setup(RE, detector=bl.detector, x=bl.stage.x, y=bl.stage.y, catalog=catalog,
                        plot=tmp_path / "maps_{uid}.png")
        assert published_maps() is session.maps
        (uid,) = RE(bp.grid_scan([bl.detector], bl.stage.y, -1, 1, 6, bl.stage.x, -1, 1, 6))
        assert session.analysis.flush(timeout=120)
        run = session.maps[uid]
        assert len(run) == 36 and np.isfinite(run.gridded("strain")).sum() >= 30
        assert "texture" in run.scattered()  # labels written by the texture callback at the analysis' stop
        assert (tmp_path / f"maps_{uid[:8]}.png").exists()
        assert catalog[uid]["primary"]["det_image"].shape == (36, 64, 64)
        analysed = catalog.search(Key("raw_uid") == uid)
        assert len(analysed) >= 1  # the analysis run (and the texture run) beside the raw run
    finally:
        publish_maps(None)


def test_demo_growth_part(tmp_path, capsys):
    assert main(["demo", "--only", "grow", "--catalog", str(tmp_path / "cat"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "grow_until (growth)" in out and "shutter closed" in out
    assert "nanopilot replay --catalog" in out and (tmp_path / "out" / "growth.png").exists()
