"""Scale-out: three real nodes behind a real nginx running deploy/nginx/sharded.conf.

Streams spread over all three nodes and every request of a key reaches the
same node — exactly the node nginx's own ring gives (scripts/shard_rebalance.py
``Ketama``, checked against nginx there); forks within a key work through the
balancer and forks across keys get 400 FORK_CROSSES_SHARDS; a subscription
named for a key wakes for that key's streams, and nodes sharing one copied
webhook key directory serve one JWKS; a fourth node filled with
docs/deployment.md's own commands serves the moved streams with the same
bytes and offsets; a node that is down answers 502 for its keys and never
has them created elsewhere. nginx is installed by
scripts/install_nginx.sh when missing; the tests skip, saying why, only where
it cannot be. The official suite through the balancer: scripts/run_conformance_sharded.py
(``make conformance-sharded``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from conftest import EXE, PREFIX, ROOT, Server, assert_error, deadline_poll, free_port, plain_client, unique
from nginxproc import nginx_exe  # noqa: F401 - a fixture
from trio_streams.protocol import shards

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.shard_rebalance import Ketama, plan  # noqa: E402
from scripts.sharded_nginx import (  # noqa: E402
    SHARD_MAP, Nginx, pattern_map, site_with, write_config)
from trio_streams.config import Settings  # noqa: E402

TEXT = {"content-type": "text/plain"}
JSON = {"content-type": "application/json"}
NODES = 3
SHARDED_ENV = {"TRIO_STREAMS_SHARD_KEY_SEGMENTS": "1"}
# Keys spread over three nodes: each gets about a third, so none is left out
# (the chance one is: about (2/3)^60, never seen).
SPREAD_KEYS = 60
WEBHOOK_KEYS = "webhook-keys"


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    root = tmp_path_factory.mktemp("nodes")
    started: list[Server] = []
    try:
        for i in range(NODES):
            (root / f"node{i}").mkdir()
            if started:  # one webhook signing key for all (docs/deployment.md, "Scale-out")
                shutil.copytree(started[0].data_dir / WEBHOOK_KEYS, root / f"node{i}" / WEBHOOK_KEYS)
            started.append(Server(root / f"node{i}", env=SHARDED_ENV).start())
        yield started
    finally:
        for node in started:
            node.kill_quietly()


@pytest.fixture(scope="module")
def balancer(nginx_exe: str, nodes: list[Server], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    conf = write_config(tmp_path_factory.mktemp("nginx"), site_with([upstream(n) for n in nodes], port))
    nginx = Nginx(nginx_exe, conf)
    url = f"http://127.0.0.1:{port}"
    try:
        nginx.wait_until(lambda: _created_through(url))
        yield url
    finally:
        nginx.stop()


def _created_through(url: str) -> bool:
    try:
        return httpx.put(f"{url}{PREFIX}{unique('ready')}", headers=TEXT, timeout=2).status_code == 201
    except httpx.TransportError:
        return False


def upstream(node: Server) -> str:
    return f"127.0.0.1:{node.port}"


def holders(nodes: list[Server], name: str) -> list[Server]:
    """The nodes that have the stream, each asked directly."""
    with plain_client(timeout=10.0) as client:
        return [n for n in nodes if client.head(n.stream_url(name)).status_code == 200]


def node_of(nodes: list[Server], key: str) -> Server:
    """The node nginx's ring gives ``key``."""
    owner = Ketama([upstream(n) for n in nodes]).server(key)
    return next(n for n in nodes if upstream(n) == owner)


def test_streams_spread_over_all_nodes_each_on_the_node_its_key_hashes_to(balancer: str, nodes: list[Server]) -> None:
    names = [f"{unique('t')}/stream" for _ in range(SPREAD_KEYS)]
    with plain_client(timeout=10.0) as client:
        for name in names:
            assert client.put(f"{balancer}{PREFIX}{name}", headers=TEXT).status_code == 201
            for word in (b"one ", b"two"):
                assert client.post(f"{balancer}{PREFIX}{name}", content=word, headers=TEXT).status_code == 204
    owners = {}
    for name in names:
        found = holders(nodes, name)
        assert found == [node_of(nodes, shards.stream_key(name, 1))], name
        owners[name] = found[0]
        # Every append went to that one node: it holds all of them, in order.
        assert httpx.get(found[0].stream_url(name), params={"offset": "-1"}, timeout=10).content == b"one two"
    assert {n.port for n in owners.values()} == {n.port for n in nodes}


