"""The picture of a steered map, and of any other map (a grid scan)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ..agents.steering import Lattice, reconstruct
from .record import PlanRun
from .style import field_panel, map_axes, new_figure, texture_panel

ESTIMATES = ("strain", "omega", "chi", "thickness")


def refinement_round(run: PlanRun, seq_num: np.ndarray) -> np.ndarray:
    """The refinement round of each frame (0: the coarse raster), from the decisions stream: a decision taken with
    ``points`` frames analysed closes the round those frames belong to."""
    bounds = [d["points"] for d in run.decisions if d.get("action") in ("refine", "stop")]
    return np.searchsorted(np.asarray(bounds, dtype=int), np.asarray(seq_num), side="left")


def steered_map_figure(run: PlanRun) -> Figure:
    """The steered map: each estimate reconstructed on the fine raster (``agents.steering.reconstruct``), the
    texture labels, the strain uncertainty, and the measured points coloured by refinement round (the last
    decision's reason in the panel's title)."""
    args, points = run.plan_args, run.points()
    motors = list(reversed(run.start.get("motors", ["y", "x"])))[:2]  # x first
    lattice = Lattice(*args["x_range"], *args["y_range"], int(args["fine"]))
    x, y = points.get(motors[0], np.zeros(0)), points.get(motors[1], np.zeros(0))
    ii, jj = lattice.index(x, y)
    fields = [f for f in ESTIMATES if np.isfinite(points.get(f, [np.nan])).any()]
    extra = ["texture"] * bool((points["texture"] >= 0).any()) + ["strain_std"] * ("strain" in fields)
    panels = fields + extra + ["rounds"]
    cols = -(-len(panels) // 2)
    figure = new_figure(3.7 * cols, 8.0)
    axes = figure.subplots(2, cols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        figure.delaxes(ax)
    extent = (lattice.x0 - lattice.step[0] / 2, lattice.x1 + lattice.step[0] / 2,
              lattice.y0 - lattice.step[1] / 2, lattice.y1 + lattice.step[1] / 2)
    for ax, field in zip(axes, panels):
        if field == "rounds":
            rounds_panel(ax, run, x, y, points["seq_num"], motors)
            continue
        values = points[field].astype(float)
        if field == "texture":
            values[values < 0] = np.nan  # unlabelled
        measured = {}  # lattice index -> values; a point measured twice keeps its latest
        for k, key in enumerate(zip(ii.tolist(), jj.tolist())):
            measured[key] = {field: values[k]}
        method = "nearest" if field == "texture" else "cubic"
        grid = reconstruct(lattice, measured, field, method) if measured else np.full((lattice.n,) * 2, np.nan)
        if field == "texture":
            texture_panel(ax, grid.round(), extent=extent, motors=motors, title="texture (nearest point)",
                          counts=False)
        else:
            field_panel(ax, field, grid, extent=extent, motors=motors)
    figure.suptitle(f"{run.title()}\nmaps reconstructed on the {lattice.n} x {lattice.n} raster from the measured "
                    "points")
    return figure


def rounds_panel(ax, run: PlanRun, x, y, seq_num, motors) -> None:
    """The measured points coloured by refinement round, with the stop decision's reason."""
    rounds = refinement_round(run, seq_num)
    map_axes(ax, motors)
    ax.set_facecolor("white")  # points only: nothing to hide
    for r in np.unique(rounds):
        inside = rounds == r
        ax.scatter(x[inside], y[inside], s=9 if r else 16, color=f"C{r % 10}", linewidths=0,
                   label=f"{'coarse raster' if r == 0 else f'round {r}'} ({inside.sum()})")
    stop = next((d for d in reversed(run.decisions) if d.get("action") == "stop"), None)
    ax.set_title("measured points by round" + (f"\nstop: {stop['reason']}" if stop else " (running)"))
    if len(rounds):
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    args = run.plan_args
    ax.set_xlim(*args["x_range"])
    ax.set_ylim(*args["y_range"])


def map_figure(run: PlanRun) -> Figure:
    """Maps of the estimates (and texture labels) of any scan over two motors, as measured (a raster as an
    image, other paths as points)."""
    points = run.points()
    motors = list(reversed(run.start.get("motors", [])))[:2]
    fields = [f for f in ESTIMATES if np.isfinite(points.get(f, [np.nan])).any()]
    panels = fields + ["texture"] * bool((points["texture"] >= 0).any())
    cols = min(3, max(len(panels), 1))
    rows = -(-max(len(panels), 1) // cols)
    figure = new_figure(4.3 * cols, 3.8 * rows)
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        figure.delaxes(ax)
    if len(motors) == 2 and all(m in points for m in motors):
        x, y = points[motors[0]], points[motors[1]]
    else:  # one motor or none: along the order of acquisition
        x, y, motors = points["seq_num"].astype(float), np.zeros(len(points["seq_num"])), ["frame", "-"]
    for ax, field in zip(axes, panels):
        if field == "texture":
            texture_panel(ax, points["texture"], x=x, y=y, motors=motors)
        else:
            field_panel(ax, field, points[field], x=x, y=y, motors=motors)
    figure.suptitle(run.title())
    return figure
