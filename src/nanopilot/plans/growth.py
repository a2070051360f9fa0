"""grow_until: in-situ growth stopped at a target thickness or at the onset of relaxation.

The decision logic lives in :class:`GrowthMonitor` (pure: rounds of per-point estimates in, decisions out),
so a replay of the stored run can reproduce every decision.
"""

from __future__ import annotations

import dataclasses
import math
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
    check_instrument,
    check_positive,
    check_within,
    device_time,
    record_decision,
    resolve_maps,
    sleep_for,
    wait_for_analysis,
)

#: Fields whose change at a point, against that point's own baseline, signals relaxation: strain moves
#: toward zero and the tilts spread (mosaicity) as misfit dislocations form. Each value is taken relative
#: to the median over the round's points: relaxation starts in patches, while the estimator's slow drift
#: with the thickness (its bias depends on it) is common to every point and cancels.
RELAXATION_FIELDS = ("strain", "omega", "chi")


@dataclasses.dataclass
class GrowthMonitor:
    """Thickness, growth rate and relaxation from rounds of measurements at the same points.

    Parameters
    ----------
    target : thickness (angstrom) at which to stop.
    z_crit : a point has changed when a field leaves its baseline by more than ``z_crit`` noise units.
    baseline_rounds : rounds that define each point's baseline: those ending ``gap`` rounds before the
        newest one (a sliding window, so the baseline follows the estimator's slow drift with thickness);
        the first test comes once ``max(3, baseline_rounds // 2)`` rounds define it (a noise estimate from
        fewer rounds is too uncertain).
    gap : rounds between the baseline and the newest round (a relaxing patch changes over a few rounds).
    confirm : consecutive rounds with a changed point before relaxation is declared.
    """

    target: float
    z_crit: float = 5.5
    baseline_rounds: int = 10
    gap: int = 4
    confirm: int = 1
    times: list = dataclasses.field(default_factory=list)
    rounds: list = dataclasses.field(default_factory=list)
    _streak: int = 0

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

    def relaxation(self) -> tuple[bool, dict]:
        """Has relaxation started? Each point's change from its own baseline, in noise units ``z``, is
        tested two ways per field: one point moved (max |z|) and the points spread apart
        ((sum z^2 - n) / sqrt(2n): patches relaxing, tilt mosaicity). Values are relative to the round's
        median over the points (see :data:`RELAXATION_FIELDS`), so a change common to every point, such as
        the estimator's drift with the thickness, is not taken for relaxation. The spread statistic is
        about N(0, 1) while nothing changes."""
        first = max(3, self.baseline_rounds // 2)
        if len(self.rounds) <= first:
            return False, {"reason": "baseline"}
        end = max(first, len(self.rounds) - 1 - self.gap)
        base = self.rounds[max(0, end - self.baseline_rounds):end]
        last = self.rounds[-1]
        best = {"z_max": 0.0, "field": None, "test": None, "point": None}
        for field in RELAXATION_FIELDS:
            stack = np.stack([relative(r[field]) for r in base])  # (rounds, points)
            counts = np.isfinite(stack).sum(axis=0)
            if (counts >= 2).sum() == 0:
                continue
            noise = np.sqrt(np.mean(np.nanvar(stack[:, counts >= 2], axis=0, ddof=1)))  # pooled within-point scatter
            if not np.isfinite(noise) or noise == 0:
                continue
            z = (relative(last[field]) - np.nanmean(stack, axis=0)) / (noise * math.sqrt(1 + 1 / len(base)))
            z = z[np.isfinite(z)]
            if not z.size:
                continue
            tests = {"one point": float(np.abs(z).max()),
                     "spread": float((np.sum(z ** 2) - z.size) / math.sqrt(2 * z.size))}
            for test, value in tests.items():
                if value > best["z_max"]:
                    best = {"z_max": value, "field": field, "test": test,
                            "point": int(np.nanargmax(np.abs(z))) if test == "one point" else None}
        self._streak = self._streak + 1 if best["z_max"] > self.z_crit else 0
        best["streak"] = self._streak
        return self._streak >= self.confirm, best


def relative(values: np.ndarray) -> np.ndarray:
    """Per-point values relative to their median over the points (NaN where not finite)."""
    finite = np.isfinite(values)
    return values - np.median(values[finite]) if finite.any() else values


def grow_until(detectors: Sequence[Readable], deposition: Movable, x: Movable, y: Movable,
               target_thickness: float, *, points: Sequence[Sequence[float]] | None = None,
               interval: float = 1.0, max_time: float = 3600.0, z_crit: float = 5.5, baseline_rounds: int = 10,
               confirm: int = 1, maps: LiveMaps | None = None, approve: Callable | None = None,
               timeout: float = 60.0, md: dict | None = None) -> MsgGenerator[dict]:
    """Grow a film with the shutter open, measuring as it grows; close at the target thickness or at relaxation.

    Parameters
    ----------
    detectors : the nanobeam detector (its analysis must estimate thickness: a 4-output model).
    deposition : the deposition source (``shutter`` "open"/"closed", ``thickness`` readback).
    x, y : stage motors (um).
    target_thickness : film thickness (angstrom) at which to close the shutter; the closing time is
        anticipated from the measured growth rate.
    points : (x, y) positions (um) measured each round (default: a 4 x 4 grid over +-1.5 um, points 1 um
        apart: more than the correlation length of the relaxation patches, so more patches are watched).
    interval : seconds between rounds (on the beamline's clock).
    max_time : the shutter is closed after this many seconds whatever happens.
    z_crit, baseline_rounds, confirm : relaxation criterion, see :class:`GrowthMonitor`.
    maps, approve, timeout, md : as in :func:`steered_map`.

    Returns
    -------
    dict: ``reason`` ("target", "relaxation", "time limit", "vetoed"), ``thickness`` estimated at the stop
    (angstrom), ``rate`` (angstrom/s), ``rounds``, ``decisions``.

    Notes
    -----
    The shutter is closed on every exit path: success, abort, pause then abort or stop, exception (plan
    cleanup), and a halt or a KeyboardInterrupt inside a device (a :class:`SafeStateGuard` on the run).
    """
    maps = resolve_maps(maps)
    check_positive("target_thickness", target_thickness)
    check_positive("interval", interval)
    check_positive("max_time", max_time)
    check_positive("z_crit", z_crit)
    check_positive("baseline_rounds", baseline_rounds, integer=True)
    check_positive("confirm", confirm, integer=True)
    if "thickness" not in maps.outputs:
        raise ValueError("grow_until needs a model that estimates thickness (4 outputs); the analysis' model has "
                         f"{maps.outputs}: load the shipped thickness model (Predictor.load('thickness'))")
    grid = (-1.5, -0.5, 0.5, 1.5)
    points = [tuple(map(float, p)) for p in (points if points is not None else
                                             [(px, py) for py in grid for px in grid])]
    if not points or any(len(p) != 2 for p in points):
        raise ValueError("points must be a non-empty list of (x, y) positions in um")
    for motor, values in ((x, [p[0] for p in points]), (y, [p[1] for p in points])):
        check_within(f"{motor.name} positions", min(values), max(values), tuple(getattr(motor, "limits", (0, 0))), "um")
    for det in detectors:
        check_instrument(det, maps)

    monitor = GrowthMonitor(float(target_thickness), z_crit=float(z_crit), baseline_rounds=int(baseline_rounds),
                            confirm=int(confirm))
    log = DecisionLog()
    readables = list(detectors) + [x, y, deposition]
    _md = {"plan_name": "grow_until", "motors": [y.name, x.name], "detectors": [d.name for d in detectors],
           "plan_args": {"target_thickness": float(target_thickness), "interval": float(interval),
                         "max_time": float(max_time), "points": [list(p) for p in points], "z_crit": float(z_crit)},
           **(md or {})}
    result = {"reason": "", "thickness": math.nan, "rate": math.nan, "rounds": 0}

    def close_shutter():
        yield from bps.mv(deposition.shutter, "closed")

    def measure_round():
        t0 = device_time(deposition)
        for px, py in points:
            yield from bps.mv(x, px, y, py)
            yield from bps.trigger_and_read(readables)
        return t0, device_time(deposition)

    def decide(action, reason, evidence, value, run, hook=approve):
        return (yield from record_decision(log, len(monitor.rounds), action, reason, evidence, value=value,
                                           approve=hook, points=len(run) if run is not None else 0))

    def inner():
        uid = yield from bps.open_run(_md)
        run = maps[uid] if uid is not None and uid in maps else None
        opening = yield from decide("open shutter", f"grow to {target_thickness:g} A", {"points": len(points)},
                                    float(target_thickness), run)
        if not opening["approved"]:
            result["reason"] = "vetoed"
            yield from bps.close_run()
            return
        yield from bps.mv(deposition.shutter, "open")
        t_open = device_time(deposition)
        while True:
            t0, t1 = yield from measure_round()
            if uid is None:  # dry run: the first stage only
                result["reason"] = "dry run"
                break
            yield from wait_for_analysis(maps, timeout)
            run = maps[uid]
            latest = run.scattered()
            monitor.add_round((t0 + t1) / 2, {f: latest[f][-len(points):] for f in ("thickness",) + RELAXATION_FIELDS})
            result["rounds"] = len(monitor.rounds)
            relaxed, relax_evidence = monitor.relaxation()
            now = device_time(deposition)
            remaining, evidence = monitor.time_to_target(now)
            evidence.update(relax_evidence)
            result["thickness"], result["rate"] = evidence["thickness"], evidence["rate"]
            if relaxed:
                decision = yield from decide("close shutter", f"relaxation: {relax_evidence['field']} changed "
                                             f"({relax_evidence['test']}: {relax_evidence['z_max']:.1f} noise units "
                                             f"from the baseline)", evidence, evidence["thickness"], run)
                if decision["approved"]:
                    result["reason"] = "relaxation"
                    break
            round_time = (t1 - t0) + float(interval)
            if remaining <= round_time:
                if remaining > 0:
                    yield from sleep_for(remaining, deposition)
                evidence["thickness"] = float(target_thickness) if remaining > 0 else evidence["thickness"]
                decision = yield from decide("close shutter", f"target {target_thickness:g} A reached "
                                             f"(anticipated {remaining:.1f} s ahead at {evidence['rate']:.3g} A/s)",
                                             evidence, evidence["thickness"], run)
                if decision["approved"]:
                    result["reason"], result["thickness"] = "target", evidence["thickness"]
                    break
            if now - t_open >= max_time:
                yield from decide("close shutter", f"time limit of {max_time:g} s", evidence, evidence["thickness"], run,
                                  hook=None)  # safety: not subject to approval
                result["reason"] = "time limit"
                break
            yield from sleep_for(float(interval), deposition)
        yield from close_shutter()
        yield from bps.close_run()

    guard = SafeStateGuard(deposition.shutter, "closed")
    yield from bpp.subs_wrapper(bpp.finalize_wrapper(bpp.stage_wrapper(inner(), list(detectors)), close_shutter()),
                                guard)
    result["decisions"] = list(log.history)
    return result
