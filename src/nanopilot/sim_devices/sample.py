"""The living sample: a scene's ground truth plus the state the environment has driven it to."""

from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np

from .scenes import SampleState, Scene, make_scene

#: Record dtype of :meth:`SimSample.truth`: strain (dimensionless), omega (deg), chi (deg), thickness (angstrom).
TRUTH_DTYPE = np.dtype([("strain", "f8"), ("omega", "f8"), ("chi", "f8"), ("thickness", "f8")])


class SimSample:
    """Ground-truth film parameters over the sample plane, as functions of position, temperature and deposition.

    Parameters
    ----------
    scene : str or Scene
        A scene name (``published``, ``domains``, ``cooling``, ``growth``, see :mod:`.scenes`; or a structure
        family, see :mod:`.structures`) or a Scene.
    seed : int, optional
        Seed of the scene's random draws (only with a scene name).
    temperature : float
        Initial temperature (K).
    **parameters
        Scene parameters to override (only with a scene name).

    Notes
    -----
    Devices drive the state: the temperature controller sets :attr:`temperature` and the deposition source
    :attr:`deposited` as simulated time passes. Positions are in um; see :meth:`truth`.
    """

    def __init__(self, scene: str | Scene = "published", seed: int | None = None, *, temperature: float = 295.0,
                 **parameters):
        if isinstance(scene, Scene):
            if seed is not None or parameters:
                raise ValueError("seed and scene parameters apply only when the scene is given by name")
            self.scene = scene
        else:
            self.scene = make_scene(scene, seed, **parameters)
        self._state = SampleState()
        self._lock = threading.RLock()
        self.temperature = temperature

    def __repr__(self):
        return f"SimSample({self.scene!r}, {self._state})"

    @property
    def state(self) -> SampleState:
        """A copy of the current state (temperature K, deposited angstrom, texture coverage)."""
        with self._lock:
            return dataclasses.replace(self._state)

    @property
    def temperature(self) -> float:
        """Sample temperature (K); setting it lets temperature-dependent scenes evolve (with hysteresis)."""
        return self._state.temperature

    @temperature.setter
    def temperature(self, value: float):
        value = float(value)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"temperature must be a positive finite number (K), got {value!r}")
        with self._lock:
            self._state.temperature = value
            self.scene.update(self._state, value)

    @property
    def deposited(self) -> float:
        """Film thickness deposited so far (angstrom); it can only grow."""
        return self._state.deposited

    @deposited.setter
    def deposited(self, value: float):
        value = float(value)
        if not (math.isfinite(value) and value >= self._state.deposited):
            raise ValueError(f"deposited thickness can only grow (angstrom): {self._state.deposited} -> {value!r}")
        with self._lock:
            self._state.deposited = value

    @staticmethod
    def _positions(x, y) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
        x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("sample positions must be finite (um)")
        return x.ravel(), y.ravel(), x.shape

    def parameters(self, x, y) -> np.ndarray:
        """(N, 4) strain, omega (deg), chi (deg), thickness (angstrom) at positions x, y (um), flattened.

        The layout :func:`nanopilot.physics.simulate` takes.
        """
        x, y, _ = self._positions(x, y)
        with self._lock:
            return self.scene.fields(x, y, self._state)

    def truth(self, x, y) -> np.recarray:
        """Ground truth at positions x, y (um; scalars or broadcastable arrays).

        Returns
        -------
        numpy.recarray
            Fields ``strain``, ``omega`` (deg), ``chi`` (deg), ``thickness`` (angstrom), shaped like the
            broadcast of x and y; ``.view((float, 4))`` gives the plain (..., 4) array.
        """
        flat_x, flat_y, shape = self._positions(x, y)
        with self._lock:
            fields = self.scene.fields(flat_x, flat_y, self._state)
        return np.ascontiguousarray(fields).view(TRUTH_DTYPE).reshape(shape).view(np.recarray)

    def labels(self, x, y) -> np.ndarray:
        """Integer ground-truth labels (the scene's domains, stripes or relaxed regions) at x, y (um)."""
        flat_x, flat_y, shape = self._positions(x, y)
        with self._lock:
            return np.asarray(self.scene.labels(flat_x, flat_y, self._state), dtype=np.int64).reshape(shape)
