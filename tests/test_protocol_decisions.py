"""The status decisions moved into protocol/: lifecycle (rules.py) and reads (reads.py), pure."""

from __future__ import annotations

import pytest

from trio_streams.config import Settings, settings_from_env
from trio_streams.protocol import reads, rules
from trio_streams.protocol.errors import ProtocolError
from trio_streams.protocol.headers import Expiry, ForkSpec
from trio_streams.protocol.offsets import NOW, format_offset
from trio_streams.protocol.reads import CachePolicy, Chunk, Outcome
from trio_streams.protocol.state import Deleted, StreamState


def _state(stream_id: int = 1, tail: int = 10, **kw: object) -> StreamState:
    content_type = str(kw.pop("content_type", "text/plain"))
    expiry = kw.pop("expiry", Expiry())
    state = StreamState(stream_id, "p", content_type, expiry, 1000.0, tail=tail)  # type: ignore[arg-type]
    for name, value in kw.items():
        setattr(state, name, value)
    return state


def _status(call: object) -> int:
    try:
        call()  # type: ignore[operator]
    except ProtocolError as exc:
        return exc.status
    return 0


# -- lifecycle -------------------------------------------------------------


def test_decide_delete() -> None:
    assert _status(lambda: rules.decide_delete(None)) == 404
    assert _status(lambda: rules.decide_delete(_state(1), only_stream_id=2)) == 404  # a newer incarnation
    assert _status(lambda: rules.decide_delete(_state(soft_deleted=True, refcount=1))) == 410
    event, left, reply = rules.decide_delete(_state(1))
    assert (event, left, reply.status) == (Deleted(1), None, 204)
    event, left, reply = rules.decide_delete(_state(1, refcount=2), only_stream_id=1)
    assert left is not None and left.soft_deleted and reply.status == 204


def test_addressed_is_404_or_the_one_410() -> None:
    assert _status(lambda: rules.addressed(None)) == 404
    with pytest.raises(ProtocolError) as info:
        rules.addressed(_state(soft_deleted=True))
    assert (info.value.status, info.value.code) == (410, "GONE")
    assert rules.addressed(_state()).stream_id == 1


def test_stream_limit_refuses_new_streams_only() -> None:
    with pytest.raises(ProtocolError) as info:
        rules.check_stream_limit(None, 2, 2)
    assert (info.value.status, info.value.code) == (507, "TOO_MANY_STREAMS")
    rules.check_stream_limit(_state(), 2, 2)  # a re-create is answered
    rules.check_stream_limit(None, 1, 2)


def test_expiry_rule() -> None:
    ttl = _state(expiry=Expiry(ttl_s=10))
    assert not rules.is_expired(ttl, None, 1009.9) and rules.is_expired(ttl, None, 1010.0)  # from creation
    assert not rules.is_expired(ttl, 1005.0, 1014.0) and rules.is_expired(ttl, 1005.0, 1015.0)
    absolute = _state(expiry=Expiry(expires_at="t", expires_at_s=2000.0))
    assert not rules.is_expired(absolute, 1999.0, 1999.9) and rules.is_expired(absolute, 1999.9, 2000.0)
    assert not rules.is_expired(_state(expiry=Expiry(ttl_s=1), soft_deleted=True), None, 9999.0)


def test_fork_source_decisions() -> None:
    assert _status(lambda: rules.fork_source(None, False)) == 404
    assert _status(lambda: rules.fork_source(_state(), True)) == 404  # expired without forks: gone
    assert _status(lambda: rules.fork_source(_state(refcount=1), True)) == 409  # expired with forks: soft
    assert _status(lambda: rules.fork_source(_state(soft_deleted=True, refcount=1), False)) == 409
    assert _status(lambda: rules.fork_source(_state(damaged="torn"), False)) == 503
    assert rules.fork_source(_state(), False).stream_id == 1


