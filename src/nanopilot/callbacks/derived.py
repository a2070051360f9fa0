"""The analysis run: event-model documents carrying the per-frame estimates of one raw run.

start (names the raw run, the model and the instrument) -> descriptor "primary" (units) -> event pages
(strain, omega, chi[, thickness], their std, status, raw seq_num, positions) -> one "summary" event
(frames ok / flagged by reason / skipped / errors) -> stop.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np
from event_model import compose_run

from ..estimates import OK, UNITS, WRONG_SHAPE, Estimates

ANALYSIS_NAME = "nanopilot.NanobeamAnalysis"


def predictor_metadata(predictor) -> dict:
    """JSON-able description of a predictor for the analysis start document."""
    info = getattr(predictor, "metadata", None)
    info = dict(info() if callable(info) else info or {})
    info.setdefault("class", type(predictor).__name__)
    return json.loads(json.dumps(info, default=str))


def _outputs(predictor) -> tuple[str, ...]:
    names = tuple(getattr(predictor, "outputs", ("strain", "omega", "chi")))
    return tuple(n for n in ("strain", "omega", "chi", "thickness") if n in names)


class DerivedRun:
    """Composes (and counts) the documents of the analysis run of one raw run."""

    def __init__(self, raw_start: dict, image_key: str, motor_units: dict[str, str], predictor):
        self.raw_start = raw_start
        self.image_key = image_key
        self.motor_units = dict(motor_units)
        self.predictor = predictor
        self.outputs = _outputs(predictor)
        self.frame_shape = tuple(predictor.instrument.roi_shape)
        self.status_counts: Counter = Counter()
        self._bundle = None
        self._descriptor = None

    # ------------------------------------------------------------------ analysis
    def analyse(self, blocks: list, refine: bool) -> tuple[Estimates, np.ndarray]:
        """Predict a batch given as blocks of frames (arrays (n, H, W) or lists of frames); frames of another
        shape are flagged ``wrong_shape`` instead of failing the batch.

        Returns the estimates and the batch as analysed, (N, H, W) float32 (wrong-shape frames zeroed).
        """
        arrays = [self._as_frames(b) for b in blocks]
        if all(a is not None for a in arrays):
            batch = np.concatenate(arrays).astype(np.float32, copy=False)  # the fast path: whole pages
            shapes_ok = np.ones(len(batch), dtype=bool)
        else:
            frames = [f for b in blocks for f in b]
            shapes_ok = np.array([np.shape(f)[-2:] == self.frame_shape and np.size(f) == np.prod(self.frame_shape)
                                  for f in frames])
            batch = np.zeros((len(frames), *self.frame_shape), dtype=np.float32)
            for i in np.flatnonzero(shapes_ok):
                batch[i] = np.asarray(frames[i], dtype=np.float32).reshape(self.frame_shape)
        estimates = self.predictor.predict(batch, refine=refine)
        if not shapes_ok.all():
            bad = ~shapes_ok
            estimates.status[bad] = WRONG_SHAPE
            for name in ("strain", "omega", "chi", "thickness", "strain_std", "omega_std", "chi_std",
                         "thickness_std", "score"):
                getattr(estimates, name)[bad] = np.nan
        return estimates, batch

    def _as_frames(self, block) -> np.ndarray | None:
        """``block`` as an (n, H, W) numeric array, or None if any frame in it has another shape."""
        try:
            array = np.asarray(block)
        except ValueError:  # frames of different shapes
            return None
        ok = array.ndim == 3 and array.dtype != object and array.shape[1:] == self.frame_shape
        return array if ok else None

    # ------------------------------------------------------------------ documents
    def open(self, emit) -> None:
        start = self.raw_start
        metadata = {
            "raw_uid": start["uid"],
            "plan_name": "nanopilot_analysis",
            "analysis": ANALYSIS_NAME,
            "image_key": self.image_key,
            "model": predictor_metadata(self.predictor),
            "instrument": self.predictor.instrument.to_dict(),
            "instrument_fingerprint": self.predictor.instrument.fingerprint(),
            "motors": list(self.motor_units),
        }
        for key in ("scan_id", "sample", "shape", "extents", "snaking"):
            if key in start:
                metadata["raw_" + key if key in ("scan_id",) else key] = start[key]
        if start.get("shape"):
            metadata["hints"] = {"dimensions": [([m], "primary") for m in self.motor_units],
                                 "gridding": "rectilinear"}
        self._bundle = compose_run(metadata=metadata)
        emit("start", self._bundle.start_doc)

    def _data_keys(self) -> dict:
        keys = {}
        for name in self.outputs:
            keys[name] = {"dtype": "number", "shape": [], "source": ANALYSIS_NAME, "units": UNITS[name]}
            keys[name + "_std"] = {"dtype": "number", "shape": [], "source": ANALYSIS_NAME, "units": UNITS[name]}
        keys["status"] = {"dtype": "string", "shape": [], "source": ANALYSIS_NAME}
        keys["raw_seq_num"] = {"dtype": "integer", "shape": [], "source": ANALYSIS_NAME}
        for motor, units in self.motor_units.items():
            keys[motor] = {"dtype": "number", "shape": [], "source": f"raw run {self.image_key}", "units": units}
        return keys

    def emit_points(self, emit, seq_nums, positions, est: Estimates) -> None:
        if self._descriptor is None:
            self._descriptor = self._bundle.compose_descriptor(
                name="primary", data_keys=self._data_keys(),
                hints={"nanopilot_analysis": {"fields": list(self.outputs)}})
            emit("descriptor", self._descriptor.descriptor_doc)
        n = len(seq_nums)
        data = {name: getattr(est, name).tolist() for name in self.outputs}
        data.update({name + "_std": getattr(est, name + "_std").tolist() for name in self.outputs})
        data["status"] = [str(s) for s in est.status]
        data["raw_seq_num"] = [int(s) for s in seq_nums]
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

    def close(self, emit, raw_stop: dict, skipped: int, errors: int) -> None:
        ok = self.status_counts.get(OK, 0)
        flagged = {k: v for k, v in sorted(self.status_counts.items()) if k != OK}
        summary = {"frames_ok": ok, "frames_flagged": sum(flagged.values()), "frames_skipped": int(skipped),
                   "frames_errors": int(errors), "flagged_by_reason": json.dumps(flagged)}
        keys = {k: {"dtype": "string" if isinstance(v, str) else "integer", "shape": [], "source": ANALYSIS_NAME}
                for k, v in summary.items()}
        desc = self._bundle.compose_descriptor(name="summary", data_keys=keys)
        emit("descriptor", desc.descriptor_doc)
        now = time.time()
        emit("event", desc.compose_event(data=summary, timestamps={k: now for k in summary}, seq_num=1, time=now))
        by_reason = f" ({', '.join(f'{k}: {v}' for k, v in flagged.items())})" if flagged else ""
        reason = (f"{ok} frames ok, {summary['frames_flagged']} flagged{by_reason}, {skipped} skipped, "
                  f"{errors} lost to errors")
        exit_status = raw_stop.get("exit_status", "success")
        if raw_stop.get("reason"):
            reason += f"; raw run: {raw_stop['reason']}"
        emit("stop", self._bundle.compose_stop(exit_status=exit_status, reason=reason))
