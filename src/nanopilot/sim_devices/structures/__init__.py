"""Structure families: seeded test scenes of kinds the steering was not designed on (issue 21).

Every family is a :class:`~nanopilot.sim_devices.scene_base.Scene` (``make_scene(name, seed)``,
``make_beamline(name, seed=...)``) whose fields are a smooth random background (:class:`Structure`) plus the
family's features. Positions in um, strain dimensionless, tilts in deg, thickness in angstrom; with their default
parameters the fields stay inside the training ranges (strain +-0.005, omega +-0.05 deg, chi +-0.1 deg) over the
field of view.

``inclusions`` :class:`InclusionsScene`, sharp-rimmed elliptical inclusions with a strained rim.
``walls``      :class:`WallsScene`, domains separated by curved walls that branch at triple junctions.
``stripes``    :class:`StripesScene`, two-state stripe domains whose period changes across the field.
``gradient``   :class:`GradientScene`, smooth gradients with a few point defects.
``crack``      :class:`CrackScene`, curved lines across which both tilts jump, with relaxed strain beside them.
``mixture``    :class:`MixtureScene`, a stripe patch, an inclusion, a crack and defects on a gradient.

Labels mark the regions the walls, rims and cracks separate (a defect's core is a region of its own); with
:meth:`~nanopilot.sim_devices.scene_base.Scene.point_features` they give the features
:func:`~nanopilot.sim_devices.truth.feature_mask` marks. Develop and tune on :data:`TUNING_SEEDS`; report on
:data:`REPORTING_SEEDS` only.

Modules: :mod:`.base` (the background), :mod:`.boundaries` (inclusions, walls, cracks), :mod:`.patterns`
(stripes, gradients with defects), :mod:`.mixture`.
"""

from __future__ import annotations

from ..scene_base import Scene
from .base import Structure
from .boundaries import CrackScene, InclusionsScene, WallsScene
from .mixture import MixtureScene
from .patterns import GradientScene, StripesScene

#: Seeds to develop and tune samplers on (SLADS's training images included).
TUNING_SEEDS = tuple(range(10))
#: Seeds to report figures on, never tuned on (benchmarks/steering.py).
REPORTING_SEEDS = tuple(range(100, 105))

STRUCTURES: dict[str, type[Scene]] = {cls.name: cls for cls in (InclusionsScene, WallsScene, StripesScene,
                                                                GradientScene, CrackScene, MixtureScene)}

__all__ = ["REPORTING_SEEDS", "STRUCTURES", "TUNING_SEEDS", "CrackScene", "GradientScene", "InclusionsScene",
           "MixtureScene", "StripesScene", "Structure", "WallsScene"]
