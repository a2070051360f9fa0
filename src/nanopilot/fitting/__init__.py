"""Conventional fitting: library correlation / likelihood fitting and gradient-based physics refinement.

The baselines the CNN is measured against, and the fallback when a frame falls outside the model's range.
"""

from .correlation import LIKELIHOOD_FLOOR, METHODS, correlation_fit
from .refinement import refine

__all__ = ["LIKELIHOOD_FLOOR", "METHODS", "correlation_fit", "refine"]
