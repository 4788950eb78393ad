"""Offsets: the opaque tokens clients see, and the positions they stand for.

Owns: minting and parsing offset tokens and the ``-1``/``now`` sentinels.
Never: looks at stream data.

A token is ``%016d_%016d``: a reserved epoch field (always 0 today; it keeps
room for retention/compaction schemes without breaking lexicographic order)
and the position in the stream's logical byte space. Fixed width makes the
tokens sort lexicographically exactly as their positions sort numerically.
"""

from __future__ import annotations

import re
from typing import Final

from .errors import bad_request

START: Final = "-1"
NOW: Final = "now"
POSITION_MAX: Final = 10**16 - 1
_TOKEN = re.compile(r"\A0{16}_([0-9]{16})\Z")


def format_offset(position: int) -> str:
    assert 0 <= position <= POSITION_MAX, position
    return f"0000000000000000_{position:016d}"


def parse_offset(token: str) -> int | str:
    """Returns a position, or the ``START``/``NOW`` sentinel; raises 400 otherwise."""
    if token == START or token == NOW:
        return token
    match = _TOKEN.match(token)
    if match is None:
        raise bad_request(f"malformed offset {token[:64]!r}", "INVALID_OFFSET")
    return int(match.group(1))
