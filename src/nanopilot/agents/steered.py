"""The decisions of :func:`~nanopilot.plans.steered_map` as an agent: a coarse raster, then rounds that split the
most interesting cells of a quadtree (:mod:`nanopilot.agents.steering`), until nothing interesting is left, the
finest resolution is reached or the budget is spent.

Proposals, in order: ``measure`` (the coarse raster) -> (``refine`` -> ``measure``)... -> ``stop`` -> ``done``.
``refine`` asks the approval hook; a veto ends the map.
"""

from __future__ import annotations

import numpy as np

from .base import Agent, Proposal
from .steering import (
    FIELDS,
    Lattice,
    cell_interest,
    choose_cells,
    coarse_cells,
    collect_points,
    corners,
    noise_scales,
    snake_order,
    split,
)


class SteeringAgent(Agent):
    """The quadtree's cells and the points measured (pure; see the module notes).

    Parameters
    ----------
    lattice : the fine raster. coarse_step : the first raster's spacing (fine steps, a power of two).
    budget : points to measure in all. threshold : interest (noise units) at or below which cells are left alone.
    cells_per_round : most cells refined per round. motors : the position columns, slowest first (``[y, x]``).
    """

    def __init__(self, lattice: Lattice, coarse_step: int, budget: int, threshold: float, cells_per_round: int,
                 motors=("stage_y", "stage_x")):
        super().__init__(motors)
        self.lattice, self.budget, self.threshold = lattice, int(budget), float(threshold)
        self.cells_per_round = int(cells_per_round)
        self.cells = coarse_cells(lattice.n, int(coarse_step))
        self.first = snake_order(sorted({c for cell in self.cells for c in corners(cell)}))
        self.points, self.rounds, self.reason = 0, 0, ""
        self._next = lambda: self._measure(self.first)

    def result(self) -> dict:
        """``lattice``, ``points`` measured, ``rounds``, ``reason`` for stopping, the final ``cells``."""
        return {"lattice": self.lattice, "points": self.points, "rounds": self.rounds, "reason": self.reason,
                "cells": list(self.cells)}

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
        cells = self.cells
        interest = cell_interest(cells, measured, scales)
        left = self.budget - self.points
        chosen, new = choose_cells(cells, interest, measured, left, self.threshold, self.cells_per_round)
        top = float(interest.max()) if len(interest) else 0.0
        if not chosen:
            reason = ("budget spent" if left < 5 else "nothing interesting left" if top <= self.threshold else
                      "finest resolution reached")
            return self._decide("stop", reason, {"points": self.points, "budget": self.budget, "max_interest": top},
                                top, lambda _: self._end(reason), step=self.rounds)

        def then(approved):
            if not approved:
                self._end("refinement vetoed")
                return
            self.cells = [c for c in cells if c not in chosen] + [s for c in chosen for s in split(c)[0]]
            self.rounds += 1
            self._next = lambda: self._measure(snake_order(new))
        reason = (f"{len(chosen)} cells with interest {interest.max():.1f} to "
                  f"{min(interest[cells.index(c)] for c in chosen):.1f} noise units")
        evidence = {"cells": [list(c) for c in chosen], "new_points": len(new), "budget_left": left,
                    "noise_scales": scales}
        return self._decide("refine", reason, evidence, top, then, approve=True, step=self.rounds)

    def _end(self, reason: str) -> None:
        self.reason = reason
        self._next = self._done
