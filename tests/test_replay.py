"""Stored runs replayed through the same callbacks reproduce the live maps; analyses are stored beside them."""

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter
from tiled.queries import Key

from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.replay import iter_documents, replay
from nanopilot.sim_devices import make_beamline
from nanopilot.storage import subscribe_writer
from test_callbacks import CentroidPredictor

FIELDS = ("strain", "omega", "chi", "strain_std", "stage_x", "stage_y", "seq_num")


def live_scan(catalog, tmp_dir, mode, n_y=4, n_x=6):
    bl = make_beamline("domains", seed=11, data_mode=mode, hdf5_directory=str(tmp_dir))
    analysis = NanobeamAnalysis(CentroidPredictor(), batch_size=5, threaded=False)
    RE = RunEngine({})
    subscribe_writer(RE, catalog, batch_size=10, backup_directory=tmp_dir / "backup")
    RE.subscribe(analysis)
    (uid,) = RE(bp.grid_scan([bl.detector], bl.stage.y, -1, 1, n_y, bl.stage.x, -1, 1, n_x, snake_axes=True))
    return uid, analysis.maps[uid].scattered()


@pytest.mark.parametrize("mode", ["inline", "hdf5"])
def test_replay_reproduces_the_live_maps(catalog, catalog_dir, mode):
    uid, live = live_scan(catalog, catalog_dir / f"frames_{mode}", mode)
    analysis = NanobeamAnalysis(CentroidPredictor(), batch_size=5, threaded=False)
    n = replay(catalog[uid], analysis)
    assert n == 24
    again = analysis.maps[uid].scattered()
    for field in FIELDS:
        np.testing.assert_array_equal(again[field], live[field], err_msg=field)
    assert list(again["status"]) == list(live["status"])


def test_replay_is_lazy_in_chunks(catalog, catalog_dir):
    uid, _ = live_scan(catalog, catalog_dir / "frames_lazy", "inline", 3, 5)
    docs = list(iter_documents(catalog[uid], chunk_size=4))
    names = [n for n, _ in docs]
    assert names[:2] == ["start", "descriptor"] and names[-1] == "stop"
    sizes = [len(d["seq_num"]) for n, d in docs if n == "event_page"]
    assert sizes == [4, 4, 4, 3]
    frames = np.concatenate([np.asarray(d["data"]["det_image"]) for n, d in docs if n == "event_page"])
    np.testing.assert_array_equal(frames, catalog[uid]["primary"]["det_image"].read())
    with pytest.raises(ValueError, match="chunk_size"):
        list(iter_documents(catalog[uid], chunk_size=0))


def test_analysis_run_is_stored_next_to_the_raw_run(catalog, catalog_dir):
    uid, live = live_scan(catalog, catalog_dir / "frames_write", "inline", 2, 3)
    analysis = NanobeamAnalysis(CentroidPredictor(), threaded=False)
    analysis.subscribe(TiledWriter(catalog, batch_size=100))
    replay(catalog[uid], analysis)
    results = catalog.search(Key("raw_uid") == uid)
    assert len(results) == 1
    stored = results.values().first()
    np.testing.assert_array_equal(stored["primary"]["strain"].read(), live["strain"])
    assert stored["summary"]["frames_ok"].read()[0] == 6
    assert stored.stop["exit_status"] == "success"


