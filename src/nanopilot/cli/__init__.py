"""The ``nanopilot`` command. Each subcommand lives in its own module with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__

#: Subcommand modules, in the order ``nanopilot --help`` lists them.
COMMAND_MODULES = ["demo", "session", "library", "fit", "train", "replay", "restore", "view", "worker"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanopilot", description="Autonomous X-ray nanodiffraction with Bluesky.")
    parser.add_argument("--version", action="version", version=f"nanopilot {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 failed, 2 usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError, ConnectionError) as err:
        print(f"nanopilot {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"nanopilot {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
