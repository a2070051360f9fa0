"""Bluesky callbacks: detector frames in -> predictions, live maps and derived documents out."""

from .analysis import POLICIES, NanobeamAnalysis
from .live_maps import LiveMaps, RunMap

__all__ = ["POLICIES", "LiveMaps", "NanobeamAnalysis", "RunMap"]
