"""Drift references: frames taken again and again at one sample position while a scan runs, so that the analysis
can tell the peak's drift on the detector from the sample's tilts (a drift and a tilt look alike in one frame; at
one position the tilts do not change). A frame preparation with ``follow_drift`` moves its ROI by the drift they
measure (:class:`nanopilot.physics.FramePreparation`).
"""

from collections.abc import Sequence

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.protocols import Movable, Readable
from bluesky.utils import Msg, MsgGenerator

from ..callbacks.derived import DRIFT_STREAM


def with_drift_reference(plan: MsgGenerator, detectors: Sequence[Readable], motors: Sequence[Movable],
                         position: Sequence[float], *, every: int = 16, frames: int = 4,
                         first: int | None = None, first_frames: int | None = None) -> MsgGenerator:
    """Wrap ``plan`` so that it takes drift reference frames in the :data:`DRIFT_STREAM` stream of its run.

    Right after the run opens (``first_frames`` frames), after its first ``first`` points and then after every
    ``every`` points of its primary stream (``frames`` frames), the motors move to ``position``, the detectors (and
    the motors) are read into the ``drift_reference`` stream, and the motors move back to where they were (so a
    scan's own moves, which skip motors already in place, stay right).

    Parameters
    ----------
    plan : the scan to wrap (one run; e.g. ``bluesky.plans.grid_scan``).
    detectors : what each reference reads (the scan's detector).
    motors, position : the sample stage's motors and the reference position in their units (e.g. um), one per
        motor: a place on the sample the scan does not need to be at, ideally flat and bright.
    every : primary points between references (the drift may change by at most about one detector pixel in that
        time for the ROI to follow it to the pixel).
    frames : frames per reference; their photons are summed (4 at the published 7-count level measure the drift
        to about 0.05-0.1 detector pixel RMS).
    first : points before the second reference (default ``every // 4``, at least 1): until two are measured the
        drift's rate is not known and the analysis keeps the ROI where it was put, so the second comes early.
    first_frames : frames of the first reference (default ``3 * frames``): every later drift is measured from the
        first references, so their noise is in every point's drift.

    Yields
    ------
    msg : Msg
        the plan's messages, with the reference visits inserted.
    """
    motors, position, detectors = list(motors), [float(p) for p in position], list(detectors)
    if len(motors) != len(position) or not motors:
        raise ValueError(f"with_drift_reference needs one position per motor: got {len(motors)} motors and "
                         f"{len(position)} positions")
    if not detectors:
        raise ValueError("with_drift_reference needs the detectors to read at the reference position")
    first = max(every // 4, 1) if first is None and isinstance(every, int) else first
    first_frames = 3 * frames if first_frames is None and isinstance(frames, int) else first_frames
    for name, value in (("every", every), ("frames", frames), ("first", first), ("first_frames", first_frames)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    state = {"stream": None, "points": 0, "visiting": False}

    def visit(count: int) -> MsgGenerator:
        state["visiting"] = True
        try:
            here = []
            for motor in motors:
                here.append((yield from bps.rd(motor)))
            yield from bps.mv(*_pairs(motors, position))
            for _ in range(count):
                yield from bps.trigger_and_read([*detectors, *motors], name=DRIFT_STREAM)
            yield from bps.mv(*_pairs(motors, here))
        finally:
            state["visiting"] = False

    def insert(msg: Msg):
        if state["visiting"]:
            return None, None
        if msg.command == "open_run":
            return None, visit(first_frames)
        if msg.command == "create":
            state["stream"] = msg.kwargs.get("name", "primary")
        elif msg.command == "save" and state["stream"] == "primary":
            state["points"] += 1
            if state["points"] >= first and (state["points"] - first) % every == 0:
                return None, visit(frames)
        return None, None

    return (yield from bpp.plan_mutator(plan, insert))


def _pairs(motors: list, values: list) -> list:
    """[motor0, value0, motor1, value1, ...] for ``bps.mv``."""
    return [x for pair in zip(motors, values) for x in pair]
