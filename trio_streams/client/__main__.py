"""``trio-streams-client`` / ``python -m trio_streams.client``: the client subcommands alone.

The same subcommands as ``trio-streams`` (create, append, read, tail,
head, close, delete), for installs without the server's dependencies.
"""

from __future__ import annotations

import argparse
import sys

from . import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trio-streams-client", description="Durable Streams client.")
    cli.add_commands(parser.add_subparsers(dest="command", required=True))
    return cli.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
