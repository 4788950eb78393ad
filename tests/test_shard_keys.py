"""Shard keys (protocol/shards.py): the pure rule, and the refusals a sharded node
answers in process — forks across keys, subscriptions reaching other keys.

tests/test_shard.py runs the same rule through nginx and three real nodes.
"""

from __future__ import annotations

import re

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
    key = unique("k")
    await assert_fork_reads_its_source(inproc, f"{PREFIX}{key}/source", f"{PREFIX}{key}/fork")


async def assert_fork_reads_its_source(inproc: InprocServer, source: str, fork: str) -> None:
    client = inproc.client
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


# -- a key by pattern (shard_key_pattern) ----------------------------------------------

TENANT = shards.compile_key_pattern(r"^([^/-]+)", 1024, 65_536)


@pytest.mark.parametrize(("name", "key"), [
    ("acme-orders-2026", "acme"),
    ("acme-orders-2026/eu", "acme"),
    ("fork-create-head-src-1", "fork"),
    ("caf\u00e9-x", "caf\u00e9"),  # non-ASCII inside the open repeat
    ("-leading", "-leading"),       # no match: the whole name is the key
])
def test_a_patterns_first_group_is_the_key_and_else_the_whole_name(name: str, key: str) -> None:
    assert shards.stream_key(name, TENANT) == key


def test_an_optional_group_that_took_no_part_is_the_empty_key_as_in_nginx() -> None:
    rule = shards.compile_key_pattern(r"^(?:(t)-|x)", 1024, 65_536)
    assert (shards.stream_key("t-1", rule), shards.stream_key("x1", rule), shards.stream_key("y", rule)) == (
        "t", "", "y")


@pytest.mark.parametrize("pattern", [
    r"^([^/-]+)", r"([^/:]+)", r"^(acme|globex)-", r"^([a-z]{1,8}\.)", r"^([a-z]+-[0-9]{4})",
    r"^(?:t-)([a-z]+)",
])
def test_patterns_of_the_common_subset_are_accepted(pattern: str) -> None:
    shards.compile_key_pattern(pattern, 1024, 65_536)


