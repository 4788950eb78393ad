"""JSON bodies against a real server: no body can end the process or freeze it.

Nesting is bounded by ``json_depth_max`` (default 128 levels, counting the
body's outer array); deeper bodies are a 400 JSON_TOO_DEEP on PUT and POST,
and the server keeps serving.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from conftest import PREFIX, Server, assert_error, read_all, serving, unique

JSON = {"content-type": "application/json"}
DEPTH_MAX = 128


def nested_arrays(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


def nested_objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def _stream(client: httpx.Client) -> str:
    path = PREFIX + unique("json")
    assert client.put(path, headers=JSON).status_code == 201
    return path


def _messages(client: httpx.Client, path: str) -> list[object]:
    responses, _ = read_all(client, path)
    return [m for r in responses for m in r.json()]


@pytest.mark.parametrize("nest", [nested_arrays, nested_objects])
def test_post_at_the_depth_limit_is_stored_and_one_deeper_is_400(client: httpx.Client, nest) -> None:
    path = _stream(client)
    assert client.post(path, content=nest(DEPTH_MAX), headers=JSON).status_code == 204
    assert_error(client.post(path, content=nest(DEPTH_MAX + 1), headers=JSON), 400, "JSON_TOO_DEEP")
    [message] = _messages(client, path)
    expected = nest(DEPTH_MAX)[1:-1] if nest is nested_arrays else nest(DEPTH_MAX)  # the outer array is flattened
    assert httpx.Response(200, content=expected).json() == message


@pytest.mark.parametrize("nest", [nested_arrays, nested_objects])
def test_put_at_the_depth_limit_is_created_and_one_deeper_is_400(client: httpx.Client, nest) -> None:
    path = PREFIX + unique("json")
    assert_error(client.put(path, content=nest(DEPTH_MAX + 1), headers=JSON), 400, "JSON_TOO_DEEP")
    assert client.head(path).status_code == 404
    assert client.put(path, content=nest(DEPTH_MAX), headers=JSON).status_code == 201
    assert len(_messages(client, path)) == 1


def test_depth_counts_the_messages_inside_a_batch(client: httpx.Client) -> None:
    path = _stream(client)
    deepest = b"[1," + nested_arrays(DEPTH_MAX - 1) + b"]"
    assert client.post(path, content=deepest, headers=JSON).status_code == 204
    too_deep = b"[1," + nested_objects(DEPTH_MAX) + b"]"
    assert_error(client.post(path, content=too_deep, headers=JSON), 400, "JSON_TOO_DEEP")
    assert len(_messages(client, path)) == 2


@pytest.mark.parametrize("method", ["PUT", "POST"])
@pytest.mark.parametrize("depth", [255, 256, 1000, 9000])
def test_bodies_orjson_cannot_encode_are_refused_and_the_server_lives_on(
    server: Server, client: httpx.Client, method: str, depth: int
) -> None:
    path = _stream(client) if method == "POST" else PREFIX + unique("json")
    for body in (nested_arrays(depth), nested_objects(depth)):
        assert_error(client.request(method, path, content=body, headers=JSON), 400, "JSON_TOO_DEEP")
    assert server.proc is not None and server.proc.poll() is None, server.log_tail()
    assert client.get("/healthz").status_code == 200
    if method == "PUT":
        assert client.put(path, headers=JSON).status_code == 201
    assert client.post(path, content=b'{"after": true}', headers=JSON).status_code == 204
    assert _messages(client, path) == [{"after": True}]


# -- large bodies: framed message by message in a worker thread ---------------------

MESSAGES_MAX = 2000
MESSAGE_BYTES_MAX = 256 * 1024
BIG_ENV = {
    "TRIO_STREAMS_JSON_MESSAGES_PER_APPEND_MAX": str(MESSAGES_MAX),
    "TRIO_STREAMS_JSON_MESSAGE_BYTES_MAX": str(MESSAGE_BYTES_MAX),
}


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A server taking 8 MiB bodies, at most 2000 messages each, of at most 256 KiB."""
    with pytest.MonkeyPatch.context() as env:  # only the server process sees the settings
        for name, value in BIG_ENV.items():
            env.setenv(name, value)
        servers = serving(tmp_path_factory.mktemp("bigjson"), ["--append-bytes-max", str(8 << 20)])
        srv = next(servers)
    with httpx.Client(base_url=srv.url, timeout=60.0) as c:
        yield c
    next(servers, None)


