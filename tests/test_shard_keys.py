"""Shard keys (protocol/shards.py): the pure rule, and the refusals a sharded node
answers in process — forks across keys, subscriptions reaching other keys.

tests/test_shard.py runs the same rule through nginx and three real nodes.
"""

from __future__ import annotations

import orjson
import pytest

from conftest import PREFIX, assert_error, unique
from inproc import InprocServer
from trio_streams.config import Settings, settings_from_env
from trio_streams.protocol import shards
from trio_streams.protocol.errors import ProtocolError

TEXT = {"content-type": "text/plain"}
JSON = {"content-type": "application/json"}


# -- the pure rule -------------------------------------------------------------------


@pytest.mark.parametrize(("name", "segments", "key"), [
    ("chat/room-1", 1, "chat"),
    ("chat", 1, "chat"),
    ("acme/chat/room-1", 2, "acme/chat"),
    ("acme", 2, "acme"),  # fewer segments than the key has: the whole name
    ("a/b/c", 3, "a/b/c"),
])
def test_a_streams_key_is_its_first_segments(name: str, segments: int, key: str) -> None:
    assert shards.stream_key(name, segments) == key


def test_forks_within_a_key_pass_and_across_keys_are_refused() -> None:
    shards.check_fork("chat/fork", "chat/source", 1)
    shards.check_fork("acme/chat/b", "acme/chat/a/deep", 2)
    with pytest.raises(ProtocolError) as refused:
        shards.check_fork("other/fork", "chat/source", 1)
    assert (refused.value.status, refused.value.code) == (400, "FORK_CROSSES_SHARDS")
    with pytest.raises(ProtocolError):
        shards.check_fork("acme/mail/b", "acme/chat/a", 2)


def test_without_sharding_any_fork_and_subscription_passes() -> None:
    shards.check_fork("a", "b", 0)
    shards.check_subscription("anything", "**", ["x/y", "wake"], 0)


@pytest.mark.parametrize(("sub_id", "segments", "key"), [
    ("orders", 1, "orders"),
    ("orders~audit", 1, "orders"),
    ("acme~orders~audit", 2, "acme/orders"),
    ("acme~orders", 2, "acme/orders"),
])
def test_a_subscription_id_names_its_key(sub_id: str, segments: int, key: str) -> None:
    assert shards.subscription_key(sub_id, segments) == key


@pytest.mark.parametrize("sub_id", ["acme", "~orders", "acme~~x"])
def test_an_id_without_a_whole_key_is_refused(sub_id: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        shards.subscription_key(sub_id, 2)
    assert refused.value.code == "SUBSCRIPTION_CROSSES_SHARDS"


@pytest.mark.parametrize(("pattern", "paths"), [
    ("orders/*", []),
    ("orders/**", ["orders/wake"]),
    ("orders", []),
    (None, ["orders/a", "orders/b/c"]),
])
def test_subscriptions_within_their_key_pass(pattern: str | None, paths: list[str]) -> None:
    shards.check_subscription("orders~audit", pattern, paths, 1)


@pytest.mark.parametrize(("pattern", "paths"), [
    ("*/x", []),          # a glob in the key could match any key
    ("**", []),
    ("events/*", []),     # another key
    ("orders/*", ["wake/jobs"]),
    (None, ["orders/a", "events/b"]),
])
def test_subscriptions_reaching_other_keys_are_refused(pattern: str | None, paths: list[str]) -> None:
    with pytest.raises(ProtocolError) as refused:
        shards.check_subscription("orders~audit", pattern, paths, 1)
    assert (refused.value.status, refused.value.code) == (400, "SUBSCRIPTION_CROSSES_SHARDS")


def test_the_setting_comes_from_the_environment_and_defaults_to_not_sharded() -> None:
    assert Settings().shard_key_segments == 0
    assert settings_from_env({"TRIO_STREAMS_SHARD_KEY_SEGMENTS": "2"}).shard_key_segments == 2
    with pytest.raises(ValueError):
        Settings(shard_key_segments=-1)


# -- a sharded node, in process --------------------------------------------------------


@pytest.fixture
def inproc_settings() -> dict[str, object]:
    return {"shard_key_segments": 1}


async def test_a_fork_within_its_key_is_created_and_reads_its_source(inproc: InprocServer) -> None:
    client, key = inproc.client, unique("k")
    source, fork = f"{PREFIX}{key}/source", f"{PREFIX}{key}/fork"
    assert (await client.put(source, headers=TEXT)).status_code == 201
    assert (await client.post(source, content=b"inherited", headers=TEXT)).status_code == 204
    created = await client.put(fork, headers={"stream-forked-from": source})
    assert created.status_code == 201, created.text
    read = await client.get(fork, params={"offset": "-1"})
    assert (read.status_code, read.content) == (200, b"inherited")


@pytest.mark.parametrize("spelling", ["path", "absolute URL"])
async def test_a_fork_across_keys_is_400_and_nothing_is_created(inproc: InprocServer, spelling: str) -> None:
    client = inproc.client
    source, fork = f"{PREFIX}{unique('a')}/source", f"{PREFIX}{unique('b')}/fork"
    assert (await client.put(source, headers=TEXT)).status_code == 201
    named = source if spelling == "path" else f"http://{client.authority}{source}"
    refused = await client.put(fork, headers={"stream-forked-from": named})
    error = assert_error(refused, 400, "FORK_CROSSES_SHARDS")
    assert "different nodes" in error["message"]
    assert (await client.head(fork)).status_code == 404


async def test_a_fork_of_a_missing_source_on_another_key_is_still_the_shard_refusal(inproc: InprocServer) -> None:
    """The rule looks at names only: the answer never depends on what this node holds."""
    refused = await inproc.client.put(f"{PREFIX}{unique('b')}/fork",
                                      headers={"stream-forked-from": f"{PREFIX}{unique('a')}/nowhere"})
    assert_error(refused, 400, "FORK_CROSSES_SHARDS")


async def test_a_subscription_is_refused_when_its_streams_have_another_key(inproc: InprocServer) -> None:
    client, key = inproc.client, unique("k")
    url = f"{PREFIX}__ds/subscriptions/{key}~jobs"
    assert (await client.put(f"{PREFIX}wake/jobs", headers=JSON)).status_code == 201
    body = {"type": "pull-wake", "pattern": f"{key}/*", "wake_stream": "wake/jobs"}
    assert_error(await client.put(url, content=orjson.dumps(body), headers=JSON), 400, "SUBSCRIPTION_CROSSES_SHARDS")
    assert (await client.get(url)).status_code == 404


async def test_a_subscription_within_its_key_is_created_and_only_same_key_links_are_added(inproc: InprocServer) -> None:
    client, key = inproc.client, unique("k")
    url = f"{PREFIX}__ds/subscriptions/{key}~jobs"
    assert (await client.put(f"{PREFIX}{key}/wake", headers=JSON)).status_code == 201
    body = {"type": "pull-wake", "pattern": f"{key}/*", "wake_stream": f"{key}/wake"}
    created = await client.put(url, content=orjson.dumps(body), headers=JSON)
    assert created.status_code == 201, created.text
    added = await client.post(f"{url}/streams", content=orjson.dumps({"streams": [f"{key}/extra"]}), headers=JSON)
    assert added.status_code == 204, added.text
    refused = await client.post(f"{url}/streams", content=orjson.dumps({"streams": ["elsewhere/x"]}), headers=JSON)
    assert_error(refused, 400, "SUBSCRIPTION_CROSSES_SHARDS")
