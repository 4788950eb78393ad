"""How many shard keys move when a fourth node joins three (docs/deployment.md, "Scale-out").

Runs a real nginx with deploy/nginx/sharded.conf and sharded-site.conf, first
with three upstreams, then with four, and asks it where each of ``--keys``
stream paths (``/v1/stream/<key>/x``) lands: the upstreams are small echo
servers inside the same nginx that answer their own port. It also reproduces
nginx's ``hash … consistent`` (ketama: 160 points per server, CRC32 of
"host\\0port" chained over the previous point; a key goes to the first point at
or after its CRC32) and checks that the model puts every key where nginx did,
so the model's figure for ``--model-keys`` keys is nginx's too.

    nice -n 19 .venv/bin/python scripts/shard_rebalance.py [--keys 10000] [--model-keys 1000000]
    .venv/bin/python scripts/shard_rebalance.py --model-only 10.0.0.11:4437,10.0.0.12:4437,10.0.0.13:4437,10.0.0.14:4437

The second form counts with the model alone, for given node names (the last
one joins): the names are what nginx hashes, so the fraction moved depends on
them; the first form's nodes are loopback ports chosen at random.

    trio-streams stats --json --largest 100000000 /var/lib/trio-streams | jq -r '.largest[].path' \
      | .venv/bin/python scripts/shard_rebalance.py --plan --before A,B,C --after A,B,C,D [--segments 1]
                                                    [--shard-key-pattern '^([^/-]+)']

lists the stream names read from stdin whose key the new ring puts on another
node: ``name<TAB>old node<TAB>new node`` (docs/deployment.md, "Scale-out").

Prints per-node counts before and after, the fraction moved, and whether every
moved key moved to the new node (consistent hashing moves nothing else).
"""

from __future__ import annotations

import argparse
import bisect
import collections
import socket
import struct
import sys
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trio_streams.config import Settings  # noqa: E402
from trio_streams.protocol import shards  # noqa: E402
from scripts.sharded_nginx import Nginx, NginxUnavailable, install_nginx, site_with, write_config  # noqa: E402

POINTS_PER_WEIGHT = 160  # nginx: ngx_http_upstream_init_chash
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Ketama:
    """nginx's consistent hash ring over ``servers`` (``host:port``, weight 1)."""

    def __init__(self, servers: Sequence[str]) -> None:
        points: list[tuple[int, str]] = []
        for server in servers:
            host, _, port = server.rpartition(":")
            base = host.encode() + b"\0" + port.encode()
            previous = 0
            for _ in range(POINTS_PER_WEIGHT):
                previous = zlib.crc32(base + struct.pack("<I", previous))
                points.append((previous, server))
        points.sort(key=lambda p: p[0])
        # Equal hashes keep the first (nginx drops the later duplicates after sorting).
        unique: list[tuple[int, str]] = []
        for point in points:
            if not unique or unique[-1][0] != point[0]:
                unique.append(point)
        self._hashes = [h for h, _ in unique]
        self._servers = [s for _, s in unique]

    def server(self, key: str) -> str:
        index = bisect.bisect_left(self._hashes, zlib.crc32(key.encode()))
        return self._servers[index % len(self._servers)]


def plan(before_nodes: Sequence[str], after_nodes: Sequence[str], names: Sequence[str],
         rule: shards.KeyRule) -> list[tuple[str, str, str]]:
    """(name, old node, new node) for each stream whose key changes node."""
    ring_before, ring_after = Ketama(before_nodes), Ketama(after_nodes)
    moves = []
    for name in names:
        key = shards.stream_key(name, rule)
        old, new = ring_before.server(key), ring_after.server(key)
        if old != new:
            moves.append((name, old, new))
    return moves


def echo_servers(ports: Sequence[int]) -> str:
    return "\n".join(f"server {{ listen {HOST}:{p}; location / {{ return 200 \"{HOST}:{p}\"; }} }}" for p in ports)


