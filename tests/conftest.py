"""Shared fixtures: one embedded Tiled catalogue per test session (its init costs seconds), and a `tiled serve config`
process (the configuration shipped in docs/) over a catalogue directory."""

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def catalog_dir(tmp_path_factory):
    """Directory of the session's embedded catalogue; external files must lie under it (readable storage)."""
    return tmp_path_factory.mktemp("catalog")


@pytest.fixture(scope="session")
def catalog(catalog_dir):
    """The session's embedded catalogue of Bluesky runs (in-process Tiled app, SQLite tables)."""
    from nanopilot.catalog import open_catalog

    return open_catalog(catalog_dir, create=True)


def free_port() -> int:
    """A free TCP port on the loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: The Tiled server configuration shipped for beamlines (docs/tiled_server.md).
SERVER_CONFIG = Path(__file__).resolve().parent.parent / "docs" / "tiled-server.yaml"


@contextlib.contextmanager
def tiled_serve(directory, key: str, monkeypatch, detector_directory=None, config=SERVER_CONFIG, env=None):
    """`tiled serve config docs/tiled-server.yaml` (or ``config``, with more environment variables ``env``) over the
    catalogue directory ``directory`` (the embedded catalogue's layout; created if new), reading detector files in
    ``detector_directory`` (default: ``directory``), with API key ``key`` (also put in $TILED_API_KEY), on a free
    loopback port: yields (server process, client of its catalogue, its URI); the process is killed on exit."""
    from nanopilot.catalog import open_catalog

    for folder in (directory, detector_directory or directory):
        folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "TILED_DATA_DIR": str(directory), "DETECTOR_DATA_DIR": str(detector_directory or directory),
           "TILED_SINGLE_USER_API_KEY": key, **(env or {})}
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "tiled"), "serve", "config", str(config),
         "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    monkeypatch.setenv("TILED_API_KEY", key)
    uri = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                remote = open_catalog(uri)
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError(f"tiled serve did not come up: {server.stderr.read1(4000)!r}")
                time.sleep(0.5)
        yield server, remote, uri
    finally:
        server.kill()
        server.wait(timeout=20)
