"""Bluesky callbacks: detector frames in -> predictions, live maps and derived documents out."""

from .analysis import POLICIES, NanobeamAnalysis
from .live_maps import LiveMaps, RunMap, publish_maps, published_maps

__all__ = ["POLICIES", "LiveMaps", "NanobeamAnalysis", "RunMap", "publish_maps", "published_maps"]
