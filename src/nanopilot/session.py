"""Install nanopilot into a Bluesky session: live analysis, texture labels, live maps, Tiled storage.

    >>> from nanopilot.session import setup
    >>> np_session = setup(RE, detector=det, x=stage.x, y=stage.y)      # a beamline profile, real devices
    >>> RE(steered_map([det], stage.x, stage.y, (-2, 2), (-2, 2)))       # plans find the published maps
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .callbacks import LiveMaps, NanobeamAnalysis, publish_maps
from .callbacks.plot import LiveMapPlot


@dataclasses.dataclass
class Session:
    """What :func:`setup` installed: the analysis, its LiveMaps, the texture callback, the plot, the catalogue,
    the RunEngine subscription tokens (``RE.unsubscribe(token)`` removes one) and the devices it was given
    ({"detector", "x", "y"[, "temperature", "deposition"]: device}, for plans: ``s.devices["x"]``)."""

    analysis: NanobeamAnalysis
    maps: LiveMaps
    texture: object
    plot: LiveMapPlot | None
    catalog: object | None
    tokens: list[int]
    devices: dict


def setup(RE, *, detector, x, y, temperature=None, deposition=None, catalog=None, model=None,
          plot: str | Path | None = None, image_key: str | None = None) -> Session:
    """Subscribe the live analysis (and texture labels) to ``RE`` and publish its LiveMaps for the plans.

    Parameters
    ----------
    RE : the RunEngine of the session.
    detector : the nanobeam area detector; x, y : the sample stage motors (um).
    temperature, deposition : optional temperature controller and deposition source (for the plans).
    catalog : a Tiled catalogue (``nanopilot.catalog.open_catalog()``), a location string, or None (no storage).
        Raw runs, analysis runs and texture runs are written there.
    model : model file for the analysis (default: the shipped ensemble; use the thickness model for growth).
    plot : PNG path for the live maps, saved at each run's stop (``{uid}`` is replaced); None: no plot.
    image_key : the detector's image data key, when it cannot be found from the descriptors.
    """
    from .model import Predictor
    from .texture import TextureCallback, frame_descriptor

    if catalog is not None and isinstance(catalog, (str, Path)):
        from .catalog import open_catalog

        catalog = open_catalog(catalog)
    analysis = NanobeamAnalysis(Predictor.load(model), image_key=image_key, motors=[y.name, x.name],
                                frame_features=frame_descriptor)
    texture = TextureCallback(analysis.maps)
    analysis.subscribe(texture)
    live_plot = texture.live_plot(save=plot) if plot else None
    tokens = [RE.subscribe(analysis)]
    if catalog is not None:
        from .catalog import make_writer, subscribe_writer

        tokens.append(subscribe_writer(RE, catalog))
        analysis.subscribe(make_writer(catalog, batch_size=1000))
        texture.subscribe(make_writer(catalog, batch_size=1000))
    publish_maps(analysis.maps)
    devices = {"detector": detector, "x": x, "y": y, "temperature": temperature, "deposition": deposition}
    return Session(analysis, analysis.maps, texture, live_plot, catalog, tokens,
                   {k: v for k, v in devices.items() if v is not None})
