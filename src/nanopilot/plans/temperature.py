"""find_texture_temperature: step the temperature with a quick map at each step until a new texture appears,
then bracket the transition by bisection and take a fine map there.

Hysteresis: a texture formed on cooling survives re-warming up to the transition plus the hysteresis, so each
bracketing temperature must be approached from the untextured side. After a map that shows the new texture,
the plan goes back past the unchanged end of the bracket by more than ``hysteresis`` before stepping toward
the next bracketing temperature; after an unchanged map it simply carries on in the search direction.

Point estimate: a new texture is detected only once it covers a few map points, so the changed end of the
bracket lags the transition. The plan extrapolates the measured coverage to zero instead (see
:func:`onset_from_coverage`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.protocols import Movable, Readable
from bluesky.utils import MsgGenerator

from ..callbacks.live_maps import LiveMaps
from ..texture import texture_change
from .common import (
    DecisionLog,
    check_instrument,
    check_positive,
    check_within,
    record_decision,
    resolve_maps,
    sleep_for,
    wait_for_analysis,
)
from .steering import snake_order

#: Fewest points per side of a quick map: texture_change needs 20 valid points per map and neighbours.
MIN_QUICK = 5


class MapView:
    """The points of one map inside a run that holds several (a contiguous range of primary seq_nums).

    Quacks like :class:`~nanopilot.callbacks.RunMap` for :func:`~nanopilot.texture.texture_change`:
    ``motors``, ``scattered()`` and ``features()`` restricted to seq_nums ``first..last`` (inclusive).
    """

    def __init__(self, run, first: int, last: int):
        self.run, self.first, self.last = run, int(first), int(last)
        self.motors = run.motors

    def _keep(self) -> np.ndarray:
        seq = np.asarray(self.run.scattered()["seq_num"])
        return (seq >= self.first) & (seq <= self.last)

    def scattered(self) -> dict[str, np.ndarray]:
        keep = self._keep()
        return {k: v[keep] for k, v in self.run.scattered().items()}

    def features(self) -> np.ndarray:
        keep = self._keep()
        features = self.run.features()
        return features[keep] if features.shape[1] else np.zeros((int(keep.sum()), 0))

    def __len__(self) -> int:
        return int(self._keep().sum())


def grid_points(x_range, y_range, n: int) -> list[tuple[float, float]]:
    """An ``n x n`` grid over the region (um), in snake order (short stage moves)."""
    xs, ys = np.linspace(*x_range, n), np.linspace(*y_range, n)
    return [(float(xs[i]), float(ys[j])) for i, j in snake_order([(i, j) for j in range(n) for i in range(n)])]


def onset_from_coverage(history: Sequence[tuple], unchanged: float, changed: float, limit: float) -> float:
    """The transition temperature (K) extrapolated to zero coverage of the new texture.

    Model: the new texture grows outward from nuclei with a radius proportional to the undercooling, so
    the covered fraction grows as its square and ``sqrt(coverage)`` is linear in temperature. The line
    through the two changed maps nearest the transition (the least covered, so the least saturated, at
    distinct temperatures) is extrapolated to zero coverage.

    Parameters
    ----------
    history : (temperature K, changed, score, new coverage 0-1) per quick map.
    unchanged, changed : the final bracket (K).
    limit : the far bound (K) beyond ``unchanged`` for the estimate (a texture can go undetected there).

    Returns
    -------
    float: the estimate (K), inside ``changed..limit``; the middle of the bracket when the changed maps do
    not support a line (fewer than two temperatures, or coverage not growing with the undercooling).
    """
    middle = (unchanged + changed) / 2
    sign = 1.0 if changed > unchanged else -1.0  # -1: cooling
    seen = {}
    for t, is_changed, _, coverage in history:
        if is_changed and coverage > 0:
            seen.setdefault(float(t), []).append(float(coverage))
    if len(seen) < 2:
        return middle
    (t1, c1), (t2, c2) = sorted(((t, np.sqrt(np.mean(c))) for t, c in seen.items()), key=lambda tc: sign * tc[0])[:2]
    slope = (c2 - c1) / (t2 - t1)
    if not sign * slope > 0:
        return middle
    onset = t1 - c1 / slope
    return float(np.clip(onset, *sorted((changed, limit))))


def find_texture_temperature(detectors: Sequence[Readable], temperature: Movable, x: Movable, y: Movable,
                             x_range: Sequence[float], y_range: Sequence[float], stop: float, *,
                             start: float | None = None, step: float = 4.0, tolerance: float = 0.5,
                             hysteresis: float = 10.0, quick: int = 12, fine: int = 33, dwell: float = 0.0,
                             restore: bool = False, maps: LiveMaps | None = None, approve: Callable | None = None,
                             timeout: float = 60.0, md: dict | None = None) -> MsgGenerator[dict]:
    """Find the temperature at which a new texture appears, bracket it to ``tolerance``, and map it finely.

    From ``start`` the plan steps toward ``stop`` (cooling when ``stop < start``, else warming) by ``step``,
    taking a quick ``quick x quick`` map at each temperature and comparing it with the reference map taken at
    ``start`` (:func:`nanopilot.texture.texture_change`). At the first map with a new texture it bisects
    between the last unchanged and the first changed temperature until they are within ``tolerance``, then
    takes a ``fine x fine`` map at the changed end of the bracket. Everything is one run.

    Parameters
    ----------
    detectors : the nanobeam detector (and anything else to read at each point).
    temperature : the temperature controller (K); ``set()`` finishes when the sample has settled, and it has
        ``limits`` (K).
    x, y : stage motors (um).
    x_range, y_range : (start, stop) of the mapped region (um), inside the motors' limits.
    stop : the search goes no further than this temperature (K).
    start : temperature (K) of the reference map (default: the controller's reading at the start).
    step : search step (K), > 0.
    tolerance : width (K) of the final bracket, > 0.
    hysteresis : width (K) of the sample's hysteresis loop (an upper estimate): after a changed map the plan
        goes back ``hysteresis + tolerance`` beyond the unchanged end of the bracket before the next one.
    quick : points per side of the quick maps (>= 5).
    fine : points per side of the final fine map (>= quick).
    dwell : extra time (s, on the devices' clock) to wait after the controller has settled, before mapping.
    restore : go back to the start temperature on every exit path (success, exception, abort). By default
        the sample stays at the last temperature, the fine map's: temperature change is not a hazard for
        the sample, and the new texture is kept for further measurements.
    maps : the analysis' LiveMaps (default: the published one, see ``nanopilot.session``); analyse with
        ``frame_features=nanopilot.texture.frame_descriptor`` for the best sensitivity.
    approve : optional ``approve(decision) -> bool`` hook asked before each temperature move and before the
        fine map; a veto ends the search.
    timeout : seconds to wait for the analysis to catch up before each decision.
    md : extra start-document metadata.

    Yields
    ------
    Msg : one run: ``primary`` (frames, positions and the temperature of every point) and ``decisions``
    (one event per map: its temperature, texture score and what the plan does next).

    Returns
    -------
    dict: ``reason`` ("bracketed", "no new texture", "vetoed", "dry run"), ``transition`` (K, extrapolated
    to zero coverage by :func:`onset_from_coverage`, within ``step`` beyond the unchanged end of the bracket;
    NaN when not bracketed), ``bracket`` ((unchanged, changed) temperatures in K), ``maps`` (maps taken,
    the fine one included), ``history`` (list of (temperature K, changed, score, new coverage 0-1) per
    quick map after the reference), ``fine_map`` ((first, last) primary seq_num of the fine map, or None),
    ``decisions``.

    See Also
    --------
    nanopilot.texture.texture_change : the change test and its false-alarm rate.
    """
    maps = resolve_maps(maps)
    for name, value in (("step", step), ("tolerance", tolerance), ("timeout", timeout)):
        check_positive(name, value)
    check_positive("quick", quick, integer=True)
    check_positive("fine", fine, integer=True)
    if not (math.isfinite(hysteresis) and hysteresis >= 0 and math.isfinite(dwell) and dwell >= 0):
        raise ValueError(f"hysteresis (K) and dwell (s) must be finite and >= 0, got {hysteresis!r}, {dwell!r}")
    if quick < MIN_QUICK or fine < quick:
        raise ValueError(f"need {MIN_QUICK} <= quick <= fine points per side (texture_change needs 20 points per "
                         f"map), got quick={quick}, fine={fine}")
    (x0, x1), (y0, y1) = (tuple(map(float, r)) for r in (x_range, y_range))
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"x_range and y_range must be (start, stop) with stop > start, got {x_range}, {y_range}")
    for motor, lo, hi in ((x, x0, x1), (y, y0, y1)):
        check_within(f"range of {motor.name}", lo, hi, tuple(getattr(motor, "limits", (0, 0))), "um")
    t_start = float(start) if start is not None else float(temperature.position)
    t_stop = float(stop)
    if not (math.isfinite(t_start) and math.isfinite(t_stop)) or t_stop == t_start:
        raise ValueError(f"stop ({stop!r} K) must be a finite temperature other than start ({t_start:g} K)")
    sign = -1.0 if t_stop < t_start else 1.0  # -1: cooling
    reset_margin = float(hysteresis) + float(tolerance)
    far_back = t_start - sign * reset_margin
    check_within("temperatures", min(t_stop, far_back), max(t_stop, far_back),
                 tuple(getattr(temperature, "limits", (0, 0))), "K")
    for det in detectors:
        check_instrument(det, maps)

    log = DecisionLog()
    readables = list(detectors) + [x, y, temperature]
    quick_points, fine_points = grid_points((x0, x1), (y0, y1), int(quick)), grid_points((x0, x1), (y0, y1), int(fine))
    direction = "cooling" if sign < 0 else "warming"
    _md = {"plan_name": "find_texture_temperature", "motors": [y.name, x.name],
           "detectors": [d.name for d in detectors],
           "plan_args": {"x_range": [x0, x1], "y_range": [y0, y1], "start": t_start, "stop": t_stop,
                         "step": float(step), "tolerance": float(tolerance), "hysteresis": float(hysteresis),
                         "quick": int(quick), "fine": int(fine), "dwell": float(dwell), "direction": direction},
           "hints": {"dimensions": [([y.name], "primary"), ([x.name], "primary")]}, **(md or {})}
    result = {"reason": "", "transition": math.nan, "bracket": None, "maps": 0, "history": [], "fine_map": None}
    seq = {"n": 0}

    def go_to(target):
        yield from bps.mv(temperature, float(target))
        if dwell > 0:
            yield from sleep_for(float(dwell), temperature)

    def take_map(points):
        first = seq["n"] + 1
        for px, py in points:
            yield from bps.mv(x, px, y, py)
            yield from bps.trigger_and_read(readables)
        seq["n"] += len(points)
        result["maps"] += 1
        return first, seq["n"]

    def decide(action, reason, evidence, value, run, hook=None):
        return (yield from record_decision(log, len(log.history), action, reason, evidence, value=value,
                                           approve=hook, points=len(run)))

    def compare(uid, reference, current, t):
        yield from wait_for_analysis(maps, timeout)
        run = maps[uid]
        change = texture_change(MapView(run, *reference), MapView(run, *current))
        result["history"].append((float(t), bool(change.changed), float(change.score), float(change.new_coverage)))
        evidence = {"temperature": float(t), "readback": float(temperature.position), "seq_nums": list(current),
                    "score": change.score, "new_coverage": change.new_coverage, "max_shift": change.max_shift,
                    "status": change.status}
        return change, evidence, run

    def inner():
        uid = yield from bps.open_run(_md)
        yield from go_to(t_start)
        reference = yield from take_map(quick_points)
        if uid is None:  # a dry run (summarize_plan): no RunEngine, no analysis; show the first stage only
            result["reason"] = "dry run"
            yield from bps.close_run()
            return
        yield from wait_for_analysis(maps, timeout)
        run = maps[uid]
        yield from decide("reference", f"reference map at {t_start:g} K", {"temperature": t_start,
                          "seq_nums": list(reference)}, t_start, run)
        unchanged, changed, k = t_start, None, 0
        while changed is None:  # the search: step until a new texture appears or stop is reached
            k += 1
            t = t_start + sign * min(k * float(step), abs(t_stop - t_start))
            move = yield from decide("step", f"{direction} to {t:g} K", {"temperature": t}, t, run, approve)
            if not move["approved"]:
                result["reason"] = "vetoed"
                break
            yield from go_to(t)
            change, evidence, run = yield from compare(uid, reference, (yield from take_map(quick_points)), t)
            yield from decide("classify", change.reason, evidence, change.score, run)
            if change.changed:
                changed = t
            elif t == t_stop:
                result["reason"] = "no new texture"
                break
            else:
                unchanged = t
        last_changed, move = changed is not None, {"approved": True}
        while changed is not None and abs(changed - unchanged) > float(tolerance):  # bisection
            t = (unchanged + changed) / 2
            reset = unchanged - sign * reset_margin
            how = (f"back to {reset:g} K (beyond the hysteresis), then to {t:g} K" if last_changed else f"to {t:g} K")
            move = yield from decide("bisect", f"bracket {unchanged:g}..{changed:g} K: {how}",
                                     {"unchanged": unchanged, "changed": changed, "temperature": t,
                                      "reset": reset if last_changed else None}, t, run, approve)
            if not move["approved"]:
                result["reason"] = "vetoed"
                break
            if last_changed:
                yield from go_to(reset)
            yield from go_to(t)
            change, evidence, run = yield from compare(uid, reference, (yield from take_map(quick_points)), t)
            yield from decide("classify", change.reason, evidence, change.score, run)
            last_changed = change.changed
            if change.changed:
                changed = t
            else:
                unchanged = t
        if changed is not None:
            result["bracket"] = (unchanged, changed)
            result["transition"] = onset_from_coverage(result["history"], unchanged, changed,
                                                       unchanged - sign * float(step))
        if changed is not None and move["approved"]:
            move = yield from decide("fine map", f"new texture between {unchanged:g} and {changed:g} K: "
                                     f"{fine} x {fine} map at {changed:g} K", {"unchanged": unchanged,
                                     "changed": changed, "transition": result["transition"]},
                                     result["transition"], run, approve)
            result["reason"] = "bracketed" if move["approved"] else "vetoed"
            if move["approved"]:
                if not last_changed:  # on the unchanged side: carry on in the search direction
                    yield from go_to(changed)
                result["fine_map"] = yield from take_map(fine_points)
        yield from bps.close_run()

    plan = bpp.stage_wrapper(inner(), list(detectors))
    if restore:
        plan = bpp.finalize_wrapper(plan, lambda: bps.mv(temperature, t_start))
    yield from plan
    result["decisions"] = list(log.history)
    return result
