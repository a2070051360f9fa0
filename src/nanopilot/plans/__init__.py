"""Closed-loop Bluesky plans that read the live maps and decide what to do next."""

from .common import DECISION_STREAM, Decision, DecisionLog
from .growth import grow_until
from .steered_map import steered_map

__all__ = ["DECISION_STREAM", "Decision", "DecisionLog", "grow_until", "steered_map"]
