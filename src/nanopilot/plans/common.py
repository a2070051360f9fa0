"""What every closed-loop plan shares: the decisions stream, the approval hook, waiting for the analysis,
finding the published LiveMaps, and argument checks that run before anything moves.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

import bluesky.plan_stubs as bps
import numpy as np
from bluesky.utils import MsgGenerator

from ..callbacks.live_maps import LiveMaps, published_maps

DECISION_STREAM = "decisions"


class Decision(dict):
    """One decision: ``step`` (int), ``action`` (str), ``reason`` (str), ``evidence`` (dict, JSON-able),
    ``value`` (float, the plan's main number for it, e.g. a thickness in angstrom), ``approved`` (bool)."""


class DecisionLog:
    """A readable that puts each decision in the run's ``decisions`` stream (one event per decision).

    Data keys (all scalar): ``decision_step``, ``decision_action``, ``decision_reason``, ``decision_evidence``
    (JSON), ``decision_value``, ``decision_approved``, ``decision_points`` (frames analysed when deciding).
    """

    def __init__(self, name: str = "decision"):
        self.name = name
        self.parent = None
        self.history: list[Decision] = []
        self._reading: dict | None = None

    def _set(self, decision: Decision, points: int) -> None:
        now = time.time()
        values = {"step": int(decision["step"]), "action": str(decision["action"]),
                  "reason": str(decision["reason"]), "evidence": json.dumps(decision["evidence"], default=float),
                  "value": float(decision.get("value", math.nan)), "approved": bool(decision["approved"]),
                  "points": int(points)}
        self._reading = {f"{self.name}_{k}": {"value": v, "timestamp": now} for k, v in values.items()}

    def read(self) -> dict:
        if self._reading is None:
            raise RuntimeError("no decision recorded yet")
        return dict(self._reading)

    def describe(self) -> dict:
        types = {"step": "integer", "action": "string", "reason": "string", "evidence": "string",
                 "value": "number", "approved": "boolean", "points": "integer"}
        return {f"{self.name}_{k}": {"source": "nanopilot.plans", "dtype": t, "shape": []} for k, t in types.items()}

    def trigger(self):
        from ophyd.status import StatusBase

        status = StatusBase()
        status.set_finished()
        return status


def record_decision(log: DecisionLog, step: int, action: str, reason: str, evidence: dict, *,
                    value: float = math.nan, approve: Callable[[Decision], bool] | None = None,
                    points: int = 0) -> MsgGenerator[Decision]:
    """Plan stub: ask the approval hook (if any), then record the decision as an event of the decisions stream.

    Returns the :class:`Decision`; ``decision["approved"]`` is False when the hook vetoed it (the plan
    must then not act on it).
    """
    decision = Decision(step=step, action=action, reason=reason, evidence=evidence, value=value, approved=True)
    if approve is not None:
        decision["approved"] = bool(approve(Decision(decision)))
    log._set(decision, points)
    log.history.append(decision)
    yield from bps.trigger_and_read([log], name=DECISION_STREAM)
    return decision


def wait_for_analysis(maps: LiveMaps, timeout: float = 60.0) -> MsgGenerator[None]:
    """Plan stub: block until the analysis has accounted for every frame of the current run.

    The RunEngine hands each event to the analysis synchronously, so after this every frame taken so far
    is in ``maps``. Raises TimeoutError after ``timeout`` s.
    """
    yield from bps.null()
    if not maps.wait_for(timeout=timeout):
        raise TimeoutError(f"the analysis did not catch up within {timeout} s; is NanobeamAnalysis subscribed?")


def resolve_maps(maps: LiveMaps | None) -> LiveMaps:
    """``maps`` if given, else the LiveMaps published by the session (``nanopilot.session.setup``)."""
    if maps is not None:
        return maps
    found = published_maps()
    if found is None:
        raise ValueError("no live analysis: pass maps=analysis.maps, or install the analysis with "
                         "nanopilot.session.setup(RE, ...) first")
    return found


def check_positive(name: str, value, *, integer: bool = False) -> None:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value) and value > 0
    if not ok or (integer and int(value) != value):
        raise ValueError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")


def check_within(name: str, low: float, high: float, limits: tuple[float, float], units: str) -> None:
    """Raise if [low, high] leaves ``limits``; the message says what the limits are."""
    lo, hi = limits
    if lo < hi and (low < lo or high > hi):
        raise ValueError(f"{name} {low:g}..{high:g} {units} leaves the limits {lo:g}..{hi:g} {units}")


def check_instrument(detector, maps: LiveMaps) -> None:
    """Raise, naming the fields, if the detector's instrument is not the one the analysis' model was made for."""
    det_inst = getattr(detector, "instrument", None)
    if det_inst is not None and maps.instrument is not None:
        maps.instrument.require_same(det_inst, f"the detector {getattr(detector, 'name', detector)!r}")


def _clock_of(devices):
    return next((d.clock for d in devices if hasattr(getattr(d, "clock", None), "advance")), None)


def device_time(*devices) -> float:
    """Now (s since the epoch) on the devices' clock: a simulated beamline's clock if they share one, else the wall."""
    clock = _clock_of(devices)
    return clock.now() if clock is not None else time.time()


def sleep_for(seconds: float, *devices) -> MsgGenerator[None]:
    """Plan stub: let ``seconds`` pass on the devices' clock (a simulated clock advances instantly), else
    ``bps.sleep`` in the RunEngine's time."""
    clock = _clock_of(devices)
    if clock is None or clock.realtime:
        yield from bps.sleep(seconds)
    else:
        yield from bps.null()
        clock.advance(seconds)


class SafeStateGuard:
    """Callback that puts ``signal`` back to ``safe_value`` when a run stops with it elsewhere.

    The plan's own cleanup (``finalize_wrapper``) covers success, exceptions, abort and pause-then-abort;
    a halt (``RE.halt()``, or a KeyboardInterrupt raised inside a device) skips plan cleanup, and this guard,
    subscribed for the run, still restores the safe state when the stop document goes out.
    """

    def __init__(self, signal, safe_value, timeout: float = 30.0):
        self.signal, self.safe_value, self.timeout = signal, safe_value, timeout

    def __call__(self, name: str, doc: dict) -> None:
        if name == "stop" and self.signal.get() != self.safe_value:
            self.signal.set(self.safe_value).wait(self.timeout)
