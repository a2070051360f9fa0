"""Pieces of a remote-analysis deployment for the tests: bluesky's 0MQ proxy as a process, `nanopilot worker` as a
process or a thread, a reader of the analysis stream; each started on free loopback ports and stopped on exit."""

import contextlib
import os
import subprocess
import sys
import threading
import time

from conftest import free_port
from nanopilot.remote.wire import ANALYSIS_PREFIX, HEARTBEAT_PREFIX, PING_PREFIX, ZmqSink, ZmqSource

BIN = os.path.dirname(sys.executable)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies (even by SIGKILL), so that nothing outlives a killed run."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def stop_process(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` s; waits for the process either way."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


@contextlib.contextmanager
def zmq_proxy():
    """`bluesky-0MQ-proxy` on two free loopback ports: yields (in address, out address)."""
    ports = free_port(), free_port()
    addresses = tuple(f"127.0.0.1:{p}" for p in ports)
    process = subprocess.Popen([os.path.join(BIN, "bluesky-0MQ-proxy"), "--in-address", addresses[0],
                                "--out-address", addresses[1]], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               preexec_fn=_die_with_parent)
    try:
        yield addresses
    finally:
        stop_process(process, 5)


class Reader:
    """Reads the analysis proxy in a thread: ``docs`` [(name, doc)], ``beats`` [heartbeat dicts]."""

    def __init__(self, address: str):
        self.docs, self.beats = [], []
        self.source = ZmqSource(address, self._take, prefixes=[ANALYSIS_PREFIX, HEARTBEAT_PREFIX])
        self.thread = threading.Thread(target=self.source.run, daemon=True)
        self.thread.start()

    def _take(self, prefix, name, doc):
        (self.beats if prefix == HEARTBEAT_PREFIX else self.docs).append((name, doc) if prefix != HEARTBEAT_PREFIX
                                                                         else doc)

    def wait(self, predicate, timeout=30.0, what="the condition"):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen within {timeout} s")
            time.sleep(0.05)

    def connect(self, sink: ZmqSink, workers: int = 1, timeout: float = 60.0):
        """Ping through ``sink`` (the raw proxy's input) until ``workers`` workers echo the ping."""
        ping = f"ping-{time.monotonic()}"
        deadline = time.monotonic() + timeout
        while len({b["worker"] for b in list(self.beats) if b.get("ping") == ping}) < workers:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {workers} worker(s) answered the ping within {timeout} s")
            sink("ping", ping, prefix=PING_PREFIX)
            time.sleep(0.1)

    def close(self):
        self.source.stop()
        self.thread.join(5)


@contextlib.contextmanager
def reader(address: str):
    r = Reader(address)
    try:
        yield r
    finally:
        r.close()


@contextlib.contextmanager
def worker_process(listen: str, publish: str, *args: str, env=None):
    """`nanopilot worker` as a process (stdout and stderr to a file kept for failures); SIGTERM on exit."""
    log = open(os.devnull, "w") if os.environ.get("NANOPILOT_TEST_QUIET") else None
    process = subprocess.Popen([os.path.join(BIN, "nanopilot"), "worker", "--listen", listen, "--publish", publish,
                                *args], env={**os.environ, **(env or {})}, stdout=log, stderr=log,
                               preexec_fn=_die_with_parent)
    try:
        yield process
    finally:
        stop_process(process)
        if log is not None:
            log.close()


@contextlib.contextmanager
def worker_thread(predictor, listen: str, publish: str, **options):
    """A :class:`RemoteWorker` reading ``listen`` and publishing to ``publish``, in a thread of this process."""
    from nanopilot.remote.worker import RemoteWorker

    worker = RemoteWorker(predictor, lambda handle: ZmqSource(listen, handle), sinks=[ZmqSink(publish)], **options)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(60)


def postgres_bin() -> str | None:
    """The directory of PostgreSQL's server programs (Debian keeps them off the PATH), or None."""
    import glob
    import shutil

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    path = found[-1] if found else shutil.which("pg_ctl")
    return os.path.dirname(path) if path else None


@contextlib.contextmanager
def postgres(database: str = "tiled"):
    """A PostgreSQL server of its own: a temporary data directory (initdb, trust authentication for the user
    ``nanopilot`` on the loopback), a free loopback port, database ``database``; yields ``(user@host:port/db)``;
    stopped (``pg_ctl stop -m immediate``) and removed on exit. As root, the server runs as the ``postgres``
    user (PostgreSQL refuses root)."""
    import shutil
    import tempfile

    bin_dir = postgres_bin()
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    home = tempfile.mkdtemp(prefix="nanopilot-pg-")  # not under pytest's tmp: the postgres user must reach it
    data, port = os.path.join(home, "data"), free_port()
    if run_as:
        shutil.chown(home, "postgres")
    pg_ctl = [*run_as, os.path.join(bin_dir, "pg_ctl"), "-D", data]
    started = False
    try:
        subprocess.run([*run_as, os.path.join(bin_dir, "initdb"), "-D", data, "-A", "trust", "-U", "nanopilot"],
                       check=True, capture_output=True)
        subprocess.run([*pg_ctl, "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1", "-l",
                        os.path.join(home, "log"), "-w", "start"], check=True, capture_output=True)
        started = True
        subprocess.run([os.path.join(bin_dir, "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "nanopilot",
                        database], check=True, capture_output=True)
        yield f"nanopilot@127.0.0.1:{port}/{database}"
    finally:
        if started:
            subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
