"""What every closed-loop plan shares: the decisions stream, the approval hook, waiting for the analysis,
the run that ends only when its analysis has, finding the published LiveMaps, argument checks that run before
anything moves, and the safe state restored on every exit path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import numbers
import time
from collections.abc import Callable, Sequence

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.protocols import Movable, Readable
from bluesky.utils import MsgGenerator, RunEngineControlException

from ..callbacks.live_maps import LiveMaps, published_maps

DECISION_STREAM = "decisions"
logger = logging.getLogger(__name__)


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
    yield from bps.checkpoint()  # a pause after this does not re-emit the decision (its reading is the latest one)
    return decision


def map_point(readables: Sequence[Readable], step: dict[Movable, float], pos_cache: dict) -> MsgGenerator[dict]:
    """Plan stub: one point of a map, as bluesky's ``one_nd_step`` (a checkpoint, the moves of ``step`` that
    differ from ``pos_cache``, trigger and read ``readables``: a pause retakes the point). Returns the readings."""
    readings = {}

    def take_reading(devices, name="primary"):
        readings.update((yield from bps.trigger_and_read(devices, name=name)))

    yield from bps.one_nd_step(readables, step, pos_cache, take_reading)
    return readings


def reading_time(readings: dict) -> float:
    """When ``readings`` were taken (s since the epoch, on the devices' clock): their latest timestamp."""
    return max(float(r["timestamp"]) for r in readings.values())


def wait_until(maps: LiveMaps, predicate: Callable[[LiveMaps], bool], timeout: float,
               message: Callable[[], str]) -> MsgGenerator[None]:
    """Plan stub: a checkpoint, then wait until ``predicate(maps)`` holds, without blocking the RunEngine.

    The wait is a ``wait_for`` message on a future that the analysis completes (:meth:`LiveMaps.when`): the
    RunEngine services pause, resume, Ctrl-C, abort, stop and halt during it. After a pause it rewinds to the
    checkpoint and waits again. Raises TimeoutError(``message()``) after ``timeout`` s.
    """
    async def until():
        future = maps.when(predicate)
        try:
            await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        finally:
            future.cancel()  # withdraws the wait on a timeout; a task left behind by a pause ends here too

    yield from bps.checkpoint()
    while not predicate(maps):  # a response from before a pause's rewind is not ours: then wait again
        tasks = yield from bps.wait_for([until])
        error = next((t.exception() for t in tasks if t.done() and not t.cancelled()), None) \
            if isinstance(tasks, list) else None
        if isinstance(error, TimeoutError):
            raise TimeoutError(message())
        if error is not None:
            raise error


def wait_for_analysis(maps: LiveMaps, timeout: float = 60.0) -> MsgGenerator[None]:
    """Plan stub: wait (:func:`wait_until`) until the analysis has accounted for every frame of the current run.

    The RunEngine hands each event to the analysis synchronously, so after this every frame taken so far
    is in ``maps``. Raises TimeoutError after ``timeout`` s.
    """
    yield from wait_until(maps, LiveMaps.caught_up, timeout, lambda: f"the analysis did not catch up within "
                          f"{timeout:g} s; is NanobeamAnalysis subscribed?")


def wait_for_derived(maps: LiveMaps, uid: str | None, timeout: float = 60.0) -> MsgGenerator[bool]:
    """Plan stub: wait (:func:`wait_until`) until the analysis of raw run ``uid`` has ended, i.e. its analysis run
    (and the texture run made from it, see :class:`nanopilot.texture.TextureCallback`) have been emitted up to
    their stop documents.

    A run the analysis never saw (no frames for its model, a dry run: ``uid`` None) is not waited for. Returns
    True; raises TimeoutError after ``timeout`` s.
    """
    yield from bps.null()
    if uid is None or uid not in maps:
        return True
    run = maps[uid]
    yield from wait_until(maps, lambda _: run.done, timeout, lambda: (
        f"the analysis of run {uid[:8]} did not finish within {timeout:g} s ({run.accounted} of {run.received} "
        "frames done); its analysis run is finished later, or by the session's close()"))
    return True


def analysed_run(body: Callable[[str | None], MsgGenerator], md: dict, maps: LiveMaps,
                 timeout: float = 60.0) -> MsgGenerator:
    """Plan: open a run, run ``body(uid)`` in it, close it, then wait until its analysis has ended
    (:func:`wait_for_derived`), so that the plan returns with its analysis and texture runs complete (a queue
    server may close the environment right after it).

    As ``bpp.run_wrapper``: on an exception or ``RE.abort()``/``RE.stop()`` the run is closed with the matching
    exit status and reason; the wait then follows too (a timeout is logged, the original exception raised).
    Returns what ``body`` returns.
    """
    uid = yield from bps.open_run(md)

    def on_error(err):
        if isinstance(err, RunEngineControlException):
            yield from bps.close_run(exit_status=err.exit_status)
        else:
            yield from bps.close_run(exit_status="fail", reason=str(err))
        try:
            yield from wait_for_derived(maps, uid, timeout)
        except TimeoutError as timeout_error:
            logger.error("%s", timeout_error)

    def on_success():
        yield from bps.close_run()
        yield from wait_for_derived(maps, uid, timeout)

    return (yield from bpp.contingency_wrapper(body(uid), except_plan=on_error, else_plan=on_success))


def resolve_maps(maps: LiveMaps | None) -> LiveMaps:
    """``maps`` if given, else the LiveMaps published by the session (``nanopilot.session.setup``)."""
    if maps is not None:
        return maps
    found = published_maps()
    if found is None:
        raise ValueError("no live analysis: pass maps=analysis.maps, or install the analysis with "
                         "nanopilot.session.setup(RE, ...) first")
    return found


def _is_finite(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_positive(name: str, value, *, integer: bool = False) -> None:
    """Raise, naming ``name``, unless ``value`` is a finite number > 0 (a whole one if ``integer``)."""
    if not (_is_finite(value) and value > 0) or (integer and int(value) != value):
        raise ValueError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")


def check_finite(name: str, value, units: str) -> float:
    """``value`` as a float; raise, naming ``name``, unless it is a finite number."""
    if not _is_finite(value):
        raise ValueError(f"{name} must be a finite number ({units}), got {value!r}")
    return float(value)


def check_range(name: str, value, units: str) -> tuple[float, float]:
    """``value`` as (start, stop) floats; raise, naming ``name``, unless they are finite with stop > start."""
    ok = isinstance(value, Sequence | np.ndarray) and len(value) == 2 and all(map(_is_finite, value))
    if not (ok and value[1] > value[0]):
        raise ValueError(f"{name} must be (start, stop) of finite numbers ({units}) with stop > start, "
                         f"got {value!r}")
    return float(value[0]), float(value[1])


def check_points(name: str, points, units: str) -> list[tuple[float, float]]:
    """``points`` as a list of (x, y) floats; raise, naming ``name``, unless it is a non-empty sequence of pairs
    of finite numbers."""
    if not isinstance(points, Sequence | np.ndarray) or isinstance(points, str) or len(points) == 0:
        raise ValueError(f"{name} must be a non-empty list of (x, y) positions ({units}), got {points!r}")
    for k, p in enumerate(points):
        if not (isinstance(p, Sequence | np.ndarray) and len(p) == 2 and all(map(_is_finite, p))):
            raise ValueError(f"{name}[{k}] must be an (x, y) pair of finite numbers ({units}), got {p!r}")
    return [(float(px), float(py)) for px, py in points]


def check_device(name: str, value, *methods: str) -> None:
    """Raise, naming the argument ``name``, unless ``value`` is a device with the given methods.

    A string is a device name the caller could not resolve (the queue server passes a name it does not know,
    e.g. a misspelt one, as the string itself): the message says so.
    """
    if isinstance(value, str):
        raise ValueError(f"{name}: there is no device named {value!r}; pass the name of a device of this "
                         "environment (the queue server's list of allowed devices)")
    missing = [m for m in methods if not callable(getattr(value, m, None))]
    if missing:
        raise ValueError(f"{name} must be a device with {', '.join(m + '()' for m in missing)}, got {value!r}")


def check_detectors(detectors) -> list:
    """``detectors`` as a list; raise, naming the wrong one, unless it is a non-empty sequence of readable
    devices."""
    if isinstance(detectors, str) or not isinstance(detectors, Sequence) or not detectors:
        raise ValueError(f"detectors must be a non-empty list of readable devices, got {detectors!r}")
    for k, det in enumerate(detectors):
        check_device(f"detectors[{k}]", det, "read")
    return list(detectors)


def check_callable(name: str, value) -> None:
    """Raise, naming ``name``, unless ``value`` is None or callable."""
    if value is not None and not callable(value):
        raise ValueError(f"{name} must be a callable or None, got {value!r}")


def check_within(name: str, low: float, high: float, limits: tuple[float, float], units: str) -> None:
    """Raise if ``low`` or ``high`` is not finite, or [low, high] leaves ``limits`` (ignored when not low < high:
    a device without limits); the message says what the limits are."""
    if not (_is_finite(low) and _is_finite(high)):
        raise ValueError(f"{name} must be finite ({units}), got {low!r}..{high!r}")
    lo, hi = limits
    if lo < hi and (low < lo or high > hi):
        raise ValueError(f"{name} {low:g}..{high:g} {units} leaves the limits {lo:g}..{hi:g} {units}")


def check_instrument(detector, maps: LiveMaps) -> None:
    """Raise, naming the fields, if the detector's instrument is not the one the analysis' model was made for."""
    det_inst = getattr(detector, "instrument", None)
    if det_inst is not None and maps.instrument is not None:
        maps.instrument.require_same(det_inst, f"the detector {getattr(detector, 'name', detector)!r}")


def put_safe(obj, value, timeout: float = 10.0) -> None:
    """Set ``obj`` to ``value`` directly, outside the RunEngine's messages (after a halt it takes no more).

    Waits up to ``timeout`` s (0: not at all) for an ophyd status to finish. An ophyd-async status (no ``wait``)
    is a task on the RunEngine's event loop, which this runs on and must not block: it is left to finish there.
    Logs what it did; never raises (it runs while a generator is being closed).
    """
    name = getattr(obj, "name", repr(obj))
    try:
        status = obj.set(value)
        if timeout > 0 and callable(getattr(status, "wait", None)):
            status.wait(timeout)
            logger.warning("plan interrupted: %s set to its safe state %r", name, value)
        else:
            logger.warning("plan interrupted: %s commanded to its safe state %r (not waiting for it)", name, value)
    except Exception:
        logger.exception("plan interrupted: could not put %s to its safe state %r; do it by hand", name, value)


def safe_state_wrapper(plan: MsgGenerator, obj, safe_value, *, timeout: float = 10.0) -> MsgGenerator:
    """Run ``plan``, then put ``obj`` (a shutter, a heater) at ``safe_value`` on every exit path.

    On success, an exception, ``RE.abort()`` and ``RE.stop()`` (also after a pause): ``bps.mv(obj, safe_value)``
    as the plan's last messages (``finalize_wrapper``). On ``RE.halt()`` (also after a pause), a
    KeyboardInterrupt inside a device (the RunEngine halts), or ``close()``: the generator gets GeneratorExit and
    may yield nothing more, so :func:`put_safe` sets ``obj`` directly (waiting up to ``timeout`` s). No
    subscriber is involved, so a failing one (e.g. on the stop document) cannot prevent it. After a halt the
    RunEngine then calls ``stop()`` on every device the plan moved: a device whose ``stop()`` cancels a move in
    progress (a positioner with a stop PV) keeps the safe value only if it was reached within ``timeout``.
    """
    def restore():
        yield from bps.mv(obj, safe_value)

    try:
        return (yield from bpp.finalize_wrapper(plan, restore))
    except GeneratorExit:
        put_safe(obj, safe_value, timeout)
        raise


class SafeWhilePaused:
    """``obj`` (a shutter, a source) as a movable that is at ``safe_value`` whenever the RunEngine is paused.

    Move it with ``bps.mv(guarded, value)``: the RunEngine then calls :meth:`pause` when it pauses (it does so for
    every :class:`bluesky.protocols.Pausable` a plan has used) and :meth:`resume` when it resumes, so the plan
    carries on as it was. Abort, stop and halt after a pause are the plan's business
    (:func:`safe_state_wrapper`). ``timeout``: s to wait for ``obj`` to get there.
    """

    def __init__(self, obj: Movable, safe_value, timeout: float = 10.0):
        self.obj, self.safe_value, self.timeout = obj, safe_value, timeout
        self.name, self.parent = getattr(obj, "name", repr(obj)), None
        self.commanded = None

    def set(self, value):
        self.commanded = value
        return self.obj.set(value)

    async def _put(self, value, why: str) -> None:
        if self.commanded is None or self.commanded == self.safe_value:
            return
        status = self.obj.set(value)
        if hasattr(status, "__await__"):  # an ophyd-async status: a task on this loop
            await asyncio.wait_for(status, self.timeout)
        else:  # an ophyd status: finished by another thread (or already)
            await asyncio.get_running_loop().run_in_executor(None, status.wait, self.timeout)
        logger.warning("%s: %s set to %r", why, self.name, value)

    async def pause(self) -> None:
        """Put ``obj`` at its safe value (the RunEngine pauses)."""
        await self._put(self.safe_value, "paused")

    async def resume(self) -> None:
        """Put ``obj`` back at the value last set through this (the RunEngine resumes)."""
        await self._put(self.commanded, "resumed")


class SafeStateGuard:
    """Callback that puts ``signal`` back to ``safe_value`` when a run stops with it elsewhere.

    A second line of defence only, for a plan's run (``bpp.subs_wrapper``) or a session: it acts on the stop
    document, which a subscriber that raises before it can keep from it. Plans rely on
    :func:`safe_state_wrapper`, which involves no subscriber.
    """

    def __init__(self, signal, safe_value, timeout: float = 30.0):
        self.signal, self.safe_value, self.timeout = signal, safe_value, timeout

    def __call__(self, name: str, doc: dict) -> None:
        if name == "stop" and self.signal.get() != self.safe_value:
            self.signal.set(self.safe_value).wait(self.timeout)
