"""Stateful model test: a real server process and protocol_model.Model must agree.

Hypothesis drives long random histories of creates (byte and JSON streams,
TTL or Expires-At, closed or not, with or without a body), appends (plain,
Stream-Seq, idempotent producers with new epochs, duplicates, gaps and
stale epochs), closes, deletes, forks (offsets and sub-offsets), catch-up
reads from any valid offset (and forged mid-message or past-the-tail ones,
which must be refused), HEAD, and restarts (SIGTERM and kill -9: the server
runs with fsync=always, so nothing acknowledged may be lost). Every status,
protocol header and body must match the model.

Offsets stay opaque: the test learns each token from the server and checks
that they are consistent (one token per position, ordered like positions,
and a read at a returned offset continues exactly where the last one
ended). Forging a token (only to aim inside a JSON message, past the tail,
or at an arbitrary byte of a byte stream) relies on today's
``<16 digits>_<16 digits>`` format, whose last field counts bytes.

Runs: 12 examples x 30 steps in `make test`; TRIO_STREAMS_MODEL_EXAMPLES and
TRIO_STREAMS_MODEL_STEPS set more (`make test-all`).
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import seed as hypothesis_seed
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from conftest import PREFIX, Server, unique
from fuzzlib import SEED, Guard, assert_error_shape, model_runs, new_client, reproduce_hint
from protocol_model import JSON, AppendReq, Anchor, CreateReq, Expected, Expiry, ForkReq, Model, Stream, media_type

READ_CHUNK_BYTES_MAX = 10  # small, so reads are split and offsets must chain
RESTARTS_PER_EXAMPLE_MAX = 2  # each costs a server start-up
NAMES = ("a", "b", "c")
CONTENT_TYPES = ("application/octet-stream", "text/plain", "application/json")
APPEND_VARIANTS = {  # the same media type written differently: must still match
    "application/octet-stream": ["application/octet-stream", "Application/Octet-Stream"],
    "text/plain": ["text/plain", "text/plain; charset=utf-8", "TEXT/PLAIN"],
    "application/json": ["application/json", "application/json; charset=utf-8"],
}
FAR_FUTURE = "2999-01-01T00:00:00Z"
FAR_FUTURE_S = datetime.fromisoformat("2999-01-01T00:00:00+00:00").timestamp()
EXPIRIES = st.sampled_from([
    Expiry(), Expiry(), Expiry(ttl_s=86_400), Expiry(ttl_s=604_800),
    Expiry(expires_at=FAR_FUTURE, expires_at_s=FAR_FUTURE_S),
    Expiry(expires_at="2999-01-01T00:00:00.000Z", expires_at_s=FAR_FUTURE_S),  # the same instant
    Expiry(expires_at="2999-01-01T01:00:00+01:00", expires_at_s=FAR_FUTURE_S),
])
JSON_MESSAGES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
PRODUCER_IDS = ("p", "q")
STREAM_SEQS = ("1", "2", "3", "10", "a")
_TOKEN_POSITION = re.compile(r"_([0-9]{16})\Z")


# -- offsets: learned, checked, and (rarely) forged --------------------------------


def learn(stream: Stream, index: int, token: str) -> None:
    """Records the server's token for a position; it must agree with all earlier ones."""
    assert token and len(token) < 256 and not set(token) & set(",&=?/"), f"bad offset token {token!r}"
    assert token not in ("-1", "now"), f"a sentinel as an offset: {token!r}"
    known = stream.tokens.get(index)
    assert known is None or known == token, f"position {index}: token {token!r}, earlier {known!r}"
    for other, other_token in stream.tokens.items():
        assert (other < index) == (other_token < token) or other == index, (
            f"tokens out of order: {other}->{other_token!r} vs {index}->{token!r}")
    stream.tokens[index] = token


def _position(token: str) -> int:
    match = _TOKEN_POSITION.search(token)
    assert match, f"cannot forge from token {token!r}: format changed"
    return int(match.group(1))


def _forge(token: str, position: int) -> str:
    return token[: -16] + f"{position:016d}"


