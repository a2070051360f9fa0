"""Replay a finished plan's decisions from the catalogue alone: the plan's agent (:mod:`nanopilot.agents`), built
from the raw run's start document, is told the stored analysis run's points as the plan saw them at each decision
and asked; its decisions are compared, field by field, with the stored decisions stream.

    >>> rows = replay_decisions(catalog, raw_uid)
    >>> all(row["match"] for row in rows)
    True

What a plan saw at a decision is the first ``decision_points`` rows of its analysis run's primary stream (the
analysis emits points in the order it stores them); a decision's verdict (a veto) is taken from the stored one.
Not replayed (reported as mismatches, never hidden): texture labels written while the run was under way
(``TextureCallback(update_every=...)``): the agents are told the analysis run's points only.
"""

from __future__ import annotations

import json
import math

import numpy as np

from .agents import GrowthAgent, SteeringAgent, TemperatureAgent
from .agents.base import DRIVER_KEYS
from .agents.steering import Lattice
from .callbacks.derived import ANALYSIS_PLAN, FRAME_FEATURES
from .estimates import PARAMETERS
from .runs import derived_runs

#: The fields of a decision that are compared.
COMPARED = ("step", "action", "reason", "value", "evidence", "approved")


def stored_decisions(raw) -> list[dict]:
    """The decisions stream of a stored raw run: one dict per decision (``step``, ``action``, ``reason``,
    ``evidence`` (dict), ``value``, ``approved``, ``points`` (analysed when deciding), ``time`` (s))."""
    if "decisions" not in raw:
        raise ValueError(f"run {raw.start['uid'][:8]} has no decisions stream: it is not a closed-loop plan's run")
    table = raw["decisions"].base["internal"].read()
    return [{"step": int(row.decision_step), "action": str(row.decision_action),
             "reason": str(row.decision_reason), "evidence": json.loads(row.decision_evidence),
             "value": float(row.decision_value), "approved": bool(row.decision_approved),
             "points": int(row.decision_points), "time": float(row.time)} for row in table.itertuples()]


def analysed_points(catalog, raw) -> tuple[dict, list[str]]:
    """The points of the raw run's analysis run (the earliest one: the live analysis), as an agent is told them:
    the primary stream's columns (``raw_seq_num`` as ``seq_num``; the frame descriptors as ``features``) and the
    readings' ``time`` from the raw run. Returns (points, motors)."""
    uid = raw.start["uid"]
    analyses = [run for run in derived_runs(catalog, uid).values() if run.start.get("plan_name") == ANALYSIS_PLAN]
    if not analyses:
        raise ValueError(f"raw run {uid[:8]} has no stored analysis run: analyse it first (nanopilot replay)")
    analysis = min(analyses, key=lambda run: run.start["time"])
    primary = analysis["primary"]
    table = primary.base["internal"].read()
    points = {k: table[k].to_numpy() for k in table.columns if k not in ("seq_num", "time", FRAME_FEATURES) and
              not k.startswith("ts_")}
    points["seq_num"] = points.pop("raw_seq_num").astype(int)
    for name in PARAMETERS + tuple(p + "_std" for p in PARAMETERS):  # the live maps hold every one (NaN: none)
        points.setdefault(name, np.full(len(points["seq_num"]), np.nan))
    points["status"] = np.asarray(points["status"], dtype=object).astype(str).astype(object)
    if FRAME_FEATURES in primary.descriptors[0]["data_keys"]:
        points["features"] = np.asarray(primary[FRAME_FEATURES].read(), dtype=float)
    raw_table = raw["primary"].base["internal"].read()
    stamps = raw_table[[k for k in raw_table.columns if k.startswith("ts_")]].to_numpy(float)
    latest = dict(zip(raw_table["seq_num"].to_numpy(int), np.nanmax(stamps, axis=1)))
    points["time"] = np.array([latest.get(s, np.nan) for s in points["seq_num"]])  # as the plan took it
    return points, list(analysis.start.get("motors", raw.start.get("motors", [])))


