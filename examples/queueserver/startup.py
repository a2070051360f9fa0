"""Startup file for bluesky-queueserver's RE Manager: nanopilot's plans, with the live analysis, on a beamline.

    redis-server --port 6379 --bind 127.0.0.1 --save ""       # the manager keeps its queue in Redis
    start-re-manager --startup-script examples/queueserver/startup.py \
        --existing-plans-devices existing_plans_and_devices.yaml \
        --user-group-permissions examples/queueserver/user_group_permissions.yaml \
        --redis-addr 127.0.0.1:6379 --zmq-control-addr tcp://127.0.0.1:60615 --zmq-info-addr tcp://127.0.0.1:60625
    qserver environment open
    qserver queue add plan '{"name": "steered_map", "args": [["det"], "x", "y", [-2, 2], [-2, 2]]}'
    qserver queue start

Environment variables: ``NANOPILOT_CATALOG`` (catalogue directory or URI; default: the embedded catalogue, see
:func:`nanopilot.catalog.open_catalog`), ``NANOPILOT_MODEL`` (the analysis' model; ``thickness`` for
``grow_until``; default: the shipped ensemble), ``NANOPILOT_SCENE`` (the simulated sample's scene, default
``domains``).

For a real beamline, replace the simulated devices below with the beamline's own (keep the names, or use the
beamline's names in the queued items). The manager runs this file each time it opens the environment (with
``__name__ == "__main__"``): it must define ``RE``, the devices and the plans. Device arguments are passed by name
(``"det"``, ``"x"``); every other argument is a number, a string, a list or a dict. Each plan returns once the
analysis of its run has ended, so the environment can be closed right after it; the session is closed (its
analysis finished) when the environment closes.
"""

import os

from bluesky import RunEngine

from nanopilot.catalog import open_catalog
from nanopilot.plans import find_texture_temperature, grow_until, steered_map  # noqa: F401 - the manager's plans
from nanopilot.session import setup
from nanopilot.sim_devices import make_beamline

RE = RunEngine({})

beamline = make_beamline(os.environ.get("NANOPILOT_SCENE", "domains"), seed=1)
det, x, y = beamline.detector, beamline.stage.x, beamline.stage.y
temperature, deposition = beamline.temperature, beamline.deposition
beamline.install(RE)  # the plans' bps.sleep on the simulated clock (a real beamline: leave out)

session = setup(RE, detector=det, x=x, y=y, temperature=temperature, deposition=deposition,
                catalog=open_catalog(os.environ.get("NANOPILOT_CATALOG"), create=True),  # new: made, with a warning
                model=os.environ.get("NANOPILOT_MODEL"))
