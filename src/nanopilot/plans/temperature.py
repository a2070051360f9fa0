"""find_texture_temperature: step the temperature with a quick map at each step until a new texture appears,
then bracket the transition by bisection and take a fine map there.

Hysteresis: a texture formed on cooling survives re-warming up to the transition plus the hysteresis, so each
bracketing temperature must be approached from the untextured side. After a map that shows the new texture,
the plan goes back past the unchanged end of the bracket by more than ``hysteresis`` before stepping toward
the next bracketing temperature; after an unchanged map it simply carries on in the search direction.

Zoom: a new texture forms at nucleation sites and grows from there, so just below the transition it covers
regions far smaller than the spacing of a quick map over the whole region, and a coarse map sees it only
once it has grown onto a map point (a lag of up to a few kelvin). Each bracketing map is therefore a quick map
of a window around the new texture seen on the last map that showed it (see :func:`novel_window`): the
texture at a temperature nearer the transition lies inside that window, and the window's finer spacing sees
it sooner. Maps of different spacings are compared on the per-point features only (:data:`PER_POINT`: the
neighbourhood statistics depend on the spacing).

Point estimate: the novel area of each bracketing map gives the radius of the new texture (um); it grows in
proportion to the undercooling, so the line through the radii is extrapolated to zero (see
:func:`onset_from_radius`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.protocols import Movable, Readable
from bluesky.utils import MsgGenerator
from scipy import ndimage

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

#: Feature weights for comparing a map with a reference of another spacing: the per-point features only
#: (estimates and frame descriptors); the neighbourhood statistics (a gradient per um, a spread over the
#: nearest points) depend on the spacing.
PER_POINT = {"local_mean": 0.0, "local_spread": 0.0, "local_gradient": 0.0}


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


def novel_window(view: MapView, novel: np.ndarray, window: tuple, n: int, region: tuple) -> tuple | None:
    """The square window (um) around the largest connected patch of novel points of an ``n x n`` map.

    Parameters
    ----------
    view : the map (positions of its points, in the order of ``novel``).
    novel : (n * n,) bool, the novel points (:attr:`~nanopilot.texture.TextureChange.novel`).
    window : ((x0, x1), (y0, y1)) the map's region (um).
    n : points per side of the map.
    region : ((x0, x1), (y0, y1)) the plan's region (um); the window is shifted to stay inside it.

    Returns
    -------
    ((x0, x1), (y0, y1)) in um: the patch's bounding box grown by one map spacing on each side and made
    square (the texture nearer the transition covers less than the patch, around the same nuclei); None
    when no point is novel.
    """
    points = view.scattered()
    xy = np.column_stack([points[m] for m in view.motors[::-1][:2]])
    (x0, x1), (y0, y1) = window
    spacing = np.array([(x1 - x0) / (n - 1), (y1 - y0) / (n - 1)])
    index = np.rint((xy - [x0, y0]) / spacing).astype(int)
    grid = np.zeros((n, n), bool)
    keep = np.asarray(novel, bool) & (index >= 0).all(axis=1) & (index < n).all(axis=1)
    grid[index[keep, 1], index[keep, 0]] = True
    labels, count = ndimage.label(grid, structure=np.ones((3, 3)))
    if not count:
        return None
    largest = 1 + int(np.argmax(ndimage.sum(grid, labels, range(1, count + 1))))
    rows, cols = np.nonzero(labels == largest)
    low = np.array([cols.min(), rows.min()]) * spacing + [x0, y0] - spacing
    high = np.array([cols.max(), rows.max()]) * spacing + [x0, y0] + spacing
    (rx0, rx1), (ry0, ry1) = region
    side = min(float((high - low).max()), rx1 - rx0, ry1 - ry0)
    centre = np.clip((low + high) / 2, [rx0 + side / 2, ry0 + side / 2], [rx1 - side / 2, ry1 - side / 2])
    return tuple((float(c - side / 2), float(c + side / 2)) for c in centre)


def onset_from_radius(history: Sequence[tuple], cooling: bool) -> tuple[float, float]:
    """The transition temperature (K) extrapolated to zero radius of the new texture.

    Model: the new texture grows outward from nuclei with a radius proportional to the undercooling. The
    radius of a zoomed map that showed it (the radius of a disc of its novel area, um) is linear in
    temperature; the line through the two such maps nearest the transition (the finest windows) is
    extrapolated to zero radius.

    Parameters
    ----------
    history : (temperature K, changed, score, new coverage 0-1, radius um) per quick map; the radius is NaN
        for the maps of the whole region (their coarse spacing does not resolve it).
    cooling : the search goes down in temperature.

    Returns
    -------
    (float, float): the estimate (K) and the radius' growth (um per K of undercooling); NaN, NaN when the
    radii do not support a line (fewer than two temperatures, or a radius not growing with the undercooling).
    """
    sign = -1.0 if cooling else 1.0
    seen = {}
    for t, is_changed, _, _, radius in history:
        if is_changed and radius > 0:
            seen.setdefault(float(t), []).append(float(radius))
    if len(seen) < 2:
        return math.nan, math.nan
    (t1, r1), (t2, r2) = sorted(((t, np.mean(r)) for t, r in seen.items()), key=lambda tr: sign * tr[0])[:2]
    slope = (r2 - r1) / (t2 - t1)
    return (float(t1 - r1 / slope), float(abs(slope))) if sign * slope > 0 else (math.nan, math.nan)


def find_texture_temperature(detectors: Sequence[Readable], temperature: Movable, x: Movable, y: Movable,
                             x_range: Sequence[float], y_range: Sequence[float], stop: float, *,
                             start: float | None = None, step: float = 4.0, tolerance: float = 0.5,
                             hysteresis: float = 10.0, quick: int = 12, fine: int = 33, dwell: float = 0.0,
                             zoom: bool = True,
                             restore: bool = False, maps: LiveMaps | None = None, approve: Callable | None = None,
                             timeout: float = 60.0, md: dict | None = None) -> MsgGenerator[dict]:
    """Find the temperature at which a new texture appears, bracket it to ``tolerance``, and map it finely.

    From ``start`` the plan steps toward ``stop`` (cooling when ``stop < start``, else warming) by ``step``,
    taking a quick ``quick x quick`` map at each temperature and comparing it with the reference map taken at
    ``start`` (:func:`nanopilot.texture.texture_change`). At the first map with a new texture it brackets the
    transition between an unchanged and a changed temperature, on zoomed maps (see the module notes), until
    they are within ``tolerance`` and the unchanged end was seen on a map fine enough not to miss a texture
    formed more than ``tolerance`` beyond it; each probe is the middle of the bracket, or half the tolerance
    either side of the extrapolated onset when that lies inside. Then it takes a ``fine x fine`` map of the
    whole region at the changed end of the bracket. Everything is one run.

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
    zoom : bracket on quick maps of a window around the new texture and extrapolate its radius to zero (see
        the module notes); False: every map covers the whole region and the estimate is the bracket's middle.
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
    to zero radius by :func:`onset_from_radius` and kept inside the bracket, else the bracket's middle; NaN
    when not bracketed), ``bracket`` ((unchanged, changed) temperatures in K), ``maps`` (maps taken, the fine
    one included), ``history`` (list of (temperature K, changed, score, new coverage 0-1, radius um: NaN for
    maps of the whole region) per quick map after the reference), ``fine_map`` ((first, last) primary seq_num of
    the fine map, or None), ``decisions``.

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
    region = (x0, x1), (y0, y1) = tuple(tuple(map(float, r)) for r in (x_range, y_range))
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

    def compare(uid, reference, current, t, window=None):
        """Compare a map with the reference; ``window`` (um) for a zoomed map (per-point features only)."""
        yield from wait_for_analysis(maps, timeout)
        run = maps[uid]
        view = MapView(run, *current)
        change = texture_change(MapView(run, *reference), view, **({} if window is None else
                                                                   {"group_weights": PER_POINT}))
        radius = math.nan
        if window is not None:  # the radius (um) of a disc of the novel area
            (wx0, wx1), (wy0, wy1) = window
            radius = math.sqrt(change.new_coverage * (wx1 - wx0) * (wy1 - wy0) / math.pi)
        result["history"].append((float(t), bool(change.changed), float(change.score), float(change.new_coverage),
                                  radius))
        evidence = {"temperature": float(t), "readback": float(temperature.position), "seq_nums": list(current),
                    "score": change.score, "new_coverage": change.new_coverage, "max_shift": change.max_shift,
                    "status": change.status, "window": window, "radius": radius}
        return change, evidence, run, view

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
        unchanged, changed, k, window = t_start, None, 0, region
        while changed is None:  # the search: step until a new texture appears or stop is reached
            k += 1
            t = t_start + sign * min(k * float(step), abs(t_stop - t_start))
            move = yield from decide("step", f"{direction} to {t:g} K", {"temperature": t}, t, run, approve)
            if not move["approved"]:
                result["reason"] = "vetoed"
                break
            yield from go_to(t)
            change, evidence, run, view = yield from compare(uid, reference, (yield from take_map(quick_points)), t)
            yield from decide("classify", change.reason, evidence, change.score, run)
            if change.changed:
                changed = t
                if zoom:  # the window: where the texture itself is (per-point), else where it is seen
                    located = texture_change(MapView(run, *reference), view, group_weights=PER_POINT)
                    window = (novel_window(view, located.novel, region, int(quick), region)
                              or novel_window(view, change.novel, region, int(quick), region) or region)
            elif t == t_stop:
                result["reason"] = "no new texture"
                break
            else:
                unchanged = t
        last_changed, move = changed is not None, {"approved": True}
        seen_with = 0.0 if unchanged == t_start else math.inf  # spacing (um) of the map that saw `unchanged`
        half = float(tolerance) / 2
        while changed is not None:  # bracketing, on zoomed maps
            onset, rate = onset_from_radius(result["history"], sign < 0)
            inside = [p for p in (onset - sign * half, onset + sign * half)  # the onset's neighbours first
                      if sign * (p - unchanged) > half / 2 and sign * (changed - p) > half / 2]
            spacing = (window[0][1] - window[0][0]) / (int(quick) - 1)
            if abs(changed - unchanged) > float(tolerance):
                t = inside[0] if inside else (unchanged + changed) / 2
            elif zoom and seen_with > (rate * float(tolerance) if math.isfinite(rate) else spacing):
                # the unchanged end's map could have missed a texture smaller than its spacing, formed more than
                # the tolerance beyond it: look again with the finer window
                t = onset - sign * half if math.isfinite(onset) and sign * (onset - unchanged) < 0 else unchanged
            else:
                break
            reset = unchanged - sign * reset_margin
            how = (f"back to {reset:g} K (beyond the hysteresis), then to {t:g} K" if last_changed else f"to {t:g} K")
            move = yield from decide("bisect", f"bracket {unchanged:g}..{changed:g} K: {how}, map "
                                     f"x {window[0][0]:.3g}..{window[0][1]:.3g}, y {window[1][0]:.3g}.."
                                     f"{window[1][1]:.3g} um", {"unchanged": unchanged, "changed": changed,
                                     "temperature": t, "reset": reset if last_changed else None, "window": window,
                                     "onset": onset}, t, run, approve)
            if not move["approved"]:
                result["reason"] = "vetoed"
                break
            if last_changed:
                yield from go_to(reset)
            yield from go_to(t)
            current = yield from take_map(grid_points(*window, int(quick)))
            change, evidence, run, view = yield from compare(uid, reference, current, t, window if zoom else None)
            yield from decide("classify", change.reason, evidence, change.score, run)
            last_changed = change.changed
            if not change.changed:
                unchanged, seen_with = t, spacing
                continue
            if zoom:
                window = novel_window(view, change.novel, window, int(quick), region) or window
            if sign * (t - unchanged) <= 0:  # seen at or beyond the unchanged end: that end moves out
                unchanged, seen_with = t - sign * float(tolerance), math.inf
                if sign * (unchanged - t_start) <= 0:
                    unchanged, seen_with = t_start, 0.0
            changed = t
        if changed is not None:
            result["bracket"] = (unchanged, changed)
            onset = onset_from_radius(result["history"], sign < 0)[0]
            result["transition"] = (float(np.clip(onset, *sorted((unchanged, changed))))
                                    if zoom and math.isfinite(onset) else (unchanged + changed) / 2)
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
