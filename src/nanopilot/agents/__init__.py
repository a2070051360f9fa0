"""Decisions as agents: each closed-loop plan's logic as a pure object with the ask/tell shape (no Bluesky).

``tell(points)`` takes the analysed points (the columns of the analysis run's primary stream), ``ask()`` proposes
the next measurements or a decision with its reason (see :mod:`nanopilot.agents.base`). The plans in
:mod:`nanopilot.plans` drive them with bluesky messages; :func:`nanopilot.decisions.replay_decisions` feeds
them a stored run from the catalogue and compares their decisions with the stored ones.

Layer: below :mod:`nanopilot.plans` and :mod:`nanopilot.callbacks`, above :mod:`nanopilot.texture`; the agents
import numpy, scipy and the texture change test only.
"""

from .base import Agent, PointTable, Proposal
from .growth import GrowthAgent
from .steered import SteeringAgent
from .temperature import TemperatureAgent

__all__ = ["Agent", "GrowthAgent", "PointTable", "Proposal", "SteeringAgent", "TemperatureAgent"]
