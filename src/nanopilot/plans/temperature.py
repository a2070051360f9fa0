"""find_texture_temperature: step the temperature with a quick map at each step until a new texture appears,
then bracket the transition by bisection and take a fine map there.

Hysteresis: a texture formed on cooling survives re-warming up to the transition plus the hysteresis, so each
bracketing temperature must be approached from the untextured side. After a map that shows the new texture,
the plan goes back past the unchanged end of the bracket by more than ``hysteresis`` before stepping toward
the next bracketing temperature; after an unchanged map it simply carries on in the search direction.

Zoom: a new texture forms at nucleation sites and grows from there, so just below the transition it covers
regions far smaller than the spacing of a quick map over the whole region, and a coarse map sees it only
once it has grown onto a map point (a lag of up to a few kelvin). Each bracketing map is therefore a quick map
of a window around the new texture seen on the last map that showed it (see
:func:`~nanopilot.agents.zoom.novel_window`): the texture at a temperature nearer the transition lies inside that
window, and the window's finer spacing sees it sooner. After a zoomed map the window closes in on the densest
new-texture point, as wide as the texture seen there (two radii) and at least ``WINDOW_SPACINGS`` of that map's
spacing, so the spacing shrinks as the bracket does. Maps of different spacings are compared on the per-point
features only (:data:`~nanopilot.agents.temperature.PER_POINT`: the neighbourhood statistics depend on the
spacing). A bracket whose changed end only a whole-region map has seen is confirmed there on a zoomed map; if
the window misses the texture, a smaller window around the densest novel point replaces it (the textures of
several nuclei can run together into one wide patch on the whole-region map), and failing that the bracket
stands as it is.

Point estimate: the novel area of each bracketing map gives the radius of the new texture (um); it grows in
proportion to the undercooling, so the line through the radii is extrapolated to zero (see
:func:`~nanopilot.agents.zoom.onset_from_radius`).
"""

import math
from collections.abc import Callable, Sequence

import bluesky.plan_stubs as bps
from bluesky.protocols import Movable, Readable
from bluesky.utils import MsgGenerator

from ..agents import TemperatureAgent
from ..callbacks.live_maps import LiveMaps
from .checks import (
    check_callable,
    check_detectors,
    check_device,
    check_finite,
    check_instrument,
    check_positive,
    check_range,
    check_within,
    read_limits,
)
from .common import merge_md, resolve_maps, safe_state_wrapper
from .driving import Driver, agent_run

#: Fewest points per side of a quick map: texture_change needs 20 valid points per map and neighbours.
MIN_QUICK = 5


