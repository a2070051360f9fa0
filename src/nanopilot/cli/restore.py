"""``nanopilot restore``: put the runs of a backup journal directory back into a catalogue."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("restore", help="write the runs of a backup directory into a catalogue",
                              description="Write every run journalled in BACKUP_DIR into the catalogue: runs "
                                          "complete there are skipped, partially stored runs are replaced.")
    p.add_argument("backup_dir", metavar="BACKUP_DIR",
                   help="the writers' backup directory (default of the writers: $NANOPILOT_BACKUP_DIR, else "
                        "$NANOPILOT_DATA_DIR/backup)")
    p.add_argument("--catalog", default=None,
                   help="catalogue directory or http(s) URI (default: the embedded catalogue; see `nanopilot.catalog`)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..backup import restore
    from ..catalog import open_catalog

    results = restore(args.backup_dir, open_catalog(args.catalog, writable=True, create=True))
    for result in results:
        run_id = result.uid[:8] if result.uid else "-"
        print(f"{result.action:9s} {run_id:8s} {result.path.name}: {result.detail}")
    failed = sum(not result.ok for result in results)
    print(f"{len(results)} journal(s): {len(results) - failed} done, {failed} failed")
    return 1 if failed else 0
