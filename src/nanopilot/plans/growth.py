"""grow_until: in-situ growth stopped at a target thickness or at the onset of relaxation.

The decisions are :class:`~nanopilot.agents.GrowthAgent`'s (pure, around
:class:`~nanopilot.agents.growth_monitor.GrowthMonitor`), so a replay of the stored run reproduces every decision
(a look within a round sees the round so far: its evidence says how many of the round's points were measured).
"""

from collections.abc import Callable, Sequence

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.protocols import Movable, Readable
from bluesky.utils import MsgGenerator

from ..agents import GrowthAgent
from ..agents.growth_monitor import LOOK_EVERY, WINDOW, Z_POINT, Z_SPREAD
from ..callbacks.live_maps import LiveMaps
from .checks import (
    check_callable,
    check_detectors,
    check_device,
    check_instrument,
    check_points,
    check_positive,
    check_within,
    read_limits,
)
from .common import SafeStateGuard, SafeWhilePaused, merge_md, resolve_maps, safe_state_wrapper
from .driving import Driver, agent_run

#: x and y (um) of the default points, see :func:`grow_until`.
DEFAULT_GRID = (-2.0, -1.0, 0.0, 1.0, 2.0)


def grow_until(detectors: Sequence[Readable], deposition: Movable, x: Movable, y: Movable,
               target_thickness: float, *, points: Sequence[Sequence[float]] | None = None,
               interval: float = 0.05, max_time: float = 3600.0, z_point: float = Z_POINT, z_spread: float = Z_SPREAD,
               window: int = WINDOW, look_every: int = LOOK_EVERY, maps: LiveMaps | None = None,
               approve: Callable | None = None, timeout: float = 60.0, md: dict | None = None) -> MsgGenerator[dict]:
    """Grow a film with the shutter open, measuring as it grows; close at the target thickness or at relaxation.

    Parameters
    ----------
    detectors : the nanobeam detector (its analysis must estimate thickness: a 4-output model).
    deposition : the deposition source (``shutter`` "open"/"closed", ``thickness`` readback).
    x, y : stage motors (um).
    target_thickness : film thickness (angstrom) at which to close the shutter; the closing time is
        anticipated from the measured growth rate.
    points : (x, y) positions (um) measured each round (default: a 5 x 5 grid over +-2 um, points 1 um apart:
        more than the correlation length of the relaxation patches, so that each point watches a patch of its
        own; the film relaxes first where its local critical thickness is lowest, and more patches watched make
        it likelier that one of them is among the first).
    interval : seconds between rounds (``bps.sleep``; a simulated beamline spends it on its clock, see
        ``Beamline.install``). Short by default, so that the detector keeps
        measuring and the film grows little between looks at a point (relaxation is caught earlier than with
        1 s); it costs frames, dose and data, not beamline time (the growth sets the time).
    max_time : the shutter is closed once this many seconds have passed since the first frame, whatever happens.
    z_point, z_spread, window : relaxation criterion (noise units, noise units, rounds), see
        :class:`~nanopilot.agents.growth_monitor.GrowthMonitor`.
    look_every : the relaxation tests also run every this many points within a round, on the round so far
        (:meth:`GrowthMonitor.relaxation` with ``partial``), and not only once the round is complete: a patch
        that relaxes is seen up to a round earlier (a round of the default 25 points takes about 3 s, 6 A of a
        film growing at 2 A/s). Each look first waits for the analysis of the frames taken so far.
    maps, approve, timeout, md : as in :func:`steered_map`.

    Returns
    -------
    dict: ``reason`` ("target", "relaxation", "time limit", "vetoed"), ``thickness`` estimated at the stop
    (angstrom), ``rate`` (angstrom/s), ``rounds``, ``decisions``.

    Notes
    -----
    Times are the readings' timestamps (the devices' clock): a round's time is its frames', and each decision is
    taken at the time of the last frame it saw. Every argument is checked before the first message: nothing moves
    or opens for a bad one (ValueError, naming it). The plan returns once the run's analysis has ended (its
    analysis and texture runs stopped).
    The shutter is closed on every exit path, whatever the subscribers do
    (:func:`~nanopilot.plans.common.safe_state_wrapper`): on success, an exception, abort or stop (also after a
    pause) by the plan's last messages; on a halt (also after a pause) or a KeyboardInterrupt inside a device
    (the RunEngine halts) directly, as the generator closes. It is closed while the RunEngine is paused, at any
    moment of the plan, and reopened by a resume (:class:`~nanopilot.plans.common.SafeWhilePaused`); the growth
    monitor's time then includes the pause, during which the film did not grow (its rate fit sees a step). A
    :class:`~nanopilot.plans.common.SafeStateGuard` on the run is a second line.

    Points whose frame has a warning status (``edge``: an estimate within the model's edge margin of a trained
    range end) count with their values, as in the maps; flagged frames (values NaN) do not. This is the
    conservative choice: without them the points whose thickness or tilts leave the trained range (a film growing
    past it, a patch tilting as it relaxes) would drop out of the tests, and the shutter would stay open on the
    evidence of the points that have not changed.
    """
    detectors = check_detectors(detectors)
    for name, device in (("deposition", deposition), ("x", x), ("y", y)):
        check_device(name, device, "set")
    maps = yield from resolve_maps(maps)
    limits = yield from read_limits(x, y)
    points = _checked(detectors, deposition, x, y, points, maps, approve, limits, target_thickness=target_thickness,
                      interval=interval, max_time=max_time, z_point=z_point, z_spread=z_spread, timeout=timeout,
                      window=window, look_every=look_every)
    agent = GrowthAgent(float(target_thickness), points, interval=float(interval), max_time=float(max_time),
                        z_point=float(z_point), z_spread=float(z_spread), window=int(window),
                        look_every=int(look_every), motors=[y.name, x.name])
    shutter = deposition.shutter
    guarded = SafeWhilePaused(shutter, "closed")  # closed while the RunEngine is paused
    driver = Driver(agent, maps, list(detectors) + [x, y, deposition], x, y, approve=approve, timeout=timeout,
                    moves={"shutter": lambda value: bps.mv(guarded, value)})
    _md = {"plan_name": "grow_until", "motors": [y.name, x.name], "detectors": [d.name for d in detectors],
           "plan_args": {"target_thickness": float(target_thickness), "interval": float(interval),
                         "max_time": float(max_time), "points": [list(p) for p in points], "z_point": float(z_point),
                         "z_spread": float(z_spread), "window": int(window), "look_every": int(look_every)},
           "hints": {"dimensions": [([y.name], "primary"), ([x.name], "primary")]}}

    def close():  # once the agent is done, if it was opened
        if guarded.commanded is not None:
            yield from bps.mv(guarded, "closed")

    # the shutter is closed (on every exit path) before the run waits for its analysis
    run = agent_run(driver, detectors, merge_md(_md, md), after=close,
                    wrap=lambda plan: safe_state_wrapper(plan, shutter, "closed"))
    return (yield from bpp.subs_wrapper(run, SafeStateGuard(shutter, "closed")))


def _checked(detectors, deposition, x, y, points, maps, approve, limits, **numbers) -> list[tuple[float, float]]:
    """Check :func:`grow_until`'s arguments (ValueError naming the wrong one; ``limits``: the motors', by name); the
    points (um)."""
    for name, value in numbers.items():
        check_positive(name, value, integer=name in ("window", "look_every"))
    check_callable("approve", approve)
    if "thickness" not in maps.outputs:
        raise ValueError("grow_until needs a model that estimates thickness (4 outputs); the analysis' model has "
                         f"{maps.outputs}: load the shipped thickness model (Predictor.load('thickness'))")
    points = check_points("points", points if points is not None else
                          [(px, py) for py in DEFAULT_GRID for px in DEFAULT_GRID], "um")
    for motor, values in ((x, [p[0] for p in points]), (y, [p[1] for p in points])):
        check_within(f"{motor.name} positions", min(values), max(values), limits[motor.name], "um")
    if getattr(deposition, "shutter", None) is None:
        raise ValueError(f"deposition must have a 'shutter' signal (\"open\"/\"closed\"), got {deposition!r}")
    for det in detectors:
        check_instrument(det, maps)
    return points
