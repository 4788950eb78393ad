"""The official conformance suite through nginx in front of three sharded nodes.

Starts three ``trio-streams serve`` nodes (each its own data directory, with
TRIO_STREAMS_SHARD_KEY_SEGMENTS=1), a real nginx with deploy/nginx/sharded.conf
and sharded-site.conf in front of them, and runs the suite (with its
subscription block) against nginx, as scripts/run_conformance.py does against
one server.

    nice -n 19 .venv/bin/python scripts/run_conformance_sharded.py     (one key segment)
    nice -n 19 .venv/bin/python scripts/run_conformance_sharded.py --shard-key-pattern '^([^/-]+)'
                                                                    (make conformance-sharded)

With ``--shard-key-pattern`` the nodes run with TRIO_STREAMS_SHARD_KEY_PATTERN
and nginx with sharded.conf's commented pattern map for it: with
``^([^/-]+)`` every ``fork-…`` name has the key ``fork``, so the fork block
must pass (and the run checks in nginx's log that the suite did fork within
keys through it), except its one fork from a source named otherwise
(``nonexistent-<id>`` → ``fork-create-404-fork-<id>``, expecting 404): the
node refuses it by name, 400 FORK_CROSSES_SHARDS, without knowing whether
another node holds the source. That test and the subscription block are
expected to fail.

What the suite needs that sharding by one segment cannot give, so those tests
are expected to fail:

* ``Fork - …``: every fork test forks between two one-segment names
  (``fork-create-head-src-<id>`` → ``fork-create-head-fork-<id>``), so source
  and fork have different shard keys: the node answers 400
  FORK_CROSSES_SHARDS. The suite has no way to put a fork under its source's
  first segment.
* ``Reserved subscription APIs``: its subscriptions are ids ``sub-<ts>`` over
  ``events/*`` with wake streams under ``wake/``, so one subscription reaches
  three keys: 400 SUBSCRIPTION_CROSSES_SHARDS.

Every other test must pass. nginx logs each request (method, path, status,
Stream-Forked-From), and the run fails if a test outside those blocks fails,
if a fork PUT across keys or a subscription PUT (every one of the suite's
crosses keys) got anything but 400, if the suite sent none of either, or if
a block stops failing (then the suite no longer crosses shards there and the
exception must go).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts import run_conformance as rc  # noqa: E402
from trio_streams.protocol import shards  # noqa: E402
from scripts.sharded_nginx import (  # noqa: E402
    SHARD_MAP, Nginx, NginxUnavailable, install_nginx, pattern_map, site_with, write_config)
from trio_streams.config import Settings  # noqa: E402

NODES = 3
FORK_BLOCK, SUBSCRIPTION_BLOCK = "Fork - ", "Reserved subscription APIs"
# Under a pattern, the one fork test whose source is named otherwise (nonexistent-<id>).
NONEXISTENT_SOURCE_TEST = "Fork - Creation > should return 404 when forking a nonexistent stream"
PREFIX = "/v1/stream/"
SUBSCRIPTIONS = PREFIX + "__ds/subscriptions/"
FIELD_SEPARATOR = "\t"
LOG_FORMAT = "log_format shard_check '$request_method\\t$uri\\t$status\\t$http_stream_forked_from';"


class KeyMode:
    """The key rule the nodes and nginx share, and what it makes the suite cross."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        # Settings validates the pattern as a node would at start-up.
        self.rule = Settings(shard_key_pattern=pattern).shard_key_rule if pattern else 1
        key_env = {"TRIO_STREAMS_SHARD_KEY_PATTERN": pattern} if pattern else {"TRIO_STREAMS_SHARD_KEY_SEGMENTS": "1"}
        self.node_env = {**key_env, "TRIO_STREAMS_WEBHOOK_DEV_MODE": "1"}
        # Describe blocks whose tests cross shard keys by construction (module docstring).
        self.crossing_blocks = {SUBSCRIPTION_BLOCK: "SUBSCRIPTION_CROSSES_SHARDS",
                                (NONEXISTENT_SOURCE_TEST if pattern else FORK_BLOCK): "FORK_CROSSES_SHARDS"}

    def shard_map(self, root: Path) -> Path:
        if not self.pattern:
            return SHARD_MAP
        path = root / "shard-map.conf"
        path.write_text(pattern_map(self.pattern))
        return path


def start_nodes(root: Path, procs: list[subprocess.Popen], mode: KeyMode) -> list[tuple[str, Path]]:
    """Nodes as (base URL, log path); each process is added to ``procs`` as it starts."""
    nodes = []
    for i in range(NODES):
        data = root / f"node{i}"
        data.mkdir()
        log = rc.BUILD_DIR / f"conformance-sharded-node{i}.log"
        proc, base = rc.start_server("ours", str(data), log, [], mode.node_env)
        procs.append(proc)
        nodes.append((base, log))
    return nodes


