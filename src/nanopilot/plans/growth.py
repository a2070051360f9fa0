"""grow_until: in-situ growth stopped at a target thickness or at the onset of relaxation.

The decision logic lives in :class:`GrowthMonitor` (pure: rounds of per-point estimates in, decisions out),
so a replay of the stored run can reproduce every decision (a look within a round sees the round so far: its
evidence says how many of the round's points were measured).
"""

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Sequence

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.protocols import Movable, Readable
from bluesky.utils import MsgGenerator

from ..callbacks.live_maps import LiveMaps
from .common import (
    DecisionLog,
    SafeStateGuard,
    SafeWhilePaused,
    analysed_run,
    check_callable,
    check_detectors,
    check_device,
    check_instrument,
    check_points,
    check_positive,
    check_within,
    map_point,
    reading_time,
    record_decision,
    resolve_maps,
    safe_state_wrapper,
    wait_for_analysis,
)

#: Fields whose change at a point signals relaxation: strain moves toward zero and the tilts spread (mosaicity)
#: as misfit dislocations form. Each value is taken relative to the median over the round's points: relaxation
#: starts in patches, while the estimator's slow drift with the thickness (its bias depends on it) is common to
#: every point and cancels.
RELAXATION_FIELDS = ("strain", "omega", "chi")
#: Default thresholds (noise units) of the one-point and spread tests, the ramp window (rounds), see
#: :class:`GrowthMonitor`, and the points between two looks at the tests within a round, see :func:`grow_until`.
#: The thresholds are 1.1x the largest values on coherent films with the shipped thickness model, from
#: ``benchmarks/growth_thresholds.py``; re-derive them whenever that model changes.
Z_POINT, Z_SPREAD, WINDOW, LOOK_EVERY = 5.58, 5.00, 6, 4
#: x and y (um) of the default points, see :func:`grow_until`.
DEFAULT_GRID = (-2.0, -1.0, 0.0, 1.0, 2.0)