def test_every_path_and_spelling_of_a_key_reaches_one_node(balancer: str, nodes: list[Server]) -> None:
    key = f"caf\u00e9-{unique('k')}"
    spelled = {  # URL path below the prefix → the stream name the server decodes
        f"caf%C3%A9-{key[5:]}/a": f"{key}/a",
        f"{key}/b/c": f"{key}/b/c",
        f"caf%C3%A9-{key[5:]}%2Fd": f"{key}/d",  # an encoded slash is a separator on both sides
        f"{key}": key,
    }
    for raw, name in spelled.items():
        assert httpx.put(f"{balancer}{PREFIX}{raw}", headers=TEXT, timeout=10).status_code == 201, raw
        assert holders(nodes, name) == [node_of(nodes, key)], raw
        # Read back through the balancer under the other spelling.
        assert httpx.head(f"{balancer}{PREFIX}{name}", timeout=10).status_code == 200


def test_a_fork_within_its_key_works_through_the_balancer(balancer: str, nodes: list[Server]) -> None:
    key = unique("f")
    source, fork = f"{balancer}{PREFIX}{key}/source", f"{balancer}{PREFIX}{key}/deeper/fork"
    assert httpx.put(source, headers=TEXT, timeout=10).status_code == 201
    assert httpx.post(source, content=b"shared ", headers=TEXT, timeout=10).status_code == 204
    created = httpx.put(fork, headers={"stream-forked-from": f"{PREFIX}{key}/source"}, timeout=10)
    assert created.status_code == 201, created.text
    assert httpx.post(fork, content=b"own", headers=TEXT, timeout=10).status_code == 204
    read = httpx.get(fork, params={"offset": "-1"}, timeout=10)
    assert (read.status_code, read.content) == (200, b"shared own")
    assert holders(nodes, f"{key}/deeper/fork") == holders(nodes, f"{key}/source")


def test_a_fork_across_keys_is_refused_through_the_balancer_and_created_nowhere(balancer: str,
                                                                                nodes: list[Server]) -> None:
    source_key, fork_key = unique("src"), unique("dst")
    assert httpx.put(f"{balancer}{PREFIX}{source_key}/s", headers=TEXT, timeout=10).status_code == 201
    refused = httpx.put(f"{balancer}{PREFIX}{fork_key}/f", headers={"stream-forked-from": f"{PREFIX}{source_key}/s"},
                        timeout=10)
    assert_error(refused, 400, "FORK_CROSSES_SHARDS")
    assert holders(nodes, f"{fork_key}/f") == []


def test_a_subscription_named_for_a_key_wakes_for_its_streams_through_the_balancer(balancer: str,
                                                                                 nodes: list[Server]) -> None:
    key = unique("jobs")
    sub = f"{balancer}{PREFIX}__ds/subscriptions/{key}~workers"
    wake = f"{balancer}{PREFIX}{key}/wake"
    assert httpx.put(wake, headers=JSON, timeout=10).status_code == 201
    config = {"type": "pull-wake", "pattern": f"{key}/*", "wake_stream": f"{key}/wake"}
    created = httpx.put(sub, content=orjson.dumps(config), headers=JSON, timeout=10)
    assert created.status_code == 201, created.text
    job = f"{balancer}{PREFIX}{key}/job-1"
    assert httpx.put(job, headers=JSON, timeout=10).status_code == 201
    assert httpx.post(job, content=b'{"n": 1}', headers=JSON, timeout=10).status_code == 204

    def woken() -> bool:
        events = httpx.get(wake, params={"offset": "-1"}, timeout=10).json()
        return any(e.get("type") == "wake" and e.get("stream") == f"{key}/job-1" for e in events)

    deadline_poll(woken, timeout=20, interval=0.1, what="a wake event on the wake stream")
    claim = httpx.post(f"{sub}/claim", content=orjson.dumps({"worker": "w1"}), headers=JSON, timeout=10)
    assert claim.status_code == 200, claim.text
    assert [s["path"] for s in claim.json()["streams"]] == [f"{key}/job-1"]
    # Everything of the subscription is on its key's node.
    owner = node_of(nodes, key)
    assert httpx.get(f"{owner.url}{PREFIX}__ds/subscriptions/{key}~workers", timeout=10).status_code == 200


