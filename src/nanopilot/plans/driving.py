"""Driving an agent (:mod:`nanopilot.agents`) with bluesky messages: ask it, record its decisions in the
decisions stream (asking the approval hook), make its moves, measure its points, tell it the analysed points."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.protocols import Movable, Readable
from bluesky.utils import MsgGenerator

from ..agents import Proposal
from ..callbacks.live_maps import LiveMaps
from .common import DecisionLog, map_point, reading_time, record_decision
from .waiting import analysed_run, wait_for_analysis


class Driver:
    """What a plan hands its agent's proposals to.

    Parameters
    ----------
    agent : the agent. maps, timeout : the analysis' LiveMaps and the s to wait for it before telling.
    readables : what to read at each point (detectors, then the motors); x, y : the stage motors (um).
    moves : ``{name: plan(value)}`` for the proposals' moves (e.g. ``{"temperature": go_to}``).
    approve : the approval hook (or None). extra : ``extra(run, points) -> dict`` of columns to add to the points
        told (e.g. frame descriptors). fill : ``fill(proposal)``, a plan stub run before a decision is recorded
        (e.g. to read a device into its evidence).
    """

    def __init__(self, agent, maps: LiveMaps, readables: Sequence[Readable], x: Movable, y: Movable, *,
                 moves: dict[str, Callable] | None = None, approve: Callable | None = None, timeout: float = 60.0,
                 extra: Callable | None = None, fill: Callable | None = None):
        self.agent, self.maps, self.readables, self.x, self.y = agent, maps, list(readables), x, y
        self.moves, self.approve, self.timeout = dict(moves or {}), approve, timeout
        self.extra, self.fill = extra, fill
        self.log = DecisionLog()
        self.times: list[float] = []  # reading time (s, the devices' clock) of each primary point, by seq_num - 1
        self.pos_cache = defaultdict(lambda: None)  # last positions set, as bluesky's scans keep them

    def run(self, uid: str | None) -> MsgGenerator[str]:
        """Plan stub: ask, act and tell until the agent is done; returns "done", or "dry run" after the first
        measurement when there is no run (``uid`` None: no analysis)."""
        while True:
            proposal = self.agent.ask()
            if proposal.action == "done":
                return "done"
            if proposal.wait > 0:
                yield from bps.sleep(float(proposal.wait))
            if proposal.decision:
                yield from self.decide(proposal, uid)
                continue
            for name, value in proposal.moves:
                yield from self.moves[name](value)
            if proposal.points:
                yield from self.measure(proposal.points)
                if uid is None:  # a dry run (summarize_plan): no RunEngine, no analysis; the first stage only
                    return "dry run"
                yield from self.tell(uid)

    def measure(self, points) -> MsgGenerator[None]:
        """Plan stub: measure (x, y) points (um) in order, as bluesky's ``one_nd_step`` (a pause retakes one)."""
        for px, py in points:
            readings = yield from map_point(self.readables, {self.x: px, self.y: py}, self.pos_cache)
            self.times.append(reading_time(readings) if readings else math.nan)  # a dry run reads nothing

    def tell(self, uid: str) -> MsgGenerator[None]:
        """Plan stub: wait for the analysis of every frame taken (without blocking the RunEngine), then tell the
        agent the run's analysed points, with their reading ``time``."""
        yield from wait_for_analysis(self.maps, self.timeout)
        run = self.maps[uid]
        points = run.scattered()
        seq = points["seq_num"].astype(int) - 1
        points["time"] = [self.times[s] if 0 <= s < len(self.times) else math.nan for s in seq]
        if self.extra is not None:
            points.update(self.extra(run, points))
        self.agent.tell(points)

    def decide(self, proposal: Proposal, uid: str | None) -> MsgGenerator[dict]:
        """Plan stub: record the decision (asking the approval hook if the proposal says so) and tell the agent
        the verdict."""
        if self.fill is not None:
            yield from self.fill(proposal)
        points = len(self.maps[uid]) if uid is not None and uid in self.maps else 0
        decision = yield from record_decision(self.log, proposal.step, proposal.action, proposal.reason,
                                              proposal.evidence, value=proposal.value,
                                              approve=self.approve if proposal.approve else None, points=points)
        self.agent.tell_verdict(decision["approved"])
        return decision


def agent_run(driver: Driver, detectors: Sequence[Readable], md: dict, *, after: Callable | None = None,
              wrap: Callable | None = None) -> MsgGenerator[dict]:
    """Plan: one run in which ``driver`` drives its agent, the detectors staged; it returns once the run's
    analysis has ended (:func:`~nanopilot.plans.waiting.analysed_run`).

    after : ``after()``, a plan stub run when the agent is done (e.g. to close a shutter). wrap : ``wrap(plan)``
    around the run's body (e.g. :func:`~nanopilot.plans.common.safe_state_wrapper`), inside the analysis wait.
    Returns the agent's ``result()``, its ``reason`` "dry run" for a dry run, with the ``decisions``.
    """
    def inner(uid):
        ended = yield from driver.run(uid)
        if after is not None:
            yield from after()
        return ended

    def body(uid):
        plan = bpp.stage_wrapper(inner(uid), detectors)
        return wrap(plan) if wrap is not None else plan

    ended = yield from analysed_run(body, md, driver.maps, driver.timeout)
    result = driver.agent.result()
    if ended == "dry run":
        result["reason"] = "dry run"
    result["decisions"] = list(driver.log.history)
    return result
