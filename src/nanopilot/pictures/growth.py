"""The picture of a growth (:func:`~nanopilot.plans.grow_until`): thickness against time, relaxation tests."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from ..agents.growth_monitor import RELAXATION_FIELDS, GrowthMonitor
from .record import PlanRun
from .style import new_figure


def growth_rounds(run: PlanRun) -> tuple[GrowthMonitor, list[dict]]:
    """Replay the plan's monitor on the complete rounds of the run (``plan_args["points"]`` frames each): the
    monitor, and per round its time (s since the first frame), mean thickness and 1σ of a point's thickness
    (angstrom: the network's, or the round's scatter when the model gives none; ``sigma_from`` says which), and
    the two relaxation statistics (noise units; NaN while the baseline fills)."""
    args, points = run.plan_args, run.points()
    monitor = GrowthMonitor(float(args.get("target_thickness", math.nan)), z_point=args.get("z_point", 5.58),
                            z_spread=args.get("z_spread", 5.0), window=int(args.get("window", 6)))
    n = len(args.get("points", [])) or len(points["seq_num"]) or 1
    rows = []
    for first in range(0, len(points["seq_num"]) - n + 1, n):
        part = slice(first, first + n)
        values = {f: points.get(f, np.full(len(points["seq_num"]), np.nan))[part]
                  for f in ("thickness",) + RELAXATION_FIELDS}
        monitor.add_round(float(np.nanmean(points["time"][part])), values)
        _, evidence = monitor.relaxation()
        std = points.get("thickness_std", np.full(len(points["seq_num"]), np.nan))[part]
        network = bool(np.isfinite(std).any())
        sigma = np.sqrt(np.nanmean(std ** 2)) if network else np.nanstd(values["thickness"], ddof=1)
        rows.append({"time": monitor.times[-1], "thickness": monitor.thickness(), "sigma": float(sigma),
                     "sigma_from": "network" if network else "scatter over the round",
                     "one point": evidence.get("one point", math.nan), "spread": evidence.get("spread", math.nan)})
    return monitor, rows


def growth_figure(run: PlanRun) -> Figure:
    """The growth: film thickness against time (every frame, each round's mean with a point's 1σ band, the
    straight-line fit that anticipates the closing time, the target, the stop and its reason from the decisions
    stream), and the two relaxation statistics against their thresholds."""
    monitor, rows = growth_rounds(run)
    points = run.points()
    target = monitor.target
    figure = new_figure(13.0, 4.8)
    thick, relax = figure.subplots(1, 2, width_ratios=[1.4, 1], sharex=True)
    thick.scatter(points["time"], points.get("thickness", np.full(len(points["time"]), np.nan)), s=5,
                  color="0.6", linewidths=0, label="each frame")
    t = np.array([r["time"] for r in rows])
    mean, sigma = np.array([r["thickness"] for r in rows]), np.array([r["sigma"] for r in rows])
    if len(rows):
        thick.plot(t, mean, "o-", color="C0", ms=3, label="round mean")
        thick.fill_between(t, mean - sigma, mean + sigma, color="C0", alpha=0.25,
                           label=f"±1σ of a point ({rows[-1]['sigma_from']})")
    thick.axhline(target, color="k", ls="--", lw=1, label=f"target {target:g} Å")
    closing = anticipated_close(monitor)
    if math.isfinite(closing):
        rate, fitted = monitor.rate()
        line = np.array([t[0], closing])
        thick.plot(line, fitted + rate * (line - monitor.times[-1]), ":", color="C1",
                   label=f"fit {rate:.2f} Å/s")
        thick.axvline(closing, color="C1", ls=":", lw=1, label=f"anticipated close {closing:.1f} s")
    stop = next((d for d in reversed(run.decisions) if d.get("action") == "close shutter"), None)
    if stop is not None:
        when = stop_time(run, stop, points, closing)
        thick.axvline(when, color="C3", lw=1.5, label=f"shutter closed at {when:.1f} s")
        thick.annotate(f"stop: {stop['reason']}", (when, target), xytext=(-6, -6), textcoords="offset points",
                       ha="right", va="top", fontsize="small", color="C3")
    thick.set_xlabel("time since the first frame (s)")
    thick.set_ylabel("film thickness (Å)")
    thick.set_title("thickness against time")
    thick.legend(fontsize="small", loc="upper left")
    relaxation_panel(relax, monitor, rows, stop, points)
    figure.suptitle(run.title())
    return figure


def anticipated_close(monitor: GrowthMonitor) -> float:
    """Time (s) at which the fitted thickness reaches the target (NaN without a positive rate)."""
    if len(monitor.rounds) < 2:
        return math.nan
    rate, fitted = monitor.rate()
    if not (math.isfinite(rate) and rate > 0):
        return math.nan
    return monitor.times[-1] + (monitor.target - fitted) / rate


def stop_time(run: PlanRun, stop: dict, points: dict, closing: float) -> float:
    """When the shutter closed (s): at the anticipated time for the target, else at the last frame analysed when
    the decision was taken (``decision_points``)."""
    frames = points["time"][points["seq_num"] <= stop.get("points", 0)]
    last = float(frames.max()) if len(frames) else math.nan
    if str(stop.get("reason", "")).startswith("target") and math.isfinite(closing):
        return max(closing, last)
    return last


def relaxation_panel(ax, monitor: GrowthMonitor, rows: list[dict], stop: dict | None, points: dict) -> None:
    """The one-point and spread statistics per round against their thresholds (and their values at the stop)."""
    t = np.array([r["time"] for r in rows])
    for k, (test, threshold) in enumerate((("one point", monitor.z_point), ("spread", monitor.z_spread))):
        ax.plot(t, [r[test] for r in rows], "o-", ms=3, color=f"C{k}", label=f"{test} statistic")
        ax.axhline(threshold, color=f"C{k}", ls="--", lw=1, label=f"{test} threshold {threshold:g}")
        if stop is not None and test in stop["evidence"]:
            frames = points["time"][points["seq_num"] <= stop.get("points", 0)]
            ax.plot(frames.max() if len(frames) else math.nan, stop["evidence"][test], "*", ms=12, color=f"C{k}",
                    markeredgecolor="k", label=f"{test} at the stop")
    if not any(math.isfinite(r["one point"]) for r in rows):
        ax.text(0.5, 0.5, f"no test yet: the baseline takes {monitor.min_baseline} rounds,\nthe ramp window 2 more",
                transform=ax.transAxes, ha="center", va="center", color="0.3")
    top = max([monitor.z_point, monitor.z_spread] + [r[k] for r in rows for k in ("one point", "spread")
                                                      if math.isfinite(r[k])])
    ax.set_ylim(min([0.0] + [r["spread"] for r in rows if math.isfinite(r["spread"])]), 1.15 * top)
    ax.set_xlabel("time since the first frame (s)")
    ax.set_ylabel("ramp statistic (noise units)")
    ax.set_title(f"relaxation tests (baseline: the first {monitor.min_baseline} rounds)")
    ax.legend(fontsize="small", loc="upper left")
