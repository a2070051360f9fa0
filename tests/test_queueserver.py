"""The plans run from bluesky-queueserver's RE Manager (issue 18): a real ``start-re-manager`` with the shipped
startup file (examples/queueserver/startup.py) on the simulated beamline, Redis on a loopback port, an embedded
catalogue in tmp_path. Each plan's raw run and its complete analysis run are stored; a plan that fails at its
start and one with a misspelt device name fail as items, naming the argument, and the environment stays usable.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import nanopilot

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "queueserver"
MANAGER = shutil.which("start-re-manager", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                                 os.environ.get("PATH", "")]))
REDIS = shutil.which("redis-server")

pytestmark = [
    pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (Debian: apt-get install redis-server)"),
    pytest.mark.skipif(MANAGER is None,
                       reason="start-re-manager is not installed (pip install 'nanopilot[queueserver]')"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{process.args[0]} exited with code {process.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop(process: subprocess.Popen) -> None:
    """End ``process`` and the processes it started (its own session), politely first."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.fixture
def manager(tmp_path):
    """A RE Manager with the example startup file; yields a REManagerAPI client and its directory (``catalog``,
    ``manager.log``)."""
    from bluesky_queueserver_api.zmq import REManagerAPI

    redis_port, control, info = free_port(), free_port(), free_port()
    redis = subprocess.Popen([REDIS, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(tmp_path)],
                             stdout=subprocess.DEVNULL, start_new_session=True)
    env = dict(os.environ, NANOPILOT_CATALOG=str(tmp_path / "catalog"), NANOPILOT_DATA_DIR=str(tmp_path / "data"),
               NANOPILOT_MODEL="thickness", NANOPILOT_SCENE="growth",
               PYTHONPATH=os.pathsep.join([str(Path(nanopilot.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    log = open(tmp_path / "manager.log", "w")
    process = None
    try:
        wait_for_port(redis_port, redis)
        process = subprocess.Popen(
            [MANAGER, "--startup-script", str(EXAMPLE / "startup.py"),
             "--existing-plans-devices", str(tmp_path / "existing_plans_and_devices.yaml"),
             "--user-group-permissions", str(EXAMPLE / "user_group_permissions.yaml"),
             "--redis-addr", f"127.0.0.1:{redis_port}", "--zmq-control-addr", f"tcp://127.0.0.1:{control}",
             "--zmq-info-addr", f"tcp://127.0.0.1:{info}", "--zmq-publish-console", "OFF"],
            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(control, process)
        RM = REManagerAPI(zmq_control_addr=f"tcp://127.0.0.1:{control}", zmq_info_addr=f"tcp://127.0.0.1:{info}")
        yield RM, tmp_path
        RM.close()
    except BaseException:
        log.flush()
        print((tmp_path / "manager.log").read_text()[-8000:])  # shown by pytest on failure
        raise
    finally:
        for p in (process, redis):
            if p is not None:
                stop(p)
        log.close()


def run_queue(RM, timeout: float) -> list[dict]:
    """Start the queue, wait until it has run (or stopped at a failed item, which the manager puts back at the
    front: it is removed), and return the items it ran (the history's newest ones)."""
    before = len(RM.history_get()["items"])
    RM.queue_start()
    RM.wait_for_idle(timeout=timeout)
    RM.queue_clear()
    return RM.history_get()["items"][before:]


@pytest.mark.slow  # run by .ci/run's second pass
def test_plans_run_from_the_queue_server_with_complete_analysis_runs(manager):
    from bluesky_queueserver_api import BPlan

    from nanopilot.catalog import open_catalog

    RM, directory = manager
    RM.environment_open()
    RM.wait_for_idle(timeout=180)
    assert RM.status()["worker_environment_exists"], "the environment did not open (see the manager log)"
    region = {"x_range": [-1, 1], "y_range": [-1, 1]}
    # a misspelt device name is accepted into the queue; the plan fails at its start, naming the argument
    assert RM.item_add(BPlan("steered_map", ["det"], "x", "stage_yy", fine=9, **region))["success"]
    (misspelt,) = run_queue(RM, timeout=60)
    assert misspelt["result"]["exit_status"] == "failed"
    assert "y: there is no device named 'stage_yy'" in misspelt["result"]["msg"]
    # an argument refused at the plan's start: a failed item, and the environment stays usable
    assert RM.item_add(BPlan("steered_map", ["det"], "x", "y", [1, -1], [-1, 1], fine=9))["success"]
    (refused,) = run_queue(RM, timeout=60)
    assert refused["result"]["exit_status"] == "failed" and "x_range" in refused["result"]["msg"]

    plans = [BPlan("steered_map", ["det"], "x", "y", fine=9, **region),
             BPlan("grow_until", ["det"], "deposition", "x", "y", 60.0, points=[[0, 0], [1, 1]], max_time=2.0),
             BPlan("find_texture_temperature", ["det"], "temperature", "x", "y", stop=287.0, step=8.0, quick=5,
                   fine=5, tolerance=10.0, zoom=False, **region)]
    for plan in plans:
        assert RM.item_add(plan)["success"]
    ran = run_queue(RM, timeout=300)
    assert [item["result"]["exit_status"] for item in ran] == ["completed"] * 3, [i["result"] for i in ran]

    # the environment closes right after the last plan: its analysis and texture runs are complete already
    RM.environment_close()
    RM.wait_for_idle(timeout=60)
    assert "Failed to properly join the worker process" not in (directory / "manager.log").read_text()
    catalog = open_catalog(directory / "catalog")
    runs = [catalog[uid] for uid in catalog]
    for item in ran:
        (uid,) = item["result"]["run_uids"]
        assert catalog[uid].stop["exit_status"] == "success"
        derived = {run.start["plan_name"]: run for run in runs if run.start.get("raw_uid") == uid}
        assert set(derived) == {"nanopilot_analysis", "nanopilot_texture"}, item["name"]
        analysis = derived["nanopilot_analysis"]
        assert analysis.stop is not None and analysis.stop["exit_status"] == "success", analysis.stop
        summary = {k: int(analysis["summary"][k].read()[0]) for k in ("frames_received", "frames_skipped",
                                                                       "frames_errors")}
        frames = catalog[uid].stop["num_events"]["primary"]
        assert summary == {"frames_received": frames, "frames_skipped": 0, "frames_errors": 0}, item["name"]
        assert derived["nanopilot_texture"].stop is not None
