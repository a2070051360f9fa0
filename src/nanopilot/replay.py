"""Replay a stored run's documents through callbacks, lazily.

Reads one stream's scalar table, then its array fields one chunk at a time, and merges the streams'
events by time, so a run much larger than memory replays in bounded memory. Frames stored externally
(HDF5 registered by the TiledWriter) come back inline, exactly as the live analysis saw them.
"""

from __future__ import annotations

import copy
import heapq
import uuid
from collections.abc import Callable, Iterator

import event_model

DEFAULT_CHUNK = 256


def replay(run, *callbacks: Callable[[str, dict], None], chunk_size: int = DEFAULT_CHUNK) -> int:
    """Send every document of ``run`` (a Tiled BlueskyRun) to each ``callback(name, doc)``.

    Returns the number of events replayed. Events are grouped into ``event_page`` documents of at most
    ``chunk_size`` consecutive events of one stream.
    """
    n = 0
    for name, doc in iter_documents(run, chunk_size=chunk_size):
        if name == "event_page":
            n += len(doc["seq_num"])
        for callback in callbacks:
            callback(name, doc)
    return n


def iter_documents(run, *, chunk_size: int = DEFAULT_CHUNK) -> Iterator[tuple[str, dict]]:
    """start, then each stream's descriptor before its first event, event pages merged by time, stop."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    yield "start", copy.deepcopy(dict(run.start))
    streams = [_Stream(name, run[name], chunk_size) for name in run]
    announced = set()
    page: list[dict] = []
    for _, _, event in heapq.merge(*(s.events() for s in streams), key=lambda item: (item[0], item[1])):
        if page and (event["descriptor"] != page[0]["descriptor"] or len(page) >= chunk_size):
            yield "event_page", event_model.pack_event_page(*page)
            page = []
        if event["descriptor"] not in announced:
            announced.add(event["descriptor"])
            yield "descriptor", next(s.descriptor for s in streams if s.descriptor["uid"] == event["descriptor"])
        page.append(event)
    if page:
        yield "event_page", event_model.pack_event_page(*page)
    for stream in streams:  # streams that never had an event still have their descriptor
        if stream.descriptor is not None and stream.descriptor["uid"] not in announced:
            yield "descriptor", stream.descriptor
    if run.stop:
        yield "stop", copy.deepcopy(dict(run.stop))


class _Stream:
    """Events of one stored stream, read lazily (scalar table once, arrays chunk by chunk)."""

    def __init__(self, name: str, node, chunk_size: int):
        self.name, self.node, self.chunk_size = name, node, chunk_size
        descriptors = node.descriptors
        self.descriptor = copy.deepcopy(dict(descriptors[0])) if descriptors else None
        if self.descriptor is not None:
            for key in self.descriptor["data_keys"].values():
                key.pop("external", None)  # data come back filled, inline

    def events(self) -> Iterator[tuple[float, int, dict]]:
        if self.descriptor is None:
            return
        table = self.node.base["internal"].read()
        keys = list(self.descriptor["data_keys"])
        array_keys = [k for k in keys if k not in table.columns]
        n = len(table)
        for first in range(0, n, self.chunk_size):
            last = min(first + self.chunk_size, n)
            arrays = {k: self.node[k][first:last] for k in array_keys}
            rows = table.iloc[first:last]
            for i in range(last - first):
                row = rows.iloc[i]
                t = float(row["time"])
                data = {k: (arrays[k][i] if k in arrays else _python(row[k])) for k in keys}
                stamps = {k: float(row[f"ts_{k}"]) if f"ts_{k}" in row else t for k in keys}
                yield t, int(row["seq_num"]), {
                    "descriptor": self.descriptor["uid"], "uid": str(uuid.uuid4()), "time": t,
                    "seq_num": int(row["seq_num"]), "data": data, "timestamps": stamps, "filled": {}}


def _python(value):
    return value.item() if hasattr(value, "item") else value