def test_fork_anchor_and_sub_offsets() -> None:
    source = _state(tail=10)
    assert rules.fork_anchor(ForkSpec("p", None, 0), source) == 10
    assert rules.fork_anchor(ForkSpec("p", "-1", 0), source) == 0
    assert rules.fork_anchor(ForkSpec("p", NOW, 0), source) == 10
    assert rules.fork_anchor(ForkSpec("p", format_offset(4), 0), source) == 4
    assert _status(lambda: rules.fork_anchor(ForkSpec("p", format_offset(11), 0), source)) == 400
    assert _status(lambda: rules.fork_anchor(ForkSpec("p", "junk", 0), source)) == 400
    assert rules.byte_sub_position(4, 3, 7) == 7
    assert _status(lambda: rules.byte_sub_position(4, 4, 7)) == 400
    assert rules.message_sub_position(4, 2, b"1\n22\n333\n") == 4 + len(b"1\n22\n")
    assert _status(lambda: rules.message_sub_position(4, 4, b"1\n22\n333\n")) == 400
    assert _status(lambda: rules.require_fork_boundary(b"x")) == 400
    rules.require_fork_boundary(b"\n")


def test_default_fork_offset_is_the_source_tail_now() -> None:
    assert rules.with_default_offset(ForkSpec("p", None, 0), _state(tail=7)).offset == format_offset(7)
    assert rules.with_default_offset(ForkSpec("p", NOW, 0), _state(tail=7)).offset == format_offset(7)
    assert rules.with_default_offset(ForkSpec("p", "-1", 0), _state(tail=7)).offset == "-1"
    assert rules.with_default_offset(ForkSpec("p", None, 0), None).offset is None


# -- reads -----------------------------------------------------------------


def test_live_outcome_is_one_rule_for_every_way_a_stream_goes() -> None:
    watched = _state(1, tail=10)
    assert reads.live_outcome(1, watched, 10) is None
    assert reads.live_outcome(1, watched, 9) is Outcome.DATA
    assert reads.live_outcome(1, _state(1, tail=10, closed=True), 10) is Outcome.CLOSED
    assert reads.live_outcome(1, _state(1, tail=11, closed=True), 10) is Outcome.DATA  # data first
    assert reads.live_outcome(1, None, 10) is Outcome.GONE  # deleted, or expired
    assert reads.live_outcome(1, _state(1, soft_deleted=True, refcount=1), 5) is Outcome.GONE
    assert reads.live_outcome(1, _state(2, tail=20), 10) is Outcome.GONE  # re-created: another offset space
    assert reads.gone_error(None).status == 404
    assert reads.gone_error(_state(2)).status == 404
    assert reads.gone_error(_state(soft_deleted=True)).status == 410


def test_start_resolution() -> None:
    state = _state(tail=10)
    assert reads.resolve_start(None, state, required=False) == 0
    assert _status(lambda: reads.resolve_start(None, state, required=True)) == 400
    assert reads.resolve_start("-1", state, required=True) == 0
    assert reads.resolve_start("now", state, required=True) == NOW
    assert _status(lambda: reads.resolve_start(format_offset(11), state, required=False)) == 400
    json_state = _state(tail=10, content_type="application/json")
    assert reads.needs_boundary_check(json_state, 5) and not reads.needs_boundary_check(json_state, 10)
    assert not reads.needs_boundary_check(state, 5)
    assert reads.resumed_offset("") is None and reads.resumed_offset(format_offset(3)) == format_offset(3)
    assert _status(lambda: reads.resumed_offset("junk")) == 400


POLICY = CachePolicy("public", 60, 300)


