"""The drawing conventions of every picture: one place for colours, norms, units and map panels.

* Diverging colour maps are centred on the reference: zero for the tilts, the map's median for the strain (the
  film's reference strain, which the scene does not publish); their range is symmetric about it.
* The axes' background is a mid grey that no colour map uses, so values near the centre (white) stay visible
  and points not measured show as grey.
* Texture labels are categorical: one colour each (``tab10``), a legend, no colour bar.
* Maps have equal aspect; every axis and colour bar names its units.
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch

#: Axes background: a grey no colour map below uses (white is the diverging maps' centre).
BACKGROUND = "#a8a8a8"
#: field -> (label with units, colour map, centre: a number, "median", or None for a sequential map, scale)
FIELDS = {
    "strain": ("strain (10$^{-3}$)", "RdBu_r", "median", 1e3),
    "omega": ("omega tilt (deg)", "PuOr_r", 0.0, 1.0),
    "chi": ("chi tilt (deg)", "PiYG", 0.0, 1.0),
    "thickness": ("thickness (Å)", "viridis", None, 1.0),
    "strain_std": ("strain uncertainty, 1σ (10$^{-3}$)", "magma", None, 1e3),
    "omega_std": ("omega uncertainty, 1σ (deg)", "magma", None, 1.0),
}
#: Colours of the texture labels (label k: TEXTURE_COLOURS[k % 10]).
TEXTURE_COLOURS = [f"C{k}" for k in range(10)]


def new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas, outside pyplot (no global state: safe to draw in any thread)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def norm_for(field: str, values: np.ndarray) -> Normalize:
    """The colour norm of ``field`` for (scaled) ``values``: symmetric about the centre for diverging maps."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return Normalize(-1, 1)
    centre = FIELDS[field][2]
    if centre is None:
        low, high = np.percentile(finite, [1, 99])
        pad = 0.0 if high > low else 0.05 * abs(low) or 1.0  # a constant map: a range around its value
        return Normalize(low - pad, high + pad)
    centre = float(np.median(finite)) if centre == "median" else centre
    half = float(np.percentile(np.abs(finite - centre), 99)) or 0.05 * abs(centre) or 1.0
    return Normalize(centre - half, centre + half)


def map_axes(ax, motors=("x", "y")) -> None:
    """Equal aspect, grey background, positions in um."""
    ax.set_facecolor(BACKGROUND)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(f"{motors[0]} (µm)")
    ax.set_ylabel(f"{motors[1]} (µm)")


def as_grid(x: np.ndarray, y: np.ndarray, values: np.ndarray):
    """(grid, extent) if the points lie on a regular raster (at least half of its nodes measured), else None;
    grid rows are y, NaN where not measured; extent puts the pixel centres on the points."""
    if len(x) < 4:
        return None
    ux, uy = np.unique(np.round(x, 6)), np.unique(np.round(y, 6))
    if len(ux) < 2 or len(uy) < 2 or len(ux) * len(uy) > 2 * len(x):
        return None
    dx, dy = np.diff(ux), np.diff(uy)
    if np.ptp(dx) > 1e-3 * dx.mean() or np.ptp(dy) > 1e-3 * dy.mean():
        return None
    grid = np.full((len(uy), len(ux)), np.nan)
    grid[np.searchsorted(uy, np.round(y, 6)), np.searchsorted(ux, np.round(x, 6))] = values
    extent = (ux[0] - dx[0] / 2, ux[-1] + dx[0] / 2, uy[0] - dy[0] / 2, uy[-1] + dy[0] / 2)
    return grid, extent


def field_panel(ax, field: str, values: np.ndarray, *, x=None, y=None, extent=None, motors=("x", "y"),
                title: str | None = None, norm: Normalize | None = None, colorbar: bool = True):
    """A map of ``field``: ``values`` as an (ny, nx) grid over ``extent`` (um), or scattered at ``x``, ``y`` (um,
    drawn as a raster when they form one); with its colour bar (units) and the conventions of the module notes.
    ``norm``: a colour norm shared with other panels (of the scaled values, see :func:`norm_for`). Returns the
    image (or scatter) drawn."""
    label, cmap, _, scale = FIELDS[field]
    values = np.asarray(values, dtype=float) * scale
    if extent is None:
        gridded = as_grid(np.asarray(x), np.asarray(y), values)
        if gridded is not None:
            values, extent = gridded
    norm = norm or norm_for(field, values)
    if extent is not None:
        image = ax.imshow(values, origin="lower", extent=extent, cmap=cmap, norm=norm, interpolation="nearest")
    else:
        image = ax.scatter(x, y, c=values, cmap=cmap, norm=norm, s=14, marker="s", linewidths=0)
    map_axes(ax, motors)
    ax.set_title(title or label.split(" (")[0])
    if colorbar:
        ax.figure.colorbar(image, ax=ax, shrink=0.85, label=label)
    return image


def texture_panel(ax, labels: np.ndarray, *, x=None, y=None, extent=None, motors=("x", "y"),
                  title: str = "texture", legend: bool = True, counts: bool = True) -> list[Patch]:
    """A categorical map of texture labels (-1: unlabelled, shown as background), as :func:`field_panel`;
    returns the legend handles (drawn on the axes when ``legend``; with each label's number of points when
    ``counts``)."""
    labels = np.asarray(labels, dtype=float)
    labels[labels < 0] = np.nan
    if extent is None:
        gridded = as_grid(np.asarray(x), np.asarray(y), labels)
        if gridded is not None:
            labels, extent = gridded
    cmap = ListedColormap(TEXTURE_COLOURS)
    norm = BoundaryNorm(np.arange(-0.5, 10.5), cmap.N)
    wrapped = np.where(np.isfinite(labels), np.mod(labels, 10), np.nan)
    if extent is not None:
        ax.imshow(wrapped, origin="lower", extent=extent, cmap=cmap, norm=norm, interpolation="nearest")
    else:
        ax.scatter(x, y, c=wrapped, cmap=cmap, norm=norm, s=14, marker="s", linewidths=0)
    map_axes(ax, motors)
    ax.set_title(title)
    found = np.unique(labels[np.isfinite(labels)]).astype(int)
    handles = texture_handles(found, labels if counts else None)
    if legend and handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize="x-small")
    return handles


def texture_handles(found, labels=None) -> list[Patch]:
    """Legend entries of texture labels ``found`` (with their point counts in ``labels``, if given)."""
    handles = []
    for k in found:
        count = f" ({int(np.sum(labels == k))} points)" if labels is not None else ""
        handles.append(Patch(color=TEXTURE_COLOURS[k % 10], label=f"texture {k}{count}"))
    return handles
