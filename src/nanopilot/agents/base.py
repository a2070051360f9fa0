"""What the agents share: a :class:`Proposal` (what :meth:`ask` returns), the analysed points an agent is told
(:class:`PointTable`), and the ask/tell bookkeeping (:class:`Agent`).

The protocol, for a driver (a bluesky plan, a replay, bluesky-adaptive):

- ``ask()`` returns the next :class:`Proposal`. A *decision* (``proposal.decision``) is recorded in the run's
  decisions stream; the driver then calls ``tell_verdict(approved)`` (False when an approval hook vetoed it, else
  True). Asking again before the verdict returns the same proposal.
- An *action* (not a decision: measure points, move, wait) is carried out by the driver; the next ``ask()`` takes
  it as done. Before asking after a measurement, the driver tells the analysed points (``tell(points)``); a
  decision asked without them raises ValueError.
- ``tell(points)``: every analysed point of the run so far (a snapshot, not an increment), as the columns of the
  analysis run's primary stream (:data:`POINT_COLUMNS`), numpy arrays of one length, in the order of analysis.

Agents import no Bluesky: a decision depends only on the points told and the verdicts, so feeding an agent the
stored analysis run reproduces its decisions (:func:`nanopilot.decisions.replay_decisions`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

#: The columns an agent is told (besides the two position columns, named after the stage's motors): ``seq_num``
#: (the raw run's primary seq_num), the estimates and their std (NaN where a frame is flagged), ``status``;
#: optional: ``thickness``, ``time`` (s, the reading's time on the devices' clock: growth), ``texture`` (labels),
#: ``features`` ((N, k) frame descriptors: the temperature search).
POINT_COLUMNS = ("seq_num", "strain", "omega", "chi", "strain_std", "omega_std", "chi_std", "status")
#: Evidence keys a driver fills in from its devices (not the agent's: a replay does not compare them).
DRIVER_KEYS = ("readback",)


@dataclasses.dataclass
class Proposal:
    """What an agent proposes next.

    action : what to do ("refine", "classify", "map", "close shutter", "done", ...).
    reason : why (for the decisions stream). evidence : JSON-able dict. value : the decision's main number.
    decision : recorded in the decisions stream (then the driver calls ``tell_verdict``); False: an action.
    approve : a decision the approval hook is asked about (a veto: ``tell_verdict(False)``).
    moves : ``(name, value)`` settings to make first, in order (e.g. ``("temperature", 263.0)`` K).
    wait : seconds to wait before acting (e.g. before closing a shutter at an anticipated time).
    points : (x, y) positions (um) to measure, in order, after the moves.
    step : the decision's step in the decisions stream (the plan's count: rounds, decisions so far).
    """

    action: str
    reason: str = ""
    evidence: dict = dataclasses.field(default_factory=dict)
    value: float = math.nan
    decision: bool = True
    approve: bool = False
    moves: list = dataclasses.field(default_factory=list)
    wait: float = 0.0
    points: list = dataclasses.field(default_factory=list)
    step: int = 0


class PointTable:
    """The analysed points an agent was told, quacking like :class:`~nanopilot.callbacks.RunMap` for
    :func:`~nanopilot.texture.texture_change` (``motors``, ``scattered()``, ``features()``, ``len``).

    motors : the position columns' names, slowest first (``[y, x]``, as in the start document).
    """

    def __init__(self, motors):
        self.motors = list(motors)
        self.columns: dict[str, np.ndarray] = {"seq_num": np.zeros(0, int)}

    def update(self, points: dict) -> None:
        """Take a snapshot of the points (see the module notes); ValueError naming a missing or ragged column."""
        columns = {k: np.asarray(v) for k, v in points.items()}
        missing = [k for k in ("seq_num", *self.motors, "status") if k not in columns]
        if missing:
            raise ValueError(f"the points lack the columns {missing}; they have {sorted(columns)}")
        n = len(columns["seq_num"])
        ragged = [k for k, v in columns.items() if len(v) != n]
        if ragged:
            raise ValueError(f"the point columns {ragged} are not {n} long (the seq_num column's length)")
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns["seq_num"])

    def scattered(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.columns.items() if k != "features"}

    def features(self) -> np.ndarray:
        features = self.columns.get("features")
        return np.zeros((len(self), 0)) if features is None else np.asarray(features, float).reshape(len(self), -1)


class Agent:
    """The ask/tell bookkeeping of the module notes; a subclass sets ``self._next`` (a method returning the next
    :class:`Proposal`) and passes a ``then(approved)`` with each decision."""

    def __init__(self, motors):
        self.table = PointTable(motors)
        self._pending: Proposal | None = None
        self._then: Callable[[bool], None] | None = None
        self._next: Callable[[], Proposal] = self._done
        self.decisions = 0  # decisions proposed so far
        self._told = False  # points told since the last action

    def tell(self, points: dict) -> None:
        """The analysed points of the run so far (see the module notes)."""
        self.table.update(points)
        self._told = True

    def ask(self) -> Proposal:
        """The next proposal (see the module notes)."""
        if self._pending is not None and not self._pending.decision:
            self._pending = None  # the action was carried out
        if self._pending is None:
            self._pending = self._next()
            if not self._pending.decision and self._pending.points:
                self._told = False  # the points it measures come with the next tell()
        return self._pending

    def tell_verdict(self, approved: bool) -> None:
        """The outcome of the decision last asked: False when it was vetoed."""
        if self._pending is None or not self._pending.decision:
            raise RuntimeError("tell_verdict() without a decision to rule on: ask() first")
        then, self._pending, self._then = self._then, None, None
        then(bool(approved))

    def _decide(self, action: str, reason: str, evidence: dict, value: float, then: Callable[[bool], None], *,
                approve: bool = False, step: int | None = None) -> Proposal:
        """A decision; ``then(approved)`` runs at its verdict; ``step`` defaults to the decisions before it."""
        self._then = then
        self.decisions += 1
        return Proposal(action, reason, evidence, float(value), decision=True, approve=approve,
                        step=self.decisions - 1 if step is None else int(step))

    def _need_points(self) -> None:
        """Raise ValueError unless the points were told since the last measurement."""
        if not self._told:
            raise ValueError("tell() the analysed points of the measurement before asking")

    def _done(self) -> Proposal:
        return Proposal("done", decision=False)
