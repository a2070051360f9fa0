"""`nanopilot demo --view`: the page served beside the demo on the loopback, its URL printed, a browser opened only
where there is a display, the page up after the demo until Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import free_port
from nanopilot.cli.demo import start_view


@pytest.mark.parametrize("display", [None, ":0"])
def test_start_view_opens_a_browser_only_with_a_display(catalog, catalog_dir, monkeypatch, capsys, display):
    opened = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    for name in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    if display:
        monkeypatch.setenv("DISPLAY", display)
    monkeypatch.setattr(sys, "platform", "linux")
    port = free_port()
    server = start_view(catalog_dir, port)
    try:
        url = f"http://127.0.0.1:{port}/"
        assert url in capsys.readouterr().out
        with urllib.request.urlopen(url + "api/runs", timeout=30) as answer:
            assert answer.status == 200
        assert opened == ([url] if display else [])
        assert server.config.host == "127.0.0.1"  # the loopback only
        with pytest.raises(ValueError, match="another --port"):  # a taken port: before anything moves
            start_view(catalog_dir, port)
    finally:
        server.should_exit = True


@pytest.mark.slow  # run by .ci/run's second pass
def test_demo_view_serves_the_runs_until_ctrl_c(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join(sys.path))
    command = [sys.executable, "-c", "import sys; from nanopilot.cli import main; sys.exit(main())", "demo", "--view",
               "--only", "grow", "--port", str(port), "--catalog", str(tmp_path / "catalog"), "--out",
               str(tmp_path / "out")]
    demo = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in demo.stdout:  # the URL comes before the runs, the last line once they are done
            lines.append(line)
            if "Ctrl-C stops it" in line:
                break
        assert f"the page of the runs: http://127.0.0.1:{port}/" in "".join(lines)
        url = f"http://127.0.0.1:{port}/api/runs"
        (run,) = json.load(urllib.request.urlopen(url, timeout=30))
        assert run["plan"] == "grow_until" and run["status"] == "success" and run["frames_analysed"] > 0
        with urllib.request.urlopen(f"{url}/{run['uid']}/picture.png", timeout=120) as answer:
            assert answer.read().startswith(b"\x89PNG")
        demo.send_signal(signal.SIGINT)
        assert demo.wait(30) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
    time.sleep(0.5)
    with pytest.raises(OSError):  # the page has stopped with the demo
        urllib.request.urlopen(url, timeout=5)
