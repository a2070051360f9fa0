"""How a plan waits for the analysis without blocking the RunEngine, and the run that ends only when its analysis
has (:func:`analysed_run`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator, RunEngineControlException

from ..callbacks.live_maps import LiveMaps

logger = logging.getLogger(__name__)


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