def test_every_node_signs_with_the_key_the_balancers_jwks_lists(balancer: str, nodes: list[Server]) -> None:
    """The JWKS comes from one node; deliveries from every node verify against it."""
    served = httpx.get(f"{balancer}{PREFIX}__ds/jwks.json", timeout=10)
    assert served.status_code == 200, served.text
    for node in nodes:
        assert httpx.get(f"{node.url}{PREFIX}__ds/jwks.json", timeout=10).json() == served.json()


def test_a_subscription_reaching_another_key_is_refused_through_the_balancer(balancer: str) -> None:
    key = unique("jobs")
    sub = f"{balancer}{PREFIX}__ds/subscriptions/{key}~workers"
    config = {"type": "pull-wake", "pattern": "events/*", "wake_stream": f"{key}/wake"}
    assert_error(httpx.put(sub, content=orjson.dumps(config), headers=JSON, timeout=10), 400,
                 "SUBSCRIPTION_CROSSES_SHARDS")


def test_the_rebalance_plan_lists_exactly_the_streams_whose_key_changes_node() -> None:
    before, after = ["node-a:4437", "node-b:4437", "node-c:4437"], ["node-a:4437", "node-b:4437", "node-c:4437",
                                                                    "node-d:4437"]
    names = [f"k{i}/s{j}" for i in range(300) for j in range(2)]
    moves = plan(before, after, names, 1)
    ring_before, ring_after = Ketama(before), Ketama(after)
    moved = {name for name, _, _ in moves}
    assert moved == {n for n in names if ring_before.server(n.split("/")[0]) != ring_after.server(n.split("/")[0])}
    # Both streams of a key move together, and only ever to the new node.
    assert all(f"{n.split('/')[0]}/s0" in moved and f"{n.split('/')[0]}/s1" in moved for n in moved)
    assert {new for _, _, new in moves} == {"node-d:4437"}
    assert 0.15 < len(moved) / len(names) < 0.35


def test_the_rebalance_plan_keys_names_by_the_pattern_when_given_one() -> None:
    before, after = ["node-a:4437", "node-b:4437", "node-c:4437"], ["node-a:4437", "node-b:4437", "node-c:4437",
                                                                    "node-d:4437"]
    names = [f"t{i}-{suffix}" for i in range(300) for suffix in ("orders", "orders-2026/eu")]
    moves = plan(before, after, names, Settings(shard_key_pattern=r"^([^/-]+)").shard_key_rule)
    moved = {name for name, _, _ in moves}
    assert moved == {n for n in names if Ketama(before).server(n.split("-")[0]) != Ketama(after).server(n.split("-")[0])}
    assert moved and all(f"{n.split('-')[0]}-orders" in moved for n in moved)


def map_variant(segments: int) -> str:
    """sharded.conf's map: as shipped (1 segment) or its commented 2-segment form."""
    text = SHARD_MAP.read_text()
    if segments == 1:
        return text
    block = re.search(r"^# map \$uri.*?^# \}$", text, re.M | re.S)
    assert block is not None, "sharded.conf lost its commented two-segment map"
    return re.sub(r"^# ?", "", block.group(0), flags=re.M)


@pytest.mark.parametrize("segments", [1, 2])
def test_the_map_extracts_the_key_the_server_computes(nginx_exe: str, tmp_path: Path, segments: int) -> None:
    """For each form of the map: the key nginx hashes is protocol.shards' key."""
    names = ["chat", "chat/room-1", "acme/chat/room-1/deep", "caf\u00e9/x", "a b/c"]
    ids = ["acme", "acme~chat", "acme~chat~audit", "x.y-z~w"]
    by_name, by_id = keys_by_nginx(nginx_exe, tmp_path, map_variant(segments), names, ids)
    assert by_name == {name: shards.stream_key(name, segments) for name in names}
    assert {i: k for i, k in by_id.items() if i.count("~") + 1 >= segments} == {
        i: shards.subscription_key(i, segments) for i in ids if i.count("~") + 1 >= segments}


