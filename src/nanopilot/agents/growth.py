"""The decisions of :func:`~nanopilot.plans.grow_until` as an agent around
:class:`~nanopilot.agents.growth_monitor.GrowthMonitor`: open the shutter, measure the same points round after
round, close at relaxation, at the target thickness (anticipated from the growth rate) or at the time limit.

Proposals: ``open shutter`` (a decision) -> ``open`` (moves the shutter) -> ``measure`` (the next points of the
round: up to the next look at the relaxation tests, or to the round's end) ... -> ``close shutter`` (a decision)
-> ``done`` (the driver closes the shutter on every exit path). A round's values are found by the points'
positions (a point whose frame was lost is NaN in its round; one retaken after a pause counts once, its latest
take); times are the points' ``time`` column (s, the readings' clock).
"""

from __future__ import annotations

import numpy as np

from .base import Agent, Proposal
from .growth_monitor import LOOK_EVERY, RELAXATION_FIELDS, WINDOW, Z_POINT, Z_SPREAD, GrowthMonitor


class GrowthAgent(Agent):
    """The growth's monitor and what to do next (pure; see the module notes).

    Parameters
    ----------
    target : thickness (angstrom) at which to close. points : (x, y) positions (um) measured each round.
    interval : s between rounds. max_time : s after the first frame at which the shutter closes whatever happens.
    z_point, z_spread, window : the relaxation criterion (see :class:`GrowthMonitor`).
    look_every : points between looks at the relaxation tests within a round.
    motors : the position columns, slowest first (``[y, x]``).
    """

    def __init__(self, target: float, points, *, interval: float, max_time: float, z_point: float = Z_POINT,
                 z_spread: float = Z_SPREAD, window: int = WINDOW, look_every: int = LOOK_EVERY,
                 motors=("stage_y", "stage_x")):
        super().__init__(motors)
        self.target, self.points = float(target), [tuple(map(float, p)) for p in points]
        self.interval, self.max_time, self.look_every = float(interval), float(max_time), int(look_every)
        self.monitor = GrowthMonitor(self.target, z_point=float(z_point), z_spread=float(z_spread), window=int(window))
        self.reason, self.thickness, self.rate = "", float("nan"), float("nan")
        self.taken, self.t_open = 0, None  # points proposed in the current round; the first frame's time (s)
        self._next = self._propose_open

    @property
    def round(self) -> int:
        """The round under way (0 first)."""
        return len(self.monitor.rounds)

    def result(self) -> dict:
        """``reason``, ``thickness`` (angstrom), ``rate`` (angstrom/s), ``rounds`` (see the plan)."""
        return {"reason": self.reason, "thickness": self.thickness, "rate": self.rate, "rounds": self.round}

    def _decide_now(self, action, reason, evidence, value, then, approve=True) -> Proposal:
        return self._decide(action, reason, evidence, value, then, approve=approve, step=self.round)

    # ------------------------------------------------------------------ the shutter
    def _propose_open(self) -> Proposal:
        def then(approved):
            self._next = (lambda: self._act("open", self._measure)) if approved else self._done
            self.reason = "" if approved else "vetoed"
        return self._decide_now("open shutter", f"grow to {self.target:g} A", {"points": len(self.points)},
                                self.target, then)

    def _act(self, shutter: str, then) -> Proposal:
        self._next = then
        return Proposal(shutter, f"shutter {shutter}", decision=False, moves=[("shutter", shutter)])

    def _close(self, reason: str, thickness: float, rate: float | None = None):
        """A ``then``: on approval, record the stop (the driver closes the shutter as the plan ends, on every exit
        path); a veto carries on measuring."""
        def then(approved):
            if approved:
                self.reason, self.thickness = reason, thickness
                self.rate = self.rate if rate is None else rate
                self._next = self._done
        return then

    # ------------------------------------------------------------------ measuring
    def _measure(self, wait: float = 0.0) -> Proposal:
        """The next points of the round: up to the next look within it, or to its end."""
        n, k = len(self.points), self.taken
        stop = n
        if self.round > self.monitor.min_baseline:
            stop = min(n, (k // self.look_every + 1) * self.look_every)
        self.taken = stop
        self._next = self._look if stop < n else self._round_done
        return Proposal("measure", f"points {k + 1}..{stop} of round {self.round + 1}", decision=False, wait=wait,
                        points=self.points[k:stop])

    def _round_values(self, k: int) -> tuple[dict, np.ndarray]:
        """Per field the round's values at its points (NaN where not measured yet or lost), and the times (s) of
        the points measured. The round's rows: from the last row back, each of its first ``k`` points once (the
        latest take: a point retaken after a pause counts once), while the points go back in the round's order."""
        self._need_points()
        table, n = self.table.scattered(), len(self.points)
        x_key, y_key = self.table.motors[::-1][:2]
        tail = np.arange(max(0, len(self.table) - 3 * n - 16), len(self.table))  # enough for a few retakes
        xy = np.column_stack([table[x_key][tail], table[y_key][tail]])
        index = np.argmin(((xy[:, None, :] - np.asarray(self.points)[None]) ** 2).sum(axis=2), axis=1)
        rows, last = [], k
        for row, point in zip(tail[::-1], index[::-1]):
            if point > last or (point == last and not rows):  # the round before
                break
            if point < last:  # (point == last: an earlier take of a point retaken)
                rows.append(row)
                last = point
        if not rows:
            raise ValueError(f"no analysed point among the first {k} of round {self.round + 1}: their frames were lost")
        rows = np.array(rows[::-1])
        values = {}
        for field in ("thickness",) + RELAXATION_FIELDS:
            values[field] = np.full(n, np.nan)
            values[field][index[rows - tail[0]]] = table[field][rows]
        return values, np.asarray(table["time"], float)[rows]

    def _look(self) -> Proposal:
        """The relaxation tests on the round so far."""
        k = self.taken
        partial, times = self._round_values(k)
        relaxed, relax_evidence = self.monitor.relaxation(partial)
        _, evidence = self.monitor.time_to_target(float(times.max()))
        evidence.update(relax_evidence, **{"points measured in the round": k})
        if relaxed:
            return self._relaxed(relax_evidence, evidence, lambda: self._measure())
        return self._measure()

    def _relaxed(self, relax_evidence: dict, evidence: dict, carry_on) -> Proposal:
        why = (f"relaxation: {relax_evidence['test']} test, a ramp {relax_evidence['z_max']:.1f} noise units "
               f"from the baseline since round {relax_evidence['ramp from round']}")
        close = self._close("relaxation", evidence["thickness"], evidence["rate"])

        def then(approved):
            self._next = carry_on
            close(approved)
        return self._decide_now("close shutter", why, evidence, evidence["thickness"], then)

    def _round_done(self) -> Proposal:
        values, times = self._round_values(len(self.points))
        t0, t1 = float(times.min()), float(times.max())
        self.t_open = t0 if self.t_open is None else self.t_open
        self.monitor.add_round((t0 + t1) / 2, values)
        self.taken = 0
        relaxed, relax_evidence = self.monitor.relaxation()
        remaining, evidence = self.monitor.time_to_target(t1)  # the last frame's time: what it showed
        evidence.update(relax_evidence)
        self.thickness, self.rate = evidence["thickness"], evidence["rate"]
        after = lambda: self._target(remaining, (t1 - t0) + self.interval, t1, evidence)  # noqa: E731
        return self._relaxed(relax_evidence, evidence, after) if relaxed else after()

    def _target(self, remaining: float, round_time: float, now: float, evidence: dict) -> Proposal:
        if remaining <= round_time:
            evidence = dict(evidence, thickness=self.target if remaining > 0 else evidence["thickness"])
            proposal = self._decide_now("close shutter", f"target {self.target:g} A reached (anticipated "
                                        f"{remaining:.1f} s ahead at {evidence['rate']:.3g} A/s)", evidence,
                                        evidence["thickness"], self._after_target(now, evidence))
            proposal.wait = max(remaining, 0.0)
            return proposal
        return self._time_limit(now, evidence)

    def _after_target(self, now: float, evidence: dict):
        close = self._close("target", evidence["thickness"])

        def then(approved):
            close(approved)
            if not approved:
                self._next = lambda: self._time_limit(now, evidence)
        return then

    def _time_limit(self, now: float, evidence: dict) -> Proposal:
        if now - self.t_open >= self.max_time:  # safety: not subject to approval
            return self._decide_now("close shutter", f"time limit of {self.max_time:g} s", evidence,
                                    evidence["thickness"], self._close("time limit", self.thickness), approve=False)
        return self._measure(wait=self.interval)