def start_balancer(root: Path, nodes: list[tuple[str, Path]], mode: KeyMode) -> tuple[Nginx, str]:
    port = rc.free_port()
    upstreams = [base.removeprefix("http://") for base, _ in nodes]
    site = site_with(upstreams, port, shard_map=mode.shard_map(root))
    conf = write_config(root / "nginx", site, access_log=f"{root / 'access.log'} shard_check",
                        log_format=LOG_FORMAT)
    nginx = Nginx(install_nginx(), conf)
    base = f"http://127.0.0.1:{port}"
    nginx.wait_until(lambda: _ready(base))
    print(f"nginx balancing {', '.join(upstreams)} at {base}", flush=True)
    return nginx, base


def _ready(base: str) -> bool:
    try:
        return rc.request("PUT", f"{base}/v1/stream/__ready-probe", {"Content-Type": "text/plain"}) in (200, 201)
    except (OSError, urllib.error.URLError):
        return False


def crossing_puts(access_log: Path, rule: shards.KeyRule) -> tuple[list[str], dict[str, int]]:
    """Shard-checked PUTs in nginx's log: crossing ones not refused, and how many of each kind.
    A fork within its key may get any answer (the suite tests bad forks too): that its tests
    pass is checked with the suite's results."""
    problems, seen = [], {"fork": 0, "subscription": 0, "fork within a key": 0}
    for line in access_log.read_text(errors="replace").splitlines():
        method, uri, status, source = line.split(FIELD_SEPARATOR)
        kind = _put_kind(method, uri, source, rule)
        if kind is None:
            continue
        seen[kind] += 1
        if kind != "fork within a key" and status != "400":
            problems.append(f"{kind} PUT {uri} (forked from {source!r}): {status}")
    return problems, seen


def _put_kind(method: str, uri: str, source: str, rule: shards.KeyRule) -> str | None:
    if method != "PUT" or not uri.startswith(PREFIX):
        return None
    if uri.startswith(SUBSCRIPTIONS) and uri.count("/") == SUBSCRIPTIONS.count("/"):
        return "subscription"
    if source in ("", "-"):
        return None
    source = urllib.parse.unquote(urllib.parse.urlsplit(source).path)
    crosses = shards.stream_key(uri[len(PREFIX):], rule) != shards.stream_key(source[len(PREFIX):], rule)
    return "fork" if crosses else "fork within a key"


def verdict(summary: dict, access_log: Path, mode: KeyMode) -> list[str]:
    problems = rc.report_results(summary, list(mode.crossing_blocks))
    for prefix, code in mode.crossing_blocks.items():
        failed = [name for name, _ in summary["allowed"] if name.startswith(prefix)]
        print(f"{prefix!r}: {len(failed)} tests failed by design ({code})")
        if not failed:
            problems.append(f"no {prefix!r} test failed: the suite no longer crosses shards there; "
                            "drop it from KeyMode.crossing_blocks")
    wrong, seen = crossing_puts(access_log, mode.rule)
    print(f"shard-checked PUTs: {seen}; crossing ones all answered 400: {not wrong}")
    # What each rule must have made the suite send (else the check saw nothing).
    expected = ["subscription", "fork"] + (["fork within a key"] if mode.pattern else [])
    problems += [f"the suite sent no {kind} PUT: is nginx's access log empty?" for kind in expected if not seen[kind]]
    return problems + wrong[:20]


def conduct(root: Path, procs: list[subprocess.Popen], mode: KeyMode) -> int:
    rc.BUILD_DIR.mkdir(exist_ok=True)
    nodes = start_nodes(root, procs, mode)
    nginx, base = start_balancer(root, nodes, mode)
    try:
        report = rc.BUILD_DIR / "conformance-sharded.json"
        code = rc.run_vitest(base, report, None, 900.0, subscriptions=True)
        summary = rc.summarise(report, list(mode.crossing_blocks))
        problems = verdict(summary, root / "access.log", mode)
        if code != 0 and not (summary["failed"] or summary["allowed"]):
            problems.append(f"vitest exited with status {code} although no test failed")
        problems += [f"node {i} died (status {p.returncode})" for i, p in enumerate(procs) if p.poll() is not None]
    finally:
        nginx.stop()
    for problem in problems:
        print(f"FAIL: {problem}")
    rule = f"shard_key_pattern {mode.pattern!r}" if mode.pattern else "shard_key_segments 1"
    print(f"\nconformance through the sharded balancer ({rule}): {summary['passed']} passed, "
          f"{len(summary['allowed'])} crossing shards by design, {len(summary['failed'])} failed, "
          f"{summary['skipped']} skipped (of {summary['total']})")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shard-key-pattern", default="", help="key rule of nodes and nginx (default: 1 segment)")
    try:
        mode = KeyMode(parser.parse_args().shard_key_pattern)
    except ValueError as e:
        parser.error(str(e))
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    procs: list[subprocess.Popen] = []
    root = Path(tempfile.mkdtemp(prefix="conformance-sharded-"))
    started = time.monotonic()
    try:
        return conduct(root, procs, mode)
    except (rc.RunError, NginxUnavailable, RuntimeError) as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        for proc in procs:
            rc.kill_group(proc)
        shutil.rmtree(root, ignore_errors=True)
        print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
