"""The decision core of :func:`~nanopilot.plans.growth.grow_until`, pure: rounds of per-point estimates in,
thickness, growth rate and the relaxation tests out (a replay of the stored run can reproduce every decision)."""

import dataclasses
import math

import numpy as np

#: Fields whose change at a point signals relaxation: strain moves toward zero and the tilts spread (mosaicity)
#: as misfit dislocations form. Each value is taken relative to the median over the round's points: relaxation
#: starts in patches, while the estimator's slow drift with the thickness (its bias depends on it) is common to
#: every point and cancels.
RELAXATION_FIELDS = ("strain", "omega", "chi")
#: Default thresholds (noise units) of the one-point and spread tests, the ramp window (rounds), see
#: :class:`GrowthMonitor`, and the points between two looks at the tests within a round, see
#: :func:`~nanopilot.plans.growth.grow_until`.
#: The thresholds are 1.1x the largest values on coherent films with the shipped thickness model, from
#: ``benchmarks/growth_thresholds.py``; re-derive them whenever that model changes.
Z_POINT, Z_SPREAD, WINDOW, LOOK_EVERY = 5.58, 5.00, 6, 4


@dataclasses.dataclass
class GrowthMonitor:
    """Thickness, growth rate and relaxation from rounds of measurements at the same points.

    Relaxation is a sequential test of a ramp: once a patch passes its critical thickness its relaxed fraction,
    and with it the tilts' and the strain's departure from their coherent values, grows about linearly with
    the thickness, so about linearly with the round (rounds are evenly spaced in time). Each point's baseline
    is the mean of every round before the last ``window`` ones; within the window, a ramp starting at each
    round ``tau`` is fitted to each point's departure (in noise units, the pooled within-point scatter of
    the baseline rounds), giving a z per point, field and ``tau`` (the fit's slope over its standard error,
    the baseline mean's error included). Two tests, the largest over ``tau``:

    - one point: ``sqrt(z_omega^2 + z_chi^2 + z_strain^2)``, strain counted only toward zero (its sign is
      known: from the coherent strain), above ``z_point``;
    - spread: several points tilting at once, ``(sum over points of z_omega^2 + z_chi^2 - 2 n) / sqrt(4 n)``
      (about N(0, 1) while nothing changes) above ``z_spread``.

    Parameters
    ----------
    target : thickness (angstrom) at which to stop.
    z_point, z_spread : thresholds of the two tests (noise units). The defaults were set at 1.1 times the
        largest value each test reached while every measured point was still coherent, with the shipped
        thickness model, the default points, interval and looks (every 4 points, so with partial rounds too), on
        growth scenes of seeds 0-43 and 2000-2049 (``benchmarks/growth_thresholds.py``);
        ``benchmarks/plans.py --parts b`` checks them on seeds never used for that.
    window : rounds in which a ramp is sought (the newest ones); the rounds before define the baseline.
    min_baseline : rounds the baseline needs before the first test.
    """

    target: float
    z_point: float = Z_POINT
    z_spread: float = Z_SPREAD
    window: int = WINDOW
    min_baseline: int = 6
    times: list = dataclasses.field(default_factory=list)
    rounds: list = dataclasses.field(default_factory=list)

    def add_round(self, t: float, values: dict[str, np.ndarray]) -> None:
        """One round: time (s) and per-point arrays of strain, omega (deg), chi (deg), thickness (angstrom)."""
        self.times.append(float(t))
        self.rounds.append({k: np.asarray(v, dtype=float) for k, v in values.items()})

    def thickness(self) -> float:
        """Mean thickness (angstrom) of the last round."""
        return float(np.nanmean(self.rounds[-1]["thickness"]))

    def rate(self) -> tuple[float, float]:
        """Growth rate (angstrom/s) and the fitted thickness at the last round's time, from a straight line
        through every round's mean thickness (NaN rate with fewer than two rounds)."""
        t = np.asarray(self.times)
        h = np.array([np.nanmean(r["thickness"]) for r in self.rounds])
        ok = np.isfinite(h)
        if ok.sum() < 2:
            return math.nan, float(h[-1])
        slope, intercept = np.polyfit(t[ok] - t[-1], h[ok], 1)
        return float(slope), float(intercept)

    def time_to_target(self, now: float) -> tuple[float, dict]:
        """Seconds from ``now`` until the target is reached (<= 0: reached), with the evidence."""
        rate, fitted = self.rate()
        thickness_now = fitted + (rate * (now - self.times[-1]) if math.isfinite(rate) else 0.0)
        remaining = (self.target - thickness_now) / rate if math.isfinite(rate) and rate > 0 else math.inf
        if thickness_now >= self.target:
            remaining = 0.0
        return remaining, {"thickness": thickness_now, "rate": rate, "target": self.target}

    def ramp_z(self, partial: dict[str, np.ndarray] | None = None) -> tuple[int, dict[str, np.ndarray] | None]:
        """The first round of the window, and per field the z of a ramp starting at each of its rounds but the
        last: (starts, points) arrays; None while the baseline has fewer than ``min_baseline`` rounds or the
        window fewer than two. ``partial``: the round in progress (NaN at the points not measured yet), taken as
        the newest round."""
        rounds = self.rounds + ([partial] if partial is not None else [])
        n = len(rounds)
        end = max(self.min_baseline, n - self.window)  # baseline: rounds [0, end)
        m = n - end
        if m < 2:
            return end, None
        w = np.clip(np.arange(m)[None, :] - np.arange(m - 1)[:, None], 0, None).astype(float)  # (starts, rounds)
        out = {}
        for field in RELAXATION_FIELDS:
            values = relative(np.stack([r[field] for r in rounds]))  # (rounds, points)
            base = values[:end]
            counts = np.isfinite(base).sum(axis=0)
            noise = math.sqrt(np.mean(np.nanvar(base[:, counts >= 2], axis=0, ddof=1))) if (counts >= 2).any() else 0
            if not noise > 0:
                out[field] = np.zeros((m - 1, values.shape[1]))
                continue
            with np.errstate(invalid="ignore", divide="ignore"):
                d = (values[end:] - np.nanmean(base, axis=0)) / noise  # (rounds, points)
                ok = np.isfinite(d)
                num = w @ np.where(ok, d, 0.0)
                den = np.sqrt((w ** 2) @ ok + (w @ ok) ** 2 / np.maximum(counts, 1))
                out[field] = np.nan_to_num(num / den)
        return end, out

    def relaxation(self, partial: dict[str, np.ndarray] | None = None) -> tuple[bool, dict]:
        """Has relaxation started? The two ramp tests of the class docstring; the evidence gives both values,
        the test nearest its threshold (``test``, ``z_max``), the point with the largest one-point value and
        its z per field, and the round from which the deciding ramp rises. ``partial``: as in :meth:`ramp_z`."""
        end, z = self.ramp_z(partial)
        if z is None:
            return False, {"reason": "baseline"}
        toward_zero = -np.sign(np.nanmedian(self.rounds[0]["strain"]))
        tilt2 = z["omega"] ** 2 + z["chi"] ** 2  # (starts, points)
        point = np.sqrt(tilt2 + np.clip(toward_zero * z["strain"], 0, None) ** 2)
        spread = (tilt2.sum(axis=1) - 2 * tilt2.shape[1]) / math.sqrt(4 * tilt2.shape[1])
        start, where = np.unravel_index(np.argmax(point), point.shape)
        values = {"one point": float(point[start, where]), "spread": float(spread.max())}
        thresholds = {"one point": self.z_point, "spread": self.z_spread}
        test = max(values, key=lambda k: values[k] / thresholds[k])
        evidence = {"test": test, "z_max": values[test], **values, "point": int(where),
                    "ramp from round": end + int(start if test == "one point" else np.argmax(spread)),
                    "z": {f: float(z[f][start, where]) for f in RELAXATION_FIELDS}}
        return values[test] > thresholds[test], evidence


def relative(values: np.ndarray) -> np.ndarray:
    """(rounds, points) values relative to each round's median over the points' latest values (a point not
    measured in a round, or flagged, counts with its value from the round before); NaN where not finite."""
    finite = np.isfinite(values)
    rows = np.maximum.accumulate(np.where(finite, np.arange(len(values))[:, None], 0), axis=0)
    latest = values[rows, np.arange(values.shape[1])]
    counted = np.isfinite(latest)
    median = np.array([np.median(v[c]) if c.any() else 0.0 for v, c in zip(latest, counted)])
    return values - median[:, None]
