"""The session installer and the closed-loop demo."""

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
from tiled.queries import Key

from nanopilot.cli import main
from nanopilot.plans.common import resolve_maps
from nanopilot.session import setup
from nanopilot.sim_devices import make_beamline


def maps_for_plans(RE):
    """The LiveMaps that ``RE`` gives a plan that asks for them (ValueError if it has none)."""
    found = []

    def ask():
        found.append((yield from resolve_maps(None)))

    RE(ask())
    return found[0]


def test_setup_installs_analysis_texture_storage_and_gives_the_plans_the_maps(catalog, tmp_path):
    bl = make_beamline("domains", seed=2)
    RE = RunEngine({})
    with pytest.raises(ValueError, match="no live analysis"):
        maps_for_plans(RE)
    with setup(RE, detector=bl.detector, x=bl.stage.x, y=bl.stage.y, catalog=catalog,
               plot=tmp_path / "maps_{uid}.png") as session:
        assert maps_for_plans(RE) is session.maps
        with pytest.raises(ValueError, match="no live analysis"):
            maps_for_plans(RunEngine({}))  # another RunEngine: not this session's
        assert session.devices == {"detector": bl.detector, "x": bl.stage.x, "y": bl.stage.y}
        (uid,) = RE(bp.grid_scan([bl.detector], bl.stage.y, -1, 1, 6, bl.stage.x, -1, 1, 6))
        assert session.analysis.flush(timeout=120)
        run = session.maps[uid]
        assert len(run) == 36 and np.isfinite(run.gridded("strain")).sum() >= 30
        assert "texture" in run.scattered()  # labels written by the texture callback at the analysis' stop
        assert (tmp_path / f"maps_{uid[:8]}.png").exists()
        assert catalog[uid]["primary"]["det_image"].shape == (36, 64, 64)
        analysed = catalog.search(Key("raw_uid") == uid)
        assert len(analysed) == 2  # the analysis run and the texture run beside the raw run
    with pytest.raises(ValueError, match="no live analysis"):
        maps_for_plans(RE)  # closed


@pytest.mark.slow  # run by .ci/run's second pass
def test_demo_growth_part_and_its_replay_command(tmp_path, capsys):
    """The replay command the demo prints picks the growth run and analyses it again with the thickness model its
    live analysis used: the same map, bit for bit (the network's estimates do not depend on the batching)."""
    from nanopilot.catalog import open_catalog
    from nanopilot.model import THICKNESS_MODEL, load_model, shipped_model_path
    from nanopilot.runs import derived_runs

    catalog_dir = tmp_path / "cat"
    assert main(["demo", "--only", "grow", "--catalog", str(catalog_dir), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "grow_until (growth)" in out and "shutter closed" in out and (tmp_path / "out" / "growth.png").exists()
    [command] = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("replay the grow_until")]
    assert command.startswith(f"nanopilot replay --catalog {catalog_dir} ")
    assert main([*command.split()[1:], "--write"]) == 0
    out = capsys.readouterr().out
    assert "replaying scan 1 (uid " in out and "plan grow_until" in out and "model thickness: the one" in out
    uid = open_catalog(catalog_dir)[command.split()[-1]].start["uid"]
    live, again = sorted((run for run in derived_runs(open_catalog(catalog_dir), uid).values()
                          if run.start["plan_name"] == "nanopilot_analysis"), key=lambda run: run.start["time"])
    sha = load_model(shipped_model_path(THICKNESS_MODEL)).metadata["weights"]["sha256"]
    assert live.start["model"]["weights"]["sha256"] == again.start["model"]["weights"]["sha256"] == sha
    for field in ("raw_seq_num", "status", "stage_x", "stage_y", "thickness", "strain", "omega", "chi",
                  "thickness_std", "background"):
        np.testing.assert_array_equal(again["primary"][field].read(), live["primary"][field].read(), err_msg=field)


@pytest.mark.slow  # run by .ci/run's second pass
def test_ipython_session_driven_by_a_script(tmp_path):
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "session_script.py"
    result = tmp_path / "result.json"
    script.write_text(
        "uid, = RE(bp.grid_scan([det], y, -1, 1, 4, x, -1, 1, 5))\n"
        "analysis.flush()\n"
        "import json\n"
        "newest = select_run(catalog, -1).run.start['uid']\n"  # the analysis and texture runs are newer
        f"json.dump({{'points': len(maps[uid]), 'stored': uid in catalog, 'ipython': get_ipython() is not None, "
        f"'selected': newest == uid}}, open({str(result)!r}, 'w'))\n")
    nanopilot = os.path.join(os.path.dirname(sys.executable), "nanopilot")
    done = subprocess.run([nanopilot, "session", str(script), "--catalog", str(tmp_path / "cat"),
                           "--plot", str(tmp_path / "maps_{uid}.png")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "MPLBACKEND": "Agg"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "nanopilot session:" in done.stdout  # the cheat sheet
    assert json.loads(result.read_text()) == {"points": 20, "stored": True, "ipython": True, "selected": True}


def test_session_devices_file_must_define_the_devices(tmp_path, capsys):
    bad = tmp_path / "devices.py"
    bad.write_text("detector = None\n")
    assert main(["session", "--devices", str(bad), "--catalog", str(tmp_path / "cat")]) == 1
    assert "missing: x, y" in capsys.readouterr().err


def test_setup_takes_a_detector_mask_file_and_refuses_a_wrong_one_before_subscribing(tmp_path):
    import pytest

    bl = make_beamline("domains", seed=2)
    mask = np.zeros((64, 64), dtype=bool)
    mask[:, 31] = True
    np.save(tmp_path / "mask.npy", mask)
    RE = RunEngine({})
    with setup(RE, detector=bl.detector, x=bl.stage.x, y=bl.stage.y, mask=tmp_path / "mask.npy") as session:
        np.testing.assert_array_equal(session.analysis.predictor.mask, mask)
        RE(bp.grid_scan([bl.detector], bl.stage.y, -1, 1, 3, bl.stage.x, -1, 1, 3))
        session.analysis.flush()
        assert (session.maps.current.scattered()["status"] == "ok").sum() >= 8
    np.save(tmp_path / "wrong.npy", np.zeros((128, 128), dtype=bool))
    RE = RunEngine({})
    with pytest.raises(ValueError, match="wrong.npy has shape"):
        setup(RE, detector=bl.detector, x=bl.stage.x, y=bl.stage.y, mask=tmp_path / "wrong.npy")
    assert not any(RE.dispatcher.cb_registry.callbacks.values())  # nothing was subscribed
