"""Shared fixtures: one embedded Tiled catalogue per test session (its init costs seconds), and a `tiled serve`
process over a catalogue directory."""

import contextlib
import os
import socket
import subprocess
import sys
import time

import pytest


@pytest.fixture(scope="session")
def catalog_dir(tmp_path_factory):
    """Directory of the session's embedded catalogue; external files must lie under it (readable storage)."""
    return tmp_path_factory.mktemp("catalog")


@pytest.fixture(scope="session")
def catalog(catalog_dir):
    """The session's embedded catalogue of Bluesky runs (in-process Tiled app, SQLite tables)."""
    from nanopilot.catalog import open_catalog

    return open_catalog(catalog_dir)


def free_port() -> int:
    """A free TCP port on the loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def tiled_serve(directory, key: str, monkeypatch):
    """A `tiled serve catalog` process over the embedded catalogue in ``directory`` (readable there, API key
    ``key`` in $TILED_API_KEY), on a free loopback port: yields (server process, client of its catalogue); the
    process is killed on exit."""
    from nanopilot.catalog import open_catalog

    port = free_port()
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "tiled"), "serve", "catalog", str(directory / "catalog.db"),
         "--host", "127.0.0.1", "--port", str(port), "--api-key", key, "-r", str(directory),
         "-w", str(directory / "data"), "-w", f"sqlite:///{directory / 'storage.sqlite'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    monkeypatch.setenv("TILED_API_KEY", key)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                remote = open_catalog(f"http://127.0.0.1:{port}/api/v1")
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError(f"tiled serve did not come up: {server.stderr.read1(4000)!r}")
                time.sleep(0.5)
        yield server, remote
    finally:
        server.kill()
        server.wait(timeout=20)
