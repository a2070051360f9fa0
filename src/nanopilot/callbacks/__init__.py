"""Bluesky callbacks: detector frames in -> predictions, live maps and derived documents out."""

from .analysis import POLICIES, NanobeamAnalysis
from .derived import DRIFT_STREAM
from .live_maps import LiveMaps, RunMap

__all__ = ["DRIFT_STREAM", "POLICIES", "LiveMaps", "NanobeamAnalysis", "RunMap"]
