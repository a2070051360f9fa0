"""A real deployment on the loopback, as docs/remote_analysis.md sets it up: bluesky's 0MQ proxies and `nanopilot
worker` as processes, the RunEngine in this one, a Tiled server in another (SQLite, or PostgreSQL started by the
fixture); every process stopped on exit."""

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine

from conftest import tiled_serve
from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.model import Predictor
from nanopilot.remote.wire import ZmqSink
from nanopilot.runs import derived_runs
from nanopilot.sim_devices import make_beamline
from nanopilot.storage import make_writer
from remote_deploy import postgres, postgres_bin, reader, worker_process, zmq_proxy
from test_remote import columns

POSTGRES_CONFIG = __import__("conftest").SERVER_CONFIG.with_name("tiled-server-postgresql.yaml")
FIELDS = ("strain", "omega", "chi", "strain_std", "status", "raw_seq_num")


def deployment_scan(tmp_path, monkeypatch, config_env=None):
    """Proxies, a worker process storing in a Tiled server process, a scan here: the worker's analysis equals the
    in-process one on the same frames, and the catalogue holds the raw, analysis and texture runs."""
    config = POSTGRES_CONFIG if config_env else __import__("conftest").SERVER_CONFIG
    with tiled_serve(tmp_path / "tiled", "deploykey", monkeypatch, config=config, env=config_env) as (_, cat, uri), \
            zmq_proxy() as (raw_in, raw_out), zmq_proxy() as (ana_in, ana_out), reader(ana_out) as out, \
            worker_process(raw_out, ana_in, "--catalog", uri, "--heartbeat", "0.2") as worker:
        sink = ZmqSink(raw_in, prefix=b"")
        out.connect(sink, timeout=120)  # the worker loads torch and the model first
        bl = make_beamline("domains", seed=5)
        RE = RunEngine({})
        RE.subscribe(make_writer(cat, backup_directory=tmp_path / "backup"))
        RE.subscribe(sink)
        (uid,) = RE(bp.grid_scan([bl.detector], bl.stage.y, -1, 1, 4, bl.stage.x, -1, 1, 5, snake_axes=True))
        out.wait(lambda: sum(1 for n, _ in out.docs if n == "stop") == 2, timeout=60, what="analysis + texture run")
        sink.close()
        stored = {run.start["plan_name"]: run for run in derived_runs(cat, uid).values()}
        assert set(stored) == {"nanopilot_analysis", "nanopilot_texture"}
        analysis_run = stored["nanopilot_analysis"]
        assert analysis_run.stop["exit_status"] == "success"
        remote = columns(out.docs, uid)
        np.testing.assert_array_equal(analysis_run["primary"]["strain"].read(), remote["strain"])
        assert worker.poll() is None  # still serving
    assert worker.returncode == 0  # SIGTERM: it finished and exited cleanly
    local = NanobeamAnalysis(Predictor.load(), threaded=False)
    docs = []
    local.subscribe(lambda name, doc: docs.append((name, doc)))
    RE = RunEngine({})
    RE.subscribe(local)
    bl = make_beamline("domains", seed=5)
    (local_uid,) = RE(bp.grid_scan([bl.detector], bl.stage.y, -1, 1, 4, bl.stage.x, -1, 1, 5, snake_axes=True))
    for field in FIELDS:
        np.testing.assert_array_equal(remote[field], columns(docs, local_uid)[field], err_msg=field)
    return remote


@pytest.mark.slow
def test_proxy_worker_and_tiled_server_as_processes(tmp_path, monkeypatch):
    remote = deployment_scan(tmp_path, monkeypatch)
    assert len(remote["strain"]) == 20


@pytest.mark.slow
@pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL is not installed (apt-get install postgresql; "
                                                     ".ci/run installs it)")
def test_a_tiled_server_with_a_postgresql_catalogue(tmp_path, monkeypatch):
    with postgres() as where:
        env = {"TILED_CATALOG_URI": f"postgresql+asyncpg://{where}", "TILED_TABLES_URI": f"postgresql://{where}"}
        remote = deployment_scan(tmp_path, monkeypatch, env)
    assert len(remote["strain"]) == 20
