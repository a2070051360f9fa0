"""``nanopilot worker``: the live analysis in a process of its own, fed by a document stream (see
:mod:`nanopilot.remote.worker`; the deployment is described in docs/remote_analysis.md)."""

from __future__ import annotations

import signal

#: bluesky's usual 0MQ proxy ports: RunEngines publish to 5577, subscribers read 5578; the analysis proxy: 5579/5580.
DEFAULT_LISTEN = "127.0.0.1:5578"
DEFAULT_PUBLISH = "127.0.0.1:5579"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "worker", help="analyse a document stream in a process of its own (0MQ proxy or Kafka)",
        description="Subscribe to the RunEngine's documents (bluesky's 0MQ proxy, or Kafka), run the analysis and "
                    "texture stages on --device, publish the analysis documents and heartbeats to a second 0MQ "
                    "proxy (prefixes 'analysis' and 'heartbeat') and write them to --catalog. Several workers share "
                    "a stream by run: --partition 0/2 and 1/2.")
    p.add_argument("--listen", default=DEFAULT_LISTEN,
                   help="the raw proxy's output (HOST:PORT, bluesky-0MQ-proxy --out-address; default %(default)s)")
    p.add_argument("--publish", default=DEFAULT_PUBLISH,
                   help="the analysis proxy's input (HOST:PORT; default %(default)s); 'none': publish nothing")
    p.add_argument("--kafka", default=None, metavar="BOOTSTRAP_SERVERS",
                   help="read and publish through Kafka instead (needs the 'kafka' extra: bluesky-kafka); "
                        "heartbeats still go to --publish")
    p.add_argument("--raw-topic", default="bluesky.documents", help="Kafka topic of the raw documents")
    p.add_argument("--analysis-topic", default="nanopilot.analysis", help="Kafka topic of the analysis documents")
    p.add_argument("--group", default="nanopilot-worker", help="Kafka consumer group (add the partition per worker)")
    p.add_argument("--device", default="cpu", help="where the network runs: cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's)")
    p.add_argument("--model", default=None, help="model file (default: the shipped ensemble)")
    p.add_argument("--mask", default=None, help="detector pixels to ignore: .npy, NeXus/HDF5 pixel_mask or image")
    p.add_argument("--preparation", default=None, help="the detector's frame preparation (YAML) for raw frames")
    p.add_argument("--image-key", default=None, help="the frames' data key, when the descriptors do not tell")
    p.add_argument("--catalog", default=None,
                   help="store the analysis and texture runs here (a catalogue directory or a Tiled URI); "
                        "default: not stored by the worker")
    p.add_argument("--partition", default="0/1", help="INDEX/COUNT: this worker takes the runs owner(uid) gives "
                                                      "it (default %(default)s: every run)")
    p.add_argument("--heartbeat", type=float, default=0.25, help="seconds between heartbeats (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=512, help="frames per network call (default %(default)s)")
    p.add_argument("--no-texture", action="store_true", help="analysis runs only, no texture labels")
    p.set_defaults(run=run)


def build(args):
    """The :class:`~nanopilot.remote.worker.RemoteWorker` the arguments describe; configuration errors raise
    before anything is received."""
    from ..model import Predictor
    from ..remote.partition import parse_partition
    from ..remote.wire import KafkaSink, KafkaSource, ZmqSink, ZmqSource, zmq_address
    from ..remote.worker import RemoteWorker

    partition = parse_partition(args.partition)
    zmq_address(args.listen)
    publish = None if str(args.publish).lower() == "none" else args.publish
    if publish is not None:
        zmq_address(publish)
    if args.kafka:
        _require_kafka()
    predictor = Predictor.load(args.model, mask=args.mask, preparation=args.preparation, device=args.device,
                               threads=args.threads)
    sinks, writers = [], []
    if publish is not None:
        sinks.append(ZmqSink(publish))
    if args.kafka:
        sinks.append(KafkaSink(args.kafka, args.analysis_topic))
        group = f"{args.group}-{partition[0]}-of-{partition[1]}"  # every worker reads every run (own group)

        def source(handle):
            return KafkaSource(args.kafka, [args.raw_topic], group, handle)
    else:
        def source(handle):
            return ZmqSource(args.listen, handle)
    if args.catalog:
        from ..catalog import open_catalog
        from ..storage import make_writer

        catalog = open_catalog(args.catalog, create=True)
        writers = [make_writer(catalog, batch_size=1000)]
    return RemoteWorker(predictor, source, sinks=sinks, writers=writers, partition=partition,
                        heartbeat=args.heartbeat, texture=not args.no_texture, device=args.device,
                        image_key=args.image_key, batch_size=args.batch_size)


def _require_kafka() -> None:
    try:
        import bluesky_kafka  # noqa: F401
    except ImportError:
        raise ValueError("--kafka needs bluesky-kafka: pip install 'nanopilot[kafka]'") from None


def run(args) -> int:
    worker = build(args)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    where = f"Kafka {args.kafka} topic {args.raw_topic}" if args.kafka else args.listen
    print(f"nanopilot worker {worker.id[:8]} (partition {args.partition}, {args.device}): reading {where}, "
          f"publishing to {args.publish}, catalogue: {args.catalog or 'none'}", flush=True)
    try:
        worker.run()
    except KeyboardInterrupt:
        worker.close()
    return 0