@dataclasses.dataclass
class GrowthMonitor:
    """Thickness, growth rate and relaxation from rounds of measurements at the same points.

    Relaxation is a sequential test of a ramp: once a patch passes its critical thickness its relaxed fraction,
    and with it the tilts' and the strain's departure from their coherent values, grows about linearly with
    the thickness, so about linearly with the round (rounds are evenly spaced in time). Each point's baseline
    is the mean of every round before the last ``window`` ones; within the window, a ramp starting at each
    round ``tau`` is fitted to each point's departure (in noise units, the pooled within-point scatter of
    the baseline rounds), giving a z per point, field and ``tau`` (the fit's slope over its standard error,
    the baseline mean's error included). Two tests, the largest over ``tau``:

    - one point: ``sqrt(z_omega^2 + z_chi^2 + z_strain^2)``, strain counted only toward zero (its sign is
      known: from the coherent strain), above ``z_point``;
    - spread: several points tilting at once, ``(sum over points of z_omega^2 + z_chi^2 - 2 n) / sqrt(4 n)``
      (about N(0, 1) while nothing changes) above ``z_spread``.

    Parameters
    ----------
    target : thickness (angstrom) at which to stop.
    z_point, z_spread : thresholds of the two tests (noise units). The defaults were set at 1.1 times the
        largest value each test reached while every measured point was still coherent, with the shipped
        thickness model, the default points, interval and looks (every 4 points, so with partial rounds too), on
        growth scenes of seeds 0-43 and 2000-2049 (``benchmarks/growth_thresholds.py``);
        ``benchmarks/plans.py --parts b`` checks them on seeds never used for that.
    window : rounds in which a ramp is sought (the newest ones); the rounds before define the baseline.
    min_baseline : rounds the baseline needs before the first test.
    """

    target: float
    z_point: float = Z_POINT
    z_spread: float = Z_SPREAD
    window: int = WINDOW
    min_baseline: int = 6
    times: list = dataclasses.field(default_factory=list)
    rounds: list = dataclasses.field(default_factory=list)

    def add_round(self, t: float, values: dict[str, np.ndarray]) -> None:
        """One round: time (s) and per-point arrays of strain, omega (deg), chi (deg), thickness (angstrom)."""
        self.times.append(float(t))
        self.rounds.append({k: np.asarray(v, dtype=float) for k, v in values.items()})

    def thickness(self) -> float:
        """Mean thickness (angstrom) of the last round."""
        return float(np.nanmean(self.rounds[-1]["thickness"]))

    def rate(self) -> tuple[float, float]:
        """Growth rate (angstrom/s) and the fitted thickness at the last round's time, from a straight line
        through every round's mean thickness (NaN rate with fewer than two rounds)."""
        t = np.asarray(self.times)
        h = np.array([np.nanmean(r["thickness"]) for r in self.rounds])
        ok = np.isfinite(h)
        if ok.sum() < 2:
            return math.nan, float(h[-1])
        slope, intercept = np.polyfit(t[ok] - t[-1], h[ok], 1)
        return float(slope), float(intercept)

    def time_to_target(self, now: float) -> tuple[float, dict]:
        """Seconds from ``now`` until the target is reached (<= 0: reached), with the evidence."""
        rate, fitted = self.rate()
        thickness_now = fitted + (rate * (now - self.times[-1]) if math.isfinite(rate) else 0.0)
        remaining = (self.target - thickness_now) / rate if math.isfinite(rate) and rate > 0 else math.inf
        if thickness_now >= self.target:
            remaining = 0.0
        return remaining, {"thickness": thickness_now, "rate": rate, "target": self.target}

    def ramp_z(self, partial: dict[str, np.ndarray] | None = None) -> tuple[int, dict[str, np.ndarray] | None]:
        """The first round of the window, and per field the z of a ramp starting at each of its rounds but the
        last: (starts, points) arrays; None while the baseline has fewer than ``min_baseline`` rounds or the
        window fewer than two. ``partial``: the round in progress (NaN at the points not measured yet), taken as
        the newest round."""
        rounds = self.rounds + ([partial] if partial is not None else [])
        n = len(rounds)
        end = max(self.min_baseline, n - self.window)  # baseline: rounds [0, end)
        m = n - end
        if m < 2:
            return end, None
        w = np.clip(np.arange(m)[None, :] - np.arange(m - 1)[:, None], 0, None).astype(float)  # (starts, rounds)
        out = {}
        for field in RELAXATION_FIELDS:
            values = relative(np.stack([r[field] for r in rounds]))  # (rounds, points)
            base = values[:end]
            counts = np.isfinite(base).sum(axis=0)
            noise = math.sqrt(np.mean(np.nanvar(base[:, counts >= 2], axis=0, ddof=1))) if (counts >= 2).any() else 0
            if not noise > 0:
                out[field] = np.zeros((m - 1, values.shape[1]))
                continue
            with np.errstate(invalid="ignore", divide="ignore"):
                d = (values[end:] - np.nanmean(base, axis=0)) / noise  # (rounds, points)
                ok = np.isfinite(d)
                num = w @ np.where(ok, d, 0.0)
                den = np.sqrt((w ** 2) @ ok + (w @ ok) ** 2 / np.maximum(counts, 1))
                out[field] = np.nan_to_num(num / den)
        return end, out

    def relaxation(self, partial: dict[str, np.ndarray] | None = None) -> tuple[bool, dict]:
        """Has relaxation started? The two ramp tests of the class docstring; the evidence gives both values,
        the test nearest its threshold (``test``, ``z_max``), the point with the largest one-point value and
        its z per field, and the round from which the deciding ramp rises. ``partial``: as in :meth:`ramp_z`."""
        end, z = self.ramp_z(partial)
        if z is None:
            return False, {"reason": "baseline"}
        toward_zero = -np.sign(np.nanmedian(self.rounds[0]["strain"]))
        tilt2 = z["omega"] ** 2 + z["chi"] ** 2  # (starts, points)
        point = np.sqrt(tilt2 + np.clip(toward_zero * z["strain"], 0, None) ** 2)
        spread = (tilt2.sum(axis=1) - 2 * tilt2.shape[1]) / math.sqrt(4 * tilt2.shape[1])
        start, where = np.unravel_index(np.argmax(point), point.shape)
        values = {"one point": float(point[start, where]), "spread": float(spread.max())}
        thresholds = {"one point": self.z_point, "spread": self.z_spread}
        test = max(values, key=lambda k: values[k] / thresholds[k])
        evidence = {"test": test, "z_max": values[test], **values, "point": int(where),
                    "ramp from round": end + int(start if test == "one point" else np.argmax(spread)),
                    "z": {f: float(z[f][start, where]) for f in RELAXATION_FIELDS}}
        return values[test] > thresholds[test], evidence


