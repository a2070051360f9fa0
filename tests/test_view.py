"""`nanopilot view`: the page's data equal the stored runs, its pictures are PNGs, a non-loopback bind needs a key,
and headless Chromium sees the page follow a scan while it is written."""

import html.parser
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import warnings

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine

with warnings.catch_warnings():  # Starlette 1.x prefers httpx2 for its test client; httpx works the same here
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

from conftest import free_port
from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.plans.common import DecisionLog, record_decision
from nanopilot.sim_devices import make_beamline
from nanopilot.storage import make_writer, subscribe_writer
from nanopilot.view import data
from nanopilot.view.app import build_app
from test_callbacks import CentroidPredictor

N_Y, N_X, EVERY = 3, 4, 3  # grid, and a decision after every EVERY points


def decided_scan(catalog, tmp_dir, *, halfway=None, resume=None):
    """A simulated grid scan that records a decision every EVERY points, analysed live, raw and analysis runs
    written to ``catalog`` as they go. With events ``halfway``/``resume``: sets the first after half the points,
    then waits for the second. Returns (raw uid, decisions recorded)."""
    bl = make_beamline("domains", seed=5, data_mode="inline")
    log = DecisionLog()
    taken = [0]

    def per_step(detectors, step, pos_cache):
        yield from bps.one_nd_step(detectors, step, pos_cache)
        taken[0] += 1
        if taken[0] % EVERY == 0:
            yield from record_decision(log, taken[0] // EVERY, "continue", f"{taken[0]} points taken", {"n": taken[0]},
                                       value=0.5 * taken[0], points=taken[0])
        if halfway is not None and taken[0] == N_Y * N_X // 2:
            halfway.set()
            while not resume.is_set():
                yield from bps.sleep(0.05)

    analysis = NanobeamAnalysis(CentroidPredictor(), batch_size=2, threaded=False)
    analysis.subscribe(make_writer(catalog, batch_size=1, backup_directory=tmp_dir / "backup_analysis"))
    RE = RunEngine({}, context_managers=[])  # may run in a thread: no signal handlers
    subscribe_writer(RE, catalog, batch_size=1, backup_directory=tmp_dir / "backup")
    RE.subscribe(analysis)
    (uid,) = RE(bp.grid_scan([bl.detector], bl.stage.y, -1, 1, N_Y, bl.stage.x, -1, 1, N_X, per_step=per_step))
    return uid, log.history


@pytest.fixture(scope="module")
def stored(catalog, catalog_dir):
    return decided_scan(catalog, catalog_dir / "view_frames")


@pytest.mark.slow  # run by .ci/run's second pass
def test_json_equals_the_stored_runs(catalog, stored):
    uid, history = stored
    client = TestClient(build_app(catalog))
    listed = {row["uid"]: row for row in client.get("/api/runs", params={"limit": 50}).json()}
    analysis, _ = data.derived_of(catalog, uid)
    strain = analysis["primary"]["strain"].read()
    assert listed[uid]["frames_analysed"] == len(strain) == N_Y * N_X
    assert listed[uid]["status"] == "success" and listed[uid]["plan"] == "grid_scan"
    assert listed[uid]["analysis_uid"] == analysis.start["uid"]
    run = client.get(f"/api/runs/{uid}").json()
    assert [(d["step"], d["action"], d["reason"], d["value"], d["approved"]) for d in run["decisions"]] == [
        (d["step"], d["action"], d["reason"], d["value"], d["approved"]) for d in history]
    assert len(history) == N_Y * N_X // EVERY
    stored_status = [str(s) for s in analysis["primary"]["status"].read()]
    assert run["status_counts"] == {s: stored_status.count(s) for s in set(stored_status)}
    points = data.plan_run(catalog, catalog[uid]).points()  # what the picture is drawn from
    np.testing.assert_array_equal(points["strain"], strain)
    np.testing.assert_array_equal(points["stage_x"], analysis["primary"]["stage_x"].read())
    np.testing.assert_array_equal(points["seq_num"], analysis["primary"]["raw_seq_num"].read())
    assert client.get("/api/runs/0123456789").status_code == 404


