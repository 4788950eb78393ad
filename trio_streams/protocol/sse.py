"""Server-Sent Events framing (PROTOCOL.md 5.8).

Owns: the bytes of ``data`` and ``control`` events. Never: decides *when* to
send them.

Text payloads are split on every line ending (CR, LF, CRLF) into separate
``data:`` lines, so a payload can never end an event early or inject an
``event:`` line. Binary payloads are base64 on one line.

Every event carries ``id: <offset after it>`` as its last line. The protocol
does not use it (its clients resume from ``streamNextOffset``), but a
browser's ``EventSource`` sends it back as ``Last-Event-ID`` when it
reconnects, so a recycled connection resumes where it stopped instead of at
the URL's original offset. It comes last because parsers in the wild look for
``data:`` right after the ``event:`` line.
"""

from __future__ import annotations

import base64
import re
from typing import Final

import orjson

CONTENT_TYPE: Final = "text/event-stream"
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def data_event(payload: bytes, *, binary: bool, next_offset: str | None = None) -> bytes:
    """``next_offset``, the offset just past this payload, becomes the event's id."""
    if binary:
        data = b"data:" + base64.b64encode(payload) + b"\n"
    else:
        data = b"".join(_data_line(line) for line in _LINE_BREAK.split(payload))
    return b"event: data\n" + data + _id_line(next_offset) + b"\n"


def _id_line(offset: str | None) -> bytes:
    return b"" if offset is None else b"id: " + offset.encode("ascii") + b"\n"


def _data_line(line: bytes) -> bytes:
    # SSE parsers drop one space after "data:", so a line that starts with a
    # space needs an explicit separator space to keep its own.
    return (b"data: " if line.startswith(b" ") else b"data:") + line + b"\n"


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
    return b"event: control\ndata:" + orjson.dumps(control) + b"\n" + _id_line(next_offset) + b"\n"


def text_cut(data: bytes) -> int:
    """How much of a partial text chunk can go out without splitting a character or a CRLF.

    SSE carries text; a multi-byte UTF-8 sequence split across two events
    would decode as garbage on both sides, and a CR/LF pair split across
    events would read back as two line breaks.
    """
    end = len(data)
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte < 0x80:
            break
        if byte >= 0xC0:  # a lead byte: keep its sequence only if complete
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            if back < need:
                end -= back
            break
    if end and data[end - 1] == 0x0D:
        end -= 1
    return end or len(data)
