"""Server-Sent Events for the reader: bytes in, events out, events into Chunks.

Owns: ``SseDecoder``, an incremental parser of the WHATWG event-stream
format (any chunking of the input gives the same events: lines may end in
CR, LF or CRLF, even when the CR and LF arrive in different reads), and
``SseChunker``, which pairs the protocol's ``data`` events with the
``control`` event that follows them (PROTOCOL.md 5.8), decoding base64 when
the server said ``stream-sse-data-encoding: base64``.

Never does IO and never decides when to reconnect: the session in
``response.py`` feeds bytes and acts on the Chunks.

Data events are only released together with their control event, so a
connection that drops between the two loses nothing: the reader reconnects
from the last control offset and gets the data again, exactly once.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from ._protocol import Chunk
from .errors import PARSE_ERROR, DurableStreamError

_BOM = "\ufeff"
_LINE_BYTES_MAX = 16 * 1024 * 1024  # one SSE line; far above any sane read chunk


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str


class SseDecoder:
    """Incremental event-stream parser: ``feed(bytes)`` returns the events completed so far."""

    def __init__(self) -> None:
        self._buf = b""
        self._first_line = True
        self._event = ""
        self._data: list[str] = []

    def feed(self, data: bytes) -> list[SseEvent]:
        self._buf += data
        events: list[SseEvent] = []
        start = 0
        buf = self._buf
        cr, lf = buf.find(b"\r"), buf.find(b"\n")
        while True:
            # Re-search only past a consumed terminator: one pass over the buffer, not one per line.
            if 0 <= cr < start:
                cr = buf.find(b"\r", start)
            if 0 <= lf < start:
                lf = buf.find(b"\n", start)
            if cr == -1 and lf == -1:
                break
            if cr != -1 and (lf == -1 or cr < lf):
                if cr + 1 == len(buf):
                    break  # a CR at the end may be half of a CRLF: wait for the next byte
                end, nxt = cr, cr + 2 if buf[cr + 1] == 0x0A else cr + 1
            else:
                end, nxt = lf, lf + 1
            event = self._line(buf[start:end])
            if event is not None:
                events.append(event)
            start = nxt
        self._buf = buf[start:]
        if len(self._buf) > _LINE_BYTES_MAX:
            raise DurableStreamError("SSE line too long", PARSE_ERROR)
        return events

    def _line(self, raw: bytes) -> SseEvent | None:
        line = raw.decode("utf-8", "replace")
        if self._first_line:
            self._first_line = False
            line = line.removeprefix(_BOM)
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: servers use them as keep-alives
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        # "id" and "retry" steer browser EventSource reconnects; our offsets do that job.
        return None

    def _dispatch(self) -> SseEvent | None:
        event, data = self._event, self._data
        self._event, self._data = "", []
        if not data:
            return None
        return SseEvent(event or "message", "\n".join(data))


class SseChunker:
    """Pairs ``data`` events with the next ``control`` event into one Chunk."""

    def __init__(self, *, base64_data: bool, cursor: str | None) -> None:
        self._base64 = base64_data
        self._cursor = cursor
        self._parts: list[bytes] = []

    def on_event(self, event: SseEvent) -> Chunk | None:
        if event.event == "data":
            self._parts.append(self._payload(event.data))
            return None
        if event.event != "control":
            return None  # unknown event types are for extensions we do not speak
        control = _control(event.data)
        closed = control.get("streamClosed") is True
        self._cursor = control.get("streamCursor") or self._cursor
        parts, self._parts = tuple(self._parts), []
        # streamClosed implies upToDate (PROTOCOL.md 5.8), even when omitted.
        up_to_date = closed or control.get("upToDate") is True
        return Chunk(parts, control["streamNextOffset"], self._cursor, up_to_date, closed)

    def _payload(self, data: str) -> bytes:
        if not self._base64:
            return data.encode()
        # Servers may wrap base64 over several data: lines; the line breaks are not payload.
        text = data.replace("\n", "").replace("\r", "")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise DurableStreamError("SSE data event is not valid base64", PARSE_ERROR) from None


def _control(data: str) -> dict[str, Any]:
    try:
        control = json.loads(data)
    except ValueError:
        control = None
    if not isinstance(control, dict) or not isinstance(control.get("streamNextOffset"), str):
        raise DurableStreamError(f"bad SSE control event: {data[:200]!r}", PARSE_ERROR)
    return control
