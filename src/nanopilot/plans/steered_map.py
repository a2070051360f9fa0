"""steered_map: a coarse raster, then fine scans where the live maps say the structure is."""

from collections.abc import Callable, Sequence

from bluesky.protocols import Movable, Readable
from bluesky.utils import MsgGenerator

from ..agents import SteeringAgent
from ..agents.steering import Lattice, coarse_points, coarse_step_for
from ..callbacks.live_maps import LiveMaps
from .checks import (
    check_callable,
    check_detectors,
    check_device,
    check_instrument,
    check_positive,
    check_range,
    check_within,
    read_limits,
)
from .common import merge_md, resolve_maps
from .driving import Driver, agent_run


def steered_map(detectors: Sequence[Readable], x: Movable, y: Movable, x_range: Sequence[float],
                y_range: Sequence[float], *, fine: int = 65, coarse_step: int | None = None, budget: float = 0.25,
                threshold: float = 4.0, points_per_round: int = 32, maps: LiveMaps | None = None,
                approve: Callable | None = None, timeout: float = 60.0, md: dict | None = None) -> MsgGenerator[dict]:
    """Map a region adaptively: a coarse raster, then finer and finer points where the analysis finds structure.

    Parameters
    ----------
    detectors : the nanobeam detector (and anything else to read at each point).
    x, y : stage motors (um).
    x_range, y_range : (start, stop) of the region (um), inside the motors' limits.
    fine : points per side of the full fine raster that sets the finest resolution (k * coarse_step + 1).
    coarse_step : spacing of the first raster in fine-raster steps; None: the finest that takes at most 40% of the
        budget (:func:`~nanopilot.agents.steering.coarse_step_for`; 4 for fine = 65 and budget = 0.25, a 17 x 17
        raster), the rest going to bisection. Features smaller than it (point defects) can fall between its points
        and stay unseen: with fine = 65 over 4 um and a budget of 20%, 4 (0.25 um) left an error near features of
        1.45 times the full raster's (geometric mean over the fields and the eight families of
        ``benchmarks/steering.py``, tuning seeds 0-2), against 1.69 for 8.
    budget : points to measure in all: a fraction (<= 1) of the full fine raster, or a number of points.
    threshold : edges of the measured points' triangulation whose interest (largest change of a field across the
        edge in units of its noise; texture boundaries and flagged frames add to it) is at or below this are left
        alone. 4 was chosen on the tuning seeds of the structure families (``benchmarks/steering.py --tuning``).
    points_per_round : at most this many points are measured per round (one decision each round).
    maps : the analysis' LiveMaps (default: the RunEngine's session's, see ``nanopilot.session.setup``).
    approve : optional ``approve(decision) -> bool`` hook that can veto each refinement (human in the loop).
    timeout : seconds to wait for the analysis to catch up before each decision, and for it to finish the run
        (its analysis and texture runs stopped) before the plan returns.
    md : extra start-document metadata.

    Yields
    ------
    Msg : one run: ``primary`` (the frames and positions) and ``decisions`` (one event per decision). The plan
    returns once the run's analysis has ended (see :func:`~nanopilot.plans.waiting.analysed_run`).

    Returns
    -------
    dict with ``points`` measured, ``rounds``, ``reason`` for stopping, the ``lattice`` and the ``decisions``;
    rebuild a map on the
    fine raster with :func:`~nanopilot.agents.steering.reconstruct`.

    See Also
    --------
    nanopilot.agents.SteeringAgent : the decision logic (pure, replayable).

    Notes
    -----
    Every argument is checked before the first message: nothing moves for a bad one (ValueError, naming it; a
    device name the queue server did not know arrives as a string and is named too).
    """
    detectors = check_detectors(detectors)
    check_device("x", x, "set")
    check_device("y", y, "set")
    maps = yield from resolve_maps(maps)
    limits = yield from read_limits(x, y)
    lattice, total, coarse_step = _checked(detectors, x, y, x_range, y_range, fine, coarse_step, budget, threshold,
                              points_per_round, timeout, approve, maps, limits)
    agent = SteeringAgent(lattice, int(coarse_step), total, float(threshold), int(points_per_round), [y.name, x.name])
    driver = Driver(agent, maps, detectors + [x, y], x, y, approve=approve, timeout=timeout)
    _md = {"plan_name": "steered_map", "motors": [y.name, x.name], "detectors": [d.name for d in detectors],
           "plan_args": {"x_range": [lattice.x0, lattice.x1], "y_range": [lattice.y0, lattice.y1], "fine": int(fine),
                         "coarse_step": int(coarse_step), "budget": total, "threshold": float(threshold),
                         "points_per_round": int(points_per_round)},
           "hints": {"dimensions": [([y.name], "primary"), ([x.name], "primary")]}}
    return (yield from agent_run(driver, detectors, merge_md(_md, md)))


def _checked(detectors, x, y, x_range, y_range, fine, coarse_step, budget, threshold, points_per_round, timeout,
             approve, maps, limits) -> tuple[Lattice, int, int]:
    """Check :func:`steered_map`'s arguments (ValueError naming the wrong one; ``limits``: the motors', by name);
    the lattice, the budget in points and the coarse spacing."""
    check_positive("fine", fine, integer=True)
    if int(fine) < 2:
        raise ValueError(f"fine must be at least 2 points per side, got {fine}")
    check_positive("budget", budget)
    total = int(round(budget * fine ** 2)) if budget <= 1 else int(budget)
    if coarse_step is None:
        coarse_step = coarse_step_for(int(fine), total)
    check_positive("coarse_step", coarse_step, integer=True)
    coarse_points(int(fine), int(coarse_step))  # raises for a fine raster that is no whole number of steps
    check_positive("threshold", threshold)
    check_positive("points_per_round", points_per_round, integer=True)
    check_positive("timeout", timeout)
    check_callable("approve", approve)
    (x0, x1), (y0, y1) = check_range("x_range", x_range, "um"), check_range("y_range", y_range, "um")
    for motor, lo, hi in ((x, x0, x1), (y, y0, y1)):
        check_within(f"range of {motor.name}", lo, hi, limits[motor.name], "um")
    for det in detectors:
        check_instrument(det, maps)
    first = (int(fine) - 1) // int(coarse_step) + 1
    if total < first ** 2:
        raise ValueError(f"budget of {total} points is smaller than the coarse raster ({first ** 2} points): "
                         f"raise budget or coarse_step")
    return Lattice(x0, x1, y0, y1, int(fine)), total, int(coarse_step)
