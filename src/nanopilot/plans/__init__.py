"""Closed-loop Bluesky plans that read the live maps and decide what to do next."""

from .common import DECISION_STREAM, Decision, DecisionLog
from .steered_map import steered_map

__all__ = ["DECISION_STREAM", "Decision", "DecisionLog", "steered_map"]
