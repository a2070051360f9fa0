"""The analysis' door for frame-bearing documents: events, event pages and external frames (resource, datum,
stream_resource, stream_datum), their positions joined to their frames, each frame handed on once.

:class:`FrameDoor` is a mixin of :class:`~.analysis.NanobeamAnalysis`, which provides the open runs (``_runs``,
``_descriptor_run``) and hands frames on (``_submit``), refuses documents (``_reject``), finds the latest run
(``_latest_run``) and counts lost frames (``count_lost``).
"""

from __future__ import annotations

import logging

import numpy as np
from event_model import pack_event_page

from ..estimates import MISSING
from .intake import (DUPLICATE, MALFORMED, UNKNOWN_DESCRIPTOR, RawRun, frames_in, page_problem, positions_of,
                     stream_datum_frames, take_where)

logger = logging.getLogger(__name__)


class FrameDoor:
    """Handlers of the raw documents that carry frames or their positions (a mixin of ``NanobeamAnalysis``)."""

    def stream_resource(self, doc):
        run = self._runs.get(doc.get("run_start")) or self._latest_run()
        if run is not None:
            run.external.stream_resource(doc)

    def resource(self, doc):
        run = self._runs.get(doc.get("run_start")) or self._latest_run()
        if run is not None:
            run.external.resource(doc)

    def datum(self, doc):
        for run in self._runs.values():
            if doc.get("resource") in run.external._resources:
                run.datums[doc["datum_id"]] = doc

    def stream_datum(self, doc):
        run = self._descriptor_run.get(doc.get("descriptor"))
        n, name = stream_datum_frames(doc), f"stream_datum {str(doc.get('uid'))[:8]}"
        if n is None:  # its frames are not counted here: their positions, unmatched at stop, are (as errors)
            self._reject(run or self._latest_run(), MALFORMED, 0,
                         f"{name}: seq_nums and indices must be ranges {{start, stop}} of one length")
            return
        if run is None:
            self._reject(self._latest_run(), UNKNOWN_DESCRIPTOR, n, f"{name} for a descriptor not (yet) seen")
            return
        desc = run.descriptors.get(doc["descriptor"])
        if desc is None or run.external.data_key_of(doc) != desc["key"]:
            return
        try:
            seq_nums, frames = run.external.read_stream_datum(doc)
        except Exception as err:  # an unreadable file loses these frames, not the scan
            logger.error("could not read frames of stream_datum %s: %s", doc["uid"], err)
            self._lost(run, doc["descriptor"], range(doc["seq_nums"]["start"], doc["seq_nums"]["stop"]))
            return
        fresh = run.seen_frames[doc["descriptor"]].add_new(seq_nums)
        if fresh is not None:
            self._reject(run, DUPLICATE, int((~fresh).sum()), f"stream_datum {doc['uid'][:8]}")
            seq_nums, frames = seq_nums[fresh], frames[fresh]
        for seq, frame in zip(seq_nums, frames):
            self._join(run, doc["descriptor"], int(seq), frame=frame)

    def _lost(self, run: RawRun, descriptor: str, seqs) -> None:
        """Count frames that could not be read as errors, once, whether their positions came already or not."""
        self.count_lost(run.uid, len(seqs))
        for seq in seqs:
            if run.positions_by_seq.pop((descriptor, seq), None) is None:
                run.unreadable.add((descriptor, seq))

    def event(self, doc):
        try:
            page = pack_event_page(doc)
        except Exception as err:  # no data, seq_num, ... : refused whole
            run = self._descriptor_run.get(doc.get("descriptor")) if isinstance(doc, dict) else None
            self._reject(run or self._latest_run(), MALFORMED, 1, f"event without {err}")
            return
        self.event_page(page)

    def event_page(self, doc):
        run = self._descriptor_run.get(doc.get("descriptor"))
        if run is None:
            self._reject(self._latest_run(), UNKNOWN_DESCRIPTOR, frames_in(doc),
                         f"event page for descriptor {str(doc.get('descriptor'))[:8]}, not (yet) seen")
            return
        desc = run.descriptors.get(doc["descriptor"])
        if desc is None:  # a stream without frames for this model
            return
        problem = page_problem(doc)
        if problem:
            self._reject(run, MALFORMED, frames_in(doc), problem)
            return
        try:
            self._event_page(run, desc, doc)
        except Exception:  # a bug, not a data problem (those are handled above): never raise into the RunEngine
            logger.exception("analysis failed on an event page of run %s", run.uid[:8])
            self.count_lost(run.uid, len(doc["seq_num"]))

    def _event_page(self, run: RawRun, desc: dict, page: dict) -> None:
        seq_nums = np.asarray(page["seq_num"])
        n = len(seq_nums)
        fresh = run.seen_events[page["descriptor"]].add_new(seq_nums)
        if fresh is not None:
            self._reject(run, DUPLICATE, int((~fresh).sum()), f"event page of descriptor {page['descriptor'][:8]}")
            n, seq_nums = int(fresh.sum()), seq_nums[fresh]
            page = {**page, "data": {k: take_where(v, fresh) for k, v in page["data"].items()}}
        if n == 0:
            return
        positions = positions_of(page, run.motors, n)
        if desc["external"] and str(desc["external"]).startswith("STREAM"):
            for seq, pos in zip(seq_nums.tolist(), positions.tolist()):
                self._join(run, page["descriptor"], seq, position=pos)
            return
        values = page["data"].get(desc["key"])
        if values is None:  # a page without the image key (a replay can deliver one): its points are flagged
            self._submit(run, desc, seq_nums, positions, (None, n, MISSING))
        elif desc["external"]:
            try:
                frames = [run.external.read_datum(run.datums.pop(datum_id)) for datum_id in values]
            except Exception as err:  # an unreadable file or a missing datum loses these frames, not the scan
                logger.error("could not read the frames of an event page of run %s: %r", run.uid[:8], err)
                self.count_lost(run.uid, n)
                return
            self._submit(run, desc, seq_nums, positions, (frames, n, desc["status"]))
        else:
            self._submit(run, desc, seq_nums, positions, (values, n, desc["status"]))

    def _join(self, run: RawRun, descriptor: str, seq: int, *, frame=None, position=None) -> None:
        key = (descriptor, seq)
        if key in run.unreadable:
            run.unreadable.discard(key)
            return
        if frame is not None:
            run.frames_by_seq[key] = frame
        if position is not None:
            run.positions_by_seq[key] = position
        if key in run.frames_by_seq and key in run.positions_by_seq:
            pos = np.asarray([run.positions_by_seq.pop(key)], dtype=float)
            block = ([run.frames_by_seq.pop(key)], 1, run.descriptors[descriptor]["status"])
            self._submit(run, run.descriptors[descriptor], np.asarray([seq]), pos, block)
