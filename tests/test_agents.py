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
    # the edges across the wall (x = 0.3 um, between lattice columns 5 and 6): from column 4 to 8
    assert refine.evidence["edges"] and all(min(e[0], e[2]) == 4 and max(e[0], e[2]) == 8
                                            for e in refine.evidence["edges"])
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


def growth_rows(points, thickness, t0):
    n = len(points)
    x, y = np.array(points, dtype=float).T
    return {"stage_x": x, "stage_y": y, "thickness": np.asarray(thickness, float), "strain": np.zeros(n),
            "omega": np.zeros(n), "chi": np.zeros(n), "time": t0 + np.arange(n, dtype=float),
            "status": np.array(["ok"] * n, dtype=object)}


def test_a_growth_round_takes_a_retaken_point_once_and_a_lost_one_as_nan():
    from nanopilot.agents import GrowthAgent

    grid = [(0.0, 0.0), (1.0, 0.0), (2.0, 0.0)]
    agent = GrowthAgent(100.0, grid, interval=1.0, max_time=1e6)
    opening = agent.ask()
    assert opening.action == "open shutter" and opening.approve
    agent.tell_verdict(True)
    assert agent.ask().moves == [("shutter", "open")]
    assert agent.ask().points == grid  # the first rounds have no looks within them
    # point 1 retaken after a pause (its first take 99 A), then point 2
    first = growth_rows([grid[0], grid[1], grid[1], grid[2]], [10, 99, 11, 12], 0.0)
    agent.tell({"seq_num": np.arange(1, 5), **first})
    assert not agent.ask().decision and agent.monitor.rounds[0]["thickness"].tolist() == [10, 11, 12]
    assert agent.monitor.times == [1.5]  # the middle of the round's points (times 0, 2, 3 s)
    # the next round loses point 1's frame: NaN there, the round's other points kept
    second = growth_rows([grid[0], grid[2]], [20, 22], 10.0)
    agent.tell({k: np.concatenate([first[k], second[k]]) for k in first} | {"seq_num": np.array([1, 2, 3, 4, 5, 7])})
    agent.ask()
    assert np.array_equal(agent.monitor.rounds[1]["thickness"], [20, np.nan, 22], equal_nan=True)
