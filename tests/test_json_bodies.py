"""JSON bodies against a real server: no body can end the process or freeze it.

Nesting is bounded by ``json_depth_max`` (default 128 levels, counting the
body's outer array); deeper bodies are a 400 JSON_TOO_DEEP on PUT and POST,
and the server keeps serving.
"""

from __future__ import annotations

import httpx
import pytest

from conftest import PREFIX, Server, assert_error, read_all, unique

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