def test_picture_endpoint_returns_a_png(catalog, stored):
    uid, _ = stored
    client = TestClient(build_app(catalog))
    answer = client.get(f"/api/runs/{uid}/picture.png")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert answer.content.startswith(b"\x89PNG\r\n\x1a\n") and len(answer.content) > 5_000
    page = client.get("/")
    assert page.status_code == 200 and "api/runs" in page.text and "http" not in page.text.split("<script>")[1]


def test_beyond_loopback_needs_an_api_key(catalog, monkeypatch, capsys):
    from nanopilot.cli import main

    monkeypatch.delenv("NANOPILOT_VIEW_API_KEY", raising=False)
    assert main(["view", "--host", "0.0.0.0"]) == 1
    assert "give an API key" in capsys.readouterr().err
    client = TestClient(build_app(catalog, api_key="s3cret"))
    assert client.get("/api/runs").status_code == 401
    assert client.get("/api/runs", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/api/runs", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/", params={"api_key": "s3cret"}).status_code == 200


@pytest.mark.slow  # run by .ci/run's second pass
def test_served_from_a_thread(catalog, stored):
    from nanopilot.view.app import serve_in_thread

    uid, _ = stored
    port = free_port()
    server = serve_in_thread(build_app(catalog), port=port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs?limit=50", timeout=30) as answer:
            assert uid in answer.read().decode()
        with pytest.raises(RuntimeError, match="port"):  # the port is taken now
            serve_in_thread(build_app(catalog), port=port, timeout=10)
    finally:
        server.should_exit = True


class _Rows(html.parser.HTMLParser):
    """Rows of the rendered page: run rows (their cells), the number of decision rows, the state of the run that the
    picture shown was drawn from ("uid/frames analysed/decisions/texture stored/status"), None before one loaded."""

    def __init__(self):
        super().__init__()
        self.runs, self.decisions, self._row, self.picture = [], 0, None, None

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if tag == "img" and dict(attrs).get("id") == "picture":  # the state of the run the picture shows
            self.picture = dict(attrs).get("data-shown")
        if tag == "tr" and "run-row" in classes:
            self._row = []
            self.runs.append(self._row)
        elif tag == "tr":
            self._row = None
            self.decisions += "decision-row" in classes

    def handle_data(self, text):
        if self._row is not None and text.strip():
            self._row.append(text.strip())


def chromium(url, profile, *extra) -> str:
    command = [shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update", "--no-first-run",
               f"--user-data-dir={profile}", "--virtual-time-budget=1000", *extra, url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow  # run by .ci/run's second pass
@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
def test_chromium_sees_the_page_follow_a_scan(catalog, catalog_dir, tmp_path):
    port = free_port()
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-c", "import sys; from nanopilot.cli import main; sys.exit(main())",
               "view", "--catalog", str(catalog_dir), "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    halfway, resume = threading.Event(), threading.Event()
    result = {}
    scan = threading.Thread(target=lambda: result.update(
        run=decided_scan(catalog, tmp_path, halfway=halfway, resume=resume)))
    scan.start()  # runs up to its halfway pause while the server starts
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "api/runs", timeout=5)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()[-2000:]
                time.sleep(0.3)
        assert halfway.wait(60)
        during = _Rows()
        during.feed(chromium(url, tmp_path / "profile", "--dump-dom"))
        resume.set()
        scan.join(60)
        uid, history = result["run"]
        after = _Rows()
        after.feed(chromium(url, tmp_path / "profile", "--dump-dom"))
        chromium(url, tmp_path / "profile", f"--screenshot={tmp_path / 'view.png'}", "--window-size=1200,1400")
    finally:
        resume.set()
        server.kill()
        server.wait(20)
    newest_during, newest_after = during.runs[0], after.runs[0]
    assert newest_during[2] == newest_after[2] == uid[:8]  # the page follows the newest run
    assert newest_during[4] == "running" and newest_after[4] == "success"
    assert 0 < int(newest_during[5]) <= N_Y * N_X // 2 < int(newest_after[5]) == N_Y * N_X
    assert 0 < during.decisions < after.decisions == len(history)
    # the picture follows the run: drawn during the scan from what was stored then, and again at its end
    shown_during, shown_after = during.picture.split("/"), after.picture.split("/")
    assert shown_during[0] == shown_after[0] == uid and shown_during[4] == "running"
    assert 0 < int(shown_during[1]) <= N_Y * N_X // 2 < int(shown_after[1]) == N_Y * N_X
    assert int(shown_during[2]) == during.decisions and shown_after[4] == "success"
    assert (tmp_path / "view.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow  # run by .ci/run's second pass
def test_stored_plan_run_is_the_live_one(catalog, catalog_dir):
    """The page draws a stored run from the same tables as the live picture: raw frame times and positions, the
    decisions (evidence parsed), the estimates and the texture labels, read without the frames."""
    from nanopilot.pictures import collect, plan_figure
    from nanopilot.pictures.steered import steered_map_figure
    from nanopilot.plans import steered_map
    from nanopilot.texture import TextureCallback

    bl = make_beamline("domains", seed=2, noise=False)
    analysis = NanobeamAnalysis(CentroidPredictor(), batch_size=16, max_latency=0.02)
    textures = TextureCallback(update_every=20)  # labels while the run goes on, then the final ones
    analysis.add_stage(textures)
    docs = []
    for source, folder in ((analysis, "analysis"), (textures, "texture")):
        source.subscribe(make_writer(catalog, batch_size=5, backup_directory=catalog_dir / f"plan_{folder}"))
        source.subscribe(lambda name, doc: docs.append((name, doc)))
    RE = RunEngine({}, call_returns_result=True, context_managers=[])
    subscribe_writer(RE, catalog, batch_size=5, backup_directory=catalog_dir / "plan_raw")
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe(analysis)
    res = RE(steered_map([bl.detector], bl.stage.x, bl.stage.y, (-2, 2), (-2, 2), fine=9, coarse_step=4, budget=0.5,
                         maps=analysis.maps, md={"sample": "domains, seed 2"}))
    analysis.close()
    uid = res.run_start_uids[0]
    live, stored = collect(docs).snapshot(uid), data.plan_run(catalog, catalog[uid])
    assert stored.start == json.loads(json.dumps(live.start))  # as stored: tuples become lists
    assert stored.stopped == live.stopped == {"raw", "analysis", "texture"}
    assert stored.decisions == live.decisions and len(live.decisions) >= 2
    assert stored.labels == live.labels and len(set(live.labels.values())) >= 1
    assert stored.frames["seq_num"] == live.frames["seq_num"]
    np.testing.assert_allclose(stored.frames["time"], live.frames["time"])
    live_points, stored_points = live.points(), stored.points()
    assert set(stored_points) == set(live_points)
    for column, values in live_points.items():
        np.testing.assert_array_equal(stored_points[column], values, err_msg=column)
    figure = plan_figure(stored)
    assert figure.get_suptitle() == steered_map_figure(live).get_suptitle()
    assert "domains, seed 2" in figure.get_suptitle()


def test_a_catalogue_that_does_not_answer_gets_503(catalog, stored):
    uid, _ = stored

    def busy(run):
        raise RuntimeError("database is locked")

    client = TestClient(build_app(catalog, picture=busy), raise_server_exceptions=False)
    answer = client.get(f"/api/runs/{uid}/picture.png")
    assert answer.status_code == 503 and "ask again" in answer.text
    assert client.get("/api/runs").status_code == 200  # the others still answer
