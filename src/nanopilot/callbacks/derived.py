"""The analysis run: event-model documents carrying the per-frame estimates of one raw run.

start (names the raw run, the model and the instrument) -> descriptor "primary" (units) -> event pages
(strain, omega, chi[, thickness], their std, background, status, raw seq_num, positions[, the ROI's position on the
detector when a frame preparation follows the peak or the drift][, each frame's descriptor for the texture stage]),
each followed by a "progress" event (the frames received, skipped, lost and rejected so far) -> one "summary" event
(frames received = ok + warned (values kept, by reason) + flagged (values NaN, by reason) + skipped + errors +
rejected (by reason)[, the drift references measured and the last drift]) -> stop.
Frames of the raw run's :data:`DRIFT_STREAM` are no scan points: they measure the peak's drift.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
from event_model import compose_run

from ..estimates import BACKGROUND_UNITS, OK, UNITS, WARNINGS, Estimates
from ..physics.drift import DriftTrack
from .derived_drift import DriftFollowing
from .frame_sources import frame_batch, prepared_batch

logger = logging.getLogger(__name__)

ANALYSIS_NAME = "nanopilot.NanobeamAnalysis"
#: ``plan_name`` of the analysis runs.
ANALYSIS_PLAN = "nanopilot_analysis"
#: The analysis run's stream of frame counts (received, skipped, errors, rejected by reason) while it runs.
PROGRESS_STREAM = "progress"
#: Event key of each frame's compact descriptor (when the analysis computes them, for the texture stage).
FRAME_FEATURES = "frame_features"
#: Event keys of the ROI's first pixel (row, col) on the oriented detector, when the preparation follows the peak.
ROI_KEYS = ("roi_row", "roi_col")
#: The raw run's stream of reference frames, all at one sample position, that measure the peak's drift.
DRIFT_STREAM = "drift_reference"


def predictor_metadata(predictor) -> dict:
    """JSON-able description of a predictor for the analysis start document (with its model file's absolute
    ``path``, when it has one, so a replay can find the same model)."""
    info = getattr(predictor, "metadata", None)
    info = dict(info() if callable(info) else info or {})
    info.setdefault("class", type(predictor).__name__)
    if getattr(predictor, "path", None) is not None:
        info.setdefault("path", str(Path(predictor.path).resolve()))
    return json.loads(json.dumps(info, default=str))


def _outputs(predictor) -> tuple[str, ...]:
    names = tuple(getattr(predictor, "outputs", ("strain", "omega", "chi")))
    return tuple(n for n in ("strain", "omega", "chi", "thickness") if n in names)


class DerivedRun(DriftFollowing):
    """Composes (and counts) the documents of the analysis run of one raw run (its drift: :mod:`.derived_drift`)."""

    def __init__(self, raw_start: dict, image_key: str, motor_units: dict[str, str], predictor):
        self.raw_start = raw_start
        self.image_key = image_key
        self.motor_units = dict(motor_units)
        self.predictor = predictor
        self.outputs = _outputs(predictor)
        #: The raw frames' preparation (the predictor's; None: frames come at the instrument's ROI shape).
        self.preparation = getattr(predictor, "preparation", None)
        self.frame_shape = tuple(predictor.instrument.roi_shape if self.preparation is None else
                                 self.preparation.detector_shape)
        self.status_counts: Counter = Counter()
        self._track = DriftTrack()  # the peak's drift, measured on the run's reference frames (follow_drift)
        self._frames = 0  # frames taken (scan points and reference frames): the drift's clock
        self._visit = None  # [summed photons, first frame, frames] of the visit under way
        self._bundle = None
        self._descriptor = None
        self._progress = None
        self._n_features = 0
        self.stopped = False

    # ------------------------------------------------------------------ analysis
    def analyse(self, blocks: list, refine: bool,
                residual: bool = False) -> tuple[Estimates, np.ndarray, np.ndarray | None]:
        """Predict a batch given as blocks ``(frames, n, status)`` (see :func:`frame_batch`); frames that are
        not (H, W) arrays of numbers, or that a block's status flags, are flagged instead of failing the batch.
        ``residual``: also run the predictor's residual check (and background estimate). With a
        :attr:`preparation` the frames are raw detector frames, prepared first (its problems flag frames too).

        Returns the estimates, the batch as analysed, (N, H, W) float32 (flagged frames zeroed), and the ROI's
        (row, col) on the detector per frame (N, 2) (None without a preparation).
        """
        kwargs, roi = {"residual": True} if residual else {}, None
        self._settle_drift()
        n = sum(block[1] for block in blocks)
        drift = self._track.at(self._frames + np.arange(n))
        if self.preparation is None:
            batch, status = frame_batch(blocks, self.frame_shape)
        else:
            prepared = prepared_batch(blocks, self.preparation, drift)
            batch, status, roi, kwargs["mask"] = prepared.frames, prepared.status, prepared.roi_corner, prepared.mask
        self._frames += n
        usable = status == OK
        if not usable.any():  # e.g. a run of another instrument: nothing for the network
            estimates = Estimates.empty(len(batch))
        else:
            estimates = self.predictor.predict(batch, refine=refine, **kwargs)
            if self._follows_drift:
                self._untilt(estimates, drift)
        if not usable.all():
            bad = ~usable
            estimates.status[bad] = status[bad]
            for name in ("strain", "omega", "chi", "thickness", "strain_std", "omega_std", "chi_std",
                         "thickness_std", "score", "background", "background_std"):
                getattr(estimates, name)[bad] = np.nan
        return estimates, batch, roi

    # ------------------------------------------------------------------ documents
    def open(self, emit) -> None:
        start = self.raw_start
        metadata = {
            "raw_uid": start["uid"],
            "plan_name": ANALYSIS_PLAN,
            "analysis": ANALYSIS_NAME,
            "image_key": self.image_key,
            "model": predictor_metadata(self.predictor),
            "instrument": self.predictor.instrument.to_dict(),
            "instrument_fingerprint": self.predictor.instrument.fingerprint(),
            "motors": list(self.motor_units),
        }
        if self.preparation is not None:
            metadata["frame_preparation"] = self.preparation.to_dict()
            metadata["frame_preparation_fingerprint"] = self.preparation.fingerprint()
        for key in ("scan_id", "sample", "shape", "extents", "snaking"):
            if key in start:
                metadata["raw_" + key if key in ("scan_id",) else key] = start[key]
        if start.get("shape"):
            metadata["hints"] = {"dimensions": [([m], "primary") for m in self.motor_units],
                                 "gridding": "rectilinear"}
        self._bundle = compose_run(metadata=metadata)
        emit("start", self._bundle.start_doc)

    def _data_keys(self, n_features: int) -> dict:
        keys = {}
        for name in self.outputs:
            keys[name] = {"dtype": "number", "shape": [], "source": ANALYSIS_NAME, "units": UNITS[name]}
            keys[name + "_std"] = {"dtype": "number", "shape": [], "source": ANALYSIS_NAME, "units": UNITS[name]}
        for name in ("background", "background_std"):  # NaN where the analysis does not estimate it
            keys[name] = {"dtype": "number", "shape": [], "source": ANALYSIS_NAME, "units": BACKGROUND_UNITS}
        keys["status"] = {"dtype": "string", "shape": [], "source": ANALYSIS_NAME}
        keys["raw_seq_num"] = {"dtype": "integer", "shape": [], "source": ANALYSIS_NAME}
        if self._reports_roi:
            for name in ROI_KEYS:
                keys[name] = {"dtype": "integer", "shape": [], "source": ANALYSIS_NAME, "units": "pixel"}
        if n_features:
            keys[FRAME_FEATURES] = {"dtype": "array", "shape": [n_features], "source": ANALYSIS_NAME}
        for motor, units in self.motor_units.items():
            keys[motor] = {"dtype": "number", "shape": [], "source": f"raw run {self.image_key}", "units": units}
        return keys

    @property
    def _reports_roi(self) -> bool:
        return self.preparation is not None and (self.preparation.follow_peak or self.preparation.follow_drift)

    def emit_points(self, emit, seq_nums, positions, est: Estimates, roi_corner=None, features=None) -> None:
        """One event page of the points ``seq_nums`` (n,) at ``positions`` (n, motors) with estimates ``est``,
        when the preparation follows the peak, the ROI's (row, col) on the detector ``roi_corner`` (n, 2), and the
        frames' descriptors ``features`` (n, k) when the analysis computes them."""
        if self._descriptor is None:
            self._n_features = 0 if features is None else int(np.shape(features)[1])
            self._descriptor = self._bundle.compose_descriptor(
                name="primary", data_keys=self._data_keys(self._n_features),
                hints={"nanopilot_analysis": {"fields": list(self.outputs)}})
            emit("descriptor", self._descriptor.descriptor_doc)
        n = len(seq_nums)
        data = {name: getattr(est, name).tolist() for name in self.outputs}
        data.update({name + "_std": getattr(est, name + "_std").tolist() for name in self.outputs})
        data.update({name: np.asarray(getattr(est, name), dtype=float).tolist()
                     for name in ("background", "background_std")})
        data["status"] = [str(s) for s in est.status]
        data["raw_seq_num"] = [int(s) for s in seq_nums]
        if self._reports_roi:
            corners = np.full((n, 2), -1) if roi_corner is None else np.asarray(roi_corner)
            data.update({name: corners[:, i].astype(int).tolist() for i, name in enumerate(ROI_KEYS)})
        if self._n_features:
            features = np.full((n, self._n_features), np.nan) if features is None else np.asarray(features)
            data[FRAME_FEATURES] = features.reshape(n, self._n_features).tolist()
        for i, motor in enumerate(self.motor_units):
            data[motor] = np.asarray(positions)[:, i].tolist()
        now = [float(t) for t in np.full(n, time.time())]
        page = self._descriptor.compose_event_page(
            data=data, timestamps={k: now for k in data}, seq_num=list(range(self._seen + 1, self._seen + n + 1)),
            time=now, validate=False)  # built from the validated descriptor's own keys; no schema check per page
        self.status_counts.update(str(s) for s in est.status)
        emit("event_page", page)

    @property
    def _seen(self) -> int:
        return sum(self.status_counts.values())

    def emit_progress(self, emit, counts) -> None:
        """A "progress" event: the run's frame counts so far (``counts``: a :class:`~.intake.FrameCounts`)."""
        data = counts.snapshot()
        if self._progress is None:
            keys = {k: {"dtype": "string" if isinstance(v, str) else "integer", "shape": [], "source": ANALYSIS_NAME}
                    for k, v in data.items()}
            self._progress = [self._bundle.compose_descriptor(name=PROGRESS_STREAM, data_keys=keys), 0]
            emit("descriptor", self._progress[0].descriptor_doc)
        self._progress[1] += 1
        now = time.time()
        emit("event", self._progress[0].compose_event(data=data, timestamps={k: now for k in data},
                                                      seq_num=self._progress[1], time=now, validate=False))

    def fail(self, emit, reason: str) -> None:
        """End the analysis run with exit_status "fail" and ``reason`` (when :meth:`close` could not)."""
        if self._bundle is not None and not self.stopped:
            self.stopped = True
            emit("stop", self._bundle.compose_stop(exit_status="fail", reason=reason))

    def close(self, emit, raw_stop: dict, counts, storage: str | None = None, failure: str | None = None) -> None:
        """Emit the summary event and the stop document; ``counts`` is the run's
        :class:`~.intake.FrameCounts` (received, skipped, errors, rejected_by_reason); ``storage``: where the raw
        run was stored (None: not known), in the summary
        (``raw_storage``) and the stop reason; a raw run stored nowhere ("lost: ...") ends with exit_status "fail",
        and so does one with a ``failure`` (why the analysis could not finish it; first in the reason)."""
        ok = self.status_counts.get(OK, 0)
        warned = {k: v for k, v in sorted(self.status_counts.items()) if k in WARNINGS}
        flagged = {k: v for k, v in sorted(self.status_counts.items()) if k != OK and k not in WARNINGS}
        frames = counts.snapshot()
        rejected = json.loads(frames["rejected_by_reason"])
        summary = {"frames_received": frames["frames_received"], "frames_ok": ok,
                   "frames_warned": sum(warned.values()), "frames_flagged": sum(flagged.values()),
                   "frames_skipped": frames["frames_skipped"], "frames_errors": frames["frames_errors"],
                   "frames_rejected": frames["frames_rejected"], "warned_by_reason": json.dumps(warned),
                   "flagged_by_reason": json.dumps(flagged), "rejected_by_reason": frames["rejected_by_reason"]}
        if storage is not None:
            summary["raw_storage"] = storage
        if self._follows_drift:
            self._settle_drift()
            summary["drift_references"] = self.drift_references
            summary["drift_pixels"] = json.dumps([round(float(d), 2) for d in self.drift])
            if not self.drift_references:
                logger.warning("run %s: the frame preparation follows the drift but the run has no %r frames: the "
                               "ROI stayed put (take them with nanopilot.plans.with_drift_reference)",
                               self.raw_start["uid"][:8], DRIFT_STREAM)
        keys = {k: {"dtype": "string" if isinstance(v, str) else "integer", "shape": [], "source": ANALYSIS_NAME}
                for k, v in summary.items()}
        desc = self._bundle.compose_descriptor(name="summary", data_keys=keys)
        emit("descriptor", desc.descriptor_doc)
        now = time.time()
        emit("event", desc.compose_event(data=summary, timestamps={k: now for k in summary}, seq_num=1, time=now))
        reason = (f"{ok} frames ok, {summary['frames_warned']} with a warning{_by_reason(warned)}, "
                  f"{summary['frames_flagged']} flagged{_by_reason(flagged)}, "
                  f"{summary['frames_skipped']} skipped, {summary['frames_errors']} lost to errors, "
                  f"{summary['frames_rejected']} rejected{_by_reason(rejected)} "
                  f"(of {summary['frames_received']} received)")
        exit_status = raw_stop.get("exit_status", "success")
        if failure:
            reason, exit_status = f"{failure}; {reason}", "fail"
        if raw_stop.get("reason"):
            reason += f"; raw run: {raw_stop['reason']}"
        if storage is not None:
            reason += f"; raw run storage: {storage}"
            if storage.startswith("lost"):
                exit_status = "fail"
                logger.error("raw run %s is stored nowhere: %s", self.raw_start["uid"][:8], storage)
        self.stopped = True
        emit("stop", self._bundle.compose_stop(exit_status=exit_status, reason=reason))


def _by_reason(counts: dict) -> str:
    return f" ({', '.join(f'{k}: {v}' for k, v in counts.items())})" if counts else ""
