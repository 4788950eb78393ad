"""The reader's SSE parser and chunker, fed every way a network can cut the bytes."""

from __future__ import annotations

import base64
import json
import random

import pytest

from trio_streams.client._protocol import Chunk
from trio_streams.client._sse import SseChunker, SseDecoder, SseEvent
from trio_streams.client.errors import DurableStreamError
from trio_streams.protocol import sse as server_sse  # the server's encoder: a round-trip partner

OFF1, OFF2 = "0000000000000000_0000000000000010", "0000000000000000_0000000000000020"


def feed_in_pieces(data: bytes, cuts: list[int]) -> list[SseEvent]:
    decoder, events, start = SseDecoder(), [], 0
    for cut in [*cuts, len(data)]:
        events += decoder.feed(data[start:cut])
        start = cut
    return events


def all_splittings(data: bytes) -> list[list[SseEvent]]:
    """Whole, byte at a time, and a few random cuttings."""
    rng = random.Random(1234)
    cuttings = [[], list(range(1, len(data)))]
    cuttings += [sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, 7))) for _ in range(20)]
    return [feed_in_pieces(data, cuts) for cuts in cuttings]


def control(offset: str, **fields: object) -> bytes:
    return b"event: control\ndata:" + json.dumps({"streamNextOffset": offset, **fields}).encode() + b"\n\n"


def test_line_endings_fields_and_comments_any_splitting() -> None:
    wire = (
        b"\xef\xbb\xbf: keep-alive comment\r\n"
        b"event: data\r\ndata:[\r\ndata: {\"k\":\"v\"}\rdata:]\n\r\n"
        b"id: 7\nretry: 10\nevent:control\ndata:{\"streamNextOffset\":\"o\"}\n\n"
        b"data\n\n"  # a bare field name is the field with an empty value
        b"event: data\ndata:unterminated"  # never dispatched: the stream ended mid-event
    )
    expected = [SseEvent("data", '[\n{"k":"v"}\n]'), SseEvent("control", '{"streamNextOffset":"o"}'), SseEvent("message", "")]
    for events in all_splittings(wire):
        assert events == expected


def test_cr_at_the_end_of_a_read_waits_for_a_possible_lf() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"event: data\r\ndata: x\r") == []
    # Had the CR been taken as a line end, this LF would be a blank line dispatching early.
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r\n") == [SseEvent("data", "x")]


def test_multibyte_characters_split_across_reads() -> None:
    wire = "event: data\ndata:[\"héllo ✓ 𝄞\"]\n\n".encode()
    for events in all_splittings(wire):
        assert events == [SseEvent("data", '["héllo ✓ 𝄞"]')]


def test_blank_lines_without_data_dispatch_nothing() -> None:
    assert feed_in_pieces(b"\n\nevent: control\n\n\n", list(range(1, 17))) == []


def test_oversized_line_is_refused() -> None:
    decoder = SseDecoder()
    with pytest.raises(DurableStreamError):
        for _ in range(17):
            decoder.feed(b"x" * (1024 * 1024))


def chunks_of(wire: bytes, *, base64_data: bool, cuts: list[int]) -> list[Chunk]:
    chunker, out = SseChunker(base64_data=base64_data, cursor=None), []
    for event in feed_in_pieces(wire, cuts):
        chunk = chunker.on_event(event)
        if chunk is not None:
            out.append(chunk)
    return out


def test_data_events_travel_with_their_control_event() -> None:
    wire = (
        server_sse.data_event(b'[{"k":"v"},{"k":"w"}]', binary=False)
        + server_sse.control_event(OFF1, cursor="c1", up_to_date=False, closed=False)
        + server_sse.data_event(b"[3]", binary=False)
        + server_sse.data_event(b"[4]", binary=False)
        + server_sse.control_event(OFF2, cursor=None, up_to_date=True, closed=True)
    )
    expected = [
        Chunk((b'[{"k":"v"},{"k":"w"}]',), OFF1, "c1", False, False),
        Chunk((b"[3]", b"[4]"), OFF2, "c1", True, True),  # cursor may be omitted at EOF: keep the last one
    ]
    assert chunks_of(wire, base64_data=False, cuts=[]) == expected
    assert chunks_of(wire, base64_data=False, cuts=list(range(1, len(wire)))) == expected


def test_text_with_line_breaks_round_trips_through_the_server_encoder() -> None:
    payload = b"line one\r\nline two\n\n  indented\rlast"
    wire = server_sse.data_event(payload, binary=False) + server_sse.control_event(OFF1, cursor="c", up_to_date=True, closed=False)
    for cuts in ([], list(range(1, len(wire)))):
        (chunk,) = chunks_of(wire, base64_data=False, cuts=cuts)
        # SSE normalises line breaks to LF; everything else survives.
        assert chunk.data == b"line one\nline two\n\n  indented\nlast"


def test_base64_data_is_decoded_also_when_wrapped_over_lines() -> None:
    payload = bytes(range(256)) * 3
    text = base64.b64encode(payload).decode()
    wrapped = "".join(f"data:{text[i:i + 76]}\r\n" for i in range(0, len(text), 76)).encode()
    wire = b"event: data\r\n" + wrapped + b"\r\n" + control(OFF1, streamCursor="c", upToDate=True)
    wire += server_sse.data_event(b"", binary=True) + control(OFF2, streamClosed=True)
    for cuts in ([], list(range(1, len(wire)))):
        first, last = chunks_of(wire, base64_data=True, cuts=cuts)
        assert first == Chunk((payload,), OFF1, "c", True, False)
        assert last.data == b"" and last.closed and last.up_to_date


def test_binary_round_trip_through_the_server_encoder() -> None:
    payload = b"\x00\xff\r\n\x80binary"
    wire = server_sse.data_event(payload, binary=True) + server_sse.control_event(OFF1, cursor="c", up_to_date=True, closed=False)
    assert chunks_of(wire, base64_data=True, cuts=list(range(1, len(wire))))[0].data == payload


def test_control_without_data_moves_the_position_only() -> None:
    (chunk,) = chunks_of(control(OFF1, streamCursor="9", upToDate=True), base64_data=False, cuts=[])
    assert chunk == Chunk((), OFF1, "9", True, False)


def test_unknown_events_are_ignored_and_bad_ones_refused() -> None:
    chunker = SseChunker(base64_data=True, cursor=None)
    assert chunker.on_event(SseEvent("message", "hello")) is None
    with pytest.raises(DurableStreamError):
        chunker.on_event(SseEvent("data", "not base64!"))
    with pytest.raises(DurableStreamError):
        chunker.on_event(SseEvent("control", '{"upToDate":true}'))
    with pytest.raises(DurableStreamError):
        chunker.on_event(SseEvent("control", "[1,2"))
