"""One thread for every network pass of the process.

torch's CPU intra-op pool (OpenMP) belongs to the OS thread that runs the operation: a second thread that runs
a network (the live analysis worker next to a user calling the Predictor in IPython, or a benchmark next to
the callback) starts a second pool, and two pools on the same cores slow both by 20-30% even when one is idle.
:func:`run_in_inference_thread` sends every network pass to one long-lived daemon thread, so the process keeps
one pool whoever calls. The caller waits for the result; exceptions are re-raised in the caller.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

_jobs: queue.SimpleQueue = queue.SimpleQueue()
_thread: threading.Thread | None = None
_lock = threading.Lock()


def _serve() -> None:
    while True:
        fn, args, future = _jobs.get()
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as err:  # re-raised in the caller
                future.set_exception(err)


def run_in_inference_thread(fn, *args):
    """``fn(*args)`` run in the process's inference thread (directly when called from it); returns its result."""
    global _thread
    if threading.current_thread() is _thread:
        return fn(*args)
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_serve, name="nanopilot-inference", daemon=True)
            _thread.start()
    future: Future = Future()
    _jobs.put((fn, args, future))
    return future.result()