@pytest.mark.parametrize("pattern", [r"^([^/-]+)", r"^([a-z]{1,8}\.)", r"(acme|globex)-", r"^(?:(t)-|x)"])
def test_the_pattern_map_extracts_the_key_the_server_computes(nginx_exe: str, tmp_path: Path, pattern: str) -> None:
    """sharded.conf's commented pattern map, for each pattern (quoting braces and
    backslashes as nginx needs), hashes the key a node computes with that setting."""
    rule = Settings(shard_key_pattern=pattern).shard_key_rule
    names = ["acme-orders-2026", "acme-orders-2026/eu", "globex-x/y-z", "fork-create-head-src-7", "chat",
             "t-1", "x1", "-lead", "caf\u00e9-x", "\u00e9t\u00e9/x-y", "a b-c", "ab.cd-e", "abcdefghi.j",
             "tenant:stream", "acme-%", "__ds-x"]
    ids = ["acme", "acme~audit", "x.y-z~w"]
    by_name, by_id = keys_by_nginx(nginx_exe, tmp_path, pattern_map(pattern), names, ids)
    assert by_name == {name: shards.stream_key(name, rule) for name in names}
    assert by_id == {i: shards.subscription_key(i, rule) for i in ids}


def keys_by_nginx(nginx_exe: str, tmp_path: Path, shard_map: str, names: list[str],
                  ids: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The key nginx running ``shard_map`` gives each stream name and each subscription id."""
    port = free_port()
    (tmp_path / "map.conf").write_text(shard_map)
    site = (f"include {tmp_path / 'map.conf'};\n"
            f"server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"$trio_streams_shard_key\"; }} }}")
    nginx = Nginx(nginx_exe, write_config(tmp_path, site))
    url = f"http://127.0.0.1:{port}"
    try:
        nginx.wait_until(lambda: _answers(url))
        with plain_client(timeout=10.0) as client:
            by_name = {n: client.get(url + PREFIX + urllib.parse.quote(n, safe="/")).content.decode() for n in names}
            by_id = {i: client.get(f"{url}{PREFIX}__ds/subscriptions/{i}/claim").content.decode() for i in ids}
    finally:
        nginx.stop()
    return by_name, by_id


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"


def documented_moves() -> dict[str, str]:
    """deployment.md's client-copy commands, by the comment above each (continuations joined)."""
    text = DEPLOYMENT_DOC.read_text()
    block = re.search(r"```sh\n(\s*# which streams move.*?)```", text, re.S)
    assert block is not None, "deployment.md lost its client-copy commands"
    commands: dict[str, str] = {}
    comment = ""
    for line in block.group(1).replace("\\\n", " ").splitlines():
        line = line.strip()
        if line.startswith("#"):
            comment = line
        elif line:
            commands[comment] = (commands.get(comment, "") + "\n" + line).strip()
    return commands


def run_documented(command: str, replacements: dict[str, str]) -> None:
    for old, new in replacements.items():
        command = command.replace(old, new)
    command = re.sub(r"(?<![/\w-])trio-streams(?= )", str(EXE), command)
    done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + command], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"{command}\n{done.stderr}"


