"""Soft signals for simulated devices: units in ``describe()``, checked values, and clock-synchronised access."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

from ophyd import Device, Signal
from ophyd.signal import InternalSignal

from .clock import SimClock


class SimDevice(Device):
    """A Device that shares a :class:`SimClock` with its parent (or makes its own, in simulated time).

    Parameters
    ----------
    clock : SimClock, optional
        The clock; default: the parent's, else a new simulated clock.
    """

    def __init__(self, *args, clock: SimClock | None = None, parent=None, **kwargs):
        self.clock = clock or getattr(parent, "clock", None) or SimClock()
        super().__init__(*args, parent=parent, **kwargs)


class _Clocked:
    """Mixin: bring the parent's clock up to date (real-time mode) before a value is read or changed."""

    def _sync(self):
        clock = getattr(self.parent, "clock", None)
        if clock is not None:
            clock.now()

    def describe(self):
        description = super().describe()
        if self._units is not None:
            description[self.name]["units"] = self._units
        return description


class SimSignal(_Clocked, Signal):
    """A settable soft signal with units and a value check that runs before anything changes.

    Parameters
    ----------
    units : str, optional
        Engineering units, reported in ``describe()``.
    check : callable, optional
        ``check(value)`` raises ValueError (with a message) for a value the device cannot take.
    """

    def __init__(self, *args, units: str | None = None, check: Callable[[object], None] | None = None, **kwargs):
        self._units = units
        self._check = check
        super().__init__(*args, **kwargs)

    def check_value(self, value):
        super().check_value(value)
        if self._check is not None:
            try:
                self._check(value)
            except ValueError as error:
                raise ValueError(f"{self.name}: {error}") from None

    def put(self, value, **kwargs):
        self._sync()
        super().put(value, **kwargs)


class SimReadback(_Clocked, InternalSignal):
    """A read-only (to the outside) readback that its device updates as simulated time passes."""

    def __init__(self, *args, units: str | None = None, **kwargs):
        self._units = units
        super().__init__(*args, **kwargs)

    def get(self, **kwargs):
        self._sync()
        return super().get(**kwargs)


def positive(value) -> None:
    """Check for a positive finite number."""
    if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
        raise ValueError(f"must be a positive finite number, got {value!r}")


def non_negative(value) -> None:
    """Check for a non-negative finite number."""
    if not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0):
        raise ValueError(f"must be a non-negative finite number, got {value!r}")


def one_of(choices: Sequence[str]) -> Callable[[object], None]:
    """A check that accepts only the given strings."""
    def check(value):
        if value not in choices:
            raise ValueError(f"must be one of {list(choices)}, got {value!r}")
    return check
