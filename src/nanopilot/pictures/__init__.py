"""Pictures of the plans, drawn from their documents: one function per plan kind returns a matplotlib Figure.

    >>> from nanopilot.pictures import collect, plan_figure
    >>> runs = collect(documents)                        # (name, doc) of a raw run and its analysis and texture runs
    >>> plan_figure(runs.snapshot(raw_uid)).savefig("run.png")

:class:`LivePictures` keeps them up to date while a plan runs (``nanopilot.session.setup(..., plot=...)``).
"""

from .growth import growth_figure
from .live import PICTURES, LivePictures, plan_figure
from .record import PlanRun, RunCollector, collect
from .steered import map_figure, steered_map_figure
from .temperature import temperature_figure

__all__ = ["PICTURES", "LivePictures", "PlanRun", "RunCollector", "collect", "growth_figure", "map_figure",
           "plan_figure", "steered_map_figure", "temperature_figure"]
