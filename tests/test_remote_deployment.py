"""A real deployment on the loopback, as docs/remote_analysis.md sets it up: bluesky's 0MQ proxies and `nanopilot
worker` as processes, the RunEngine and its session (analysis="remote") in this one, a Tiled server in another
(SQLite, or PostgreSQL started by the fixture); a worker killed mid-scan stops the plan safely; every process
stopped on exit."""

import signal
import time

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd import Signal

from conftest import tiled_serve
from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.model import Predictor
from nanopilot.remote.link import RemoteOptions
from nanopilot.remote.watch import RemoteAnalysisError
from nanopilot.runs import derived_runs
from nanopilot.session import setup
from nanopilot.sim_devices import make_beamline
from remote_deploy import postgres, postgres_bin, worker_process, zmq_proxy
from test_remote import columns

POSTGRES_CONFIG = __import__("conftest").SERVER_CONFIG.with_name("tiled-server-postgresql.yaml")
FIELDS = ("strain", "omega", "chi", "strain_std", "status", "raw_seq_num")


def grid(bl):
    return bp.grid_scan([bl.detector], bl.stage.y, -1, 1, 4, bl.stage.x, -1, 1, 5, snake_axes=True)


def deployment_scan(tmp_path, monkeypatch, config_env=None, then=None):
    """Proxies, a worker process storing in a Tiled server process, a session here (analysis="remote", raw runs to
    the same server): the worker's analysis equals the in-process one on the same frames, and the catalogue holds
    the raw, analysis and texture runs. ``then(RE, session, worker process)`` runs before everything stops."""
    config = POSTGRES_CONFIG if config_env else __import__("conftest").SERVER_CONFIG
    with tiled_serve(tmp_path / "tiled", "deploykey", monkeypatch, config=config, env=config_env) as (_, cat, uri), \
            zmq_proxy() as (raw_in, raw_out), zmq_proxy() as (ana_in, ana_out), \
            worker_process(raw_out, ana_in, "--catalog", uri, "--heartbeat", "0.2") as worker:
        monkeypatch.setenv("NANOPILOT_BACKUP_DIR", str(tmp_path / "backup"))
        bl, RE, docs = make_beamline("domains", seed=5), RunEngine({}), []
        options = RemoteOptions(publish=raw_in, listen=ana_out, connect_timeout=120)  # the worker loads the model
        with setup(RE, detector=bl.detector, x=bl.stage.x, y=bl.stage.y, catalog=cat, analysis="remote",
                   remote=options) as session:
            session.maps.subscribe(lambda name, doc: docs.append((name, doc)))
            (uid,) = RE(grid(bl))
            assert session.maps.wait_for(uid, timeout=60)
            wait_until(lambda: session.maps[uid].done, 60)
            stored = {run.start["plan_name"]: run for run in derived_runs(cat, uid).values()}
            assert set(stored) == {"nanopilot_analysis", "nanopilot_texture"}
            analysis_run = stored["nanopilot_analysis"]
            assert analysis_run.stop["exit_status"] == "success"
            remote = columns(docs, uid)
            np.testing.assert_array_equal(analysis_run["primary"]["strain"].read(), remote["strain"])
            assert cat[uid]["primary"]["det_image"].shape == (20, 64, 64)  # the raw run, stored by the session
            assert worker.poll() is None  # still serving
            if then is not None:
                then(RE, session, worker)
    assert worker.returncode in (0, -9)  # SIGTERM: it finished and exited cleanly (-9: killed by ``then``)
    local = NanobeamAnalysis(Predictor.load(), threaded=False)
    local_docs = []
    local.subscribe(lambda name, doc: local_docs.append((name, doc)))
    RE = RunEngine({})
    RE.subscribe(local)
    (local_uid,) = RE(grid(make_beamline("domains", seed=5)))
    for field in FIELDS:
        np.testing.assert_array_equal(remote[field], columns(local_docs, local_uid)[field], err_msg=field)
    return remote


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def kill_mid_scan(RE, session, worker):
    """SIGKILL the worker process during a scan: the plan fails within seconds with the reason, shutter closed."""
    shutter, killed = Signal(name="shutter", value=0), []
    bl = make_beamline("domains", seed=6)

    def plan():
        yield from bps.mv(shutter, 1)
        yield from bp.count([bl.detector], 200, delay=0.05)

    def kill(name, doc):
        if name == "event" and doc["seq_num"] == 5:
            worker.send_signal(signal.SIGKILL)
            killed.append(time.monotonic())

    RE.subscribe(kill)
    with pytest.raises(RemoteAnalysisError, match="sent no heartbeat"):
        RE(bpp.finalize_wrapper(plan(), bps.mv(shutter, 0)))
    assert time.monotonic() - killed[0] < 3 * session.remote.options.timeout
    assert shutter.get() == 0
    worker.wait(10)


@pytest.mark.slow
def test_proxy_worker_and_tiled_server_as_processes(tmp_path, monkeypatch):
    remote = deployment_scan(tmp_path, monkeypatch, then=kill_mid_scan)
    assert len(remote["strain"]) == 20


@pytest.mark.slow
@pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL is not installed (apt-get install postgresql; "
                                                     ".ci/run installs it)")
def test_a_tiled_server_with_a_postgresql_catalogue(tmp_path, monkeypatch):
    with postgres() as where:
        env = {"TILED_CATALOG_URI": f"postgresql+asyncpg://{where}", "TILED_TABLES_URI": f"postgresql://{where}"}
        remote = deployment_scan(tmp_path, monkeypatch, env)
    assert len(remote["strain"]) == 20
