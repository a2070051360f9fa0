"""The record every estimator returns (correlation fit, refinement, the CNN predictor), and frame checks.

Per-frame problems never raise: they are reported in ``Estimates.status``. A *warning* status (:data:`WARNINGS`,
e.g. ``edge``) keeps the frame's values and std: the estimate stands and the status says why it deserves care. Every
other status but ok is a *failure* (:data:`FAILURES`): the frame could not be estimated and its values are NaN.
Batch-level problems (wrong rank or shape, empty batch) raise ValueError before any work.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .physics import Instrument
from .physics.detector import ALL_MASKED, NO_PEAK  # the frame preparation's per-frame problems

# Per-frame status values (strings, so they are readable in documents, tables and logs).
OK = "ok"
NONFINITE = "nonfinite"  # frame contains NaN or inf
NEGATIVE = "negative"  # frame contains negative counts
EMPTY = "empty"  # frame has no counts at all
SATURATED = "saturated"  # some pixel at or above the detector's saturation level
COUNT_LEVEL = "count_level"  # total counts outside the order of magnitude the estimator was made for
EDGE = "edge"  # estimate at the edge of the trained / library range
UNCERTAIN = "uncertain"  # the estimate's std exceeds what the estimator stands for at its reference level
RESIDUAL = "residual"  # the physics model does not explain the frame
WRONG_SHAPE = "wrong_shape"  # one frame of another shape in a live stream (a whole batch of them raises)
NOT_CONVERGED = "not_converged"  # an iterative fit did not converge (or had no finite start)
BAD_TYPE = "bad_type"  # one frame in a live stream that is not an array of numbers (e.g. strings)
MISSING = "missing"  # a live-stream document carries a point's positions but not its frame
WRONG_INSTRUMENT = "wrong_instrument"  # the run declares another instrument than the estimator was made for
STATUSES = (OK, NONFINITE, NEGATIVE, EMPTY, SATURATED, COUNT_LEVEL, EDGE, UNCERTAIN, RESIDUAL, WRONG_SHAPE,
            NOT_CONVERGED, BAD_TYPE, MISSING, WRONG_INSTRUMENT, NO_PEAK, ALL_MASKED)
#: Statuses that keep the frame's values and std (the estimate stands; the status says why it deserves care).
WARNINGS = (EDGE, UNCERTAIN)
#: Statuses of frames that could not be estimated (values NaN).
FAILURES = tuple(s for s in STATUSES if s != OK and s not in WARNINGS)

PARAMETERS = ("strain", "omega", "chi", "thickness")
UNITS = {"strain": "", "omega": "deg", "chi": "deg", "thickness": "angstrom"}
#: Units of :attr:`Estimates.background` (expected counts per pixel, flat over the frame).
BACKGROUND_UNITS = "counts/pixel"


def usable(status) -> np.ndarray:
    """Boolean mask of the frames whose values stand: status ok or a warning (:data:`WARNINGS`)."""
    return np.isin(np.asarray(status, dtype=object).astype(str), (OK,) + WARNINGS)


@dataclasses.dataclass
class Estimates:
    """Per-frame estimates, all arrays of length N.

    strain (dimensionless), omega (deg), chi (deg), thickness (angstrom; NaN when not estimated);
    ``*_std`` their standard deviations (NaN when the estimator gives none); ``score`` an
    estimator-specific goodness (match score, negative log-likelihood, ...; NaN when none);
    ``status`` one of :data:`STATUSES` per frame; ``background`` the flat background the frame holds besides the
    pattern (expected counts per pixel, :data:`BACKGROUND_UNITS`) and ``background_std`` its standard deviation
    (both NaN when not estimated).
    """

    strain: np.ndarray
    omega: np.ndarray
    chi: np.ndarray
    thickness: np.ndarray
    strain_std: np.ndarray
    omega_std: np.ndarray
    chi_std: np.ndarray
    thickness_std: np.ndarray
    score: np.ndarray
    status: np.ndarray
    background: np.ndarray | None = None
    background_std: np.ndarray | None = None

    def __post_init__(self):
        for name in ("background", "background_std"):
            if getattr(self, name) is None:
                setattr(self, name, np.full(len(self.status), np.nan))

    @classmethod
    def empty(cls, n: int) -> Estimates:
        """N frames of NaN values with status ok (to be filled in)."""
        nan = lambda: np.full(n, np.nan)  # noqa: E731
        return cls(*(nan() for _ in range(9)), status=np.full(n, OK, dtype=object))

    @classmethod
    def from_params(cls, params: np.ndarray, status: np.ndarray, std: np.ndarray | None = None,
                    score: np.ndarray | None = None) -> Estimates:
        """From (N, 3|4) params (strain, omega, chi[, thickness]) and optional (N, 3|4) std and (N,) score.

        Frames whose status is a failure (:data:`FAILURES`) get NaN values; ok and warning frames keep theirs.
        """
        n = len(params)
        est = cls.empty(n)
        est.status = np.asarray(status, dtype=object).copy()
        bad = ~usable(est.status)
        for i, name in enumerate(PARAMETERS[: params.shape[1]]):
            getattr(est, name)[:] = np.where(bad, np.nan, params[:, i])
            if std is not None:
                getattr(est, name + "_std")[:] = np.where(bad, np.nan, std[:, i])
        if score is not None:
            est.score[:] = np.where(bad, np.nan, score)
        return est

    def __len__(self) -> int:
        return len(self.status)

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of frames with status ok."""
        return self.status == OK

    @property
    def usable(self) -> np.ndarray:
        """Boolean mask of frames whose values stand: status ok or a warning (:data:`WARNINGS`)."""
        return usable(self.status)

    def params(self, with_thickness: bool = False) -> np.ndarray:
        """(N, 3) or (N, 4) array of strain, omega, chi[, thickness]."""
        names = PARAMETERS if with_thickness else PARAMETERS[:3]
        return np.stack([getattr(self, n) for n in names], axis=1)

    def counts(self) -> dict[str, int]:
        """Number of frames per status."""
        values, n = np.unique(self.status.astype(str), return_counts=True)
        return dict(zip(values.tolist(), n.tolist()))

    def __getitem__(self, index) -> Estimates:
        return Estimates(**{f.name: np.atleast_1d(getattr(self, f.name)[index]) for f in dataclasses.fields(self)})


