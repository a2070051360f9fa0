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
from nanopilot.cli.demo import page_served


@pytest.mark.slow  # run by .ci/run's second pass (starts the page's process three times)
def test_page_served_opens_a_browser_only_with_a_display(catalog, catalog_dir, monkeypatch, capsys):
    opened = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    monkeypatch.setattr(sys, "platform", "linux")
    for display in (None, ":0"):
        for name in ("DISPLAY", "WAYLAND_DISPLAY"):
            monkeypatch.delenv(name, raising=False)
        if display:
            monkeypatch.setenv("DISPLAY", display)
        port = free_port()
        with page_served(catalog_dir, port) as page:
            url = f"http://127.0.0.1:{port}/"
            assert url in capsys.readouterr().out and "--host" not in page.args  # the loopback only
            with urllib.request.urlopen(url + "api/runs", timeout=30) as answer:
                assert answer.status == 200
            assert opened == ([url] if display else [])
            with pytest.raises(ValueError, match="another --port"):  # a taken port: before anything moves
                with page_served(catalog_dir, port):
                    pass
        assert page.poll() is not None  # stopped with the block
        opened.clear()


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
