"""LiveMapPlot follows the pictures' conventions: categorical texture labels and statuses, a background that never
hides values, no empty panel slots, titles that name the plan and the sample, equal axes, tilts centred on zero."""

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
from matplotlib.colors import to_hex

from nanopilot.callbacks import NanobeamAnalysis
from nanopilot.callbacks.plot import LiveMapPlot
from nanopilot.pictures.style import BACKGROUND
from nanopilot.sim_devices import make_beamline
from nanopilot.texture import TextureCallback, frame_descriptor
from test_callbacks import CentroidPredictor


def labels_of(ax):
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend is not None else []


EVERY_PANEL = ("strain", "omega", "chi", "status", "texture")


@pytest.mark.parametrize("fields", [pytest.param(EVERY_PANEL, marks=pytest.mark.slow), ("omega", "status")])
def test_live_map_plot_panels(tmp_path, fields):
    bl = make_beamline("domains", seed=3)
    analysis = NanobeamAnalysis(CentroidPredictor(), frame_features=frame_descriptor, threaded=False)
    analysis.add_stage(TextureCallback())
    plot = LiveMapPlot(analysis.maps, fields, min_interval=60, save=tmp_path / "maps_{uid}.png")
    analysis.maps.subscribe(plot)
    RE = RunEngine({})
    RE.subscribe(plot)  # the raw start: plan and sample in the title
    RE.subscribe(analysis)
    (uid,) = RE(bp.grid_scan([bl.detector], bl.stage.y, -1.5, 1.5, 7, bl.stage.x, -1, 1, 5, snake_axes=True,
                             md={"sample": "domains, seed 3"}))
    figure = plot.figure
    title = figure.get_suptitle()
    assert title.startswith("grid_scan: sample domains, seed 3") and uid[:8] in title and "35 points" in title
    maps = [ax for ax in figure.axes if ax.get_aspect() == 1.0]
    titles = {"status": "frame status", "texture": "texture labels", "omega": "omega tilt", "chi": "chi tilt"}
    assert [ax.get_title() for ax in maps] == [titles.get(f, f) for f in fields]  # one panel each, no empty slot
    assert len(figure.axes) == len(maps) + sum(f not in ("status", "texture") for f in fields)  # + colour bars
    for ax in maps:
        assert to_hex(ax.get_facecolor()) == BACKGROUND and ax.get_xlabel() == "stage_x (µm)"
        xmin, xmax, ymin, ymax = ax.images[0].get_extent()
        assert (xmin, xmax) == pytest.approx((-1.25, 1.25)) and (ymin, ymax) == pytest.approx((-1.75, 1.75))
    omega = next(ax for ax in maps if ax.get_title() == "omega tilt")
    low, high = omega.images[0].get_clim()
    assert low == pytest.approx(-high) and high > 0  # centred on zero
    status = next(ax for ax in maps if ax.get_title() == "frame status")
    assert sum(int(t.rsplit("(", 1)[1].rstrip(")")) for t in labels_of(status)) == 35
    if "texture" in fields:
        texture = next(ax for ax in maps if ax.get_title() == "texture labels")
        assert labels_of(texture) and all(t.startswith("texture ") for t in labels_of(texture))
        grid = texture.images[0].get_array()
        assert np.array_equal(np.unique(grid.compressed()), np.unique(grid.compressed()).round())  # labels only
    assert (tmp_path / f"maps_{uid[:8]}.png").stat().st_size > 10_000
