"""The client's protocol rules as plain functions: no sockets, no event loop."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from trio_streams.client import _protocol as p
from trio_streams.client.errors import (
    CONFLICT, CONFLICT_EXISTS, CONFLICT_SEQ, DurableStreamError, FetchError, SequenceGapError, StaleEpochError,
    StreamClosedError, error_for_response,
)

OFF1, OFF2 = "0000000000000000_0000000000000010", "0000000000000000_0000000000000020"


def test_catch_up_answer_becomes_a_chunk_with_the_position_after_it() -> None:
    chunk = p.chunk_from_response(
        200, {"stream-next-offset": OFF2, "stream-up-to-date": "true"}, b"abc", offset=OFF1, cursor=None)
    assert chunk == p.Chunk((b"abc",), OFF2, None, True, False)


def test_partial_answer_is_not_up_to_date_and_closed_implies_up_to_date() -> None:
    partial = p.chunk_from_response(200, {"stream-next-offset": OFF2}, b"abc", offset=OFF1, cursor="7")
    assert (partial.up_to_date, partial.closed, partial.cursor) == (False, False, "7")
    eof = p.chunk_from_response(200, {"stream-next-offset": OFF2, "stream-closed": "TRUE"}, b"", offset=OFF2, cursor=None)
    assert eof.parts == () and eof.up_to_date and eof.closed


def test_long_poll_timeout_is_up_to_date_and_keeps_the_offset_if_absent() -> None:
    chunk = p.chunk_from_response(204, {"stream-cursor": "42"}, b"", offset=OFF1, cursor="41")
    assert chunk == p.Chunk((), OFF1, "42", True, False)


def test_stream_closed_other_values_are_not_closure() -> None:
    for value in ("false", "yes", "1", ""):
        chunk = p.chunk_from_response(200, {"stream-next-offset": OFF1, "stream-closed": value}, b"", offset=OFF1, cursor=None)
        assert not chunk.closed, value


def test_data_without_next_offset_is_refused_rather_than_re_read_forever() -> None:
    with pytest.raises(DurableStreamError) as info:
        p.chunk_from_response(200, {}, b"abc", offset=OFF1, cursor=None)
    assert info.value.code == "PARSE_ERROR"


@pytest.mark.parametrize(
    ("live", "content_type", "mode"),
    [
        (False, "application/json", p.CATCH_UP),
        ("long-poll", "application/json", p.LONG_POLL),
        ("sse", "application/octet-stream", p.SSE),
        (True, "application/json; charset=utf-8", p.SSE),
        (True, "text/plain", p.SSE),
        (True, "application/octet-stream", p.LONG_POLL),
    ],
)
def test_live_mode_after_catching_up(live: p.LiveMode, content_type: str, mode: str) -> None:
    state = p.ReadState(live, p.START, content_type=content_type)
    assert state.next_mode() == p.CATCH_UP  # catch-up first: cacheable, and it tells the content type
    state.apply(p.Chunk((), OFF1, "c1", True, False))
    assert state.next_mode() == mode


def test_live_session_stays_live_when_a_live_answer_is_partial() -> None:
    state = p.ReadState("sse", p.START)
    state.apply(p.Chunk((b"x",), OFF1, "c1", True, False))
    state.apply(p.Chunk((b"y",), OFF2, "c2", False, False))
    assert state.next_mode() == p.SSE
    assert state.params(p.SSE) == [("offset", OFF2), ("live", "sse"), ("cursor", "c2")]


def test_sse_failure_makes_auto_mode_fall_back_to_long_poll() -> None:
    state = p.ReadState(True, p.START, content_type="application/json")
    state.apply(p.Chunk((), OFF1, None, True, False))
    state.sse_failed = True
    assert state.next_mode() == p.LONG_POLL


def test_catch_up_requests_do_not_carry_the_cursor() -> None:
    state = p.ReadState("long-poll", OFF1, cursor="c9")
    assert state.params(p.CATCH_UP) == [("offset", OFF1)]
    assert state.params(p.LONG_POLL) == [("offset", OFF1), ("live", "long-poll"), ("cursor", "c9")]


def test_finished_rules() -> None:
    state = p.ReadState(True, p.START)
    state.apply(p.Chunk((), OFF1, None, True, False))
    assert not state.finished(stop_at_up_to_date=False)
    assert state.finished(stop_at_up_to_date=True)
    state.apply(p.Chunk((), OFF1, None, True, True))
    assert state.finished(stop_at_up_to_date=False)
    catch_up = p.ReadState(False, p.START)
    catch_up.apply(p.Chunk((), OFF1, None, True, False))
    assert catch_up.finished(stop_at_up_to_date=False)


def test_check_live_refuses_unknown_modes() -> None:
    assert p.check_live(True) is True and p.check_live("sse") == "sse"
    for bad in ("poll", 1, None):
        with pytest.raises(ValueError):
            p.check_live(bad)


def test_query_is_sorted_and_reserved_names_are_refused() -> None:
    query = p.build_query([("z", "1")], [("tenant", "t")], [("offset", OFF1), ("live", "sse"), ("cursor", "5")])
    assert [k for k, _ in query] == ["cursor", "live", "offset", "tenant", "z"]
    with pytest.raises(ValueError):
        p.build_query([], [("offset", "x")], [])


def test_json_messages_and_batches() -> None:
    pieces = [p.encode_message(v, json_mode=True) for v in ({"a": 1}, [1, 2], "s", None, b'{"pre":true}')]
    body = p.frame_batch(pieces, json_mode=True)
    # One array level: the server flattens it back into exactly these five messages.
    assert json.loads(body) == [{"a": 1}, [1, 2], "s", None, {"pre": True}]
    assert p.frame_batch([b"ab", b"cd"], json_mode=False) == b"abcd"


def test_bad_messages_fail_their_own_append() -> None:
    with pytest.raises(ValueError):
        p.encode_message(b"{not json", json_mode=True)
    with pytest.raises(ValueError):
        p.encode_message(float("nan"), json_mode=True)
    with pytest.raises(TypeError):
        p.encode_message({"a": 1}, json_mode=False)
    assert p.encode_message("é", json_mode=False) == "é".encode()


def test_decode_json_parts_flattens_each_array_once() -> None:
    assert p.decode_json_parts([b'[{"a":1},[2]]', b"", b"[3]"]) == [{"a": 1}, [2], 3]
    with pytest.raises(DurableStreamError):
        p.decode_json_parts([b"[1,"])


def test_create_headers_and_body() -> None:
    when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert p.create_headers("text/plain", None, when, True) == {
        "content-type": "text/plain", "stream-expires-at": "2030-01-02T03:04:05Z", "stream-closed": "true"}
    assert p.create_headers("application/json", 60, None, False)["stream-ttl"] == "60"
    with pytest.raises(ValueError):
        p.create_headers("text/plain", 60, when, False)
    with pytest.raises(ValueError):
        p.create_headers("text/plain", -1, None, False)
    assert p.create_body([1, {"b": 2}], json_mode=True) == b'[1,{"b":2}]'
    with pytest.raises(TypeError):
        p.create_body({"a": 1}, json_mode=True)


def test_head_result() -> None:
    head = p.head_result({"stream-next-offset": OFF1, "content-type": "text/plain", "stream-ttl": "30",
                          "stream-closed": "true"})
    assert (head.offset, head.content_type, head.ttl, head.closed, head.expires_at) == (OFF1, "text/plain", 30, True, None)


def test_backoff_grows_capped_with_jitter_and_honours_retry_after() -> None:
    b = p.Backoff(initial_delay_s=0.1, max_delay_s=2.0, multiplier=2.0, max_retries=3)
    assert [b.delay_s(n, 1.0) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert b.delay_s(3, 0.0) == pytest.approx(0.4)  # jitter never drops below half the step
    assert b.delay_s(1000, 0.5) <= 2.0  # no float overflow on long outages
    assert b.delay_s(0, 0.0, retry_after_s=5.0) == 5.0
    assert b.delay_s(0, 0.0, retry_after_s=10_000.0) == b.retry_after_max_s
    assert [b.may_retry(n) for n in range(5)] == [True, True, True, False, False]
    assert p.Backoff(max_retries=None).may_retry(10**6)


def test_retry_after_formats() -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    assert p.parse_retry_after("3", now) == 3.0
    assert p.parse_retry_after("Tue, 01 Jan 2030 00:00:07 GMT", now) == 7.0
    assert p.parse_retry_after("Mon, 31 Dec 2029 00:00:00 GMT", now) == 0.0
    assert p.parse_retry_after("soon", now) is None and p.parse_retry_after(None, now) is None


def test_which_failures_are_retried() -> None:
    # Refusals that did nothing: any request may be resent.
    assert p.retryable_status(429, idempotent=False) and p.retryable_status(503, idempotent=False)
    # Failures that may have been applied: only idempotent requests.
    assert p.retryable_status(500, idempotent=True) and not p.retryable_status(500, idempotent=False)
    assert not p.retryable_status(501, idempotent=True) and not p.retryable_status(404, idempotent=True)
    assert p.retryable_failure(request_unsent=True, idempotent=False)
    assert not p.retryable_failure(request_unsent=False, idempotent=False)


def test_error_table() -> None:
    url = "http://h/s"
    closed = error_for_response("append", 409, {"stream-closed": "true", "stream-next-offset": OFF2}, b"", url)
    assert isinstance(closed, StreamClosedError) and closed.final_offset == OFF2 and closed.code == "STREAM_CLOSED"
    assert error_for_response("create", 409, {}, b"", url).code == CONFLICT_EXISTS
    assert error_for_response("append", 409, {}, b"", url, seq_sent=True).code == CONFLICT_SEQ
    assert error_for_response("append", 409, {}, b"", url).code == CONFLICT
    stale = error_for_response("produce", 403, {"producer-epoch": "7"}, b"", url)
    assert isinstance(stale, StaleEpochError) and stale.current_epoch == 7
    gap = error_for_response("produce", 409, {"producer-expected-seq": "2", "producer-received-seq": "4"}, b"", url)
    assert isinstance(gap, SequenceGapError) and (gap.expected_seq, gap.received_seq) == (2, 4)
    body = b'{"error":{"code":"NOT_FOUND","message":"stream not found"}}'
    missing = error_for_response("read", 404, {}, body, url)
    assert (missing.code, missing.status) == ("NOT_FOUND", 404) and "stream not found" in str(missing)
    for status, code in ((401, "UNAUTHORIZED"), (403, "FORBIDDEN"), (410, "GONE"), (400, "BAD_REQUEST")):
        assert error_for_response("read", status, {}, b"", url).code == code
    for status in (500, 429, 418, 302):
        assert isinstance(error_for_response("read", status, {}, b"oops", url), FetchError)
