"""steered_map's agent run by bluesky-adaptive 1.0's ``optimize_in_run`` on the simulated beamline.

    pip install 'nanopilot[adaptive]'
    python examples/adaptive/steered_map_optimize_in_run.py

The same decisions as ``RE(steered_map(...))`` (tests/test_adaptive.py checks it), without what the plan adds:
the decisions stream, a RunEngine that stays responsive while the analysis catches up, and replay from the
catalogue (see nanopilot.plans.adaptive).
"""

from bluesky import RunEngine
from bluesky_adaptive.plans import optimize_in_run
from bluesky_adaptive.protocols import OptimizationProblem

from nanopilot.agents import SteeringAgent
from nanopilot.agents.steering import Lattice
from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.model import Predictor
from nanopilot.plans.adaptive import AgentOptimizer, AnalysedOutcomes
from nanopilot.sim_devices import make_beamline


def main():
    bl = make_beamline("domains", seed=1)
    x, y = bl.stage.x, bl.stage.y
    # inline analysis: bluesky-adaptive calls the evaluation function synchronously, so the points must be analysed
    # by the time the acquisition returns
    analysis = NanobeamAnalysis(Predictor.load(), motors=[y.name, x.name], threaded=False, batch_size=1)
    RE = RunEngine({})
    RE.subscribe(analysis)
    agent = SteeringAgent(Lattice(-2, 2, -2, 2, 33), coarse_step=4, budget=272, threshold=4.0, points_per_round=32,
                          motors=[y.name, x.name])
    optimizer = AgentOptimizer(agent, [x, y])
    problem = OptimizationProblem(optimizer=optimizer, actuators=[x, y], sensors=[bl.detector],
                                  evaluation_function=AnalysedOutcomes(analysis.maps))
    RE(optimize_in_run(problem, iterations=100))  # the agent's stop decision ends it
    analysis.close()
    for decision in optimizer.decisions:
        print(f"{decision['step']}: {decision['action']}: {decision['reason']}")
    print(f"{agent.points} points measured, {agent.rounds} rounds, stop: {agent.reason}")


if __name__ == "__main__":
    main()
