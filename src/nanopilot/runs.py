"""Choosing a stored raw run by uid, uid prefix, scan id or negative index.

Works the same on the embedded catalogue and on any Tiled server over SQL (whether or not its top level is declared
a catalogue of Bluesky runs): only generic Tiled queries on the start document are used. Derived runs (nanopilot's
analysis and texture runs, whose start carries ``raw_uid``) are never chosen: ``-1`` is the newest *raw* run.

    >>> selected = select_run(catalog, "-1")       # or "3" (scan id), "4f9c2e" (uid prefix), a full uid
    >>> describe(selected.run)
    'scan 3 (uid 4f9c2e1a), plan grid_scan, 2026-12-02 11:40:03'
"""

from __future__ import annotations

import dataclasses
import re
import time

#: Shortest uid prefix accepted (as bluesky-tiled-plugins' ``catalog["prefix"]``).
MIN_PREFIX = 5
_MAX_LISTED = 5  # other runs listed in a note or an error


@dataclasses.dataclass(frozen=True)
class Selected:
    """A run chosen by :func:`select_run`; ``note`` says why this one when the key matched several, else ""."""

    run: object
    note: str = ""


def raw_runs(catalog):
    """The runs of ``catalog`` that are not derived runs (no ``raw_uid`` in their start document), newest first
    (by the start document's time: a run restored from a backup keeps its place)."""
    from tiled.queries import KeyPresent

    return catalog.search(KeyPresent("start.raw_uid", exists=False)).sort(("start.time", -1))


def derived_runs(catalog, raw_uid: str):
    """The derived runs (analysis, texture) stored for raw run ``raw_uid``.

    ``Key("start.raw_uid")`` works on every catalogue; the shorter ``Key("raw_uid")`` only where the top level is
    declared a catalogue of Bluesky runs (its client prefixes ``start.``), and finds nothing elsewhere.
    """
    from tiled.queries import Key

    return catalog.search(Key("start.raw_uid") == raw_uid)


def select_run(catalog, key: str | int) -> Selected:
    """The raw run that ``key`` names; ValueError saying what was tried and what to give instead.

    ``key``: a negative index (``-1`` the newest raw run), a scan id (several runs with it: the newest, and the
    note lists the others), or a uid or a prefix of at least :data:`MIN_PREFIX` characters. A key of digits is a
    scan id first, then (5 characters or more) a uid prefix: uids are hexadecimal, so their first characters can
    all be digits. A derived run's uid is refused with the uid of its raw run.
    """
    key = str(key).strip()
    if re.fullmatch(r"-[1-9]\d*", key):
        return Selected(_by_index(catalog, int(key)))
    if key.isdigit() and int(key) > 0:
        found = _by_scan_id(catalog, int(key))
        if found is not None:
            return found
        if len(key) < MIN_PREFIX:
            raise ValueError(f"no raw run with scan id {key} in the catalogue{_empty(catalog)}")
    if not re.fullmatch(r"[0-9a-fA-F-]+", key) or len(key) < MIN_PREFIX:
        raise ValueError(f"{key!r} is not a run: give a uid (or its first {MIN_PREFIX}+ characters), a scan id, "
                         "or -1 for the newest raw run")
    return Selected(_by_uid(catalog, key.lower()))


def _by_index(catalog, index: int):
    runs = raw_runs(catalog)
    count = len(runs)
    if -index > count:
        raise ValueError(f"no raw run {index}: the catalogue holds {count} raw run(s){_empty(catalog)}")
    return runs.values()[-index - 1]


def _by_scan_id(catalog, scan_id: int) -> Selected | None:
    from tiled.queries import Key

    matches = raw_runs(catalog).search(Key("start.scan_id") == scan_id)
    count = len(matches)
    if not count:
        return None
    newest, *others = matches.values().head(_MAX_LISTED + 1)
    if count == 1:
        return Selected(newest)
    more = f" and {count - 1 - len(others)} older" if count - 1 > len(others) else ""
    note = (f"scan id {scan_id} is shared by {count} raw runs: chose the newest, {_short(newest)}; the others: "
            f"{'; '.join(describe(run) for run in others)}{more} (give a uid prefix to choose one)")
    return Selected(newest, note)


def _by_uid(catalog, prefix: str):
    from tiled.queries import Like

    matches = list(catalog.search(Like("start.uid", f"{prefix}%")).values().head(_MAX_LISTED + 1))
    if not matches:
        raise ValueError(f"no run with uid {prefix}{'' if len(prefix) == 36 else '...'} in the catalogue"
                         f"{_empty(catalog)}")
    if len(matches) > 1:
        raise ValueError(f"uid prefix {prefix} matches several runs ({'; '.join(map(describe, matches))}): "
                         "give more characters")
    (run,) = matches
    raw_uid = run.start.get("raw_uid")
    if raw_uid is not None:
        raise ValueError(f"run {run.start['uid'][:8]} is a derived run ({run.start.get('plan_name', '?')}) of raw "
                         f"run {raw_uid[:8]}: give the raw run, {raw_uid[:8]}")
    return run


def describe(run) -> str:
    """'scan 3 (uid 4f9c2e1a), plan grid_scan, 2026-12-02 11:40:03' (the start's local time)."""
    start = run.start
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start["time"])) if "time" in start else "?"
    return f"scan {start.get('scan_id', '?')} ({_short(run)}), plan {start.get('plan_name', '?')}, {when}"


def _short(run) -> str:
    return f"uid {run.start['uid'][:8]}"


def _empty(catalog) -> str:
    return "" if len(catalog) else " (it is empty)"


def last_scan_id(catalog) -> int:
    """The highest scan id of the raw runs in ``catalog``, 0 if none has one: ``RE.md["scan_id"] =
    last_scan_id(catalog)`` makes a new RunEngine's scans continue the catalogue's numbering."""
    from tiled.queries import KeyPresent

    numbered = catalog.search(KeyPresent("start.scan_id")).sort(("start.scan_id", -1))
    return int(numbered.values().first().start["scan_id"]) if len(numbered) else 0
