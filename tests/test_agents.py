"""The agents' ask/tell protocol, on synthetic points (no RunEngine, no analysis)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from nanopilot.agents import SteeringAgent
from nanopilot.agents.steering import Lattice


def wall_points(positions, seq_from=1):
    """Analysed points of a sample with a strain wall at x = 0.3 um (noise-free, std 0.01)."""
    x, y = np.array(positions, dtype=float).T
    n = len(x)
    return {"seq_num": np.arange(seq_from, seq_from + n), "stage_x": x, "stage_y": y,
            "strain": np.where(x > 0.3, 1.0, 0.0), "strain_std": np.full(n, 0.01), "omega": np.zeros(n),
            "omega_std": np.full(n, 0.01), "chi": np.zeros(n), "chi_std": np.full(n, 0.01),
            "status": np.array(["ok"] * n, dtype=object)}


def test_the_steering_agent_asks_measures_and_refines_at_the_wall():
    agent = SteeringAgent(Lattice(-1, 1, -1, 1, 9), 4, 40, 3.0, 2)
    first = agent.ask()
    assert not first.decision and len(first.points) == 9
    with pytest.raises(ValueError, match="tell"):  # the next ask takes the action as done: the points first
        agent.ask()
    agent = SteeringAgent(Lattice(-1, 1, -1, 1, 9), 4, 40, 3.0, 2)
    measured = agent.ask().points
    agent.tell(wall_points(measured))
    refine = agent.ask()
    assert refine.decision and refine.approve and refine.action == "refine" and agent.ask() is refine
    assert all(cell[0] == 4 for cell in refine.evidence["cells"])  # the cells across the wall (x 0..1 um)
    agent.tell_verdict(True)
    more = agent.ask()
    assert not more.decision and more.points and all(0.0 <= px <= 1.0 for px, _ in more.points)
    with pytest.raises(RuntimeError, match="ask"):
        agent.tell_verdict(True)
    agent.tell(wall_points(measured + more.points))
    assert agent.ask().decision
    agent.tell_verdict(False)  # a veto ends the map
    assert agent.ask().action == "done" and agent.result()["reason"] == "refinement vetoed"


def test_points_without_positions_are_refused():
    agent = SteeringAgent(Lattice(-1, 1, -1, 1, 9), 4, 40, 3.0, 2)
    with pytest.raises(ValueError, match="stage_x"):
        agent.tell({"seq_num": np.arange(3), "status": np.array(["ok"] * 3)})


@pytest.mark.slow  # a fresh interpreter importing torch through the texture package: ~10 s under load
def test_the_agents_import_no_bluesky():
    code = ("import sys, nanopilot.agents; "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('bluesky', 'ophyd', 'ophyd_async')]")
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ)
