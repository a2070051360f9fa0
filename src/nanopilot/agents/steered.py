"""The decisions of :func:`~nanopilot.plans.steered_map` as an agent: a coarse raster, then rounds that bisect the
triangulation edges across which the maps change most (:mod:`nanopilot.agents.steering`), until no edge above the
threshold is left unresolved, the finest resolution is reached or the budget is spent.

Proposals, in order: ``measure`` (the coarse raster) -> (``refine`` -> ``measure``)... -> ``stop`` -> ``done``.
``refine`` asks the approval hook; a veto ends the map.
"""

from __future__ import annotations

import numpy as np

from .base import Agent, Proposal
from .steering import FIELDS, Lattice, choose_points, coarse_points, collect_points, noise_scales, snake_order


class SteeringAgent(Agent):
    """The points measured and the edges bisected (pure; see the module notes).

    Parameters
    ----------
    lattice : the fine raster. coarse_step : the first raster's spacing (fine steps).
    budget : points to measure in all. threshold : interest (noise units) at or below which edges are left alone.
    points_per_round : most points measured per round (one decision each round). motors : the position columns,
    slowest first (``[y, x]``).
    """

    def __init__(self, lattice: Lattice, coarse_step: int, budget: int, threshold: float, points_per_round: int,
                 motors=("stage_y", "stage_x")):
        super().__init__(motors)
        self.lattice, self.budget, self.threshold = lattice, int(budget), float(threshold)
        self.points_per_round = int(points_per_round)
        self.first = snake_order(coarse_points(lattice.n, int(coarse_step)))
        self.points, self.rounds, self.reason = 0, 0, ""
        self._next = lambda: self._measure(self.first)

    def result(self) -> dict:
        """``lattice``, ``points`` measured, ``rounds``, ``reason`` for stopping."""
        return {"lattice": self.lattice, "points": self.points, "rounds": self.rounds, "reason": self.reason}

    def _measure(self, indices) -> Proposal:
        self.points += len(indices)
        self._next = self._decide_round
        return Proposal("measure", f"{len(indices)} points", decision=False,
                        points=[self.lattice.position(ij) for ij in indices])

    def measured(self) -> dict:
        """The analysed points told, keyed by lattice index (:func:`~nanopilot.agents.steering.collect_points`)."""
        return collect_points(self.table, self.lattice, *self.table.motors[::-1][:2])

    def _decide_round(self) -> Proposal:
        self._need_points()
        measured = self.measured()
        values = {f: np.array([p.get(f, np.nan) for p in measured.values()]) for f in FIELDS}
        stds = {f: np.array([p.get(f + "_std", np.nan) for p in measured.values()]) for f in FIELDS}
        scales = noise_scales({f: v for f, v in values.items() if np.isfinite(v).any()}, stds)
        left = self.budget - self.points
        new, edges, top = choose_points(measured, scales, self.threshold, min(left, self.points_per_round))
        if not new:
            reason = ("budget spent" if left < 1 else "nothing interesting left" if top <= self.threshold else
                      "finest resolution reached")
            return self._decide("stop", reason, {"points": self.points, "budget": self.budget, "max_interest": top},
                                top, lambda _: self._end(reason), step=self.rounds)

        def then(approved):
            if not approved:
                self._end("refinement vetoed")
                return
            self.rounds += 1
            self._next = lambda: self._measure(snake_order(new))
        reason = f"{len(new)} points bisecting edges with interest up to {top:.1f} noise units"
        evidence = {"edges": edges, "new_points": len(new), "budget_left": left, "noise_scales": scales}
        return self._decide("refine", reason, evidence, top, then, approve=True, step=self.rounds)

    def _end(self, reason: str) -> None:
        self.reason = reason
        self._next = self._done
