"""setup(analysis="remote"): plans decide from a worker's analysis as they do from the in-process one (same frames,
same decisions), and a session whose workers cannot be reached fails before anything is subscribed."""

import json

import pytest
from bluesky import RunEngine

from nanopilot.model import Predictor
from nanopilot.plans import steered_map
from nanopilot.remote.link import RemoteOptions
from nanopilot.session import setup
from nanopilot.sim_devices import make_beamline
from remote_deploy import worker_thread, zmq_proxy


def decisions_of(docs):
    names = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    return [{k: (json.loads(v) if k == "decision_evidence" else v) for k, v in d["data"].items()}
            for n, d in docs if n == "event" and names[d["descriptor"]] == "decisions"]


def steer(**session):
    """steered_map on the simulated domains (no noise) in a session; (decisions, points measured, maps' run)."""
    bl = make_beamline("domains", seed=1, noise=False)
    RE, docs = RunEngine({}, call_returns_result=True), []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    with setup(RE, detector=bl.detector, x=bl.stage.x, y=bl.stage.y, **session) as s:
        res = RE(steered_map([bl.detector], bl.stage.x, bl.stage.y, (-2, 2), (-2, 2), fine=17, coarse_step=4,
                             budget=0.3))
        run = s.maps[res.run_start_uids[0]]
        return decisions_of(docs), res.plan_result["points"], run.scattered()


@pytest.mark.slow  # two steered maps with the default ensemble
def test_plans_decide_the_same_from_a_remote_worker_as_in_process():
    local = steer()
    with zmq_proxy() as (raw_in, raw_out), zmq_proxy() as (ana_in, ana_out), \
            worker_thread(Predictor.load(), raw_out, ana_in, heartbeat=0.1):
        remote = steer(analysis="remote", remote=RemoteOptions(publish=raw_in, listen=ana_out, connect_timeout=60))
    assert remote[1] == local[1] and len(remote[0]) == len(local[0]) >= 2
    assert remote[0] == local[0]  # every decision: action, reason, evidence, value
    for field in ("seq_num", "strain", "omega", "chi", "texture"):
        assert list(remote[2][field]) == list(local[2][field]), field


def test_a_remote_session_without_workers_fails_before_subscribing():
    bl = make_beamline("domains", seed=1)
    RE = RunEngine({})
    with zmq_proxy() as (raw_in, _), zmq_proxy() as (_, ana_out):
        with pytest.raises(ConnectionError, match="did not answer within 1 s on the raw proxy"):
            setup(RE, detector=bl.detector, x=bl.stage.x, y=bl.stage.y, analysis="remote",
                  remote=RemoteOptions(publish=raw_in, listen=ana_out, connect_timeout=1))
    assert not RE.preprocessors and not RE.suspenders and not RE.dispatcher.cb_registry.callbacks.get("all")
    with pytest.raises(ValueError, match="analysis must be 'local' or 'remote'"):
        setup(RE, detector=bl.detector, x=bl.stage.x, y=bl.stage.y, analysis="worker")
    with pytest.raises(ValueError, match="on_failure must be one of"):
        setup(RE, detector=bl.detector, x=bl.stage.x, y=bl.stage.y, analysis="remote",
              remote=RemoteOptions(on_failure="ignore"))
