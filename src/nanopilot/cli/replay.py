"""``nanopilot replay``: analyse a stored run again through the live callbacks."""

from __future__ import annotations

import time


def register(subparsers) -> None:
    p = subparsers.add_parser("replay", help="replay a stored run through the analysis (and store the result)",
                              description="Stream a stored run's documents, lazily, through NanobeamAnalysis.")
    p.add_argument("run_id", metavar="RUN",
                   help="raw run: uid (or its first 5+ characters), scan id (shared: the newest), or -1 for the newest "
                        "(-2 the one before; analysis and texture runs are skipped)")
    p.add_argument("--catalog", default=None,
                   help="catalogue directory or http(s) URI (default: the embedded catalogue; see `nanopilot.catalog`)")
    p.add_argument("--model", default=None,
                   help="model file or shipped model name (default: the model of the run's latest stored analysis, "
                        "else the shipped default ensemble)")
    p.add_argument("--preparation", default=None,
                   help="frame preparation YAML for raw detector frames (default: the one of the run's latest stored "
                        "analysis, if it had one)")
    p.add_argument("--write", action="store_true", help="store the analysis run in the same catalogue")
    p.add_argument("--plot", default=None,
                   help="write the run's picture (nanopilot.pictures: its plan's story) to this PNG file")
    p.add_argument("--refine", action="store_true", help="refine the network's estimates by physics fitting")
    p.set_defaults(run=run)


def choose_model(catalog, stored, model: str | None):
    """The model to replay ``stored`` with (``--model``, else its stored analysis's, else None: the shipped
    default), printing which and why."""
    from ..replay import stored_model

    if model is not None:
        print(f"model {model}: given by --model")
        return model
    found = stored_model(catalog, stored)
    if found is None:
        print("model default (the shipped default): no analysis stored for this run")
        return None
    recorded = found.recorded.get("name")
    alias = f" (recorded as {recorded!r})" if recorded and recorded != found.name else ""
    print(f"model {found.name}{alias}: the one the stored analysis {found.analysis_uid[:8]} used")
    if found.note:
        print(f"note: {found.note}")
    return found.path


def choose_preparation(catalog, stored, preparation: str | None):
    """The frame preparation to replay ``stored`` with (``--preparation``, else its stored analysis's, else None),
    printing which."""
    from ..physics import FramePreparation
    from ..replay import stored_preparation

    if preparation is not None:
        print(f"frame preparation {preparation}: given by --preparation")
        return FramePreparation.load(preparation)
    found = stored_preparation(catalog, stored)
    if found is not None:
        print(f"frame preparation {found.fingerprint()}: the one the stored analysis used")
    return found


def run(args) -> int:
    from ..callbacks import NanobeamAnalysis
    from ..catalog import open_catalog
    from ..model import Predictor
    from ..replay import replay
    from ..runs import describe, select_run

    catalog = open_catalog(args.catalog)
    selected = select_run(catalog, args.run_id)
    stored = selected.run
    print(f"replaying {describe(stored)}")
    if selected.note:
        print(f"note: {selected.note}")
    predictor = Predictor.load(choose_model(catalog, stored, args.model),
                               preparation=choose_preparation(catalog, stored, args.preparation))
    analysis = NanobeamAnalysis(predictor, refine=args.refine, threaded=False)
    if args.write:
        from ..storage import make_writer

        analysis.subscribe(make_writer(catalog, batch_size=1000))
    derived = {}
    analysis.subscribe(lambda name, doc: derived.update({name: doc}) if name in ("start", "stop") else None)
    callbacks = [analysis]
    if args.plot:  # the plan's picture, drawn from the stored raw run (its decisions) and the new analysis
        from ..pictures import LivePictures

        plot = LivePictures(save=args.plot, min_interval=1e9, texture=False)
        analysis.subscribe(plot)
        callbacks.insert(0, plot)
    t0 = time.perf_counter()
    n = replay(stored, *callbacks)
    wall = time.perf_counter() - t0
    uid = stored.start["uid"]
    print(f"replayed {n} events in {wall:.1f} s")
    if "stop" not in derived:
        print("no frames for this model in the run: nothing analysed")
        return 1
    print(f"analysis: {derived['stop']['reason']}")
    if args.write:
        print(f"stored analysis run {derived['start']['uid']} (raw_uid={uid})")
    if args.plot:
        plot.close()
        print(f"picture written to {args.plot}")
    return 0