def agent_for(start: dict, motors: list[str]):
    """The agent of the plan that made the run with start document ``start`` (its ``plan_args``)."""
    args, name = start.get("plan_args", {}), start.get("plan_name")
    if name == "steered_map":
        if "points_per_round" not in args:
            raise ValueError("this steered_map run was made by the quadtree steering of nanopilot before edge "
                             "bisection (its plan_args have cells_per_round); its decisions cannot be replayed")
        (x0, x1), (y0, y1) = args["x_range"], args["y_range"]
        return SteeringAgent(Lattice(x0, x1, y0, y1, int(args["fine"])), int(args["coarse_step"]), int(args["budget"]),
                             float(args["threshold"]), int(args["points_per_round"]), motors)
    if name == "grow_until":
        return GrowthAgent(args["target_thickness"], args["points"], interval=args["interval"],
                           max_time=args["max_time"], z_point=args["z_point"], z_spread=args["z_spread"],
                           window=args["window"], look_every=args["look_every"], motors=motors)
    if name == "find_texture_temperature":
        return TemperatureAgent((args["x_range"], args["y_range"]), args["start"], args["stop"], step=args["step"],
                                tolerance=args["tolerance"], hysteresis=args["hysteresis"], quick=args["quick"],
                                fine=args["fine"], zoom=args.get("zoom", True), motors=motors)
    raise ValueError(f"run of plan {name!r}: decisions replay for steered_map, grow_until and find_texture_temperature")


def replay_decisions(catalog, raw_uid: str) -> list[dict]:
    """Replay the decisions of the stored raw run ``raw_uid`` (see the module notes).

    Returns one dict per stored decision: ``stored`` and ``replayed`` (dicts of :data:`COMPARED` fields; replayed
    None when the agent made no decision there), ``match`` (bool) and ``differences`` (the fields that differ, or
    why there is no replayed decision). Evidence keys a driver fills from its devices (``readback``) are not
    compared.
    """
    raw = catalog[raw_uid]
    stored = stored_decisions(raw)
    points, motors = analysed_points(catalog, raw)
    agent = agent_for(raw.start, motors)
    frame_times = np.sort(raw["primary"].base["internal"].read()["time"].to_numpy(float))
    rows, proposed = [], [0]  # points the agent has proposed to measure
    for decision in stored:
        seen = {k: v[:decision["points"]] for k, v in points.items()}
        taken = int(np.searchsorted(frame_times, decision["time"]))  # frames taken before the decision
        replayed, why = _next_decision(agent, seen, taken, proposed)
        rows.append(_compare(decision, replayed, why))
        if replayed is None:
            break
        agent.tell_verdict(decision["approved"])
    return rows


def _next_decision(agent, seen: dict, taken: int, proposed: list):
    """The agent's next decision, asking through its actions, no further than the ``taken`` frames: (proposal, "")
    or (None, why not). A replay carries an action out by telling the points the plan had analysed, ``seen``, up to
    the frames proposed so far (a point retaken after a pause takes a primary seq_num of its own, so a run with
    retakes replays only up to them)."""
    agent.tell(_up_to(seen, proposed[0]))
    while True:
        try:
            proposal = agent.ask()
        except Exception as err:  # after an earlier mismatch, its state need not fit the points any more
            return None, f"the agent failed on the points the plan had: {type(err).__name__}: {err}"
        if proposal.decision:
            return proposal, ""
        if proposal.action == "done":
            return None, "the agent is done"
        proposed[0] += len(proposal.points)
        if proposed[0] > taken:
            return None, (f"the agent would measure {proposed[0]} points before deciding; the plan had taken "
                          f"{taken} frames")
        agent.tell(_up_to(seen, proposed[0]))


def _up_to(points: dict, frames: int) -> dict:
    """The points of the first ``frames`` primary events."""
    keep = points["seq_num"] <= frames
    return {k: v[keep] for k, v in points.items()}


def _compare(stored: dict, proposal, why: str) -> dict:
    if proposal is None:
        return {"stored": {k: stored[k] for k in COMPARED}, "replayed": None, "match": False, "differences": [why]}
    replayed = {"step": proposal.step, "action": proposal.action, "reason": proposal.reason,
                "value": float(proposal.value), "evidence": json.loads(json.dumps(proposal.evidence, default=float)),
                "approved": stored["approved"]}
    differences = [k for k in COMPARED if not _same(k, stored[k], replayed[k])]
    return {"stored": {k: stored[k] for k in COMPARED}, "replayed": replayed, "match": not differences,
            "differences": differences}


def _same(key: str, a, b) -> bool:
    if key == "value":
        return a == b or (math.isnan(a) and math.isnan(b))
    if key == "evidence":
        a, b = ({k: v for k, v in e.items() if k not in DRIVER_KEYS} for e in (a, b))
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    return a == b
