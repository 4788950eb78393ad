"""``trio-streams webhook-key rotate --data-dir DIR``: rotate the webhook signing key of a stopped server.

A running server keeps its keys in memory, so this refuses a data
directory whose lock is held and names the endpoint that rotates a running
server's key instead (``POST /admin/webhook-key/rotate``). Exit status: 0
rotated; 1 failed (a corrupt key file, a write that failed); 2 refused (not a data
directory, in use, bad configuration).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TextIO

from ..config_file import load_configuration
from ._files import DIRECTORY_NAME
from .keys import rotate_offline

COMMAND = "webhook-key"
EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser(COMMAND, help="manage the webhook signing key (README \"Webhook signing\")")
    actions = p.add_subparsers(dest="webhook_key_action", required=True)
    r = actions.add_parser("rotate", help="make a new signing key active; the old one stays in the JWKS "
                                          "for webhook_key_replay_window_s (stopped server only)")
    r.add_argument("--data-dir", required=True, help="the stopped server's data directory")
    r.add_argument("--config", help="TOML config file, for webhook_key_replay_window_s (default $TRIO_STREAMS_CONFIG)")


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    directory = Path(args.data_dir)
    try:
        window = load_configuration(args.config, data_dir=str(directory)).settings.webhook_key_replay_window_s
    except ValueError as error:
        print(f"trio-streams webhook-key: {error}", file=err)
        return EXIT_REFUSED
    if not any((directory / sub).is_dir() for sub in ("wal", "checkpoints", "streams", DIRECTORY_NAME)):
        # A mistyped path must not get a key directory of its own.
        print(f"trio-streams webhook-key: {directory} is not a trio-streams data directory "
              "(no wal/, checkpoints/, streams/ or webhook-keys/)", file=err)
        return EXIT_REFUSED
    from ..service import DataDirectoryLocked, lock_data_directory  # the server's modules, only when needed

    try:
        lock_fd = lock_data_directory(directory)
    except DataDirectoryLocked as error:
        print(f"trio-streams webhook-key: {error}; rotate a running server's key with "
              "POST /admin/webhook-key/rotate", file=err)
        return EXIT_REFUSED
    try:
        old, new = rotate_offline(directory, window)
    except (ValueError, OSError) as error:
        print(f"trio-streams webhook-key: {error}", file=err)
        return EXIT_FAILED
    finally:
        os.close(lock_fd)
    if old is None:
        print(f"active key {new} (the first: there was none)", file=out)
    else:
        print(f"active key {new}; {old} retired (published for {window:g} s after this)", file=out)
    return EXIT_OK
