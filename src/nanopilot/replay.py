"""Replay a stored run's documents through callbacks, lazily; find the model its stored analysis used.

Reads one stream's scalar table, then its array fields one chunk at a time, and merges the streams'
events by time, so a run much larger than memory replays in bounded memory. Frames stored externally
(HDF5 registered by the TiledWriter) come back inline, exactly as the live analysis saw them.

:func:`stored_model` finds the model file that the latest analysis run stored for a raw run used, so a
replay analyses the run with the same model (by the weights' SHA-256, whatever the model is called now);
:func:`stored_preparation` rebuilds the frame preparation it used (checked by its fingerprint).
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import event_model

logger = logging.getLogger(__name__)

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


@dataclasses.dataclass(frozen=True)
class StoredModel:
    """The model a stored analysis run used, found on this machine.

    path : its sidecar, for ``Predictor.load(path)``; name : its name here (a shipped model's name or the
    file's stem); recorded : the analysis start document's ``model``; analysis_uid : that analysis run's uid;
    note : why this analysis was chosen when the run's stored analyses used different models, else "".
    """

    path: Path
    name: str
    recorded: dict
    analysis_uid: str
    note: str = ""


def stored_analyses(catalog, raw_uid: str) -> list[dict]:
    """Start documents of the NanobeamAnalysis runs stored in ``catalog`` for raw run ``raw_uid``, oldest first."""
    from tiled.queries import Key

    from .callbacks.derived import ANALYSIS_NAME
    from .runs import derived_runs

    found = derived_runs(catalog, raw_uid).search(Key("start.analysis") == ANALYSIS_NAME)
    return sorted((dict(run.start) for run in found.values()), key=lambda start: start.get("time", 0.0))


def stored_model(catalog, run) -> StoredModel | None:
    """The model of the latest analysis stored for ``run`` (a BlueskyRun or its uid); None if none is stored.

    Raises FileNotFoundError naming the recorded model (name, SHA-256 prefix, file) when it is on this machine
    neither as a shipped model nor at the path or name recorded. Logs a warning when the run's stored analyses
    used different models.
    """
    raw_uid = run if isinstance(run, str) else run.start["uid"]
    starts = stored_analyses(catalog, raw_uid)
    if not starts:
        return None
    latest = starts[-1]
    recorded = dict(latest.get("model") or {})
    try:
        path, name = find_model(recorded)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"the analysis {latest['uid'][:8]} stored for run {raw_uid[:8]}: {err}") from None
    models = {_identity(start.get("model") or {}): _describe(start.get("model") or {}) for start in starts}
    note = ""
    if len(models) > 1:
        note = (f"{len(starts)} analyses of run {raw_uid[:8]} are stored, with {len(models)} different models "
                f"({'; '.join(models.values())}): following the latest, {latest['uid'][:8]}")
        logger.warning(note)
    return StoredModel(path, name, recorded, latest["uid"], note)


def stored_preparation(catalog, run):
    """The :class:`~nanopilot.physics.FramePreparation` of the latest analysis stored for ``run`` (a BlueskyRun or
    its uid); None if that analysis took model-sized frames (or none is stored).

    Raises ValueError when it cannot be rebuilt as it was: a calibration array that was in memory, or calibration
    files whose contents changed (another fingerprint)."""
    from .physics import FramePreparation

    raw_uid = run if isinstance(run, str) else run.start["uid"]
    starts = stored_analyses(catalog, raw_uid)
    recorded = _python_tree(starts[-1].get("frame_preparation")) if starts else None
    if not recorded:
        return None
    where = f"the frame preparation of the analysis {starts[-1]['uid'][:8]} stored for run {raw_uid[:8]}"
    try:
        preparation = FramePreparation.from_dict(recorded)
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"{where} cannot be rebuilt: {err}; pass --preparation FILE") from None
    fingerprint = starts[-1].get("frame_preparation_fingerprint")
    if fingerprint and preparation.fingerprint() != fingerprint:
        raise ValueError(f"{where} had fingerprint {fingerprint}; its files now give {preparation.fingerprint()} (a "
                         f"calibration file changed): restore them or pass --preparation FILE")
    return preparation


def _python_tree(value):
    """Plain dicts and lists of a (Tiled) metadata tree."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _python_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_python_tree(v) for v in value]
    return _python(value)


def find_model(recorded: dict) -> tuple[Path, str]:
    """(sidecar path, name) of the model file described by ``recorded`` (an analysis start's ``model``).

    Looks for its weights' SHA-256 among the shipped models first (a shipped model keeps its weights when
    renamed), then at the sidecar path, the name and the weights file recorded. FileNotFoundError otherwise.
    """
    from .model.files import paths
    from .model.predictor import SHIPPED_MODELS, shipped_model_path

    weights = recorded.get("weights") or {}
    sha = weights.get("sha256")
    if not sha:
        raise FileNotFoundError(f"{_describe(recorded)} cannot be found again: pass --model FILE to replay with "
                                "a model file")
    for name in SHIPPED_MODELS:
        if _sidecar_sha(shipped_model_path(name)) == sha:
            return shipped_model_path(name), name
    for candidate in (recorded.get("path"), recorded.get("name"), weights.get("file")):
        sidecar = paths(candidate)[1] if candidate else None
        if sidecar is not None and _sidecar_sha(sidecar) == sha:
            return sidecar, sidecar.stem
    raise FileNotFoundError(f"{_describe(recorded)} is not on this machine (no shipped model has its weights, "
                            "and no model file with them is at the path or name recorded): pass --model FILE "
                            "to replay with another model")


def _identity(recorded: dict) -> str:
    """What tells models apart: the weights' SHA-256, else the name."""
    return (recorded.get("weights") or {}).get("sha256") or str(recorded.get("name") or recorded.get("class"))


def _describe(recorded: dict) -> str:
    """'model NAME (sha256 PREFIX..., file FILE)' for messages."""
    weights = recorded.get("weights") or {}
    name = recorded.get("name") or recorded.get("class") or "?"
    if not weights.get("sha256"):
        return f"model {name!r} (no weights file recorded)"
    return f"model {name!r} (sha256 {weights['sha256'][:12]}..., file {weights.get('file', '?')})"


def _sidecar_sha(sidecar: Path) -> str | None:
    """The weights SHA-256 a model sidecar records; None if it is missing or unreadable."""
    try:
        return json.loads(Path(sidecar).read_text())["weights"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
