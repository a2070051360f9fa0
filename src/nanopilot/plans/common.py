"""What every closed-loop plan shares: the decisions stream, the approval hook, a point of a map, asking the
RunEngine for the session's LiveMaps, and the safe state (on every exit path and while the RunEngine is paused).
Waiting for the analysis is in :mod:`.waiting`, the argument checks in :mod:`.checks`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Sequence

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.protocols import Movable, Readable
from bluesky.utils import InvalidCommand, Msg, MsgGenerator

from ..callbacks.live_maps import LiveMaps

DECISION_STREAM = "decisions"
#: The RunEngine command that answers with the session's LiveMaps (see :func:`resolve_maps`).
MAPS_COMMAND = "nanopilot_maps"
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


def merge_md(own: dict, md: dict | None) -> dict:
    """The start document's metadata: the caller's ``md`` over the plan's ``own``, as bluesky's plans merge it,
    except that ``hints`` are merged key by key (the plan's ``dimensions`` stay unless ``md`` gives some) and the
    plan's ``plan_name`` and ``plan_args`` stay (they say what ran)."""
    md = dict(md or {})
    merged = {**own, **md, "hints": {**own.get("hints", {}), **md.get("hints", {})}}
    merged.update({key: own[key] for key in ("plan_name", "plan_args") if key in own})
    return merged


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


def resolve_maps(maps: LiveMaps | None) -> MsgGenerator[LiveMaps]:
    """Plan stub: ``maps`` if given, else the LiveMaps of the RunEngine's session, asked for with a
    :data:`MAPS_COMMAND` message (which :func:`nanopilot.session.setup` registers on the RunEngine; a queue-server
    startup file calls it). Yields nothing when ``maps`` is given."""
    if maps is not None:
        return maps
    try:
        found = yield Msg(MAPS_COMMAND)
    except InvalidCommand:  # no session on this RunEngine
        found = None
    if found is None:  # no session, a closed one, or a dry run (no RunEngine)
        raise ValueError("no live analysis: pass maps=analysis.maps, or install the analysis with "
                         "nanopilot.session.setup(RE, ...) first")
    return found


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
        """Set ``obj`` to ``value`` unless nothing but the safe value was set; logs, never raises (the RunEngine
        would fail the plan while pausing)."""
        if self.commanded is None or self.commanded == self.safe_value:
            return
        try:
            status = self.obj.set(value)
            if hasattr(status, "__await__"):  # an ophyd-async status: a task on this loop
                await asyncio.wait_for(status, self.timeout)
            else:  # an ophyd status: finished by another thread (or already)
                await asyncio.get_running_loop().run_in_executor(None, status.wait, self.timeout)
            logger.warning("%s: %s set to %r", why, self.name, value)
        except Exception:
            logger.exception("%s: could not set %s to %r; do it by hand", why, self.name, value)

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
