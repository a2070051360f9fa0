"""TextureCallback: the analysis run's documents in -> a texture run of labels out.

Add it to a :class:`nanopilot.callbacks.NanobeamAnalysis` as a stage (``analysis.add_stage(textures)``: it reads
the analysis documents, and the analysis' LiveMaps read its documents, so the labels appear there as the per-point
field ``"texture"``: ``maps[raw_uid].scattered()["texture"]``, ``gridded("texture")``). It builds each run's points
from the analysis documents, classifies them every ``update_every`` points while the run goes on and at its stop,
and emits a texture run to its subscribers:

start at the analysis run's start (``raw_uid``, ``analysis_uid``, classifier) -> while it runs, descriptor
"labels" and one event page per classification (``texture`` label and ``raw_seq_num`` per point, positions; a later
page's label replaces an earlier one's) -> at its stop: descriptor "primary" -> one event page (the final labels)
-> descriptor "summary" -> one event (status, number of textures, points per label, stripes: period um,
orientation deg, coverage; period and orientation are -1 when no stripes were found; the feature names) -> stop
(exit_status "fail" when no labels could be given).

One classifier serves every run it sees, so labels keep their meaning over a series of maps.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
from event_model import DocumentRouter, compose_run

from ..callbacks.live_maps import TEXTURE_PLAN, LiveMaps
from ..callbacks.subscribers import Subscribers
from .classifier import NOT_ENOUGH_DATA, OK, UNLABELLED, TextureClassifier
from .features import texture_features
from .stripes import run_stripes

logger = logging.getLogger(__name__)

TEXTURE_NAME = "nanopilot.TextureCallback"


class TextureCallback(DocumentRouter):
    """Texture labels for every analysed scan point (an ``event_model.DocumentRouter``).

    Parameters
    ----------
    classifier : TextureClassifier, optional
        The classifier (default ``TextureClassifier()``); fitted on each run, keeping labels across runs.
    update_every : int, optional
        Also relabel the running map every this many analysed points (None: only at stop).
    stripe_field : str or None
        Field searched for stripes on 2-D grid scans (None: no stripe search).
    n_neighbours : int
        Neighbourhood of the feature statistics (see :func:`texture_features`).
    group_weights : dict, optional
        Feature group weights (see :data:`GROUP_WEIGHTS`).
    regions : bool
        Give the classifier the points' neighbours on the map, so that the automatic number of textures
        counts only clusters that are regions of the map (see :class:`TextureClassifier`): right for maps of
        domains (the points along walls and at point defects then make no textures of their own), wrong for
        patterns finer than the window (the two states of stripes a few scan points wide have no interior
        either, and would merge into one texture with the matrix). Default False.
    """

    def __init__(self, classifier: TextureClassifier | None = None, *, update_every: int | None = None,
                 stripe_field: str | None = "strain", n_neighbours: int = 8, group_weights: dict | None = None,
                 regions: bool = False):
        super().__init__()
        if update_every is not None and update_every < 1:
            raise ValueError(f"update_every must be a positive number of points or None, got {update_every!r}")
        self.points = LiveMaps()  # each run's points, built from the analysis documents
        self.classifier = classifier if classifier is not None else TextureClassifier()
        self.update_every, self.stripe_field = update_every, stripe_field
        self.n_neighbours, self.group_weights, self.regions = n_neighbours, group_weights, regions
        self._emit = Subscribers("texture")  # texture-run documents go to each subscriber
        self._runs: dict[str, dict] = {}  # analysis uid -> {"raw_uid", "motors", "units", "next", "bundle", ...}
        self._descriptors: dict[str, str] = {}  # primary descriptor uid -> analysis uid
        self.results: dict[str, dict] = {}  # raw uid -> summary of the last classification

    def subscribe(self, callback) -> None:
        """Send every texture-run document to ``callback(name, doc)``."""
        self._emit.append(callback)

    def live_plot(self, maps, fields=("strain", "omega", "chi", "texture"), **kwargs):
        """A :class:`~nanopilot.callbacks.plot.LiveMapPlot` of ``maps`` (that read this callback's documents) with a
        texture panel, subscribed to the maps (it redraws when points or labels come); ``kwargs`` go to
        LiveMapPlot."""
        from ..callbacks.plot import LiveMapPlot

        plot = LiveMapPlot(maps, fields, **kwargs)
        maps.subscribe(plot)
        return plot

    # ------------------------------------------------------------------ analysis documents in
    def start(self, doc):
        self.points("start", doc)
        if "raw_uid" in doc:
            run = {"raw_uid": doc["raw_uid"], "units": {}, "next": self.update_every,
                   "motors": list(doc.get("motors", [])), "labels": None, "pages": 0}
            self._runs[doc["uid"]] = run
            try:
                self._open_run(doc["uid"], run)
            except Exception:
                logger.exception("could not open the texture run of raw run %s", run["raw_uid"][:8])

    def descriptor(self, doc):
        self.points("descriptor", doc)
        run = self._runs.get(doc["run_start"])
        if run is not None and doc.get("name") == "primary":
            self._descriptors[doc["uid"]] = doc["run_start"]
            run["units"] = {m: doc["data_keys"].get(m, {}).get("units", "") for m in run["motors"]}

    def event(self, doc):
        self.points("event", doc)  # progress and summary events: no labels to give

    def event_page(self, doc):
        self.points("event_page", doc)
        analysis_uid = self._descriptors.get(doc["descriptor"])
        run = self._runs.get(analysis_uid)
        if run is None or not run["next"] or run["raw_uid"] not in self.points:
            return
        if len(self.points[run["raw_uid"]]) >= run["next"]:
            run["next"] += self.update_every
            result = self.classify(run["raw_uid"])
            try:
                self._emit_labels(run, "labels", result)
            except Exception:
                logger.exception("could not emit the texture labels of raw run %s", run["raw_uid"][:8])

    def stop(self, doc):
        self.points("stop", doc)
        run = self._runs.pop(doc["run_start"], None)
        self._descriptors = {d: a for d, a in self._descriptors.items() if a != doc["run_start"]}
        if run is None or run["raw_uid"] not in self.points:
            return
        result = self.classify(run["raw_uid"])
        try:
            self._close_run(run, result)
        except Exception as err:
            logger.exception("could not emit the texture run of raw run %s", run["raw_uid"][:8])
            self._emit("stop", run["bundle"].compose_stop(exit_status="fail", reason=f"texture run failed: {err!r}"))

    # ------------------------------------------------------------------ classification
    def classify(self, run) -> dict:
        """Label the points of ``run`` now: a raw run's uid (the points of its analysis run received so far) or a
        :class:`~nanopilot.callbacks.RunMap`.

        Returns
        -------
        dict
            ``seq_num`` and ``labels`` arrays, ``status`` (``"ok"``, ``"not_enough_data"`` or ``"error: ..."``)
            and, on 2-D grids, ``stripes`` (a :class:`Stripes` or None).
        """
        run = self.points[run] if isinstance(run, str) else run
        raw_uid = run.uid
        result = {"status": NOT_ENOUGH_DATA, "stripes": None}
        try:
            features = texture_features(run, n_neighbours=self.n_neighbours, group_weights=self.group_weights)
            result["seq_num"] = features.seq_num
            result["labels"] = np.full(len(features), UNLABELLED)
            if not hasattr(self.classifier, "n_features_in_"):
                self.classifier.set_params(feature_weights=features.weights, feature_scale=features.scale)
            if features.X.shape[1] == 0:
                result["status"] = NOT_ENOUGH_DATA
            else:
                self.classifier.fit(features.X, neighbours=features.neighbours if self.regions else None)
                result["status"] = self.classifier.status_
                result["labels"] = self.classifier.labels_
            result["feature_names"] = features.names
            if self.stripe_field and run.shape and len(run.shape) == 2 and run.extents:
                result["stripes"] = run_stripes(run, self.stripe_field)
        except Exception as err:  # a labelling problem never stops the analysis
            logger.exception("texture classification failed for run %s", raw_uid[:8])
            result["status"] = f"error: {err}"
            result.setdefault("seq_num", run.scattered()["seq_num"])
            result["labels"] = np.full(len(result["seq_num"]), UNLABELLED)
        self.results[raw_uid] = result
        return result

    # ------------------------------------------------------------------ texture run out
    def _open_run(self, analysis_uid: str, run: dict) -> None:
        metadata = {"raw_uid": run["raw_uid"], "analysis_uid": analysis_uid, "plan_name": TEXTURE_PLAN,
                    "analysis": TEXTURE_NAME, "motors": run["motors"],
                    "classifier": json.loads(json.dumps(self.classifier.get_params(deep=False), default=str))}
        run["bundle"] = compose_run(metadata=metadata)
        run["descriptors"] = {}
        self._emit("start", run["bundle"].start_doc)

    def _emit_labels(self, run: dict, stream: str, result: dict) -> None:
        """One event page of ``result``'s labels in ``stream`` ("labels" while the run goes on, "primary" at its
        end), with the points' positions."""
        n = len(result["seq_num"])
        if not n:
            return
        if stream not in run["descriptors"]:
            keys = {"texture": {"dtype": "integer", "shape": [], "source": TEXTURE_NAME},
                    "raw_seq_num": {"dtype": "integer", "shape": [], "source": TEXTURE_NAME}}
            keys.update({m: {"dtype": "number", "shape": [], "source": "analysis run", "units": u}
                         for m, u in run["units"].items()})
            desc = run["descriptors"][stream] = [run["bundle"].compose_descriptor(
                name=stream, data_keys=keys, hints={"nanopilot_texture": {"fields": ["texture"]}}), 0]
            self._emit("descriptor", desc[0].descriptor_doc)
        desc = run["descriptors"][stream]
        points = self.points[run["raw_uid"]].scattered()
        order = {int(s): i for i, s in enumerate(points["seq_num"])}
        rows = [order[int(s)] for s in result["seq_num"]]
        data = {"texture": [int(v) for v in result["labels"]], "raw_seq_num": [int(s) for s in result["seq_num"]]}
        data.update({m: points[m][rows].tolist() for m in run["units"] if m in points})
        now = [time.time()] * n
        self._emit("event_page", desc[0].compose_event_page(
            data=data, timestamps={k: now for k in data}, seq_num=list(range(desc[1] + 1, desc[1] + n + 1)),
            time=now))
        desc[1] += n

    def _close_run(self, run: dict, result: dict) -> None:
        self._emit_labels(run, "primary", result)
        summary = self._summary(result)
        summary_keys = {k: {"dtype": {str: "string", bool: "boolean", int: "integer"}.get(type(v), "number"),
                            "shape": [], "source": TEXTURE_NAME} for k, v in summary.items()}
        summary_keys["stripe_period"]["units"] = "um"
        summary_keys["stripe_orientation"]["units"] = "deg"
        desc = run["bundle"].compose_descriptor(name="summary", data_keys=summary_keys)
        self._emit("descriptor", desc.descriptor_doc)
        now = time.time()
        self._emit("event", desc.compose_event(data=summary, timestamps={k: now for k in summary}, seq_num=1,
                                               time=now))
        self._emit("stop", run["bundle"].compose_stop(exit_status="success" if summary["status"] == OK else "fail",
                                                      reason=self._reason(summary)))

    @staticmethod
    def _summary(result: dict) -> dict:
        labels = np.asarray(result["labels"], dtype=int)
        values, counts = np.unique(labels[labels != UNLABELLED], return_counts=True)
        stripes = result["stripes"]
        return {"status": str(result["status"]), "n_textures": int(len(values)),
                "points_per_texture": json.dumps({str(v): int(c) for v, c in zip(values, counts)}),
                "unlabelled": int((labels == UNLABELLED).sum()),
                "stripes_found": bool(stripes is not None and stripes.found),
                "stripe_period": float(stripes.period) if stripes is not None and stripes.found else -1.0,
                "stripe_orientation": float(stripes.orientation) if stripes is not None and stripes.found else -1.0,
                "stripe_coverage": float(stripes.coverage) if stripes is not None else 0.0,
                "features": json.dumps(list(result.get("feature_names", [])))}

    @staticmethod
    def _reason(summary: dict) -> str:
        if summary["status"] != OK:
            return f"no texture labels: {summary['status']} ({summary['unlabelled']} points unlabelled)"
        stripes = (f"; stripes: period {summary['stripe_period']:.3f} um, orientation "
                   f"{summary['stripe_orientation']:.1f} deg, coverage {100 * summary['stripe_coverage']:.0f}%"
                   if summary["stripes_found"] else "; no stripes")
        return (f"{summary['n_textures']} texture(s) {summary['points_per_texture']}, "
                f"{summary['unlabelled']} points unlabelled{stripes}")