def placements(exe: str, root: Path, upstreams: Sequence[str], echo_ports: Sequence[int],
               keys: Sequence[str]) -> dict[str, str]:
    """Where nginx sends each key's stream path, asked over HTTP."""
    root.mkdir()
    listen = free_port()
    conf = write_config(root, site_with(upstreams, listen), extra_http=echo_servers(echo_ports))
    nginx = Nginx(exe, conf)
    url = f"http://{HOST}:{listen}"
    try:
        with httpx.Client(timeout=10.0) as client:
            nginx.wait_until(lambda: _answers(client, url))
            return {key: client.get(f"{url}/v1/stream/{key}/x").text for key in keys}
    finally:
        nginx.stop()


def _answers(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(f"{url}/v1/stream/probe/x").status_code == 200
    except httpx.TransportError:
        return False


def summary(before: dict[str, str], after: dict[str, str], new: str) -> tuple[float, bool]:
    moved = [k for k in before if before[k] != after[k]]
    return len(moved) / len(before), all(after[k] == new for k in moved)


def print_counts(label: str, where: dict[str, str]) -> None:
    counts = collections.Counter(where.values())
    print(f"  {label}: " + ", ".join(f"{s} {n} ({n / len(where):.1%})" for s, n in sorted(counts.items())))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=10_000, help="keys asked of the real nginx (default 10000)")
    p.add_argument("--model-keys", type=int, default=1_000_000, help="keys counted with the model (default 1000000)")
    p.add_argument("--model-only", metavar="A,B,C,D", help="only the model, for these node names (the last joins)")
    p.add_argument("--plan", action="store_true", help="list the stream names on stdin whose node changes")
    p.add_argument("--before", metavar="A,B,C", help="--plan: the upstream's server names now")
    p.add_argument("--after", metavar="A,B,C,D", help="--plan: the upstream's server names after the change")
    p.add_argument("--segments", type=int, default=1, help="--plan: shard_key_segments (default 1)")
    p.add_argument("--shard-key-pattern", default="", help="--plan: shard_key_pattern, instead of --segments")
    args = p.parse_args(argv)
    if args.plan:
        if not (args.before and args.after):
            p.error("--plan needs --before and --after")
        try:
            rule = Settings(shard_key_pattern=args.shard_key_pattern).shard_key_rule or args.segments
        except ValueError as e:
            p.error(str(e))
        moves = plan(args.before.split(","), args.after.split(","), sys.stdin.read().splitlines(), rule)
        print("\n".join("\t".join(move) for move in moves))
        return 0
    if args.model_only:
        names = args.model_only.split(",")
        return model_report(names[:-1], names, args.model_keys)
    try:
        exe = install_nginx()
    except NginxUnavailable as e:
        print(f"nginx unavailable: {e}", file=sys.stderr)
        return 2
    ports = [free_port() for _ in range(4)]
    upstreams = [f"{HOST}:{port}" for port in ports]
    keys = [f"tenant-{i}" for i in range(args.keys)]
    with tempfile.TemporaryDirectory(prefix="shard-rebalance-") as tmp:
        before = placements(exe, Path(tmp) / "three", upstreams[:3], ports, keys)
        after = placements(exe, Path(tmp) / "four", upstreams, ports, keys)
    model3, model4 = Ketama(upstreams[:3]), Ketama(upstreams)
    agree = all(model3.server(k) == before[k] and model4.server(k) == after[k] for k in keys)
    print(f"real nginx, {len(keys)} keys:")
    print_counts("3 nodes", before)
    print_counts("4 nodes", after)
    fraction, only_to_new = summary(before, after, upstreams[3])
    print(f"  moved: {fraction:.1%} (ideal 25.0%); every moved key went to the new node: {only_to_new}")
    print(f"model agrees with nginx on every key: {agree}")
    return model_report(upstreams[:3], upstreams, args.model_keys) or (0 if agree and only_to_new else 1)


def model_report(before_nodes: Sequence[str], after_nodes: Sequence[str], count: int) -> int:
    keys = [f"tenant-{i}" for i in range(count)]
    ring_before, ring_after = Ketama(before_nodes), Ketama(after_nodes)
    before = {k: ring_before.server(k) for k in keys}
    after = {k: ring_after.server(k) for k in keys}
    fraction, only_to_new = summary(before, after, after_nodes[-1])
    print(f"model, {count} keys, {len(before_nodes)} → {len(after_nodes)} nodes: moved {fraction:.1%}; "
          f"only to the new node: {only_to_new}")
    print_counts("before", before)
    print_counts("after", after)
    return 0 if only_to_new else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