def _messages_of(size: int, count: int) -> list[dict[str, object]]:
    return [{"n": i, "pad": "x" * (size - 20)} for i in range(count)]


def test_a_large_batch_is_stored_exactly(big: httpx.Client) -> None:
    path = _stream(big)
    messages = _messages_of(1024, MESSAGES_MAX)  # 2 MiB: far past the inline size
    body = json.dumps(messages, indent=1).encode()
    assert big.post(path, content=body, headers=JSON).status_code == 204
    assert _messages(big, path) == messages
    assert big.put(PREFIX + unique("json"), content=body, headers=JSON).status_code == 201


def test_a_large_chunked_batch_is_stored_exactly(big: httpx.Client) -> None:
    path = _stream(big)
    messages = _messages_of(1024, MESSAGES_MAX)
    body = json.dumps(messages).encode()
    chunks = (body[i : i + 10_000] for i in range(0, len(body), 10_000))  # no Content-Length: chunked
    assert big.post(path, content=chunks, headers=JSON).status_code == 204
    assert _messages(big, path) == messages


def test_too_many_messages_is_413_and_the_server_keeps_serving(big: httpx.Client) -> None:
    path = _stream(big)
    body = b"[" + b"{}," * ((8 << 20) // 3 - 1) + b"{}]"  # the body: 8 MiB of empty objects
    assert_error(big.post(path, content=body, headers=JSON), 413, "JSON_TOO_MANY_MESSAGES")
    assert big.get("/healthz").status_code == 200
    assert big.post(path, content=b"[" + b"{}," * (MESSAGES_MAX - 1) + b"{}]", headers=JSON).status_code == 204
    assert len(_messages(big, path)) == MESSAGES_MAX


def test_a_message_over_the_size_limit_is_413(big: httpx.Client) -> None:
    path = _stream(big)
    fits, over = ({"pad": "y" * (MESSAGE_BYTES_MAX - size)} for size in (10, 9))  # {"pad":""} is 10 bytes
    assert_error(big.post(path, content=json.dumps([1, over], separators=(",", ":")).encode(), headers=JSON), 413, "JSON_MESSAGE_TOO_LARGE")
    assert big.post(path, content=json.dumps([1, fits], separators=(",", ":")).encode(), headers=JSON).status_code == 204
    assert _messages(big, path) == [1, fits]


@pytest.mark.parametrize(("body", "code"), [
    (b'["' + b"p" * 100_000 + b'", ' + nested_arrays(DEPTH_MAX) + b"]", "JSON_TOO_DEEP"),
    (b'["' + b"p" * 100_000 + b'", 1e400]', "INVALID_JSON"),
    (b'["' + b"p" * 100_000 + b'", "\\ud800"]', "INVALID_JSON"),
    (b'["' + b"p" * 100_000 + b'", \xff]', "INVALID_JSON"),
    (b'["' + b"p" * 100_000 + b'",]', "INVALID_JSON"),
])
def test_large_bodies_are_refused_like_small_ones(big: httpx.Client, body: bytes, code: str) -> None:
    path = _stream(big)
    assert_error(big.post(path, content=body, headers=JSON), 400, code)
    assert _messages(big, path) == []


def test_a_large_bad_body_still_loses_to_a_closed_stream(big: httpx.Client) -> None:
    path = _stream(big)
    assert big.post(path, headers={"stream-closed": "true"}).status_code == 204
    body = b'["' + b"p" * 100_000 + b'", oops]'
    assert_error(big.post(path, content=body, headers=JSON), 409, "STREAM_CLOSED")
