"""The drift the analysis run follows: reference frames of the raw run's drift stream, measured per visit to the
reference position (:class:`~nanopilot.physics.drift.DriftTrack`), and what the drift left within the ROI taken
out of the estimates.

:class:`DriftFollowing` is a mixin of :class:`~.derived.DerivedRun`, which holds the state: ``_track`` (a
DriftTrack), ``_frames`` (frames taken, the drift's clock), ``_visit`` (the visit under way), ``preparation``,
``predictor``, ``frame_shape`` and ``raw_start``.
"""

from __future__ import annotations

import logging

import numpy as np

from ..estimates import Estimates
from .frame_sources import frame_batch

logger = logging.getLogger(__name__)


class DriftFollowing:
    """The drift of one analysis run, measured on its reference frames (a mixin of ``DerivedRun``)."""

    @property
    def drift(self) -> np.ndarray:
        """(rows, cols) the peak's drift (detector pixels) at the last reference visit, from the run's start."""
        return self._track.drift

    @property
    def drift_references(self) -> int:
        """Visits to the reference position measured."""
        return self._track.count

    def reference(self, block) -> None:
        """Add reference frames ``(frames, n, status)`` of the :data:`~.derived.DRIFT_STREAM` (taken at one sample
        position) to the visit under way; the next scan points (:meth:`~.derived.DerivedRun.analyse`) settle it
        (:class:`~nanopilot.physics.drift.DriftTrack`: its shift from the run's other visits, at the frames taken
        since the run's start). Ignored unless the preparation follows the drift."""
        if self.preparation is None or not self.preparation.follow_drift:
            return
        image, used = (None, 0) if block[2] is not None else \
            self.preparation.drift_image(frame_batch([block], self.frame_shape)[0])
        if self._visit is None:
            self._visit = [None, self._frames, 0]
        self._frames += block[1]  # they took time all the same
        if not used:
            logger.warning("run %s: drift reference frames that are not raw frames were left out",
                           self.raw_start["uid"][:8])
            return
        self._visit[0] = image if self._visit[0] is None else self._visit[0] + image
        self._visit[2] += block[1]

    def _settle_drift(self) -> None:
        visit, self._visit = self._visit, None
        if visit is not None and visit[0] is not None:
            self._track.add(visit[0], visit[1] + (visit[2] - 1) / 2)

    def _untilt(self, estimates: Estimates, drift: np.ndarray) -> None:
        """Take out of omega, chi and strain what the drift left within the ROI (its part below a whole detector
        pixel, which the ROI's move could not follow) reads as, at the instrument's tilt and strain per pixel (the
        network's own response to a shift of the ROI by one detector pixel is within 5% of these)."""
        chi_step, omega_step = self.predictor.instrument.tilt_per_pixel
        rest = (drift - np.rint(drift)) / self.preparation.binning  # (n, 2) model pixels (rows, cols)
        estimates.chi -= chi_step * rest[:, 0]
        estimates.omega -= omega_step * rest[:, 1]
        estimates.strain -= self.predictor.instrument.strain_per_pixel * rest[:, 1]

    @property
    def _follows_drift(self) -> bool:
        return self.preparation is not None and self.preparation.follow_drift
