"""``trio-streams token hash|new`` and the start-up refusal to serve the network unauthenticated.

``token hash`` prints the SHA-256 of a token read from stdin (what the
config's ``sha256`` holds); ``token new`` prints a fresh random token and,
on the next line, its SHA-256. Tokens never go on a command line, where
``ps`` and shell history would show them.
"""

from __future__ import annotations

import argparse
import sys

from ..config_file import Configuration
from .guard import B64TOKEN
from .local import is_loopback
from .tokens import new_token, token_digest

COMMAND = "token"
REFUSAL = ("refusing to serve {host} without authentication: configure [auth] in the config file, "
           "or pass --allow-unauthenticated")


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser(COMMAND, help="make bearer tokens for the config file")
    actions = p.add_subparsers(dest="token_action", required=True)
    actions.add_parser("hash", help="print the SHA-256 of the token read from stdin")
    actions.add_parser("new", help="print a new random token, then its SHA-256")


def run(args: argparse.Namespace) -> int:
    if args.token_action == "new":
        token = new_token()
        print(token)
        print(token_digest(token))
        return 0
    token = sys.stdin.readline().strip()
    if not B64TOKEN.fullmatch(token):  # the guard refuses such a token before hashing it
        print("trio-streams: stdin holds no bearer token (letters, digits and -._~+/ then any '=')",
              file=sys.stderr)
        return 2
    print(token_digest(token))
    return 0


def refuses_to_serve(configuration: Configuration) -> bool:
    """No auth, a non-loopback address, and no explicit allow_unauthenticated."""
    s = configuration.settings
    return not (configuration.auth.configured or s.allow_unauthenticated or is_loopback(s.host))