def find_texture_temperature(detectors: Sequence[Readable], temperature: Movable, x: Movable, y: Movable,
                             x_range: Sequence[float], y_range: Sequence[float], stop: float, *,
                             start: float | None = None, step: float = 8.0, tolerance: float = 0.5,
                             hysteresis: float = 10.0, quick: int = 12, fine: int = 33, dwell: float = 0.0,
                             zoom: bool = True,
                             restore: bool = False, maps: LiveMaps | None = None, approve: Callable | None = None,
                             timeout: float = 60.0, md: dict | None = None) -> MsgGenerator[dict]:
    """Find the temperature at which a new texture appears, bracket it to ``tolerance``, and map it finely.

    From ``start`` the plan steps toward ``stop`` by ``step`` with a quick map at each temperature, compared with
    the reference map at ``start`` (:func:`nanopilot.texture.texture_change`); at the first new texture it brackets
    the transition on zoomed maps (see the module notes and :class:`~nanopilot.agents.TemperatureAgent`, which
    decides), then takes a ``fine x fine`` map of the whole region at the bracket's changed end. One run.

    Parameters
    ----------
    detectors : the nanobeam detector (and anything else to read at each point).
    temperature : the temperature controller (K); ``set()`` finishes when the sample has settled, and it has
        ``limits`` (K).
    x, y : stage motors (um).
    x_range, y_range : (start, stop) of the mapped region (um), inside the motors' limits.
    stop : the search goes no further than this temperature (K).
    start : temperature (K) of the reference map (default: the controller's reading at the start, ``bps.rd``;
        a dry run, which cannot read it, needs it).
    step : search step (K), > 0. A coarse step costs few maps: the zoomed bracketing narrows the step in about
        five maps (``benchmarks/plans.py --parts c``).
    tolerance : width (K) of the final bracket, > 0.
    hysteresis : width (K) of the sample's hysteresis loop (an upper estimate): after a changed map the plan
        goes back ``hysteresis + tolerance`` beyond the unchanged end of the bracket before the next one.
    quick : points per side of the quick maps (>= 5).
    fine : points per side of the final fine map (>= quick).
    dwell : extra time (s, ``bps.sleep``) to wait after the controller has settled, before mapping.
    zoom : bracket on quick maps of a window around the new texture and extrapolate its radius to zero (see
        the module notes); False: every map covers the whole region and the estimate is the bracket's middle.
    restore : go back to the start temperature on every exit path, whatever the subscribers do
        (:func:`~nanopilot.plans.common.safe_state_wrapper`; on a halt the setpoint is set without waiting). By
        default the sample stays at the fine map's temperature, keeping the new texture for further measurements.
    maps : the analysis' LiveMaps (default: the RunEngine's session's, see ``nanopilot.session.setup``); analyse with
        ``frame_features=nanopilot.texture.frame_descriptor`` for the best sensitivity.
    approve : optional ``approve(decision) -> bool`` hook asked before each temperature move and before the
        fine map; a veto ends the search.
    timeout : seconds to wait for the analysis to catch up before each decision, and for it to finish the run
        before the plan returns.
    md : extra start-document metadata.

    Yields
    ------
    Msg : one run: ``primary`` (frames, positions and the temperature of every point) and ``decisions``
    (one event per map: its temperature, texture score and what the plan does next).

    Returns
    -------
    dict: ``reason`` ("bracketed", "no new texture", "vetoed", "dry run"), ``transition`` (K, extrapolated
    to zero radius by :func:`~nanopilot.agents.zoom.onset_from_radius` and kept inside the bracket, else the
    bracket's middle; NaN when not bracketed), ``bracket`` ((unchanged, changed) temperatures in K), ``maps``
    (maps taken, the fine one included), ``history`` (list of (temperature K, changed, score, new coverage
    0-1, radius um: NaN for maps of the whole region) per quick map after the reference), ``fine_map``
    ((first, last) primary seq_num of the fine map, or None), ``decisions``.

    See Also
    --------
    nanopilot.texture.texture_change : the change test and its false-alarm rate.

    Notes
    -----
    Every argument is checked before the first message: nothing moves or heats for a bad one (ValueError, naming
    it). The plan returns once the run's analysis has ended (its analysis and texture runs stopped).
    """
    detectors = check_detectors(detectors)
    for name, device in (("temperature", temperature), ("x", x), ("y", y)):
        check_device(name, device, "set")
    maps = yield from resolve_maps(maps)
    limits = yield from read_limits(x, y, temperature)
    region = _checked(detectors, x, y, x_range, y_range, step, tolerance, timeout, quick, fine, hysteresis, dwell,
                      approve, maps, limits)
    t_start = yield from _start_temperature(temperature, start)
    t_stop = _checked_stop(limits[temperature.name], t_start, stop, hysteresis, tolerance)
    agent = TemperatureAgent(region, t_start, t_stop, step=float(step), tolerance=float(tolerance),
                             hysteresis=float(hysteresis), quick=int(quick), fine=int(fine), zoom=zoom,
                             motors=[y.name, x.name])

    def go_to(target):
        yield from bps.mv(temperature, float(target))
        if dwell > 0:
            yield from bps.sleep(float(dwell))

    def read_back(proposal):  # the controller's reading beside a map's classification
        if "readback" in proposal.evidence:
            proposal.evidence["readback"] = float((yield from bps.rd(temperature, default_value=math.nan)))

    driver = Driver(agent, maps, detectors + [x, y, temperature], x, y, moves={"temperature": go_to},
                    approve=approve, timeout=timeout, extra=lambda run, _: {"features": run.features()},
                    fill=read_back)
    _md = {"plan_name": "find_texture_temperature", "motors": [y.name, x.name],
           "detectors": [d.name for d in detectors],
           "plan_args": {"x_range": list(region[0]), "y_range": list(region[1]), "start": t_start, "stop": t_stop,
                         "step": float(step), "tolerance": float(tolerance), "hysteresis": float(hysteresis),
                         "quick": int(quick), "fine": int(fine), "dwell": float(dwell), "direction": agent.direction,
                         "zoom": bool(zoom)},
           "hints": {"dimensions": [([y.name], "primary"), ([x.name], "primary")]}}
    # the start temperature is restored (if asked) before the run waits for its analysis
    wrap = (lambda plan: safe_state_wrapper(plan, temperature, t_start, timeout=0)) if restore else None
    return (yield from agent_run(driver, detectors, merge_md(_md, md), wrap=wrap))


