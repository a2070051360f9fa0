"""The steering agent through bluesky-adaptive 1.0's optimize_in_run makes the decisions steered_map makes."""

import numpy as np
import pytest
from bluesky import RunEngine
from test_callbacks import CentroidPredictor

pytest.importorskip("bluesky_adaptive", reason="bluesky-adaptive is not installed: pip install 'nanopilot[adaptive]'")
from bluesky_adaptive.plans import optimize_in_run  # noqa: E402
from bluesky_adaptive.protocols import OptimizationProblem, Optimizer, SupportsStoppingCriteria  # noqa: E402

from nanopilot.agents import SteeringAgent, TemperatureAgent  # noqa: E402
from nanopilot.agents.steering import Lattice  # noqa: E402
from nanopilot.callbacks import NanobeamAnalysis  # noqa: E402
from nanopilot.plans import steered_map  # noqa: E402
from nanopilot.plans.adaptive import AgentOptimizer, AnalysedOutcomes  # noqa: E402
from nanopilot.sim_devices import make_beamline  # noqa: E402

ARGS = {"fine": 9, "coarse_step": 4, "budget": 30, "threshold": 3.0, "points_per_round": 8}


def positions(docs, stream="primary"):
    names = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    return sorted((round(d["data"]["stage_x"], 9), round(d["data"]["stage_y"], 9)) for n, d in docs
                  if n == "event" and names[d["descriptor"]] == stream)


def run(plan, bl, **analysis_kwargs):
    analysis = NanobeamAnalysis(CentroidPredictor(), batch_size=1, threaded=False, **analysis_kwargs)
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(analysis)
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    result = RE(plan(analysis.maps))
    analysis.close()
    return result, docs


def test_the_steering_agent_through_optimize_in_run_decides_as_steered_map():
    bl = make_beamline("domains", seed=1, noise=False)
    x, y = bl.stage.x, bl.stage.y
    planned, plan_docs = run(lambda maps: steered_map([bl.detector], x, y, (-2, 2), (-2, 2), maps=maps, **ARGS), bl)
    assert planned.plan_result["rounds"] >= 2

    bl = make_beamline("domains", seed=1, noise=False)
    x, y = bl.stage.x, bl.stage.y
    agent = SteeringAgent(Lattice(-2, 2, -2, 2, ARGS["fine"]), ARGS["coarse_step"], ARGS["budget"],
                          ARGS["threshold"], ARGS["points_per_round"], [y.name, x.name])
    optimizer = AgentOptimizer(agent, [x, y])
    assert isinstance(optimizer, Optimizer) and isinstance(optimizer, SupportsStoppingCriteria)
    holder = {}

    def adaptive(maps):
        holder["outcomes"] = AnalysedOutcomes(maps)
        problem = OptimizationProblem(optimizer=optimizer, actuators=[x, y], sensors=[bl.detector],
                                      evaluation_function=holder["outcomes"])
        return optimize_in_run(problem, iterations=50)

    _, docs = run(adaptive, bl, motors=[y.name, x.name])
    stored = planned.plan_result["decisions"]
    assert [(d["action"], d["reason"], d["value"]) for d in optimizer.decisions] == \
        [(d["action"], d["reason"], d["value"]) for d in stored]
    assert positions(docs) == positions(plan_docs) and agent.points == planned.plan_result["points"]
    assert np.isfinite([d["value"] for d in optimizer.decisions]).all()


def test_a_move_a_suggestion_cannot_hold_is_refused():
    agent = TemperatureAgent(((-1, 1), (-1, 1)), 266.0, 250.0, step=4.0, tolerance=1.0, hysteresis=10.0, quick=5,
                             fine=5)
    agent._next = lambda: agent._map([270.0, 266.0], [(0.0, 0.0)], agent._done)  # a reset first, then the map
    optimizer = AgentOptimizer(agent, ["stage_x", "stage_y", "temperature"])
    with pytest.raises(ValueError, match="cannot hold"):
        optimizer.suggest()
