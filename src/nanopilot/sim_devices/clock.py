"""The simulated clock shared by every device of a simulated beamline.

How time advances
-----------------
Simulated time (seconds, counted from the wall-clock time at which the clock was made) stands still until a
device spends some: a stage move costs its travel time plus settle time, an exposure its exposure time, a
temperature change its ramp-and-settle time, a fly sweep its frame count over its frame rate, and
``clock.advance(dt)`` any interval. In the default *simulated* mode that time passes instantly, so a 10-minute
temperature ramp costs microseconds in a test; every status is already finished when ``set()`` returns.
Processes that evolve with time (a temperature ramp, a film growing behind an open shutter) are integrated over
each interval the clock advances, in the order they were registered. Reading timestamps are simulated times, so
after an hour-long simulated ramp they lie an hour ahead of the wall clock.

Plans know nothing of this clock: they wait with ``bluesky.plan_stubs.sleep`` and take the time from their
readings' timestamps. :meth:`SimClock.install` (``Beamline.install``) makes a RunEngine's ``sleep`` messages spend
their time on the clock, so a film grows or a sample settles during a plan's ``bps.sleep`` (instantly in
simulated mode); without it, ``bps.sleep`` waits in the wall time, during which simulated time stands still.

Real time
---------
``SimClock(realtime=True)`` (or ``make_beamline(realtime=True)``) follows the wall clock: statuses finish from a
timer thread after the same durations, and readbacks are brought up to date whenever they are read.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

#: A process integrated by the clock: called as ``process(t0, t1)`` for each interval it advances (s).
Process = Callable[[float, float], None]


class SimClock:
    """Simulated (default) or real time for a set of simulated devices.

    Parameters
    ----------
    realtime : bool
        False (default): time advances instantly by the durations devices spend. True: time follows the wall
        clock and statuses finish after real delays.
    """

    def __init__(self, realtime: bool = False):
        self.realtime = bool(realtime)
        self._lock = threading.RLock()
        self._processes: list[Process] = []
        self._stepping = False
        self._wall0 = time.time()
        self._now = self._wall0

    def __repr__(self):
        mode = "realtime" if self.realtime else "simulated"
        return f"SimClock({mode}, t={self._now - self._wall0:.6g} s since start)"

    @property
    def elapsed(self) -> float:
        """Time (s) that has passed on this clock since it was made."""
        return self.now() - self._wall0

    def now(self) -> float:
        """The current time (s since the epoch); in real time, integrates processes up to the wall clock first."""
        with self._lock:
            if self.realtime:
                self._step_to(time.time())
            return self._now

    def add_process(self, process: Process) -> None:
        """Register ``process(t0, t1)``, called for every interval the clock advances (s since the epoch)."""
        with self._lock:
            self._processes.append(process)

    def advance(self, seconds: float) -> float:
        """Let ``seconds`` pass: instantly in simulated mode, by sleeping in real time. Returns the new time."""
        seconds = float(seconds)
        if not seconds >= 0:
            raise ValueError(f"a clock can only advance by a non-negative time (s), got {seconds!r}")
        if self.realtime:
            time.sleep(seconds)
            return self.now()
        with self._lock:
            self._step_to(self._now + seconds)
            return self._now

    def install(self, RE) -> None:
        """Make ``RE``'s ``sleep`` messages (``bps.sleep``) spend their time on this clock (see the module notes)."""
        RE.register_command("sleep", self._sleep_message)

    async def _sleep_message(self, msg) -> None:
        """The RunEngine's ``Msg('sleep', None, seconds)`` on this clock: at once in simulated mode."""
        (seconds,) = msg.args
        if self.realtime:
            await asyncio.sleep(seconds)
        else:
            self.advance(seconds)

    def call_after(self, seconds: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` once ``seconds`` have passed.

        Simulated mode advances the clock and calls it before returning; real time calls it from a timer thread.
        """
        seconds = float(seconds)
        if not seconds >= 0:
            raise ValueError(f"a delay must be a non-negative time (s), got {seconds!r}")
        if not self.realtime:
            self.advance(seconds)
            callback()
            return

        def fire():
            self.now()
            callback()

        timer = threading.Timer(seconds, fire)
        timer.daemon = True
        timer.start()

    def _step_to(self, t1: float) -> None:
        t0 = self._now
        if t1 <= t0 or self._stepping:  # a process reading a readback must not re-enter the step
            return
        self._stepping = True
        try:
            for process in self._processes:
                process(t0, t1)
        finally:
            self._stepping = False
        self._now = t1