def _checked(detectors, x, y, x_range, y_range, step, tolerance, timeout, quick, fine, hysteresis, dwell, approve,
             maps, limits) -> tuple:
    """Check :func:`find_texture_temperature`'s arguments but the temperatures (ValueError naming the wrong one;
    ``limits``: the devices', by name);
    the region ((x0, x1), (y0, y1)) in um."""
    for name, value in (("step", step), ("tolerance", tolerance), ("timeout", timeout)):
        check_positive(name, value)
    check_positive("quick", quick, integer=True)
    check_positive("fine", fine, integer=True)
    for name, value, units in (("hysteresis", hysteresis, "K"), ("dwell", dwell, "s")):
        if check_finite(name, value, units) < 0:
            raise ValueError(f"{name} must be >= 0 ({units}), got {value!r}")
    if quick < MIN_QUICK or fine < quick:
        raise ValueError(f"need {MIN_QUICK} <= quick <= fine points per side (texture_change needs 20 points per "
                         f"map), got quick={quick}, fine={fine}")
    check_callable("approve", approve)
    region = (x0, x1), (y0, y1) = check_range("x_range", x_range, "um"), check_range("y_range", y_range, "um")
    for motor, lo, hi in ((x, x0, x1), (y, y0, y1)):
        check_within(f"range of {motor.name}", lo, hi, limits[motor.name], "um")
    for det in detectors:
        check_instrument(det, maps)
    return region


def _start_temperature(temperature, start) -> MsgGenerator[float]:
    """Plan stub: ``start`` (K) checked, or the controller's reading (a message; a dry run cannot read it)."""
    if start is not None:
        return check_finite("start", start, "K")
    reading = yield from bps.rd(temperature, default_value=None)
    if reading is None:
        raise ValueError("a dry run cannot read the temperature: give start (K)")
    return check_finite(f"{temperature.name} reading", reading, "K")


def _checked_stop(limits: tuple[float, float], t_start: float, stop, hysteresis, tolerance) -> float:
    """``stop`` (K) checked: another temperature than the start, and the search and its resets inside the
    controller's ``limits`` (K)."""
    t_stop = check_finite("stop", stop, "K")
    if t_stop == t_start:
        raise ValueError(f"stop ({stop!r} K) must be a temperature other than start ({t_start:g} K)")
    sign = -1.0 if t_stop < t_start else 1.0  # -1: cooling
    far_back = t_start - sign * (float(hysteresis) + float(tolerance))
    check_within("temperatures", min(t_stop, far_back), max(t_stop, far_back), limits, "K")
    return t_stop
