"""A session's link to remote workers: raw documents out, analysis documents in, the workers watched, and what
the plans do when the remote analysis fails (see :class:`RemoteOptions`).

    RunEngine -> _send: RunBuffer + 0MQ sink (raw proxy)   ...workers...   analysis proxy -> AnalysisFollower -> maps
    watchdog thread: WorkerWatch.state() -> the suspender's signal (behind: wait), the failure the plans see

How the plans learn of a failure without knowing of workers: a RunEngine preprocessor (:meth:`RemoteLink.guard`)
puts a check before the plan's next message once the watchdog has seen one, and races every ``wait_for`` of the
plan (the plans wait for the analysis that way) against it; with ``on_failure="stop"`` the check raises
:class:`~nanopilot.remote.watch.RemoteAnalysisError` into the plan, whose own exits then restore the safe state
(shutter closed, heater safe).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time

from bluesky.preprocessors import plan_mutator
from bluesky.utils import Msg

from .watch import BEHIND, DEAD, FAILURES, OK, RESTARTED, AnalysisFollower, RemoteAnalysisError, RunBuffer, \
    WorkerWatch
from .wire import PING_PREFIX, ZmqSink

logger = logging.getLogger(__name__)

#: What a session does when the remote analysis of the run under way fails.
ON_FAILURE = ("stop", "wait", "fallback")
#: The RunEngine command the guard puts before a plan's next message once a failure is seen.
CHECK_COMMAND = "nanopilot_remote_check"


@dataclasses.dataclass
class RemoteOptions:
    """Where the workers are and what to do when they fail.

    publish : the raw proxy's input (HOST:PORT): the RunEngine's documents go there.
    listen : the analysis proxy's output (HOST:PORT): the workers' analysis documents and heartbeats come from there.
    workers : how many workers share the stream (``nanopilot worker --partition i/N``).
    on_failure : when the worker of the run under way dies, restarts or stalls (no heartbeat, or no progress while
        behind, for ``timeout`` s): "stop" (default): the plan fails at its next step and restores its safe state;
        "wait": the RunEngine is suspended until the worker answers again, and a restarted worker is given the run
        again from its start (kept in memory, up to ``max_buffer_frames`` frames; past that: stop); "fallback":
        the analysis continues in-process for the rest of the session, from the run's start (the same bound).
    timeout : seconds without a heartbeat, or without progress while behind, that make a worker failed.
    max_lag : frames a worker may be behind; past it the RunEngine is suspended until it is within half (in every
        mode: the backlog and the memory it takes stay bounded).
    connect_timeout : seconds :func:`~nanopilot.session.setup` waits for every worker to answer a ping.
    max_buffer_frames : frames of the run under way kept to give it again ("wait", "fallback").
    """

    publish: str = "127.0.0.1:5577"
    listen: str = "127.0.0.1:5580"
    workers: int = 1
    on_failure: str = "stop"
    timeout: float = 3.0
    max_lag: int = 512
    connect_timeout: float = 60.0
    max_buffer_frames: int = 65536

    def check(self) -> None:
        if self.on_failure not in ON_FAILURE:
            raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {self.on_failure!r}")


class RemoteLink:
    """Installs the remote analysis on ``RE``: ``maps`` (the session's :class:`~nanopilot.callbacks.LiveMaps`) gets
    the RunEngine's documents (what was taken) and the workers' (what was analysed); ``local`` (an in-process
    :class:`~nanopilot.callbacks.NanobeamAnalysis` filling the same maps; needed for "fallback") takes over when
    they fail. Raises ConnectionError if the workers do not answer within ``options.connect_timeout`` (nothing is
    subscribed then).

    When the run under way is given again (to a restarted worker, or in-process), the derived runs the failed
    worker left open are stopped for the maps (exit_status "abort") and the run's map starts afresh, so that no
    frame is counted twice."""

    def __init__(self, RE, maps, options: RemoteOptions, local=None):
        from ophyd import Signal

        options.check()
        if options.on_failure == "fallback" and local is None:
            raise ValueError("on_failure='fallback' needs the in-process analysis to fall back to")
        self.RE, self.maps, self.options, self.local = RE, maps, options, local
        self.watch = WorkerWatch(options.workers, options.timeout, options.max_lag)
        self.buffer = RunBuffer(options.max_buffer_frames)
        self.sink = ZmqSink(options.publish, prefix=b"")
        self.follower = AnalysisFollower(options.listen, self.watch, [maps])
        self.failure: str | None = None  # why the remote analysis failed (seen by the plans through the guard)
        self.fell_back = False
        self.waiting = Signal(name="nanopilot_remote_waiting", value=0)
        self._send_lock = threading.Lock()
        self._stopping = threading.Event()
        try:
            self._connect()
        except Exception:
            self.close()
            raise
        self.tokens = [RE.subscribe(self._send)]
        RE.register_command(CHECK_COMMAND, self._check)
        RE.preprocessors.append(self.guard)
        from bluesky.suspenders import SuspendBoolHigh

        self.suspender = SuspendBoolHigh(self.waiting, sleep=0.2, tripped_message="waiting for the remote analysis")
        RE.install_suspender(self.suspender)
        self._thread = threading.Thread(target=self._watchdog, name="nanopilot-watchdog", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ raw documents out
    def _connect(self) -> None:
        """Ping on the raw stream until every worker's heartbeat echoes it (the whole loop is connected)."""
        ping, deadline = f"ping-{time.time()}", time.monotonic() + self.options.connect_timeout
        while True:
            echoed = {i for i, (_, beat) in list(self.watch.beats.items()) if beat.get("ping") == ping}
            if len(echoed) == self.options.workers:
                return
            if time.monotonic() > deadline:
                missing = sorted(set(range(self.options.workers)) - echoed)
                raise ConnectionError(
                    f"worker(s) {missing} of {self.options.workers} did not answer within "
                    f"{self.options.connect_timeout:g} s on the raw proxy {self.options.publish} and the analysis "
                    f"proxy {self.options.listen}: check that both proxies and `nanopilot worker --partition "
                    f"i/{self.options.workers}` run and use these addresses")
            self.sink("ping", ping, prefix=PING_PREFIX)
            time.sleep(0.1)

    def _send(self, name: str, doc: dict) -> None:
        """The RunEngine's documents: kept for the run under way, counted, then to the workers (or in-process)."""
        with self._send_lock:
            self.buffer(name, doc)
            self.watch.sent(name, doc)
            if self.fell_back:
                self.local(name, doc)  # it hands the raw documents to the maps itself
            else:
                self.maps(name, doc)
                self.sink(name, doc)

    def _replay(self, reason: str, *targets) -> bool:
        """Give the run under way again from its start to each of ``targets`` (call with the send lock held);
        False (nothing done) if the buffer could not keep all of it."""
        if not self.buffer.complete:
            return False
        if self.buffer.docs:
            raw = self.buffer.docs[0][1]["uid"]
            self.follower.abort(raw, f"the worker failed ({reason}); the run was analysed again")
            if raw in self.maps:
                self.maps.begin_run(raw)  # afresh: the replay counts what was taken and analysed again
        for name, doc in self.buffer.docs:
            for to in targets:
                to(name, doc)
        return True

    # ------------------------------------------------------------------ watching
    def _watchdog(self) -> None:
        while not self._stopping.wait(0.1):
            try:
                self._look()
            except Exception:  # noqa: BLE001 - the watch must go on
                logger.exception("the remote analysis watchdog failed")

    def _look(self) -> None:
        if self.fell_back:
            self.waiting.put(0)
            return
        state, reason = self.watch.state()
        if self.failure is not None:  # told to the plans; cleared once the workers answer between plans
            self.waiting.put(0)
            if state == OK and self.RE.state == "idle":
                logger.warning("the remote analysis answers again (%s was the failure)", self.failure)
                self.failure = None
            return
        if state == OK:
            self.waiting.put(0)
            return
        if state == BEHIND or (self.options.on_failure == "wait" and state in (DEAD, "stalled")):
            if not self.waiting.get():
                logger.warning("waiting for the remote analysis: %s", reason)
            self.waiting.put(1)
            return
        if state == RESTARTED and self.options.on_failure == "wait":
            with self._send_lock:
                if self._replay(reason, self.maps, self.sink):
                    logger.warning("%s; the run was given to it again from its start", reason)
                    self.watch.restart_seen()
                    return
            reason += f"; more than {self.options.max_buffer_frames} frames: the run cannot be given again"
        if state in FAILURES:
            self._failed(reason)

    def _failed(self, reason: str) -> None:
        if self.options.on_failure == "fallback":
            with self._send_lock:
                run = self.watch.run
                if self._replay(reason, self.local):
                    self.fell_back = True
                    logger.error("the remote analysis failed (%s): the analysis goes on in-process from the start "
                                 "of run %s, for the rest of the session", reason, str(run)[:8])
                    return
            reason += f"; more than {self.options.max_buffer_frames} frames: no fallback for this run"
        logger.error("the remote analysis failed: %s", reason)
        self.failure = reason

    # ------------------------------------------------------------------ what the plans see
    def guard(self, plan):
        """RunEngine preprocessor: a check before each message once a failure is seen; waits raced against it."""
        def before(msg):  # the messages it makes come back through it: they pass unchanged
            if msg.command == CHECK_COMMAND:
                return None, None
            if msg.command == "wait_for" and not all(hasattr(f, "remote_guarded") for f in msg.args[0]):
                return _single(Msg("wait_for", msg.obj, [self._raced(f) for f in msg.args[0]], *msg.args[1:],
                                   **msg.kwargs)), None
            if self.failure is not None and msg.command not in _NEVER_CHECKED:
                return _pair(Msg(CHECK_COMMAND), msg), None
            return None, None

        return (yield from plan_mutator(plan, before))

    def _raced(self, factory):
        async def raced():
            task = asyncio.ensure_future(factory())
            while not task.done():
                await asyncio.wait([task], timeout=0.1)
                if self.failure is not None and not task.done():
                    task.cancel()
                    raise RemoteAnalysisError(self.failure)
            return task.result()

        raced.remote_guarded = True
        return raced

    async def _check(self, msg) -> None:
        if self.failure is not None:
            raise RemoteAnalysisError(self.failure)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Unsubscribe and stop the threads and sockets (idempotent)."""
        self._stopping.set()
        for token in getattr(self, "tokens", []):
            self.RE.unsubscribe(token)
        self.tokens = []
        if getattr(self, "suspender", None) is not None:
            self.RE.remove_suspender(self.suspender)
            self.suspender = None
        if self.guard in self.RE.preprocessors:
            self.RE.preprocessors.remove(self.guard)
        self.follower.close()
        self.sink.close()


#: Messages the guard lets through after a failure: those of the plan's own exits (closing the run, restoring
#: the safe state), which must not fail again.
_NEVER_CHECKED = ("close_run", "unstage", "null", "set", "wait", "read", "save", "create", "trigger", "stop")


def _single(msg):
    return (yield msg)


def _pair(first, second):
    yield first
    return (yield second)
