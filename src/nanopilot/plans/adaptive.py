"""nanopilot's agents through bluesky-adaptive 1.0 (the optional extra ``nanopilot[adaptive]``): an agent as its
``Optimizer`` (:class:`AgentOptimizer`: ``suggest``/``ingest``/``get_best_points``, and ``should_stop``), and the
analysed points of the suggestions as its evaluation function (:class:`AnalysedOutcomes`), for
``bluesky_adaptive.plans.optimize_in_run``::

    problem = OptimizationProblem(optimizer=AgentOptimizer(agent, [x, y]), actuators=[x, y], sensors=[det],
                                  evaluation_function=AnalysedOutcomes(analysis.maps))
    RE(optimize_in_run(problem, iterations=1000))  # the agent's stop decision ends it earlier

What bluesky-adaptive's loop does not do, and nanopilot's plans do (so the plans stay the way to run the agents at
a beamline): the evaluation function is called synchronously, so waiting for the analysis blocks the RunEngine
(no pause, Ctrl-C or abort is serviced then: use a synchronous analysis, ``threaded=False``); the agents' decisions
and their reasons are kept in :attr:`AgentOptimizer.decisions`, not in the run's decisions stream, and an approval
hook has no veto over actions the optimizer already suggested; a suggestion sets each actuator once per point, so
moves through another setting first (the temperature search's hysteresis resets), waits (the growth's anticipated
closing) and safe states on every exit path (the growth's shutter) cannot be expressed; and nothing replays the
decisions from the catalogue (:func:`nanopilot.decisions.replay_decisions` reads the plans' decisions stream).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..callbacks.live_maps import LiveMaps

ID_KEY = "_id"  # bluesky_adaptive.protocols.ID_KEY


class AgentOptimizer:
    """A nanopilot agent (:mod:`nanopilot.agents`) as a bluesky-adaptive ``Optimizer`` with stopping criteria.

    Parameters
    ----------
    agent : the agent; its proposals must be points to measure, each move setting one more actuator once.
    actuators : [x, y] (and the movables its moves name, e.g. the temperature controller), named as the agent's
        moves name them (``"temperature"``) or by their ``name``.
    approve : optional ``approve(decision) -> bool`` hook asked about the decisions that ask for approval.
    """

    def __init__(self, agent, actuators: Sequence, approve: Callable | None = None):
        self.agent, self.approve = agent, approve
        self.names = [getattr(a, "name", str(a)) for a in actuators]
        self.decisions: list[dict] = []  # every decision with its verdict, as the plans record them
        self.table: dict[str, list] = {}
        self._suggested: dict[int, dict] = {}
        self._ids = 0
        self._action = None  # the agent's action asked for but not suggested yet

    def _proposal(self):
        """The agent's next action (kept until suggested), ruling on its decisions on the way."""
        if self._action is not None:
            return self._action
        while True:
            proposal = self.agent.ask()
            if not proposal.decision:
                self._action = proposal
                return proposal
            decision = {"step": proposal.step, "action": proposal.action, "reason": proposal.reason,
                        "evidence": proposal.evidence, "value": proposal.value, "approved": True}
            if proposal.approve and self.approve is not None:
                decision["approved"] = bool(self.approve(dict(decision)))
            self.decisions.append(decision)
            self.agent.tell_verdict(decision["approved"])

    def should_stop(self) -> tuple[bool, str | None]:
        proposal = self._proposal()
        if proposal.action == "done":
            return True, self.decisions[-1]["reason"] if self.decisions else "the agent is done"
        return False, None

    def suggest(self, num_points: int | None = None) -> list[dict]:
        """The agent's next points (however many it proposes: ``num_points`` is not the agent's to follow)."""
        proposal, self._action = self._proposal(), None
        if proposal.action == "done":
            raise RuntimeError("the agent is done; bluesky-adaptive stops on should_stop() before asking again")
        if proposal.wait > 0 or len(proposal.moves) > 1:
            raise ValueError(f"the agent's {proposal.action!r} needs moves {proposal.moves} and a wait of "
                             f"{proposal.wait:g} s before its points, which a suggestion cannot hold: run its plan")
        x, y = self.names[:2]
        settings = {self._name(name): value for name, value in proposal.moves}
        out = []
        for px, py in proposal.points:
            self._ids += 1
            out.append({ID_KEY: self._ids, x: float(px), y: float(py), **settings})
            self._suggested[self._ids] = out[-1]
        return out

    def _name(self, name: str) -> str:
        if name in self.names:
            return name
        found = [n for n in self.names[2:] if n.startswith(name) or name in n]
        if len(found) != 1:
            raise ValueError(f"no actuator for the agent's move {name!r} among {self.names}")
        return found[0]

    def ingest(self, points: Sequence[Mapping]) -> None:
        """Outcomes of :class:`AnalysedOutcomes`: told to the agent with every point before them."""
        x, y = self.names[:2]
        for outcome in points:
            rows = self._rows()
            suggestion = self._suggested.pop(outcome[ID_KEY])
            row = {k: v for k, v in outcome.items() if k not in (ID_KEY, "raw_seq_num")}
            row.update({"seq_num": outcome["raw_seq_num"], **{m: suggestion[n] for m, n in
                                                               zip(self.agent.table.motors[::-1], (x, y))}})
            for key in set(self.table) | set(row):
                self.table.setdefault(key, [math.nan] * rows).append(row.get(key, math.nan))
        self.agent.tell({k: np.asarray(v, dtype=object if k == "status" else float) for k, v in self.table.items()})

    def _rows(self) -> int:
        return len(self.table.get("seq_num", []))

    def get_best_points(self) -> list[tuple]:
        """None: the agents map, search or stop; they keep no best point (``navigate_to_best`` has none to go to)."""
        return []


class AnalysedOutcomes:
    """bluesky-adaptive evaluation function: the analysed points of the suggestions just acquired.

    ``uid`` is the suggestion ids in acquisition order (``list_scan_in_run``); the k-th one is the primary event
    measured after the points of the iterations before. Waits (blocking, up to ``timeout`` s) until the analysis has
    caught up. Each outcome: the estimates, their std, ``status`` (``"lost"`` for a frame the analysis did not
    store) and ``raw_seq_num``.
    """

    def __init__(self, maps: LiveMaps, timeout: float = 60.0):
        self.maps, self.timeout, self.taken = maps, float(timeout), 0

    def __call__(self, uid, suggestions: Sequence[Mapping]) -> list[dict]:
        ids = list(uid)
        if not self.maps.wait_for(timeout=self.timeout):
            raise TimeoutError(f"the analysis did not catch up within {self.timeout:g} s")
        run = self.maps.current
        points = run.scattered()
        index = {int(s): i for i, s in enumerate(points["seq_num"])}
        fields = [k for k in points if k not in ("seq_num", "texture", *run.motors)]
        outcomes = []
        for k, sid in enumerate(ids, start=self.taken + 1):
            i = index.get(k)
            row = {f: (points[f][i] if i is not None else math.nan) for f in fields}
            row["status"] = str(points["status"][i]) if i is not None else "lost"
            outcomes.append({ID_KEY: sid, "raw_seq_num": k, **row})
        self.taken += len(ids)
        return outcomes
