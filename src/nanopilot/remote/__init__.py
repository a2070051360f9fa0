"""The analysis beside the acquisition: ``nanopilot worker`` processes fed by bluesky's document streams.

:mod:`.wire` (0MQ and Kafka streams), :mod:`.partition` (several workers: runs divided among them),
:mod:`.worker` (the worker process' analysis, texture labels, heartbeats and storage).
"""

from .partition import owner, parse_partition
from .wire import ANALYSIS_PREFIX, HEARTBEAT, HEARTBEAT_PREFIX

__all__ = ["ANALYSIS_PREFIX", "HEARTBEAT", "HEARTBEAT_PREFIX", "owner", "parse_partition"]
