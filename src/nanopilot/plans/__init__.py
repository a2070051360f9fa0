"""Closed-loop Bluesky plans that read the live maps and decide what to do next."""

from .common import DECISION_STREAM, Decision, DecisionLog
from .drift import with_drift_reference
from .growth import grow_until
from .steered_map import steered_map
from .temperature import find_texture_temperature

__all__ = ["DECISION_STREAM", "Decision", "DecisionLog", "find_texture_temperature", "grow_until", "steered_map",
           "with_drift_reference"]