def forge_bytes(stream: Stream, index: int) -> str:
    """The token for any byte of a byte stream (bytes are units: positions move in step)."""
    known_index, token = next(iter(stream.tokens.items()))
    return _forge(token, _position(token) + index - known_index)


def forge_mid_message(stream: Stream) -> str | None:
    """A token strictly inside one stored JSON message (both of its ends learned)."""
    for start in range(stream.tail):
        a, b = stream.tokens.get(start), stream.tokens.get(start + 1)
        if a is not None and b is not None and _position(b) - _position(a) >= 2:
            return _forge(a, _position(a) + 1)
    return None


def forge_beyond(stream: Stream) -> str:
    token = stream.tokens[stream.tail]
    return _forge(token, _position(token) + 1)


def render(stream: Stream | None, anchor: Anchor) -> str | None:
    if anchor.kind == "omit":
        return None
    if anchor.kind == "start":
        return "-1"
    if anchor.kind == "now":
        return "now"
    assert stream is not None
    if anchor.kind == "mid":
        token = forge_mid_message(stream)
        assert token is not None
        return token
    if anchor.kind == "beyond":
        return forge_beyond(stream)
    return stream.tokens.get(anchor.index) or forge_bytes(stream, anchor.index)


def draw_anchor(data: st.DataObject, stream: Stream | None, allow_omit: bool) -> Anchor:
    """An offset to aim at. What is drawn depends only on the model, never on the tokens
    learned so far, so that Hypothesis replays a history exactly; ``concrete`` then
    maps it onto what has been learned."""
    kinds = ["start", "now"] + (["omit"] if allow_omit else [])
    if stream is not None:
        kinds += ["index"] * 4 + ["beyond"] + (["mid"] * 2 if stream.json else [])
    kind = data.draw(st.sampled_from(kinds), label="offset kind")
    if kind != "index":
        return Anchor(kind)
    assert stream is not None
    return Anchor("index", data.draw(st.integers(0, stream.tail), label="offset"))


def concrete(stream: Stream | None, anchor: Anchor) -> Anchor:
    """The drawn offset, or the nearest one whose token is known: a JSON stream's valid
    offsets are the message boundaries learned so far; forging needs known tokens."""
    if stream is None:
        return anchor
    if anchor.kind == "index" and stream.json:
        known = [i for i in stream.tokens if i <= anchor.index]
        return Anchor("index", max(known)) if known else Anchor("start")
    if anchor.kind == "mid" and forge_mid_message(stream) is None:
        return Anchor("start")
    if anchor.kind == "beyond" and stream.tail not in stream.tokens:
        return Anchor("start")
    return anchor


# -- the machine -----------------------------------------------------------------------