def relative(values: np.ndarray) -> np.ndarray:
    """(rounds, points) values relative to each round's median over the points' latest values (a point not
    measured in a round, or flagged, counts with its value from the round before); NaN where not finite."""
    finite = np.isfinite(values)
    rows = np.maximum.accumulate(np.where(finite, np.arange(len(values))[:, None], 0), axis=0)
    latest = values[rows, np.arange(values.shape[1])]
    counted = np.isfinite(latest)
    median = np.array([np.median(v[c]) if c.any() else 0.0 for v, c in zip(latest, counted)])
    return values - median[:, None]


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
    interval : seconds between rounds (on the beamline's clock). Short by default, so that the detector keeps
        measuring and the film grows little between looks at a point (relaxation is caught earlier than with
        1 s); it costs frames, dose and data, not beamline time (the growth sets the time).
    max_time : the shutter is closed after this many seconds whatever happens.
    z_point, z_spread, window : relaxation criterion (noise units, noise units, rounds), see
        :class:`GrowthMonitor`.
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
    Every argument is checked before the first message: nothing moves or opens for a bad one (ValueError, naming
    it). The plan returns once the run's analysis has ended (its analysis and texture runs stopped).
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
    maps = resolve_maps(maps)
    for name, value in (("target_thickness", target_thickness), ("interval", interval), ("max_time", max_time),
                        ("z_point", z_point), ("z_spread", z_spread), ("timeout", timeout)):
        check_positive(name, value)
    check_positive("window", window, integer=True)
    check_positive("look_every", look_every, integer=True)
    check_callable("approve", approve)
    if "thickness" not in maps.outputs:
        raise ValueError("grow_until needs a model that estimates thickness (4 outputs); the analysis' model has "
                         f"{maps.outputs}: load the shipped thickness model (Predictor.load('thickness'))")
    points = check_points("points", points if points is not None else
                          [(px, py) for py in DEFAULT_GRID for px in DEFAULT_GRID], "um")
    for motor, values in ((x, [p[0] for p in points]), (y, [p[1] for p in points])):
        check_within(f"{motor.name} positions", min(values), max(values), tuple(getattr(motor, "limits", (0, 0))), "um")
    shutter = getattr(deposition, "shutter", None)
    if shutter is None:
        raise ValueError(f"deposition must have a 'shutter' signal (\"open\"/\"closed\"), got {deposition!r}")
    for det in detectors:
        check_instrument(det, maps)

    monitor = GrowthMonitor(float(target_thickness), z_point=float(z_point), z_spread=float(z_spread),
                            window=int(window))
    log = DecisionLog()
    readables = list(detectors) + [x, y, deposition]
    _md = {"plan_name": "grow_until", "motors": [y.name, x.name], "detectors": [d.name for d in detectors],
           "plan_args": {"target_thickness": float(target_thickness), "interval": float(interval),
                         "max_time": float(max_time), "points": [list(p) for p in points], "z_point": float(z_point),
                         "z_spread": float(z_spread), "window": int(window), "look_every": int(look_every)},
           **(md or {})}
    result = {"reason": "", "thickness": math.nan, "rate": math.nan, "rounds": 0}

    guarded = SafeWhilePaused(shutter, "closed")  # closed while the RunEngine is paused
    pos_cache = defaultdict(lambda: None)  # last positions set, as bluesky's scans keep them

    def close_shutter():
        yield from bps.mv(guarded, "closed")

    def latest(uid, n):
        """The run's map, and per field the estimates of the last ``n`` points measured (NaN-padded to a round)."""
        yield from wait_for_analysis(maps, timeout)
        run = maps[uid]
        values, pad = run.scattered(), np.full(len(points) - n, np.nan)
        return run, {f: np.concatenate([values[f][len(values[f]) - n:], pad])
                     for f in ("thickness",) + RELAXATION_FIELDS}

    def close_on_relaxation(relaxed, relax_evidence, evidence, run):
        """Plan stub: the close decision when the relaxation test fired; True if approved."""
        if not relaxed:
            return False
        why = (f"relaxation: {relax_evidence['test']} test, a ramp {relax_evidence['z_max']:.1f} noise units "
               f"from the baseline since round {relax_evidence['ramp from round']}")
        decision = yield from decide("close shutter", why, evidence, evidence["thickness"], run)
        return decision["approved"]

    def measure_round(uid):
        """Plan stub: measure every point, looking at the relaxation tests every ``look_every`` points with the
        round so far; (first, last) reading times on the devices' clock (s), last None if the shutter must close."""
        t0 = None
        for k, (px, py) in enumerate(points, start=1):
            now = reading_time((yield from map_point(readables, {x: px, y: py}, pos_cache)))
            t0 = now if t0 is None else t0
            if uid is None or k % look_every or k == len(points) or len(monitor.rounds) <= monitor.min_baseline:
                continue
            run, partial = yield from latest(uid, k)
            relaxed, relax_evidence = monitor.relaxation(partial)
            _, evidence = monitor.time_to_target(now)
            evidence.update(relax_evidence, **{"points measured in the round": k})
            if (yield from close_on_relaxation(relaxed, relax_evidence, evidence, run)):
                result.update(reason="relaxation", thickness=evidence["thickness"], rate=evidence["rate"])
                return t0, None
        return t0, now

    def decide(action, reason, evidence, value, run, hook=approve):
        return (yield from record_decision(log, len(monitor.rounds), action, reason, evidence, value=value,
                                           approve=hook, points=len(run) if run is not None else 0))

    def inner(uid):
        run = maps[uid] if uid is not None and uid in maps else None
        opening = yield from decide("open shutter", f"grow to {target_thickness:g} A", {"points": len(points)},
                                    float(target_thickness), run)
        if not opening["approved"]:
            result["reason"] = "vetoed"
            return
        yield from bps.mv(guarded, "open")
        t_open = None
        while True:
            t0, t1 = yield from measure_round(uid)
            t_open = t0 if t_open is None else t_open
            if uid is None:  # dry run: the first stage only
                result["reason"] = "dry run"
                break
            if t1 is None:
                break
            run, values = yield from latest(uid, len(points))
            monitor.add_round((t0 + t1) / 2, values)
            result["rounds"] = len(monitor.rounds)
            relaxed, relax_evidence = monitor.relaxation()
            now = t1  # the last frame's time: the decision is made on what it showed
            remaining, evidence = monitor.time_to_target(now)
            evidence.update(relax_evidence)
            result["thickness"], result["rate"] = evidence["thickness"], evidence["rate"]
            if (yield from close_on_relaxation(relaxed, relax_evidence, evidence, run)):
                result["reason"] = "relaxation"
                break
            round_time = (t1 - t0) + float(interval)
            if remaining <= round_time:
                if remaining > 0:
                    yield from bps.sleep(remaining)
                evidence["thickness"] = float(target_thickness) if remaining > 0 else evidence["thickness"]
                decision = yield from decide("close shutter", f"target {target_thickness:g} A reached "
                                             f"(anticipated {remaining:.1f} s ahead at {evidence['rate']:.3g} A/s)",
                                             evidence, evidence["thickness"], run)
                if decision["approved"]:
                    result["reason"], result["thickness"] = "target", evidence["thickness"]
                    break
            if now - t_open >= max_time:
                yield from decide("close shutter", f"time limit of {max_time:g} s", evidence, evidence["thickness"],
                                  run, hook=None)  # safety: not subject to approval
                result["reason"] = "time limit"
                break
            yield from bps.sleep(float(interval))
        yield from close_shutter()

    def body(uid):  # the shutter is closed (on every exit path) before the run waits for its analysis
        return safe_state_wrapper(bpp.stage_wrapper(inner(uid), detectors), shutter, "closed")

    yield from bpp.subs_wrapper(analysed_run(body, _md, maps, timeout), SafeStateGuard(shutter, "closed"))
    result["decisions"] = list(log.history)
    return result
