"""Server-Sent Events framing (PROTOCOL.md 5.8).

Owns: the bytes of ``data`` and ``control`` events. Never: decides *when* to
send them.

Text payloads are split on every line ending (CR, LF, CRLF) into separate
``data:`` lines, so a payload can never end an event early or inject an
``event:`` line. Binary payloads are base64 on one line.
"""

from __future__ import annotations

import base64
import re
from typing import Final

import orjson

CONTENT_TYPE: Final = "text/event-stream"
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def data_event(payload: bytes, *, binary: bool) -> bytes:
    if binary:
        return b"event: data\ndata: " + base64.b64encode(payload) + b"\n\n"
    lines = _LINE_BREAK.split(payload)
    return b"event: data\n" + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


def control_event(
    next_offset: str,
    *,
    cursor: str | None,
    up_to_date: bool,
    closed: bool,
) -> bytes:
    control: dict[str, object] = {"streamNextOffset": next_offset}
    if cursor is not None and not closed:
        control["streamCursor"] = cursor
    if up_to_date or closed:
        control["upToDate"] = True
    if closed:
        control["streamClosed"] = True
    return b"event: control\ndata: " + orjson.dumps(control) + b"\n\n"