def test_chunk_response_headers_and_304() -> None:
    state = _state(tail=10, closed=True)
    chunk = reads.chunk_of(4, b"abcdef", b"abcdef", 10, True)
    status, pairs = reads.chunk_response(state, chunk, "123", POLICY, 0.0, None)
    headers = dict(pairs)
    assert status == 200 and headers["stream-closed"] == "true" and "stream-cursor" not in headers
    assert headers["cache-control"] == "public, max-age=60, stale-while-revalidate=300"
    assert reads.chunk_response(state, chunk, None, POLICY, 0.0, f'W/{headers["etag"]}, "x"')[0] == 304
    empty = Chunk(10, 10, b"", b"", True, False)
    assert dict(reads.chunk_response(_state(), empty, "7", POLICY, 0.0, None)[1])["cache-control"] == "no-store"


def test_max_age_is_a_setting_capped_by_a_sooner_expiry() -> None:
    state = _state(expiry=Expiry(expires_at="t", expires_at_s=1030.0))
    chunk = reads.chunk_of(0, b"x", b"x", 10, False)
    assert reads.cache_control(CachePolicy("private", 600, 5), state, chunk, 1000.0) == (
        "private, max-age=30, stale-while-revalidate=5")
    assert reads.cache_control(CachePolicy("public", 10, 5), state, chunk, 1000.0).startswith("public, max-age=10,")


def test_a_catch_up_chunk_at_the_tail_of_an_open_stream_is_revalidated_by_caches() -> None:
    """Its Stream-Up-To-Date stops being true once more data arrives: a cache must not
    serve it as the whole tail without asking (the ETag answers 304 while it still is)."""
    open_stream = _state(tail=10)
    tail = reads.chunk_of(4, b"abcdef", b"abcdef", 10, False)
    status, pairs = reads.chunk_response(open_stream, tail, None, POLICY, 0.0, None)
    assert (status, dict(pairs)["cache-control"]) == (200, "public, no-cache")
    assert reads.chunk_response(open_stream, tail, None, POLICY, 0.0, dict(pairs)["etag"])[0] == 304
    complete = reads.chunk_of(0, b"abcd", b"abcd", 10, False)
    assert reads.cache_control(POLICY, open_stream, complete, 0.0) == "public, max-age=60, stale-while-revalidate=300"
    # A long-poll answer is keyed by its cursor and only read by pollers who go on from its end.
    long_poll = dict(reads.chunk_response(open_stream, tail, "123", POLICY, 0.0, None)[1])
    assert long_poll["cache-control"] == "public, max-age=60, stale-while-revalidate=300"
    assert long_poll["stream-up-to-date"] == "true"


def test_with_access_control_on_data_chunks_are_private() -> None:
    assert reads.cache_policy("public", 60, 300, authenticated=True) == CachePolicy("private", 60, 300)
    assert reads.cache_policy("public", 60, 300, authenticated=False) == POLICY


def test_no_content_says_closed_only_at_the_final_offset() -> None:
    closed = _state(tail=10, closed=True)
    assert dict(reads.no_content_response(closed, 10, "c")[1]).get("stream-closed") == "true"
    headers = dict(reads.no_content_response(closed, 4, "c")[1])
    assert "stream-closed" not in headers and headers["stream-cursor"] == "c"
    status, pairs, body = reads.now_response(_state(content_type="application/json"))
    assert (status, body) == (200, b"[]") and dict(pairs)["stream-next-offset"] == format_offset(10)


def test_streams_layer_settings_are_validated_and_read_from_the_environment() -> None:
    with pytest.raises(ValueError, match="expiry_sweep_interval_s"):
        Settings(expiry_sweep_interval_s=0)
    with pytest.raises(ValueError, match="cache_max_age_s"):
        Settings(cache_max_age_s=-1)
    env = {"TRIO_STREAMS_CACHE_MAX_AGE_S": "5", "TRIO_STREAMS_EXPIRY_SWEEP_INTERVAL_S": "2.5",
           "TRIO_STREAMS_CACHE_STALE_WHILE_REVALIDATE_S": "7"}
    settings = settings_from_env(env)
    assert (settings.cache_max_age_s, settings.expiry_sweep_interval_s, settings.cache_stale_while_revalidate_s) == (5, 2.5, 7)
