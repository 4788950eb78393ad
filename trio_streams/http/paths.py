"""Stream paths: the only place a URL path becomes a stream name.

Owns: the rules that keep names unambiguous and harmless (no empty, ``.``
or ``..`` segments, no control characters, bounded length) and the reserved
``__ds`` namespace. Names never reach the file system (files are named by
stream id), but they are echoed and used as keys, so they stay clean.
"""

from __future__ import annotations

import re

from ..config import Settings
from ..protocol.errors import ProtocolError

_BAD_PATH_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
RESERVED_SEGMENT = "__ds"


def stream_name(url_path: str, settings: Settings) -> str:
    """The stream's name below the prefix; 400 for anything that could escape or confuse."""
    name = url_path[len(settings.stream_prefix):]
    if not name or len(name.encode()) > settings.stream_path_bytes_max:
        raise ProtocolError(400, "INVALID_PATH", "stream path is empty or too long")
    segments = name.split("/")
    if _BAD_PATH_CHARS.search(name) or any(s in ("", ".", "..") for s in segments):
        raise ProtocolError(400, "INVALID_PATH", "stream path has empty, '.' or '..' segments or control characters")
    if segments[0] == RESERVED_SEGMENT:
        raise ProtocolError(501, "NOT_IMPLEMENTED", "subscription APIs are not implemented by this server")
    return name