class ProtocolMachine(RuleBasedStateMachine):
    guard: Guard  # set by the test before the machine runs

    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.ns = unique("m")
        self.restarts = 0
        # Each example gets its own data directory: what a restart recovers must
        # depend on this history alone, or a failure could not be replayed.
        self.guard.fresh_server()

    def teardown(self) -> None:
        """Whatever the history, SIGTERM shuts the server down cleanly."""
        if self.guard.healthy() is None:
            status = self.guard.server.stop()
            assert status == 0, f"SIGTERM exit status {status}:\n{self.guard.server.log_tail()}"

    def url(self, name: str) -> str:
        return f"{PREFIX}{self.ns}/{name}"

    @property
    def client(self) -> httpx.Client:
        return self.guard.client

    def request(self, what: str, method: str, name: str, **kwargs: Any) -> httpx.Response:
        with self.guard.example(what):
            return self.client.request(method, self.url(name), **kwargs)

    # -- checks --------------------------------------------------------------------

    def check(self, resp: httpx.Response, exp: Expected, name: str, what: str) -> None:
        ctx = f"{what}: got {resp.status_code} {dict(resp.headers)} {resp.content[:300]!r}"
        assert resp.status_code == exp.status, f"expected {exp.status}; {ctx}"
        if resp.status_code >= 400 and resp.request.method != "HEAD":
            assert_error_shape(resp.content, ctx)
        h = resp.headers
        assert (h.get("stream-closed") == "true") == exp.closed, f"Stream-Closed should be {exp.closed}; {ctx}"
        if exp.tail is None:
            assert "stream-next-offset" not in h, f"unexpected Stream-Next-Offset; {ctx}"
        else:
            learn(self.model.streams[name], exp.tail, h["stream-next-offset"])
        self._check_producer_headers(h, exp, ctx)
        if exp.content_type is not None:
            assert h.get("content-type") == exp.content_type, ctx
        if exp.location:
            assert h.get("location", "").endswith(self.url(name)), ctx
        if exp.expiry is not None:
            ttl = str(exp.expiry.ttl_s) if exp.expiry.ttl_s is not None else None
            assert (h.get("stream-ttl"), h.get("stream-expires-at")) == (ttl, exp.expiry.expires_at), ctx

    @staticmethod
    def _check_producer_headers(h: httpx.Headers, exp: Expected, ctx: str) -> None:
        epoch = exp.producer[0] if exp.producer else exp.current_epoch
        assert h.get("producer-epoch") == (None if epoch is None else str(epoch)), ctx
        assert h.get("producer-seq") == (str(exp.producer[1]) if exp.producer else None), ctx
        expected, received = exp.gap or (None, None)
        assert h.get("producer-expected-seq") == (None if expected is None else str(expected)), ctx
        assert h.get("producer-received-seq") == (None if received is None else str(received)), ctx

    # -- creates and forks ------------------------------------------------------------

    @rule(data=st.data(), name=st.sampled_from(NAMES), ctype=st.sampled_from(CONTENT_TYPES),
          expiry=EXPIRIES, closed=st.booleans())
    def create(self, data: st.DataObject, name: str, ctype: str, expiry: Expiry, closed: bool) -> None:
        units, body = self.draw_body(data, ctype, creating=True)
        req = CreateReq(ctype, expiry, closed, units, bool(body))
        self.put(name, req, body, {})

    @rule(data=st.data(), name=st.sampled_from(NAMES), source=st.sampled_from(NAMES),
          sub_offset=st.sampled_from([None, None, 0, 1, 2, 3, 5]), closed=st.sampled_from([False, False, False, True]))
    def fork(self, data: st.DataObject, name: str, source: str, sub_offset: int | None, closed: bool) -> None:
        src = self.model.streams.get(source)
        live = src if src is not None and not src.soft_deleted else None
        anchor = concrete(live, draw_anchor(data, live, allow_omit=True))
        ctype = data.draw(st.sampled_from([None, None, "same", "application/json", "text/plain"]), label="ctype")
        if ctype == "same":
            ctype = src.content_type if src is not None else None
        expiry = data.draw(st.sampled_from([Expiry(), Expiry(), Expiry(ttl_s=86_400)]), label="expiry")
        req = CreateReq(ctype, expiry, closed, None, False, ForkReq(source, anchor, sub_offset))
        headers = {"stream-forked-from": self.url(source)}
        offset = render(src, anchor)
        if offset is not None:
            headers["stream-fork-offset"] = offset
        if sub_offset is not None:
            headers["stream-fork-sub-offset"] = str(sub_offset)
        self.put(name, req, b"", headers)

    def put(self, name: str, req: CreateReq, body: bytes, headers: dict[str, str]) -> None:
        if req.content_type is not None:
            headers["content-type"] = req.content_type
        if req.expiry.ttl_s is not None:
            headers["stream-ttl"] = str(req.expiry.ttl_s)
        if req.expiry.expires_at is not None:
            headers["stream-expires-at"] = req.expiry.expires_at
        if req.closed:
            headers["stream-closed"] = "true"
        what = f"PUT {name} {headers} {body[:100]!r}"
        resp = self.request(what, "PUT", name, content=body, headers=headers)
        self.check(resp, self.model.create(name, req), name, what)

    def draw_body(self, data: st.DataObject, ctype: str, *, creating: bool) -> tuple[Any, bytes]:
        """(units the model stores, the bytes sent); units None for invalid JSON."""
        if media_type(ctype) != JSON:
            raw = data.draw(st.binary(min_size=0 if creating else 1, max_size=24), label="body")
            return raw, raw
        shape = data.draw(st.sampled_from(["array"] * 6 + ["single", "invalid", "empty"]), label="json body")
        if shape == "invalid":
            return None, b'{"unterminated'
        if shape == "empty":
            return [], b"[]" if not creating or data.draw(st.booleans()) else b""
        messages = data.draw(st.lists(JSON_MESSAGES, min_size=1, max_size=3), label="messages")
        if shape == "single" and not isinstance(messages[0], list):
            return messages[:1], json.dumps(messages[0]).encode()
        return messages, json.dumps(messages).encode()

    # -- appends and closes -------------------------------------------------------------

    @rule(data=st.data(), name=st.sampled_from(NAMES), close=st.sampled_from([False, False, False, True]))
    def append(self, data: st.DataObject, name: str, close: bool) -> None:
        stream = self.model.streams.get(name)
        ctype = stream.content_type if stream is not None else data.draw(st.sampled_from(CONTENT_TYPES))
        sent_type = data.draw(st.sampled_from(APPEND_VARIANTS[media_type(ctype)] + ["application/json", "text/plain"]),
                              label="append content type")
        units, body = self.draw_body(data, sent_type, creating=False)
        if body == b"" and not close:
            body, units = b"[]", []
        self.post(data, name, AppendReq(sent_type, units, bool(body), None, None, close), body)

    @rule(data=st.data(), name=st.sampled_from(NAMES))
    def close(self, data: st.DataObject, name: str) -> None:
        self.post(data, name, AppendReq("text/plain", None, False, None, None, True), b"")

    def post(self, data: st.DataObject, name: str, req: AppendReq, body: bytes) -> None:
        stream = self.model.streams.get(name)
        seq = data.draw(st.sampled_from([None, None, *STREAM_SEQS]), label="stream-seq")
        producer = data.draw(producers(stream), label="producer")
        req = AppendReq(req.content_type, req.units, req.has_body, seq, producer, req.close)
        headers = {"content-type": req.content_type}
        if seq is not None:
            headers["stream-seq"] = seq
        if producer is not None:
            headers |= {"producer-id": producer[0], "producer-epoch": str(producer[1]), "producer-seq": str(producer[2])}
        if req.close:
            headers["stream-closed"] = "true"
        what = f"POST {name} {headers} {body[:100]!r}"
        resp = self.request(what, "POST", name, content=body, headers=headers)
        self.check(resp, self.model.append(name, req), name, what)

    # -- delete, head, reads, restarts ------------------------------------------------------

    @rule(name=st.sampled_from(NAMES))
    def delete(self, name: str) -> None:
        resp = self.request(f"DELETE {name}", "DELETE", name)
        self.check(resp, self.model.delete(name), name, f"DELETE {name}")

    @rule(name=st.sampled_from(NAMES))
    def head(self, name: str) -> None:
        resp = self.request(f"HEAD {name}", "HEAD", name)
        self.check(resp, self.model.head(name), name, f"HEAD {name}")
        assert resp.content == b""

    @rule(data=st.data(), name=st.sampled_from(NAMES))
    def read(self, data: st.DataObject, name: str) -> None:
        stream = self.model.streams.get(name)
        live = stream if stream is not None and not stream.soft_deleted else None
        anchor = concrete(live, draw_anchor(data, live, allow_omit=True))
        token = render(live, anchor)
        params = {} if token is None else {"offset": token}
        what = f"GET {name} offset={token!r}"
        resp = self.request(what, "GET", name, params=params)
        start = self.model.read_start(name, anchor)
        if isinstance(start, Expected):
            self.check(resp, start, name, what)
            return
        stream, position = start
        if position == "now":
            self.check_now(resp, stream, name, what)
        else:
            self.read_to_tail(resp, stream, position, name, what)

    def check_now(self, resp: httpx.Response, stream: Stream, name: str, what: str) -> None:
        self.check(resp, Expected(200, stream.tail, stream.closed, stream.content_type), name, what)
        assert resp.content == (b"[]" if stream.json else b""), what
        assert resp.headers.get("stream-up-to-date") == "true", what

    def read_to_tail(self, resp: httpx.Response, stream: Stream, position: int, name: str, what: str) -> None:
        """Follows Stream-Next-Offset chunk by chunk; every chunk continues the last exactly."""
        for _ in range(stream.tail + 2):
            got = self.decode(resp, stream, what)
            end = position + len(got)
            assert got == stream.units[position:end], f"{what}: read {got!r} at {position}, model {stream.units!r}"
            assert got or end == stream.tail, f"{what}: empty chunk before the tail"
            if not stream.json:
                assert end == min(stream.tail, position + READ_CHUNK_BYTES_MAX), f"{what}: short chunk"
            at_tail = end == stream.tail
            self.check(resp, Expected(200, end, stream.closed and at_tail, stream.content_type), name, what)
            assert (resp.headers.get("stream-up-to-date") == "true") == at_tail, f"{what}: Stream-Up-To-Date"
            if at_tail:
                return
            position, token = end, resp.headers["stream-next-offset"]
            what = f"GET {name} offset={token!r}"
            resp = self.request(what, "GET", name, params={"offset": token})
        raise AssertionError(f"{what}: reads never reached the tail")

    @staticmethod
    def decode(resp: httpx.Response, stream: Stream, what: str) -> Any:
        assert resp.status_code == 200, f"{what}: {resp.status_code} {resp.text[:300]}"
        if not stream.json:
            return resp.content
        value = json.loads(resp.content)
        assert isinstance(value, list), f"{what}: JSON read is not an array"
        return value

    # Two restarts let a history cross a checkpoint (written at SIGTERM) and then crash.
    @precondition(lambda self: self.restarts < RESTARTS_PER_EXAMPLE_MAX and self.model.streams)
    @rule(sig=st.sampled_from([signal.SIGTERM, signal.SIGKILL]))
    def restart(self, sig: int) -> None:
        """Nothing acknowledged is lost, whichever way the server stops (fsync=always)."""
        self.restarts += 1
        with self.guard.example(f"restart with signal {sig}"):
            status = self.guard.restart(sig)
            if sig == signal.SIGTERM:
                assert status == 0, f"SIGTERM exit status {status}:\n{self.guard.server.log_tail()}"


