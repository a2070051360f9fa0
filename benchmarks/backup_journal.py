"""Cost of the write-ahead backup journal for inline frames (64x64 float64, as event pages of one event).

Prints, per frame: encoding, journalling (encode + one write to the OS), reading back; the bytes per frame; the peak
memory while journalling (bounded: nothing is held); and the time per event of a scan written by ``make_writer``
(TiledWriter behind the journal) against a plain TiledWriter, on an embedded catalogue in a temporary directory.

    python benchmarks/backup_journal.py [--frames 2000] [--events 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from event_model import compose_run

from nanopilot.backup import RunJournal, encode, read_journal


def documents(n: int, seed: int = 0):
    """A run of ``n`` events with one (64, 64) float64 frame each, as the writers see them (pages of one)."""
    rng = np.random.default_rng(seed)
    run = compose_run()
    yield "start", run.start_doc
    desc = run.compose_descriptor(name="primary", data_keys={
        "frame": {"source": "sim", "dtype": "array", "shape": [64, 64]},
        "x": {"source": "sim", "dtype": "number", "shape": []}})
    yield "descriptor", desc.descriptor_doc
    for i in range(n):
        yield "event_page", desc.compose_event_page(
            data={"frame": [rng.random((64, 64))], "x": [float(i)]},
            timestamps={"frame": [time.time()], "x": [time.time()]}, seq_num=[i + 1], time=[time.time()])
    yield "stop", run.compose_stop()


def per_frame(seconds: float, n: int) -> str:
    return f"{seconds / n * 1e3:7.3f} ms/frame"


def journal_costs(n: int, directory: Path) -> None:
    docs = list(documents(n))
    t = time.perf_counter()
    size = sum(len(encode(name, doc)) for name, doc in docs)
    print(f"encode             {per_frame(time.perf_counter() - t, n)}   {size / n / 1e3:.1f} kB/frame "
          f"(raw frame {64 * 64 * 8 / 1e3:.1f} kB)")
    tracemalloc.start()  # counts what is allocated from here on: the journal's, not the documents'
    t = time.perf_counter()
    journal = RunJournal(directory, docs[0][1]["uid"])
    for name, doc in docs:
        journal.write(name, doc)
    journal.close(keep=True)
    elapsed = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"journal (+ fsync)  {per_frame(elapsed, n)}   peak memory {peak / 1e6:.2f} MB for {n} frames")
    t = time.perf_counter()
    assert sum(1 for _ in read_journal(journal.path)) == len(docs)
    print(f"read back          {per_frame(time.perf_counter() - t, n)}")


def writer_costs(n: int, directory: Path) -> None:
    from bluesky_tiled_plugins import TiledWriter

    from nanopilot.catalog import open_catalog
    from nanopilot.storage import make_writer

    catalog = open_catalog(directory / "catalog", create=True)
    writers = {"TiledWriter(batch_size=20)": lambda: TiledWriter(catalog, batch_size=20),
               "make_writer (journal + TiledWriter)": lambda: make_writer(
                   catalog, batch_size=20, backup_directory=directory / "backup")}
    best = dict.fromkeys(writers, float("inf"))
    for seed in range(3):  # alternate, keep the best of three: the machine is shared
        for label, make in writers.items():
            writer, docs = make(), list(documents(n, seed=seed))
            t = time.perf_counter()
            for name, doc in docs:
                writer(name, doc)
            best[label] = min(best[label], time.perf_counter() - t)
    for label, seconds in best.items():
        print(f"{label:36s} {per_frame(seconds, n)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        journal_costs(args.frames, Path(tmp))
        writer_costs(args.events, Path(tmp))


if __name__ == "__main__":
    main()
