"""NanobeamAnalysis: every detector frame of a run -> predictions -> an analysis run (documents only).

Document flow (RunEngine thread)::

    start -> descriptor (find the image key, check the declared instrument) -> event/event_page, stream_datum,
          datum -> the door (malformed, duplicate and orphan documents are refused, counted and logged)
          -> frames + positions -> bounded queue -> worker: batches -> Predictor -> analysis-run documents

The door's handlers of events and external frames are in :mod:`.frame_door`. The worker (:mod:`.worker`) owns
the predictor and emits every derived document, so subscribers (a TiledWriter, a plot, the texture stage) see one
ordered stream; the analysis' :class:`LiveMaps` (:attr:`maps`) is built from the same documents, handed to it
after every subscriber (and from the raw documents, to know what was taken).
``threaded=False`` does the same work inline (deterministic batching).
Every frame a run delivers is accounted for once: received = ok + warned + flagged + skipped + errors + rejected.
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
import weakref
from collections import Counter

from event_model import DocumentRouter

from .derived import DRIFT_STREAM, DerivedRun
from .frame_door import FrameDoor
from .frame_sources import find_image_key, frame_shape_of
from .intake import UNKNOWN_RUN, RawRun, SeqNumSet, instrument_status, refuse_other_frames, storage_of
from .live_maps import LiveMaps
from .worker import POLICIES, AnalysisWorker

logger = logging.getLogger(__name__)

__all__ = ["POLICIES", "NanobeamAnalysis"]


class NanobeamAnalysis(FrameDoor, DocumentRouter):
    """Live analysis of nanodiffraction frames (an ``event_model.DocumentRouter``).

    Parameters
    ----------
    predictor : object with ``instrument``, ``predict(frames, refine=...) -> Estimates``; None loads the
        shipped default (``nanopilot.model.Predictor.load()``). A predictor with a ``preparation`` (a
        :class:`~nanopilot.physics.FramePreparation`, see :class:`nanopilot.model.Predictor`) takes the raw
        detector frames: frames of its ``detector_shape`` are prepared (ROI, binning, dark, flat, gain, masks), its
        configuration and fingerprint go into the analysis run's start document, and the ROI's position into the
        event pages when it follows the peak.
    image_key : data key of the frames; None finds the (H, W) array key of the model's instrument.
    maps : the LiveMaps to fill from the raw documents this analysis receives and the documents it makes (a new
        one by default; see :attr:`maps`).
    batch_size : frames per Predictor call (flushed earlier after ``max_latency`` s and at stop).
    max_queued_frames : bound of the queue between the RunEngine and the worker (frames).
    max_queued_bytes : memory bound of that queue (bytes, counting 4 bytes per pixel of the frames this analysis
        takes): it lowers the frame bound for large raw frames (default 1 GiB: 4,096 raw 256 x 256 frames; the 64 x
        64 frames' bound stays at ``max_queued_frames``), never below ``batch_size``.
    when_behind : back-pressure policy, one of :data:`POLICIES`.
    refine : passed to ``predictor.predict`` (physics refinement of the network's estimates).
    residual : also flag frames the physics model does not explain and estimate each frame's flat background
        (``predictor.predict(frames, residual=True)``, see :class:`nanopilot.model.Predictor`); None (default): on
        when the predictor's ``predict`` takes ``residual`` (a nanopilot Predictor does). It costs about 35% of the
        analysis' throughput with the default ensemble on 2 cores (``benchmarks/callback_throughput.py`` measures
        it end to end, on against off).
    motors : position data keys, slowest first (default: the start document's ``motors``, else its
        dimension hints).
    frame_features : optional ``f(frames (N, H, W) float32) -> (N, k)`` compact descriptor of each frame
        (e.g. for texture classification), sent per point in the analysis run (``frame_features``; in the LiveMaps:
        ``RunMap.features()``).
    threaded : analyse in a worker thread (default) or inline in the caller's thread.
    raw_storage : optional ``f(raw uid) -> str``, where the raw run was stored (e.g.
        :meth:`nanopilot.storage.StorageWriter.status`, subscribed before this analysis), read at the raw run's
        stop: it goes into the analysis run's summary and stop reason, and a raw run stored nowhere ("lost: ...")
        makes the analysis run end with exit_status "fail".

    Derived documents go to the callbacks given to :meth:`subscribe` (e.g. a TiledWriter). Close the analysis
    when done (:meth:`close`, or ``with NanobeamAnalysis(...) as analysis:``); one that is garbage-collected
    unclosed finishes what it was handed and stops its worker thread.
    """

    def __init__(self, predictor=None, image_key: str | None = None, *, maps: LiveMaps | None = None,
                 batch_size: int = 512, max_latency: float = 0.5, max_queued_frames: int = 16384,
                 max_queued_bytes: int = 1 << 30,
                 when_behind: str = "block", refine: bool = False, residual: bool | None = None,
                 motors: list[str] | None = None, frame_features=None, threaded: bool = True, raw_storage=None):
        super().__init__()
        if when_behind not in POLICIES:
            raise ValueError(f"when_behind must be one of {POLICIES}, got {when_behind!r}")
        if batch_size < 1 or max_queued_frames < batch_size:
            raise ValueError(f"need 1 <= batch_size ({batch_size}) <= max_queued_frames ({max_queued_frames})")
        if predictor is None:
            from ..model import Predictor

            predictor = Predictor.load()
        self.predictor = predictor
        if residual is None:
            residual = "residual" in inspect.signature(predictor.predict).parameters
        preparation = getattr(predictor, "preparation", None)
        #: (H, W) of the frames this analysis takes: the raw detector's with a preparation, else the model's ROI.
        self.frame_shape = tuple(predictor.instrument.roi_shape if preparation is None else
                                 preparation.detector_shape)
        self._takes = ("the model takes" if preparation is None else
                       f"the frame preparation {preparation.fingerprint()} takes raw frames of")
        self.fingerprint = predictor.instrument.fingerprint()
        frame_bytes = 4 * self.frame_shape[0] * self.frame_shape[1]
        max_queued_frames = min(max_queued_frames, max(batch_size, max_queued_bytes // frame_bytes))
        self.image_key = image_key
        self.motors = list(motors) if motors else None
        self.raw_storage = raw_storage
        outputs = tuple(getattr(predictor, "outputs", ("strain", "omega", "chi")))
        self.maps = maps if maps is not None else LiveMaps(predictor.instrument, outputs)
        if self.maps.instrument is None:
            self.maps.instrument, self.maps.outputs = predictor.instrument, outputs
        if self.maps.frame_shape is None and self.maps.image_key is None:
            self.maps.frame_shape, self.maps.image_key = self.frame_shape, image_key
        self._runs: dict[str, RawRun] = {}
        self._descriptor_run: dict[str, RawRun] = {}  # every descriptor of an open run, with frames or not
        #: Documents that belong to no open run (their frames, by reason), e.g. events after their run's stop.
        self.unattributed: Counter = Counter()
        self._unattributed_logged = False
        self._worker = AnalysisWorker(self.maps, batch_size=int(batch_size), max_latency=float(max_latency),
                                      refine=bool(refine), residual=bool(residual), frame_features=frame_features,
                                      max_queued_frames=int(max_queued_frames), when_behind=when_behind,
                                      threaded=threaded)
        if threaded:  # the worker finishes what it was handed and stops when this object is freed
            weakref.finalize(self, self._worker.stop).atexit = False

    # ------------------------------------------------------------------ configuration (the worker's)
    batch_size = property(lambda self: self._worker.batch_size, doc="Frames per Predictor call.")
    max_latency = property(lambda self: self._worker.max_latency, doc="Seconds a partial batch may wait.")
    max_queued_frames = property(lambda self: self._worker.max_queued_frames, doc="Bound of the queue (frames).")
    when_behind = property(lambda self: self._worker.when_behind, doc="Back-pressure policy (see POLICIES).")
    refine = property(lambda self: self._worker.refine, doc="Physics refinement of the estimates.")
    residual = property(lambda self: self._worker.residual, doc="Residual check and background estimate.")
    frame_features = property(lambda self: self._worker.frame_features, doc="Per-frame descriptor function.")

    @property
    def queued_frames(self) -> int:
        """Frames handed to the worker and not yet analysed."""
        return self._worker.queued

    def subscribe(self, callback) -> None:
        """Send every derived document to ``callback(name, doc)`` (before the analysis' own :attr:`maps`)."""
        self._worker.emit.append(callback)

    def count_lost(self, raw_uid: str, n: int) -> None:
        """Count ``n`` frames of the open raw run ``raw_uid`` as received and lost to errors: frames that never
        reached this analysis (e.g. dropped by a document stream), reported in its progress and summary events."""
        run = self._runs.get(raw_uid)
        if n and run is not None:
            run.counts.count(received=n, errors=n)
            if run.derived is not None:
                self._worker.notify(run)

    def add_stage(self, stage) -> None:
        """A derived stage (e.g. a :class:`~nanopilot.texture.TextureCallback`): it reads this analysis' documents,
        and this analysis' :attr:`maps` read the stage's (its ``subscribe``)."""
        self.subscribe(stage)
        stage.subscribe(self.maps)

    def __call__(self, name: str, doc: dict, validate: bool = False):
        """A raw-run document: to the maps (what was taken), then through the analysis' door."""
        try:
            self.maps(name, doc)
        except Exception:  # the maps must not stop the analysis
            logger.exception("the LiveMaps failed on a raw %s document", name)
        return super().__call__(name, doc, validate)

    # ------------------------------------------------------------------ RunEngine side
    def start(self, doc):
        if doc["uid"] in self._runs:  # a repeated delivery must not reset the run's state
            logger.warning("run %s: a second start document was ignored", doc["uid"][:8])
            return
        self._runs[doc["uid"]] = RawRun(doc, self.motors)
        self._unattributed_logged = False

    def descriptor(self, doc):
        run = self._runs.get(doc.get("run_start"))
        if run is None:
            self._reject(None, UNKNOWN_RUN, 0, f"descriptor {str(doc.get('uid'))[:8]} of no open run")
            return
        if doc["uid"] in self._descriptor_run:  # a repeated delivery must not reset the stream's state
            logger.warning("run %s: a second descriptor %s was ignored", run.uid[:8], doc["uid"][:8])
            return
        self._descriptor_run[doc["uid"]] = run
        keys = doc["data_keys"]
        key = find_image_key(keys, self.frame_shape, self.image_key)
        if key is None:
            refuse_other_frames(keys, doc.get("name"), self.image_key, f"{self._takes} {self.frame_shape}")
            return
        if frame_shape_of(keys[key]) != self.frame_shape:
            raise ValueError(f"data key {key!r} holds frames of shape {keys[key].get('shape')}; {self._takes} "
                             f"{self.frame_shape}: use a model trained for this detector ROI, or a frame "
                             f"preparation for this detector")
        first = not run.descriptors
        run.descriptors[doc["uid"]] = {"key": key, "external": keys[key].get("external"),
                                       "reference": doc.get("name") == DRIFT_STREAM,
                                       "units": {m: keys.get(m, {}).get("units", "") for m in run.motors},
                                       "status": instrument_status(run, doc, key, self.fingerprint)}
        run.seen_events[doc["uid"]], run.seen_frames[doc["uid"]] = SeqNumSet(), SeqNumSet()
        if first:
            run.derived = DerivedRun(run.start, key, run.descriptors[doc["uid"]]["units"], self.predictor)
            self._worker.put(("start", run), 0)

    def _submit(self, run: RawRun, desc: dict, seq_nums, positions, block) -> None:
        if desc["reference"]:  # drift reference frames: no scan points
            self._worker.put(("reference", run, block), 0)
            return
        n = len(seq_nums)
        run.counts.count(received=n)
        self._worker.put(("frames", run, seq_nums, positions, block), n)

    def _reject(self, run: RawRun | None, reason: str, n: int, detail: str) -> None:
        """Count ``n`` frames of a document refused at the door; log the first of each reason per run."""
        if run is None:
            if n:
                self.unattributed[reason] += n
            if not self._unattributed_logged:
                self._unattributed_logged = True
                logger.error("analysis refused a document (%s: %s) and no run is open to count it in; further "
                             "ones are counted in NanobeamAnalysis.unattributed", reason, detail)
            return
        if run.refuse(reason, n, detail) and run.derived is not None:
            self._worker.notify(run)

    def _latest_run(self) -> RawRun | None:
        return next(reversed(self._runs.values())) if self._runs else None

    def stop(self, doc):
        run = self._runs.pop(doc.get("run_start"), None)
        if run is None:
            self._reject(None, UNKNOWN_RUN, 0, f"stop of run {str(doc.get('run_start'))[:8]}, not open")
            return
        self._descriptor_run = {d: r for d, r in self._descriptor_run.items() if r is not run}
        if run.derived is None:  # a run without frames for this model: nothing to report
            if run.counts.rejected_by_reason:
                logger.error("run %s had no frames for this model; refused: %s", run.uid[:8],
                             dict(run.counts.rejected_by_reason))
            run.external.close()
            return
        unmatched = len(run.frames_by_seq) + len(run.positions_by_seq)
        if unmatched:
            logger.error("run %s ended with %d frames or positions never matched", run.uid[:8], unmatched)
            run.counts.count(received=unmatched, errors=unmatched)
        self._worker.put(("stop", run, doc, storage_of(self.raw_storage, run.uid)), 0)

    # ------------------------------------------------------------------ lifetime
    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every frame handed over so far has been analysed; False on timeout."""
        return self._worker.flush(timeout)

    def close(self, timeout: float = 60.0) -> bool:
        """Finish the analysis of every frame handed over so far (as :meth:`flush`) and stop the worker thread;
        documents that arrive later are analysed inline, in the caller's thread. Call it between runs (not while
        a RunEngine is feeding this callback).

        Every analysis run ends with a stop document: one whose raw run is still open (its stop never came: the
        session or the environment closes) ends with exit_status "abort", saying so; if the analysis does not
        finish within ``timeout`` (s), the frames left are counted as skipped and their runs end with exit_status
        "fail", saying why. Idempotent; False if the analysis did not finish within ``timeout``."""
        for uid in list(self._runs):
            logger.error("run %s is still open as the analysis closes: its analysis run ends with exit_status "
                         "'abort'", uid[:8])
            self.stop({"run_start": uid, "uid": str(uuid.uuid4()), "time": time.time(), "exit_status": "abort",
                       "reason": "no stop document: the analysis was closed while the run was open"})
        return self._worker.close(timeout)

    def __enter__(self) -> NanobeamAnalysis:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

