"""Shard keys: which node of a sharded deployment owns a stream or a subscription.

Owns: the one rule a balancer and every node share (docs/deployment.md,
"Scale-out"): a stream's shard key is the first ``shard_key_segments``
segments of its name (all of them when it has fewer), and nginx hashes that
same text (deploy/nginx/sharded.conf). A subscription's key is spelled in
its id, segments joined by ``~`` (ids cannot hold ``/``), so the balancer
finds it from the URL alone. Never: knows nodes, ports or hashing — which
node a key lands on is the balancer's business; a node only refuses what
would need two of them.

0 segments means not sharded: every check passes.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import ProtocolError

KEY_SEPARATOR = "/"
# In a subscription id, between the key's segments and before the id's own name.
ID_KEY_SEPARATOR = "~"
GLOB_SEGMENTS = ("*", "**")


def stream_key(name: str, segments: int) -> str:
    """The shard key of a stream name (already decoded and checked)."""
    return KEY_SEPARATOR.join(name.split(KEY_SEPARATOR)[:segments])


def check_fork(target: str, source: str, segments: int) -> None:
    """A fork is created on the node of its own path: its source must live there too."""
    if segments and stream_key(target, segments) != stream_key(source, segments):
        raise ProtocolError(
            400, "FORK_CROSSES_SHARDS",
            f"a fork must share its source's shard key (the first {segments} path segment(s)); "
            f"{stream_key(target, segments)!r} and {stream_key(source, segments)!r} live on different nodes")


def subscription_key(subscription_id: str, segments: int) -> str:
    """The shard key an id names: its first ``segments`` ``~``-separated parts, joined by ``/``."""
    parts = subscription_id.split(ID_KEY_SEPARATOR)
    if len(parts) < segments or any(not p for p in parts[:segments]):
        raise _crosses(f"a subscription id starts with its shard key: {segments} part(s) joined by "
                       f"'{ID_KEY_SEPARATOR}', then optionally '{ID_KEY_SEPARATOR}<name>'")
    return KEY_SEPARATOR.join(parts[:segments])


def check_subscription(subscription_id: str, pattern: str | None, paths: Iterable[str | None],
                       segments: int) -> None:
    """Every stream a subscription can reach (its pattern's, its links, its wake
    stream) must have the key its id names: a node's subscriptions see only that
    node's streams, so anything else would never wake."""
    if not segments:
        return
    key = subscription_key(subscription_id, segments)
    if pattern is not None:
        _check_pattern(key, pattern, segments)
    for path in paths:
        if path is not None and stream_key(path, segments) != key:
            raise _crosses(f"the stream {path[:64]!r} is outside the subscription's shard key {key!r}")


def _check_pattern(key: str, pattern: str, segments: int) -> None:
    head = pattern.split(KEY_SEPARATOR)[:segments]
    # A glob within the key's segments could match streams of any key.
    if any(s in GLOB_SEGMENTS for s in head) or KEY_SEPARATOR.join(head) != key:
        raise _crosses(f"the pattern must start with the subscription's shard key {key!r}, without globs in it")


def _crosses(message: str) -> ProtocolError:
    return ProtocolError(400, "SUBSCRIPTION_CROSSES_SHARDS", message)
