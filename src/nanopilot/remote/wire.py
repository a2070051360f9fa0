"""Document streams between processes: bluesky's 0MQ proxy (default) or Kafka (bluesky-kafka, optional).

On the wire a 0MQ message is bluesky's own: ``prefix b" " name b" " pickle.dumps(doc)`` (what
``bluesky.callbacks.zmq.Publisher`` sends and ``RemoteDispatcher`` reads), so bluesky's tools interoperate.
nanopilot's worker publishes its analysis documents with the prefix :data:`ANALYSIS_PREFIX` and its heartbeats
with :data:`HEARTBEAT_PREFIX` (a ``RemoteDispatcher(address, prefix=ANALYSIS_PREFIX)`` reads the documents alone).

:class:`ZmqSource` reads with a receive queue without a high-water mark: bluesky's ``RemoteDispatcher`` keeps 0MQ's
default of 1,000 messages, past which a subscriber that falls behind loses documents silently; here they wait in
memory instead, and the session bounds how far a worker may fall behind (:mod:`nanopilot.remote.watch`).
"""

from __future__ import annotations

import logging
import pickle
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: Prefix of the analysis (and texture) documents a worker publishes.
ANALYSIS_PREFIX = b"analysis"
#: Prefix of a worker's heartbeats (a pickled dict, see :class:`nanopilot.remote.worker.RemoteWorker`).
HEARTBEAT_PREFIX = b"heartbeat"
#: Prefix of a session's ping on the raw stream: the worker's next heartbeats echo its id (``ping``), which proves
#: the whole loop (session -> raw proxy -> worker -> analysis proxy -> session) connected.
PING_PREFIX = b"ping"
#: Name of a heartbeat message (not a document name: bluesky's RemoteDispatcher must filter them out by prefix).
HEARTBEAT = "heartbeat"


def zmq_address(address: str) -> str:
    """``host:port`` (or a full ``tcp://``/``ipc://`` address) as a 0MQ address; ValueError if it is not one."""
    address = str(address)
    if "://" not in address:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{address!r} is not a 0MQ address: give HOST:PORT, e.g. 127.0.0.1:5578")
        address = f"tcp://{address}"
    return address


class ZmqSink:
    """Publishes ``(name, doc)`` to a 0MQ proxy's input, with a prefix; safe to call from several threads."""

    def __init__(self, address: str, prefix: bytes = ANALYSIS_PREFIX):
        import zmq

        if b" " in prefix:
            raise ValueError(f"prefix {prefix!r} may not contain a space")
        self.address, self.prefix = zmq_address(address), bytes(prefix)
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.SNDHWM, 0)  # queue rather than drop while the proxy is slow
        self._socket.setsockopt(zmq.LINGER, 2000)  # what is queued at close still goes, for up to 2 s
        self._socket.connect(self.address)
        self._lock = threading.Lock()

    def __call__(self, name: str, doc, prefix: bytes | None = None) -> None:
        message = b" ".join([self.prefix if prefix is None else prefix, name.encode(), pickle.dumps(doc)])
        with self._lock:
            self._socket.send(message)

    def close(self) -> None:
        with self._lock:
            self._socket.close()
            self._context.term()


class ZmqSource:
    """Reads ``(prefix, name, doc)`` messages from a 0MQ proxy's output and hands them to ``handle(prefix, name,
    doc)`` in the thread that calls :meth:`run` (until :meth:`stop`, which any thread may call).

    ``prefixes``: the prefixes taken (None: all); messages with others are dropped before they are unpickled.
    """

    def __init__(self, address: str, handle: Callable[[bytes, str, object], None], prefixes=None):
        import zmq

        self.address, self.handle = zmq_address(address), handle
        self.prefixes = None if prefixes is None else {bytes(p) for p in prefixes}
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.RCVHWM, 0)  # no drops: a slow reader queues in memory (bounded by the session)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        self._socket.connect(self.address)
        self._stopping = threading.Event()
        self.received = 0  # messages taken

    def run(self, poll_ms: int = 100) -> None:
        import zmq

        try:
            while not self._stopping.is_set():
                if not self._socket.poll(poll_ms, zmq.POLLIN):
                    continue
                self._one(self._socket.recv())
        finally:
            self._socket.close(linger=0)
            self._context.term()

    def _one(self, message: bytes) -> None:
        try:
            prefix, name, payload = message.split(b" ", 2)
        except ValueError:
            logger.error("dropped a message that is not 'prefix name document' (%d bytes)", len(message))
            return
        if self.prefixes is not None and prefix not in self.prefixes:
            return
        try:
            doc = pickle.loads(payload)
        except Exception as err:  # noqa: BLE001 - a message that cannot be read is dropped, said so
            logger.error("dropped a %s message that could not be unpickled: %s", name[:40], err)
            return
        self.received += 1
        try:
            self.handle(prefix, name.decode(), doc)
        except Exception:
            logger.exception("handling a %s message failed", name[:40])

    def stop(self) -> None:
        self._stopping.set()


class KafkaSink:
    """Publishes ``(name, doc)`` to a Kafka topic with bluesky-kafka's Publisher (its default serializer: msgpack,
    numpy arrays included); heartbeats are not sent (they go over 0MQ, see ``nanopilot worker --heartbeat``)."""

    def __init__(self, bootstrap_servers: str, topic: str, key: str = "nanopilot-worker"):
        from bluesky_kafka import Publisher

        self._publisher = Publisher(topic=topic, bootstrap_servers=bootstrap_servers, key=key,
                                    producer_config={"message.timeout.ms": 10000}, flush_on_stop_doc=True)
        self._lock = threading.Lock()

    def __call__(self, name: str, doc, prefix: bytes | None = None) -> None:
        if prefix == HEARTBEAT_PREFIX:
            return
        with self._lock:
            self._publisher(name, doc)

    def close(self) -> None:
        with self._lock:
            self._publisher.flush()


class KafkaSource:
    """Reads the documents a bluesky-kafka Publisher sent to ``topics`` (msgpack ``(name, doc)`` messages) with a
    confluent-kafka consumer of group ``group_id``; ``handle(b"", name, doc)`` in the thread that calls :meth:`run`.

    Untested against a broker here (none can run without Java); the message format is bluesky-kafka 0.10's."""

    def __init__(self, bootstrap_servers: str, topics: list[str], group_id: str,
                 handle: Callable[[bytes, str, object], None]):
        import bluesky_kafka  # noqa: F401 - patches msgpack for numpy arrays, as its Publisher relies on
        from confluent_kafka import Consumer

        self.handle = handle
        self._stopping = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group_id,
                                   "auto.offset.reset": "latest"})
        self._consumer.subscribe(list(topics))

    def run(self, poll_ms: int = 100) -> None:
        import msgpack

        try:
            while not self._stopping.is_set():
                message = self._consumer.poll(poll_ms / 1000)
                if message is None:
                    continue
                if message.error():
                    logger.error("Kafka consumer error: %s", message.error())
                    continue
                try:
                    name, doc = msgpack.loads(message.value())
                    self.handle(b"", name, doc)
                except Exception:
                    logger.exception("a Kafka message could not be handled")
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._stopping.set()