def test_adding_a_fourth_node_with_the_documented_copy_keeps_data_and_offsets(
        nginx_exe: str, balancer: str, nodes: list[Server], tmp_path: Path) -> None:
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed: the documented commands use it")
    commands = documented_moves()
    (tmp_path / "node3").mkdir()
    new = Server(tmp_path / "node3", env=SHARDED_ENV).start()
    nginx = None
    try:
        # One key the fourth node takes over and one it leaves (each CLI call costs a second or more).
        ring = [*nodes, new]
        keys = [next(k for k in (unique("move") for _ in range(1000)) if (node_of(ring, k) is new) == moving)
                for moving in (True, False)]
        offsets = write_streams(balancer, keys)
        with plain_client(timeout=10.0) as client:
            before = {name: _reads(client, f"{balancer}{PREFIX}{name}", held) for name, held in offsets.items()}
        old_names = ",".join(upstream(n) for n in nodes)
        moves: list[list[str]] = []
        for node in nodes:  # the plan, from each old node's data directory
            run_documented(commands[PLAN_COMMENT], {
                "/var/lib/trio-streams": str(node.data_dir), "> moves.tsv": f"> {tmp_path / 'moves.tsv'}",
                "node-a:4437,node-b:4437,node-c:4437,node-d:4437": f"{old_names},{upstream(new)}",
                "node-a:4437,node-b:4437,node-c:4437": old_names})
            moves += [line.split("\t") for line in (tmp_path / "moves.tsv").read_text().splitlines() if line]
        mine = [m for m in moves if m[0].split("/")[0] in keys]
        assert {m[0] for m in mine} == {n for n in offsets if node_of(ring, n.split("/")[0]) is new}
        assert mine and {m[2] for m in mine} == {upstream(new)}
        for name, old, _ in mine:
            json_stream = name.endswith("/log")
            run_documented(commands[JSON_COPY_COMMENT if json_stream else BYTES_COPY_COMMENT], {
                "http://node-a:4437": f"http://{old}", "http://node-d:4437": new.url,
                "chat/log" if json_stream else "chat/room-1": name})
        port = free_port()
        nginx = Nginx(nginx_exe, write_config(tmp_path / "nginx4", site_with([upstream(n) for n in ring], port)))
        after = f"http://127.0.0.1:{port}"
        nginx.wait_until(lambda: _answers(f"{after}/healthz"))
        with plain_client(timeout=10.0) as client:
            for name, held in offsets.items():
                # The same bytes from every offset a reader may hold, and the same tail.
                assert _reads(client, f"{after}{PREFIX}{name}", held) == before[name], name
    finally:
        if nginx is not None:
            nginx.stop()
        new.kill_quietly()


def write_streams(balancer: str, keys: list[str]) -> dict[str, list[str]]:
    """A byte and a JSON stream per key, three appends each; every offset a writer was told (readers may hold them)."""
    offsets: dict[str, list[str]] = {}
    with plain_client(timeout=10.0) as client:
        for key in keys:
            for name, kind, bodies in (
                    (f"{key}/bytes", "application/octet-stream", [bytes(range(i, 256)) for i in range(3)]),
                    (f"{key}/log", "application/json", [orjson.dumps([{"i": i}, [i, "x"]]) for i in range(3)])):
                client.put(f"{balancer}{PREFIX}{name}", headers={"content-type": kind}).raise_for_status()
                offsets[name] = ["-1"] + [client.post(f"{balancer}{PREFIX}{name}", content=body, headers={
                    "content-type": kind}).headers["stream-next-offset"] for body in bodies]
    return offsets


PLAN_COMMENT = "# which streams move (names from each old node's data directory; stats is read-only)"
BYTES_COPY_COMMENT = "# a byte stream"
JSON_COPY_COMMENT = "# a JSON stream: the batches' items, one message per line"


def _reads(client: httpx.Client, url: str, held: list[str]) -> list[tuple[bytes, str]]:
    """What a read from each offset returns, and the tail offset it reports."""
    reads = []
    for offset in held:
        read = client.get(url, params={"offset": offset})
        assert read.status_code == 200 and read.headers["stream-up-to-date"] == "true", read.text
        reads.append((read.content, read.headers["stream-next-offset"]))
    return reads


def test_a_node_that_is_down_answers_502_for_its_keys_and_they_are_created_nowhere_else(
        balancer: str, nodes: list[Server]) -> None:
    """Last in the module: it stops a node (and starts it again)."""
    down = nodes[0]
    key = next(k for k in (unique("down") for _ in range(1000)) if node_of(nodes, k) is down)
    other = next(k for k in (unique("up") for _ in range(1000)) if node_of(nodes, k) is not down)
    down.stop()
    try:
        assert httpx.put(f"{balancer}{PREFIX}{key}/s", headers=TEXT, timeout=10).status_code == 502
        assert holders(nodes[1:], f"{key}/s") == []
        # The other nodes' keys are served as before.
        assert httpx.put(f"{balancer}{PREFIX}{other}/s", headers=TEXT, timeout=10).status_code == 201
    finally:
        down.start()
    assert httpx.put(f"{balancer}{PREFIX}{key}/s", headers=TEXT, timeout=10).status_code == 201
    assert holders(nodes, f"{key}/s") == [down]