@pytest.mark.slow  # run by .ci/run's second pass
def test_cli_replay_writes_the_analysis_and_a_plot(catalog, catalog_dir, tmp_path, capsys):
    from nanopilot.cli import main

    uid, _ = live_scan(catalog, catalog_dir / "frames_cli", "inline", 3, 4)
    png = tmp_path / "replayed.png"
    assert main(["replay", uid[:8], "--catalog", str(catalog_dir), "--write", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert f"replaying scan 1 (uid {uid[:8]}), plan grid_scan" in out and "frames ok" in out
    assert png.stat().st_size > 10_000
    stored = catalog.search(Key("raw_uid") == uid).values().last()
    assert stored.start["model"]["class"] == "Predictor" and len(stored["primary"]["strain"].read()) == 12
    assert main(["replay", "nosuchrun", "--catalog", str(catalog_dir)]) == 1


# ---------------------------------------------------------------- which model a replay uses
def shipped_sha(name):
    from nanopilot.model import load_model, shipped_model_path

    return load_model(shipped_model_path(name)).metadata["weights"]["sha256"]


def store_analysis(catalog, uid, predictor):
    """Analyse stored raw run ``uid`` with ``predictor`` and store the analysis run; returns its start."""
    analysis = NanobeamAnalysis(predictor, threaded=False)
    analysis.subscribe(TiledWriter(catalog, batch_size=100))
    replay(catalog[uid], analysis)
    return catalog.search(Key("raw_uid") == uid).values().last().start


def cli_replay(catalog, catalog_dir, uid, *options):
    """``nanopilot replay UID --write OPTIONS``: (exit code, the analyses of ``uid`` stored, oldest first)."""
    from nanopilot.cli import main

    code = main(["replay", uid[:8], "--catalog", str(catalog_dir), "--write", *options])
    analyses = [run.start for run in catalog.search(Key("raw_uid") == uid).values()]
    return code, sorted(analyses, key=lambda start: start["time"])


def tiny_model_file(directory):
    """A one-member model of the tiny test architecture saved as ``directory/tiny``; returns its sidecar."""
    import torch
    from test_model import TINY, tiny_metadata

    from nanopilot.model import NanobeamNN, save_model

    torch.manual_seed(5)
    return save_model(directory / "tiny", [NanobeamNN(TINY)], {"name": "tiny", **tiny_metadata()})


def test_replay_uses_the_model_of_the_stored_analysis(catalog, catalog_dir, capsys):
    from nanopilot.model import Predictor

    uid, _ = live_scan(catalog, catalog_dir / "frames_model_a", "inline", 2, 3)
    first = store_analysis(catalog, uid, Predictor.load("thickness"))
    capsys.readouterr()
    code, analyses = cli_replay(catalog, catalog_dir, uid)
    out = capsys.readouterr().out
    assert code == 0 and len(analyses) == 2
    assert analyses[-1]["model"]["weights"]["sha256"] == shipped_sha("thickness") != shipped_sha("default")
    assert f"model thickness: the one the stored analysis {first['uid'][:8]} used" in out


def test_replay_without_a_stored_analysis_uses_the_shipped_default(catalog, catalog_dir, capsys):
    uid, _ = live_scan(catalog, catalog_dir / "frames_model_none", "inline", 2, 3)
    code, analyses = cli_replay(catalog, catalog_dir, uid)
    assert code == 0 and len(analyses) == 1
    assert analyses[0]["model"]["weights"]["sha256"] == shipped_sha("default")
    assert "(the shipped default): no analysis stored for this run" in capsys.readouterr().out


def test_replay_errors_before_analysing_when_the_stored_model_is_missing(catalog, catalog_dir, tmp_path, capsys):
    from nanopilot.model import Predictor

    uid, _ = live_scan(catalog, catalog_dir / "frames_model_gone", "inline", 2, 3)
    sidecar = tiny_model_file(tmp_path)
    first = store_analysis(catalog, uid, Predictor.load(sidecar))
    sha = first["model"]["weights"]["sha256"]
    sidecar.unlink()
    sidecar.with_suffix(".pt").unlink()
    capsys.readouterr()
    code, analyses = cli_replay(catalog, catalog_dir, uid)
    err = capsys.readouterr().err
    assert code == 1 and len(analyses) == 1  # nothing analysed, nothing stored
    for part in ("'tiny'", sha[:12], "tiny.pt", first["uid"][:8], "pass --model"):
        assert part in err, part
    from nanopilot.replay import stored_model

    with pytest.raises(FileNotFoundError, match=f"model 'tiny' \\(sha256 {sha[:12]}"):
        stored_model(catalog, catalog[uid])


def test_a_model_file_is_found_at_the_path_recorded(catalog, catalog_dir, tmp_path, monkeypatch, capsys):
    from nanopilot.model import Predictor

    uid, _ = live_scan(catalog, catalog_dir / "frames_model_file", "inline", 2, 3)
    sidecar = tiny_model_file(tmp_path / "models")
    first = store_analysis(catalog, uid, Predictor.load(sidecar))
    monkeypatch.chdir(tmp_path)  # not where the model is
    capsys.readouterr()
    code, analyses = cli_replay(catalog, catalog_dir, uid)
    assert code == 0 and analyses[-1]["model"]["weights"]["sha256"] == first["model"]["weights"]["sha256"]
    assert f"model tiny: the one the stored analysis {first['uid'][:8]} used" in capsys.readouterr().out


def test_replay_model_option_overrides_the_stored_analysis(catalog, catalog_dir, capsys):
    from nanopilot.model import Predictor

    uid, _ = live_scan(catalog, catalog_dir / "frames_model_override", "inline", 2, 3)
    store_analysis(catalog, uid, Predictor.load("thickness"))
    capsys.readouterr()
    code, analyses = cli_replay(catalog, catalog_dir, uid, "--model", "default")
    assert code == 0 and analyses[-1]["model"]["weights"]["sha256"] == shipped_sha("default")
    assert "model default: given by --model" in capsys.readouterr().out


def test_a_renamed_shipped_model_is_found_by_its_weights(catalog, catalog_dir):
    """An analysis stored when today's "published" weights were called "default" replays with "published"."""
    from nanopilot.model import Predictor, shipped_model_path
    from nanopilot.replay import stored_model

    uid, _ = live_scan(catalog, catalog_dir / "frames_model_renamed", "inline", 2, 3)
    renamed = Predictor.load("thickness")
    renamed.metadata = {**renamed.metadata, "name": "default",
                        "weights": {**renamed.metadata["weights"], "file": "default.pt"}}
    renamed.path = shipped_model_path("default")
    store_analysis(catalog, uid, renamed)
    found = stored_model(catalog, uid)
    assert (found.name, found.path, found.recorded["name"]) == ("thickness", shipped_model_path("thickness"),
                                                                "default")


def test_replay_follows_the_latest_of_several_analyses_and_says_so(catalog, catalog_dir, caplog):
    from nanopilot.model import Predictor
    from nanopilot.replay import stored_model

    uid, _ = live_scan(catalog, catalog_dir / "frames_model_several", "inline", 2, 3)
    store_analysis(catalog, uid, Predictor.load("default"))
    latest = store_analysis(catalog, uid, Predictor.load("thickness"))
    found = stored_model(catalog, uid)
    assert found.name == "thickness" and found.analysis_uid == latest["uid"]
    assert "2 different models" in found.note and latest["uid"][:8] in found.note
    assert found.note in caplog.text
