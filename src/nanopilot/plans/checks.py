"""Argument checks that the plans run before anything moves: each raises ValueError naming the argument and
saying what it must be."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import bluesky.plan_stubs as bps
import numpy as np
from bluesky.utils import MsgGenerator

from ..callbacks.live_maps import LiveMaps


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


def read_limits(*devices) -> MsgGenerator[dict[str, tuple[float, float]]]:
    """Plan stub: each device's (low, high) limits by name, (0, 0) where it has none. An ophyd positioner gives its
    ``limits`` (as bluesky's ``check_limits`` reads them: no message, so a dry run checks them too); a device
    without them but with limit signals (``low_limit_travel``, ``high_limit_travel``: ophyd-async's EPICS motor) has
    those read with messages (``bps.rd``; 0, i.e. no limits, in a dry run). Reads only: nothing moves."""
    limits = {}
    for device in devices:
        low, high = getattr(device, "low_limit_travel", None), getattr(device, "high_limit_travel", None)
        if hasattr(device, "limits") or low is None or high is None:
            limits[device.name] = tuple(float(v) for v in getattr(device, "limits", (0.0, 0.0)))
        else:
            lo = yield from bps.rd(low, default_value=0.0)
            hi = yield from bps.rd(high, default_value=0.0)
            limits[device.name] = (float(lo), float(hi))
    return limits


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
