"""SSE event ids and Last-Event-ID: a reconnecting EventSource resumes where it stopped.

A browser's EventSource reconnects to the URL it was opened with (often
``offset=-1``) whenever the server recycles the connection; it sends the id
of the last event it received as ``Last-Event-ID``. Every event carries the
offset after it as its id, and that header takes precedence over ``offset``.
The same behaviour in a real browser is tests/test_browser.py; the ids and
Last-Event-ID rules are tested in process (tests/test_inproc_sse_resume.py).
Here: the encoding (pure).
"""

from __future__ import annotations

import re

from trio_streams.protocol import sse

OFFSET = "0000000000000000_0000000000000042"


# -- encoding (pure) ---------------------------------------------------------------


def test_data_and_control_events_end_with_the_offset_as_id() -> None:
    data = sse.data_event(b"one\ntwo", binary=False, next_offset=OFFSET)
    assert data == b"event: data\ndata:one\ndata:two\nid: " + OFFSET.encode() + b"\n\n"
    binary = sse.data_event(b"\x00\xff", binary=True, next_offset=OFFSET)
    assert binary == b"event: data\ndata:AP8=\nid: " + OFFSET.encode() + b"\n\n"
    control = sse.control_event(OFFSET, cursor="7", up_to_date=True, closed=False)
    assert control.endswith(b"\nid: " + OFFSET.encode() + b"\n\n")
    # Parsers in the wild (the official suite among them) expect data: right after event:.
    match = re.search(rb"event: control\s*\n\s*data:({[^}]+})", control)
    assert match is not None and b"streamNextOffset" in match.group(1)


def test_a_text_payload_cannot_forge_an_id() -> None:
    payload = b"x\nid: 0000000000000000_0000000000000000\r\nid:evil\rdone"
    lines = sse.data_event(payload, binary=False, next_offset=OFFSET).split(b"\n")
    assert [line for line in lines if line.startswith(b"id")] == [b"id: " + OFFSET.encode()]