def check_frames(frames, instrument: Instrument | None = None, *,
                 saturation: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate a batch of detector frames.

    Parameters
    ----------
    frames : array-like (N, H, W) or a single (H, W) frame, counts (float or integer).
    instrument : the setup whose ROI shape (H, W) the frames must have (default: the published one).
    saturation : counts at or above which a pixel is saturated (None: not checked).

    Returns
    -------
    (clean, status): ``clean`` is an (N, H, W) float32 copy with bad frames zeroed, ``status`` an (N,)
    object array of :data:`STATUSES`.

    Raises
    ------
    ValueError for a batch of the wrong rank or shape, or an empty batch.
    """
    instrument = instrument or Instrument()
    arr = np.asarray(frames)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != instrument.roi_shape:
        raise ValueError(f"frames must have shape (N, {instrument.roi_shape[0]}, {instrument.roi_shape[1]}) "
                         f"(counts, rows = detector y) for this instrument; got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError("empty batch: frames has shape (0, ...); pass at least one frame")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"frames must be numeric counts, got dtype {arr.dtype}")
    clean = arr.astype(np.float32, copy=True)
    status = np.full(len(clean), OK, dtype=object)
    flat = clean.reshape(len(clean), -1)
    finite = np.isfinite(flat).all(axis=1)
    status[~finite] = NONFINITE
    negative = finite & (np.where(np.isfinite(flat), flat, 0) < 0).any(axis=1)
    status[negative] = NEGATIVE
    empty = finite & ~negative & (flat.sum(axis=1) <= 0)
    status[empty] = EMPTY
    if saturation is not None:
        status[(status == OK) & (flat >= saturation).any(axis=1)] = SATURATED
    clean[status != OK] = 0.0
    return clean, status
