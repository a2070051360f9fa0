"""Forward model of convergent-beam nanodiffraction: the setup, patterns, and simulated libraries.

Knows nothing of Bluesky; everything above builds on it.
"""

from .detector import FramePreparation, PreparedFrames
from .forward import (
    GAUSS_SIGMA_PER_PRECISION,
    KERNELS,
    PUBLISHED_PEAK_COUNTS,
    brightest_grid_peak,
    donut_points,
    intensity_scale,
    poisson,
    simulate,
)
from .instrument import Instrument
from .library import Axis, Grid, Library, iter_grid_patterns

__all__ = [
    "GAUSS_SIGMA_PER_PRECISION", "KERNELS", "PUBLISHED_PEAK_COUNTS", "Axis", "FramePreparation", "Grid", "Instrument",
    "Library", "PreparedFrames", "brightest_grid_peak", "donut_points", "intensity_scale", "iter_grid_patterns",
    "poisson", "simulate",
]
