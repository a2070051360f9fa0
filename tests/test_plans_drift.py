"""with_drift_reference: reference frames at one position, in their own stream, the scan's own points untouched."""

import bluesky.plans as bp
import pytest
from bluesky import RunEngine

from nanopilot.callbacks import DRIFT_STREAM
from nanopilot.plans import with_drift_reference
from nanopilot.sim_devices import make_beamline


def test_references_are_taken_at_the_position_in_their_own_stream_and_the_scan_is_unchanged():
    bl = make_beamline(seed=3)
    docs = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    plan = bp.grid_scan([bl.detector], bl.stage.y, -1, 1, 3, bl.stage.x, -1, 1, 4)
    RE(with_drift_reference(plan, [bl.detector], [bl.stage.x, bl.stage.y], (0.5, -0.5), every=5, frames=2))
    streams = {d["uid"]: d["name"] for name, d in docs if name == "descriptor"}
    events = [(streams[d["descriptor"]], d["data"]) for name, d in docs if name == "event"]
    refs = [data for stream, data in events if stream == DRIFT_STREAM]
    points = [data for stream, data in events if stream == "primary"]
    assert len(refs) == 3 * 2 + 3 * 2 and len(points) == 12  # at the start (3 x frames), after points 1, 6, 11
    assert all(abs(r["stage_x"] - 0.5) < 1e-9 and abs(r["stage_y"] + 0.5) < 1e-9 for r in refs)
    expected = [(x, y) for y in (-1, 0, 1) for x in (-1, -1 / 3, 1 / 3, 1)]
    assert [p["stage_x"] for p in points] == pytest.approx([x for x, _ in expected])
    assert [p["stage_y"] for p in points] == pytest.approx([y for _, y in expected])
    assert [name for name, _ in docs][0] == "start" and [name for name, _ in docs][-1] == "stop"


@pytest.mark.parametrize("kwargs, match", [({"position": (0.0,)}, "one position per motor"),
                                           ({"every": 0}, "every must be a positive integer"),
                                           ({"frames": 1.5}, "frames must be a positive integer"),
                                           ({"first": 0}, "first must be a positive integer"),
                                           ({"first_frames": 2.0}, "first_frames must be a positive integer")])
def test_bad_arguments_fail_before_anything_moves(kwargs, match):
    bl = make_beamline(seed=3)
    args = {"position": (0.0, 0.0), **kwargs}
    plan = bp.count([bl.detector])
    with pytest.raises(ValueError, match=match):
        next(with_drift_reference(plan, [bl.detector], [bl.stage.x, bl.stage.y], args.pop("position"), **args))


def test_the_second_reference_comes_after_first_points_and_the_others_every_points():
    bl = make_beamline(seed=3)
    docs = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    plan = bp.scan([bl.detector], bl.stage.x, -1, 1, 20)
    RE(with_drift_reference(plan, [bl.detector], [bl.stage.x, bl.stage.y], (0.5, -0.5), every=8, first=3, frames=1,
                                 first_frames=2))
    streams = {d["uid"]: d["name"] for name, d in docs if name == "descriptor"}
    names = [streams[d["descriptor"]] for name, d in docs if name == "event"]
    before = [names[:i].count("primary") for i, n in enumerate(names) if n == DRIFT_STREAM]
    assert before == [0, 0, 3, 11, 19]
