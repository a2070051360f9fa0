"""The picture of a temperature search (:func:`~nanopilot.plans.find_texture_temperature`)."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from .record import PlanRun
from .style import FIELDS, field_panel, new_figure, norm_for, texture_panel

#: Columns of the small multiples.
COLUMNS = 5
#: Field of the small multiples: the stripes' two states tilt by +- their tilt (a diverging map centred on zero).
MAP_FIELD = "omega"


def temperature_maps(run: PlanRun) -> list[dict]:
    """The maps of the run in order, from the decisions stream: temperature (K), first and last raw seq_num,
    score (texture-change statistic; NaN for the reference and the fine map), changed, kind ("reference",
    "search", "bracket" or "fine")."""
    maps, kind, last = [], "search", 0
    for d in run.decisions:
        evidence = d["evidence"]
        if d["action"] == "bisect":
            kind = "bracket"
        if d["action"] in ("reference", "classify") and "seq_nums" in evidence:
            first, last = (int(s) for s in evidence["seq_nums"])
            score = math.nan if d["action"] == "reference" else float(d["value"])
            maps.append({"temperature": float(evidence["temperature"]), "first": first, "last": last,
                         "score": score, "changed": score >= 1.0,
                         "kind": "reference" if d["action"] == "reference" else kind})
        if d["action"] == "fine map" and d.get("approved", True):
            maps.append({"temperature": float(evidence["changed"]), "first": last + 1, "last": math.inf,
                         "score": math.nan, "changed": True, "kind": "fine"})
    return maps


def temperature_figure(run: PlanRun) -> Figure:
    """The temperature search: the texture-change statistic of each map against its temperature (the threshold,
    the probes, the bracket, the extrapolated onset and the found transition, from the decisions stream), and
    every map as small multiples of :data:`MAP_FIELD` on one colour scale (each on its own window), with the
    texture labels of the last map when it has more than one."""
    maps, points = temperature_maps(run), run.points()
    rows = 1 + max(1, -(-(len(maps) + 1) // COLUMNS))
    figure = new_figure(3.0 * COLUMNS, 3.4 + 2.7 * (rows - 1))
    grid = figure.add_gridspec(rows, COLUMNS, height_ratios=[1.3] + [1] * (rows - 1))
    statistic_panel(figure.add_subplot(grid[0, :]), run, maps)
    motors = list(reversed(run.start.get("motors", ["y", "x"])))[:2]
    values = points.get(MAP_FIELD, np.full(len(points["seq_num"]), np.nan))
    norm = norm_for(MAP_FIELD, values * FIELDS[MAP_FIELD][3])
    image = None
    for k, m in enumerate(maps):
        ax = figure.add_subplot(grid[1 + k // COLUMNS, k % COLUMNS])
        inside = (points["seq_num"] >= m["first"]) & (points["seq_num"] <= m["last"])
        x, y = (points.get(motor, np.zeros(len(inside)))[inside] for motor in motors)
        title = f"{k + 1}: {m['temperature']:.2f} K, {m['kind']}" + (" (changed)" if m["changed"] else "")
        if inside.any():
            image = field_panel(ax, MAP_FIELD, values[inside], x=x, y=y, motors=motors, title=title, norm=norm,
                                colorbar=False)
        ax.title.set_fontsize("small")
    if image is not None:
        figure.colorbar(image, ax=figure.axes[1:], shrink=0.8, label=FIELDS[MAP_FIELD][0])
    labels = points["texture"][points["seq_num"] >= maps[-1]["first"]] if maps else np.zeros(0)
    if len(np.unique(labels[labels >= 0])) > 1:
        ax = figure.add_subplot(grid[-1, -1])
        inside = points["seq_num"] >= maps[-1]["first"]
        x, y = (points.get(motor, np.zeros(len(inside)))[inside] for motor in motors)
        texture_panel(ax, labels, x=x, y=y, motors=motors, title=f"{len(maps)}: texture labels")
    figure.suptitle(run.title())
    return figure


def statistic_panel(ax, run: PlanRun, maps: list[dict]) -> None:
    """Score of each compared map against temperature (log scale), with what the decisions say about them."""
    scored = [m for m in maps if math.isfinite(m["score"])]
    for changed, style in ((False, dict(mfc="white", label="no new texture")),
                           (True, dict(mfc="C3", label="new texture"))):
        chosen = [m for m in scored if m["changed"] == changed]
        ax.plot([m["temperature"] for m in chosen], [max(m["score"], 1e-2) for m in chosen], "o", color="C3",
                ms=7, ls="none", **style)
    for k, m in enumerate(maps):
        if math.isfinite(m["score"]):
            ax.annotate(str(k + 1), (m["temperature"], max(m["score"], 1e-2)), xytext=(4, 4),
                        textcoords="offset points", fontsize="x-small")
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", ls="--", lw=1, label="threshold (score 1)")
    args = run.plan_args
    if "start" in args:
        ax.axvline(args["start"], color="0.5", lw=1, label=f"reference {args['start']:g} K")
    probes = [d["evidence"]["temperature"] for d in run.decisions if d["action"] == "bisect"]
    for k, probe in enumerate(probes):
        ax.axvline(probe, color="C0", lw=0.8, alpha=0.6, label="bracketing probes" if k == 0 else None)
    onsets = [d["evidence"].get("onset") for d in run.decisions if d["action"] == "bisect"]
    onsets = [o for o in onsets if isinstance(o, (int, float)) and math.isfinite(o)]
    if onsets:
        ax.axvline(onsets[-1], color="C2", ls="-.", lw=1.2, label=f"extrapolated onset {onsets[-1]:.2f} K")
    final = next((d for d in reversed(run.decisions) if d["action"] == "fine map"), None)
    if final is not None:
        lo, hi = sorted((final["evidence"]["unchanged"], final["evidence"]["changed"]))
        ax.axvspan(lo, hi, color="C1", alpha=0.25, label=f"bracket {lo:g}..{hi:g} K")
        ax.axvline(final["value"], color="C3", lw=2, label=f"transition {final['value']:.2f} K")
    ax.set_xlabel("temperature (K)")
    ax.set_ylabel("texture-change score (1: threshold)")
    ax.set_title("texture change against temperature")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
