"""The peak's drift on the detector over a run, measured on reference images of one sample position's pattern
(:meth:`FramePreparation.drift_image`): at one position the tilts do not change, so the pattern's shift between
two such images is the drift alone.

A :class:`DriftTrack` keeps a template, the visits so far aligned onto the first and summed (its noise falls as
visits are added, so a visit is not measured against one noisy image), measures each new visit against it
(:func:`~.frame_steps.photon_shift`), and measures the first and the last few visits again against the improved
template, each against the template without itself. The drift at a time (frames taken since the run's start, a
clock the analysis keeps) is the straight line through the last few visits, less the origin: the straight line
through the first few at time 0 (the ROI was put where the peak was when the run started).
"""

from __future__ import annotations

import numpy as np

from .frame_steps import fourier_shift, photon_shift

#: Visits over which the drift is taken as a straight line in time (and that are measured again).
DRIFT_VISITS = 4


class DriftTrack:
    """The drift (rows, cols; detector pixels) of a run's pattern, from its reference visits.

    ``visits``: the last visits the straight line goes through (at least 2). Add each visit's summed image with
    :meth:`add`; :meth:`at` gives the drift at any times (frames taken since the run's start).
    """

    def __init__(self, visits: int = DRIFT_VISITS):
        if not isinstance(visits, int) or visits < 2:
            raise ValueError(f"DriftTrack needs visits >= 2 for a straight line, got {visits!r}")
        self.visits = visits
        self.count = 0  # visits added
        self._template = None  # sum of the visits aligned onto the first (its pixels)
        self._times: list[float] = []  # each visit's time (frames taken since the run's start)
        self._shifts: list[np.ndarray] = []  # each visit's shift from the first (pixels)
        self._kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # index -> (image, aligned copy): first, last

    def add(self, image: np.ndarray, time: float) -> None:
        """Add a visit: its summed image (rows, cols) of the same window as the others and its time (frames taken
        since the run's start, at the visit's middle)."""
        image = np.asarray(image, dtype=np.float64)
        index = self.count
        self.count += 1
        self._times.append(float(time))
        if self._template is None:
            self._template = image.copy()
            self._shifts.append(np.zeros(2))
            self._kept[index] = (image, image)
            return
        self._shifts.append(photon_shift(image, self._template))
        self._kept[index] = (image, fourier_shift(image, -self._shifts[-1]))
        self._template += self._kept[index][1]
        for old in [i for i in self._kept if self.visits <= i <= index - self.visits]:
            del self._kept[old]  # the first visits (the origin) and the last (the line) are kept
        for i, (img, aligned) in sorted(self._kept.items()):  # again, each against the others
            self._shifts[i] = photon_shift(img, self._template - aligned)
            moved = fourier_shift(img, -self._shifts[i])
            self._template += moved - aligned
            self._kept[i] = (img, moved)

    @property
    def drift(self) -> np.ndarray:
        """(rows, cols) the drift at the last visit (zeros before any)."""
        return self.at(np.array(self._times[-1:] or [0.0]))[0] if self.count > 1 else np.zeros(2)

    def at(self, times: np.ndarray) -> np.ndarray:
        """(n, 2) drift at ``times`` (n,) (frames taken since the run's start, at or after the last visit): the
        straight line through the last :attr:`visits` visits (least squares: each visit's noise averaged), carried
        on from the last visit for at most the longest gap between two of them, less the origin (the line through
        the first visits at time 0). Zeros before two visits (no rate known: the ROI stays where it was put)."""
        times = np.asarray(times, dtype=np.float64)
        if self.count < 2:
            return np.zeros((len(times), 2))
        where, shifts = np.array(self._times), np.array(self._shifts)
        origin = _line(where[:self.visits], shifts[:self.visits], np.zeros(1))[0]
        last = where[-self.visits:]
        ahead = np.minimum(times, last[-1] + np.max(np.diff(last)))
        return _line(last, shifts[-self.visits:], ahead) - origin


def _line(where: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """(n, 2) the least-squares straight line through ``values`` (k, 2) at ``where`` (k,), evaluated ``at`` (n,)."""
    if len(where) < 2 or np.ptp(where) == 0:
        return np.broadcast_to(values.mean(axis=0), (len(at), 2)).copy()
    slope, offset = np.polyfit(where, values, 1)
    return offset + slope * np.asarray(at)[:, None]
