"""The intensity convention (the brightest pattern of the default 41^3 grid peaks at 7 counts, or a chosen level)
and Poisson noise on expected images (PHYSICS.md section 2)."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from .instrument import Instrument

PUBLISHED_PEAK_COUNTS = 7.0


#: :func:`brightest_grid_peak` of the published setup (``Instrument()``) by its fingerprint: a process simulating
#: at the published count level skips the search of the 41^3 grid (5-25 s on 2 cores). A test searches it again.
KNOWN_GRID_PEAKS = {"113c9750fa29974d": 3505.8068177890023}


@functools.lru_cache(maxsize=8)
def brightest_grid_peak(instrument: Instrument) -> float:
    """Peak (raw units, box kernel) of the brightest pattern of the default 41^3 grid for this setup.

    About 3,505.8 for the published setup (stored in :data:`KNOWN_GRID_PEAKS`); any other setup's is searched on
    the full grid once per process, with a progress bar on stderr (5-25 s on 2 cores).
    """
    known = KNOWN_GRID_PEAKS.get(instrument.fingerprint())
    return known if known is not None else search_brightest_grid_peak(instrument, progress=True)


def search_brightest_grid_peak(instrument: Instrument, *, progress: bool = False) -> float:
    """:func:`brightest_grid_peak` searched on the full grid: float32 patterns, then the brightest in float64."""
    from .forward import simulate
    from .library import Grid, iter_grid_patterns

    grid = Grid.default()
    best, best_index = -1.0, 0
    patterns = iter_grid_patterns(grid, instrument, progress=progress, desc="count level: brightest 41^3 grid pattern")
    for start, images in patterns:
        peaks = images.amax(dim=(1, 2))
        if float(peaks.max()) > best:
            best, best_index = float(peaks.max()), start + int(peaks.argmax())
    brightest = grid.params(instrument)[best_index:best_index + 1]
    return float(simulate(brightest, instrument, dtype=torch.float64).max())


def intensity_scale(instrument: Instrument | None, counts="published") -> float:
    """Factor from raw formula units to counts: the brightest default-grid pattern peaks at ``counts``.

    ``counts`` is "published" (7 counts, the published convention) or a positive peak count level.
    """
    instrument = instrument or Instrument()
    if isinstance(counts, str):
        if counts != "published":
            raise ValueError(f"counts must be None, 'published' or a positive number, got {counts!r}")
        counts = PUBLISHED_PEAK_COUNTS
    if not (isinstance(counts, (int, float)) and math.isfinite(counts) and counts > 0):
        raise ValueError(f"counts must be None, 'published' or a positive number, got {counts!r}")
    return float(counts) / brightest_grid_peak(instrument)


def poisson(images, seed: int | None = None):
    """Poisson counts drawn from expected images (same type out as in: numpy or torch), seeded.

    Raises ValueError if any expected value is negative or not finite.
    """
    is_tensor = isinstance(images, torch.Tensor)
    rate = images.detach().to(torch.float64) if is_tensor else torch.as_tensor(np.asarray(images, dtype=np.float64))
    if not torch.isfinite(rate).all() or (rate < 0).any():
        raise ValueError("poisson() needs finite, non-negative expected counts")
    gen = torch.Generator(device=rate.device)
    gen.manual_seed(int(seed) if seed is not None else int(torch.seed()))
    noisy = torch.poisson(rate, generator=gen)
    if is_tensor:
        return noisy.to(images.dtype)
    return noisy.numpy().astype(np.asarray(images).dtype)