@st.composite
def producers(draw: st.DrawFn, stream: Stream | None) -> tuple[str, int, int] | None:
    """None, or producer headers aimed at the interesting cases for this stream's state."""
    if draw(st.integers(0, 2)) == 0:
        return None
    pid = draw(st.sampled_from(PRODUCER_IDS))
    known = stream.producers.get(pid) if stream is not None else None
    if known is None:
        return pid, draw(st.integers(0, 2)), draw(st.sampled_from([0, 0, 0, 1, 3]))
    epoch, last = known
    case = draw(st.sampled_from(["next", "next", "next", "duplicate", "gap", "new-epoch", "new-epoch-bad-seq", "stale"]))
    return {
        "next": (pid, epoch, last + 1),
        "duplicate": (pid, epoch, draw(st.integers(0, last))),
        "gap": (pid, epoch, last + 2 + draw(st.integers(0, 3))),
        "new-epoch": (pid, epoch + 1, 0),
        "new-epoch-bad-seq": (pid, epoch + 1, 1 + draw(st.integers(0, 2))),
        "stale": (pid, max(0, epoch - 1), draw(st.integers(0, 3))),
    }[case]


@pytest.fixture(scope="module")
def model_guard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guard]:
    """A server per example (each on a new data directory); always killed at the end."""
    root: Path = tmp_path_factory.mktemp("model")
    server = Server(root / "data", ["--read-chunk-bytes-max", str(READ_CHUNK_BYTES_MAX), "--fsync", "always"])
    guard = Guard(server, new_client(server))
    try:
        yield guard
    finally:
        guard.close()


def test_protocol_model(model_guard: Guard) -> None:
    examples, steps = model_runs()
    ProtocolMachine.guard = model_guard

    def factory() -> ProtocolMachine:
        return ProtocolMachine()

    if SEED is not None:
        factory = hypothesis_seed(SEED)(factory)
    try:
        run_state_machine_as_test(factory, settings=settings(
            max_examples=examples, stateful_step_count=steps, deadline=None, derandomize=SEED is None,
            database=None, print_blob=True,
        ))
    except BaseException as exc:
        exc.add_note(reproduce_hint())
        raise
