"""Things that move or evolve in (simulated) time: the sample stage, the temperature controller, the deposition
source. Each spends time on its :class:`~.clock.SimClock`; see that module for how time advances."""

from __future__ import annotations

import math

from ophyd import Component as Cpt
from ophyd import DeviceStatus
from ophyd.positioner import PositionerBase
from ophyd.utils import LimitError

from .sample import SimSample
from .signals import SimDevice, SimReadback, SimSignal, non_negative, one_of, positive


def _finite(value, what: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return value


class SimAxis(SimDevice, PositionerBase):
    """One stage axis (um) with soft limits, finite speed and a settling time.

    ``set()`` checks the target against the soft limits (``LimitError`` before anything moves), then travels
    for ``|distance| / velocity + settling_time`` on the clock. The readback is reported under the axis's own
    name, like ``EpicsMotor``.
    """

    readback = Cpt(SimReadback, value=0.0, units="um", kind="hinted")
    setpoint = Cpt(SimSignal, value=0.0, units="um", kind="normal")
    velocity = Cpt(SimSignal, value=50.0, units="um/s", check=positive, kind="config")
    settling_time = Cpt(SimSignal, value=0.01, units="s", check=non_negative, kind="config")
    low_limit_travel = Cpt(SimSignal, value=-100.0, units="um", kind="config")
    high_limit_travel = Cpt(SimSignal, value=100.0, units="um", kind="config")

    def __init__(self, prefix="", *, name, **kwargs):
        super().__init__(prefix, name=name, **kwargs)
        self.readback.name = self.name

    @property
    def egu(self) -> str:
        return "um"

    @property
    def position(self) -> float:
        return self.readback.get()

    @property
    def limits(self) -> tuple[float, float]:
        return (self.low_limit_travel.get(), self.high_limit_travel.get())

    def check_value(self, value) -> None:
        """Raise ``LimitError`` unless ``value`` (um) is a finite position within the soft limits."""
        value = _finite(value, f"{self.name} position")
        low, high = self.limits
        if not low <= value <= high:
            raise LimitError(f"{self.name}: target {value} um is outside the soft limits [{low}, {high}] um")

    def move(self, position, wait: bool = False, timeout=None, moved_cb=None):
        """Move to ``position`` (um); returns a MoveStatus that finishes when the axis has settled there."""
        status = super().move(position, moved_cb=moved_cb, timeout=timeout)  # checks the limits first
        position = float(position)
        start = self.position
        self.setpoint.put(position)
        self._moving = True
        self._run_subs(sub_type=self.SUB_START, timestamp=self.clock.now())
        duration = abs(position - start) / self.velocity.get() + self.settling_time.get()

        def arrive():
            now = self.clock.now()
            self.readback.put(position, internal=True, timestamp=now)
            self._moving = False
            self._set_position(position, timestamp=now)
            self._done_moving(success=True, timestamp=now, value=position)

        self.clock.call_after(duration, arrive)
        if wait:
            status.wait()
        return status


class SimStage(SimDevice):
    """The sample stage: ``x`` and ``y`` :class:`SimAxis` axes (um), e.g. ``bps.mv(stage.x, 1.5)``.

    Parameters
    ----------
    limits : (float, float)
        Soft limits of both axes (um).
    velocity : float
        Speed of both axes (um/s).
    settling_time : float
        Settling time after each move (s).
    clock : SimClock, optional
        The shared clock.
    """

    x = Cpt(SimAxis)
    y = Cpt(SimAxis)

    def __init__(self, prefix="", *, name, limits=(-100.0, 100.0), velocity=50.0, settling_time=0.01, **kwargs):
        super().__init__(prefix, name=name, **kwargs)
        low, high = (_finite(v, "stage limit") for v in limits)
        if not low < high:
            raise ValueError(f"stage limits must be (low, high) with low < high (um), got {limits!r}")
        for axis in (self.x, self.y):
            axis.low_limit_travel.put(low)
            axis.high_limit_travel.put(high)
            axis.velocity.put(velocity)
            axis.settling_time.put(settling_time)

    @property
    def position(self) -> tuple[float, float]:
        """(x, y) readbacks (um)."""
        return (self.x.position, self.y.position)


class SimTemperatureController(SimDevice):
    """A sample heater/cryostat: setpoint ramp plus a first-order lag of the sample temperature.

    The working setpoint ramps toward the target at ``ramp_rate``; the sample follows it with time constant
    ``time_constant``. ``set(T)`` checks ``T`` against the limits (``LimitError`` before anything changes) and
    returns a status that finishes once the readback is within ``tolerance`` of ``T`` and stays there (the
    approach is monotone). The sample's temperature follows the readback, so temperature-dependent scenes evolve.

    Parameters
    ----------
    sample : SimSample, optional
        The sample whose temperature this controls.
    temperature : float
        Initial temperature (K); default the sample's.
    limits : (float, float)
        Lowest and highest allowed setpoint (K).
    """

    readback = Cpt(SimReadback, value=295.0, units="K", kind="hinted")
    setpoint = Cpt(SimSignal, value=295.0, units="K", kind="normal")
    ramp_rate = Cpt(SimSignal, value=0.5, units="K/s", check=positive, kind="config")
    time_constant = Cpt(SimSignal, value=5.0, units="s", check=non_negative, kind="config")
    tolerance = Cpt(SimSignal, value=0.1, units="K", check=positive, kind="config")
    low_limit = Cpt(SimSignal, value=10.0, units="K", kind="config")
    high_limit = Cpt(SimSignal, value=600.0, units="K", kind="config")

    def __init__(self, prefix="", *, name, sample: SimSample | None = None, temperature: float | None = None,
                 limits=(10.0, 600.0), **kwargs):
        super().__init__(prefix, name=name, **kwargs)
        self.readback.name = self.name
        self._sample = sample
        low, high = (_finite(v, "temperature limit") for v in limits)
        if not 0 < low < high:
            raise ValueError(f"temperature limits must be (low, high) with 0 < low < high (K), got {limits!r}")
        self.low_limit.put(low)
        self.high_limit.put(high)
        start = temperature if temperature is not None else (sample.temperature if sample else 295.0)
        self.check_value(start)
        self._temperature = self._ramp = float(start)
        self.readback.put(self._temperature, internal=True, timestamp=self.clock.now())
        self.setpoint.put(self._temperature)
        self._publish(self.clock.now())
        self.clock.add_process(self._evolve)

    @property
    def position(self) -> float:
        """The readback (K)."""
        return self.readback.get()

    @property
    def limits(self) -> tuple[float, float]:
        return (self.low_limit.get(), self.high_limit.get())

    def check_value(self, value) -> None:
        """Raise ``LimitError`` unless ``value`` (K) is a finite temperature within the limits."""
        value = _finite(value, f"{self.name} setpoint")
        low, high = self.limits
        if not low <= value <= high:
            raise LimitError(f"{self.name}: setpoint {value} K is outside the limits [{low}, {high}] K")

    def set(self, value) -> DeviceStatus:
        """Go to ``value`` (K); the status finishes when the readback has settled within ``tolerance``."""
        self.check_value(value)
        self.setpoint.put(float(value))  # syncs the clock first
        status = DeviceStatus(self)
        self.clock.call_after(self._time_to_settle(), status.set_finished)
        return status

    def _time_to_settle(self) -> float:
        """Time (s) until the readback is within tolerance of the setpoint, from the current state."""
        target, rate, tau = self.setpoint.get(), self.ramp_rate.get(), self.time_constant.get()
        ramp_time = abs(target - self._ramp) / rate
        error = self._after(ramp_time)[0] - target
        tolerance = 0.999 * self.tolerance.get()
        if tau == 0 or abs(error) <= tolerance:
            return ramp_time
        return ramp_time + tau * math.log(abs(error) / tolerance)

    def _after(self, dt: float) -> tuple[float, float]:
        """(temperature, working setpoint) after ``dt`` seconds from the current state (closed form)."""
        target, rate, tau = self.setpoint.get(), self.ramp_rate.get(), self.time_constant.get()
        temperature, ramp = self._temperature, self._ramp
        slope = math.copysign(rate, target - ramp)
        ramp_time = min(dt, abs(target - ramp) / rate)
        decay = math.exp(-ramp_time / tau) if tau > 0 else 0.0
        lag = slope * tau
        temperature = ramp + slope * ramp_time - lag + (temperature - ramp + lag) * decay
        ramp = ramp + slope * ramp_time
        if dt > ramp_time:
            temperature = target + (temperature - target) * (math.exp(-(dt - ramp_time) / tau) if tau > 0 else 0.0)
        return temperature, ramp

    def _evolve(self, t0: float, t1: float) -> None:
        self._temperature, self._ramp = self._after(t1 - t0)
        self._publish(t1)

    def _publish(self, timestamp: float) -> None:
        self.readback.put(self._temperature, internal=True, timestamp=timestamp)
        if self._sample is not None:
            self._sample.temperature = self._temperature


class SimDepositionSource(SimDevice):
    """A deposition source (e.g. pulsed laser or sputter gun) with a shutter and a thickness monitor.

    Film accumulates at ``rate`` (angstrom/s) only while ``shutter`` is ``"open"``; the sample's deposited
    thickness follows ``thickness``. ``bps.mv(source.shutter, "open")`` opens it; ``set(t)`` (so
    ``bps.mv(source, t)``) opens the shutter, deposits until the thickness readback reaches ``t`` (angstrom), and
    closes it.

    Parameters
    ----------
    sample : SimSample, optional
        The sample the film grows on.
    rate : float
        Deposition rate (angstrom/s).
    """

    thickness = Cpt(SimReadback, value=0.0, units="angstrom", kind="hinted")
    shutter = Cpt(SimSignal, value="closed", check=one_of(("open", "closed")), kind="normal")
    rate = Cpt(SimSignal, value=1.0, units="angstrom/s", check=non_negative, kind="config")

    def __init__(self, prefix="", *, name, sample: SimSample | None = None, rate: float = 1.0, **kwargs):
        super().__init__(prefix, name=name, **kwargs)
        self.thickness.name = self.name
        self._sample = sample
        self.rate.put(rate)
        self._deposited = sample.deposited if sample is not None else 0.0
        self.thickness.put(self._deposited, internal=True, timestamp=self.clock.now())
        self.clock.add_process(self._evolve)

    @property
    def position(self) -> float:
        """The thickness readback (angstrom)."""
        return self.thickness.get()

    def set(self, value) -> DeviceStatus:
        """Deposit until the thickness readback is ``value`` (angstrom), then close the shutter."""
        target = _finite(value, f"{self.name} thickness")
        missing = target - self.position
        if missing < 0:
            raise ValueError(f"{self.name}: cannot deposit down to {target} angstrom from {self.position} angstrom")
        if missing > 0 and self.rate.get() == 0:
            raise ValueError(f"{self.name}: rate is 0 angstrom/s, so {target} angstrom is never reached")
        status = DeviceStatus(self)

        def done():
            self.shutter.put("closed")
            status.set_finished()

        if missing == 0:
            done()
            return status
        self.shutter.put("open")
        self.clock.call_after(missing / self.rate.get(), done)
        return status

    def _evolve(self, t0: float, t1: float) -> None:
        if self.shutter.get() != "open":
            return
        self._deposited += self.rate.get() * (t1 - t0)
        self.thickness.put(self._deposited, internal=True, timestamp=t1)
        if self._sample is not None:
            self._sample.deposited = self._deposited