@pytest.mark.parametrize(("pattern", "why"), [
    (r"(", "does not compile"),
    (r"^[a-z]+", "capture group"),
    (r"^((a+)+)b", "one character"),           # nested repeats: catastrophic backtracking
    (r"^((?:ab)*)", "one character"),
    (r"^(x)?", "one character"),
    (r"^([a-z]*[a-z]*[a-z]*)", "ways"),         # polynomial: 1025^3 ways
    (r"^(\d+)", r"\d"),                          # Unicode digits in Python, ASCII in PCRE
    (r"^(.{3})", "greedy"),                      # 3 characters in Python, 3 bytes in nginx
    (r"^([^/]+?)", "greedy"),
    (r"^([^/]+)([^-]+)", "greedy"),              # where they split differs in a multi-byte character
    (r"^(\x80)", "ASCII"),
    (r"^([a-\xff]+)", "ASCII"),                # Python: code points up to \xff; nginx: every byte
    (r"^([^\xe9]+)", "ASCII"),
    ("^(\u00e9)", "ASCII"),
    (r"(?P<k>x)", "named"),
    (r"(?i)(x)", "flags"),
    (r"^(a)(?=b)", "outside the subset"),
    (r"(a)\1", "outside the subset"),
    (r"x^(a)", "outside the subset"),
    (r"^(a)$", "outside the subset"),            # $ also matches before a final newline in Python
])
def test_patterns_outside_the_subset_or_the_budget_are_refused(pattern: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        shards.compile_key_pattern(pattern, 1024, 65_536)


def test_the_budget_counts_the_longest_name() -> None:
    """One open repeat tries at most one more way than the name has characters."""
    shards.compile_key_pattern(r"^([a-z]*)", 1024, 1025)
    with pytest.raises(ValueError, match="1026 ways"):
        shards.compile_key_pattern(r"^([a-z]*)", 1025, 1025)


def test_forks_under_a_pattern_stay_within_its_key() -> None:
    shards.check_fork("fork-create-head-fork-1", "fork-create-head-src-1", TENANT)
    with pytest.raises(ProtocolError) as refused:
        shards.check_fork("globex-copy", "acme-orders", TENANT)
    assert (refused.value.code, "'globex' and 'acme'" in refused.value.message) == ("FORK_CROSSES_SHARDS", True)


def test_under_a_pattern_an_id_names_its_key_before_its_first_tilde() -> None:
    assert shards.subscription_key("acme~audit~x", TENANT) == "acme"
    shards.check_subscription("acme~audit", None, ["acme-orders", "acme-wake"], TENANT)
    shards.check_subscription("acme", "acme-orders/eu", [], TENANT)  # a glob-free pattern: one name


@pytest.mark.parametrize(("pattern", "paths"), [
    ("acme-orders/*", []),   # a regex may key a longer name otherwise: globs are refused
    ("acme/**", []),
    ("globex-orders", []),
    (None, ["acme-orders", "globex-orders"]),
])
def test_under_a_pattern_subscriptions_beyond_one_key_or_with_globs_are_refused(pattern: str | None,
                                                                                paths: list[str]) -> None:
    with pytest.raises(ProtocolError) as refused:
        shards.check_subscription("acme~audit", pattern, paths, TENANT)
    assert refused.value.code == "SUBSCRIPTION_CROSSES_SHARDS"


def test_the_pattern_setting_is_checked_at_start_up() -> None:
    assert Settings().shard_key_pattern == ""
    settings = settings_from_env({"TRIO_STREAMS_SHARD_KEY_PATTERN": "^([^/-]+)"})
    assert shards.stream_key("acme-x", settings.shard_key_rule) == "acme"
    assert Settings(shard_key_segments=2).shard_key_rule == 2
    with pytest.raises(ValueError, match="not both"):
        Settings(shard_key_pattern="^([^/-]+)", shard_key_segments=1)
    with pytest.raises(ValueError, match="capture group"):
        Settings(shard_key_pattern="^[a-z]+")
    # The budget is counted for the longest name a client can send.
    with pytest.raises(ValueError, match="4097 ways"):
        Settings(shard_key_pattern="^([a-z]*)", stream_path_bytes_max=4096, shard_key_pattern_paths_max=4096)


class TestANodeKeyedByPattern:
    @pytest.fixture
    def inproc_settings(self) -> dict[str, object]:
        return {"shard_key_pattern": r"^([^/-]+)"}

    async def test_a_fork_within_its_key_is_created_and_reads_its_source(self, inproc: InprocServer) -> None:
        tag = unique("t")
        await assert_fork_reads_its_source(inproc, f"{PREFIX}fork-src-{tag}", f"{PREFIX}fork-copy-{tag}")

    async def test_a_fork_across_keys_is_400_and_nothing_is_created(self, inproc: InprocServer) -> None:
        client, tag = inproc.client, unique("t")
        source, fork = f"{PREFIX}acme-{tag}", f"{PREFIX}globex-{tag}"
        assert (await client.put(source, headers=TEXT)).status_code == 201
        error = assert_error(await client.put(fork, headers={"stream-forked-from": source}), 400,
                             "FORK_CROSSES_SHARDS")
        assert "'globex' and 'acme'" in error["message"]
        assert (await client.head(fork)).status_code == 404

    async def test_a_name_the_pattern_does_not_match_is_its_own_key(self, inproc: InprocServer) -> None:
        client, tag = inproc.client, unique("t")
        source = f"{PREFIX}-{tag}"
        assert (await client.put(source, headers=TEXT)).status_code == 201
        assert_error(await client.put(f"{PREFIX}-{tag}/fork", headers={"stream-forked-from": source}), 400,
                     "FORK_CROSSES_SHARDS")

    async def test_a_subscription_lists_its_keys_streams_and_globs_are_refused(self, inproc: InprocServer) -> None:
        client, key = inproc.client, unique("k").replace("-", "")
        url = f"{PREFIX}__ds/subscriptions/{key}~jobs"
        assert (await client.put(f"{PREFIX}{key}-wake", headers=JSON)).status_code == 201
        globbed = {"type": "pull-wake", "pattern": f"{key}-jobs/*", "wake_stream": f"{key}-wake"}
        assert_error(await client.put(url, content=orjson.dumps(globbed), headers=JSON), 400,
                     "SUBSCRIPTION_CROSSES_SHARDS")
        listed = {"type": "pull-wake", "streams": [f"{key}-jobs-1"], "wake_stream": f"{key}-wake"}
        created = await client.put(url, content=orjson.dumps(listed), headers=JSON)
        assert created.status_code == 201, created.text
        refused = await client.post(f"{url}/streams", content=orjson.dumps({"streams": ["elsewhere-x"]}),
                                    headers=JSON)
        assert_error(refused, 400, "SUBSCRIPTION_CROSSES_SHARDS")
