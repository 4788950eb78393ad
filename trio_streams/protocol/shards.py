"""Shard keys: which node of a sharded deployment owns a stream or a subscription.

Owns: the one rule a balancer and every node share (docs/deployment.md,
"Scale-out"). A key rule is either a number of segments — a stream's key is
the first ``shard_key_segments`` segments of its name (all of them when it
has fewer) — or a compiled ``shard_key_pattern``: the first capture group of
the pattern matched at the start of the name (the whole name when it does not
match). nginx hashes that same text (deploy/nginx/sharded.conf). A
subscription's key is spelled in its id, segments joined by ``~`` (ids cannot
hold ``/``), so the balancer finds it from the URL alone; under a pattern the
id's key is its part before the first ``~``. Never: knows nodes, ports or
hashing — which node a key lands on is the balancer's business; a node only
refuses what would need two of them.

0 segments means not sharded: every check passes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any
from re import _constants as C  # noqa: N812 (the parser's node kinds)
from re import _parser

from .errors import ProtocolError

KEY_SEPARATOR = "/"
# In a subscription id, between the key's segments and before the id's own name.
ID_KEY_SEPARATOR = "~"
GLOB_SEGMENTS = ("*", "**")

# Segments (int) or a compiled shard_key_pattern.
KeyRule = int | re.Pattern[str]


def stream_key(name: str, rule: KeyRule) -> str:
    """The shard key of a stream name (already decoded and checked)."""
    if isinstance(rule, re.Pattern):
        found = rule.match(name)
        # An optional group that took no part is empty, as nginx's $1 is.
        return name if found is None else found.group(1) or ""
    return KEY_SEPARATOR.join(name.split(KEY_SEPARATOR)[:rule])


def check_fork(target: str, source: str, rule: KeyRule) -> None:
    """A fork is created on the node of its own path: its source must live there too."""
    if rule and stream_key(target, rule) != stream_key(source, rule):
        raise ProtocolError(
            400, "FORK_CROSSES_SHARDS",
            f"a fork must share its source's shard key ({_describe(rule)}); "
            f"{stream_key(target, rule)!r} and {stream_key(source, rule)!r} live on different nodes")


def _describe(rule: KeyRule) -> str:
    if isinstance(rule, re.Pattern):
        return f"the first group of {rule.pattern!r}, else the whole name"
    return f"the first {rule} path segment(s)"


def subscription_key(subscription_id: str, rule: KeyRule) -> str:
    """The shard key an id names: its first ``segments`` ``~``-separated parts, joined by
    ``/`` (under a pattern, its first part)."""
    segments = 1 if isinstance(rule, re.Pattern) else rule
    parts = subscription_id.split(ID_KEY_SEPARATOR)
    if len(parts) < segments or any(not p for p in parts[:segments]):
        raise _crosses(f"a subscription id starts with its shard key: {segments} part(s) joined by "
                       f"'{ID_KEY_SEPARATOR}', then optionally '{ID_KEY_SEPARATOR}<name>'")
    return KEY_SEPARATOR.join(parts[:segments])


def check_subscription(subscription_id: str, pattern: str | None, paths: Iterable[str | None],
                       rule: KeyRule) -> None:
    """Every stream a subscription can reach (its pattern's, its links, its wake
    stream) must have the key its id names: a node's subscriptions see only that
    node's streams, so anything else would never wake."""
    if not rule:
        return
    key = subscription_key(subscription_id, rule)
    if pattern is not None:
        _check_pattern(key, pattern, rule)
    for path in paths:
        if path is not None and stream_key(path, rule) != key:
            raise _crosses(f"the stream {path[:64]!r} is outside the subscription's shard key {key!r}")


def _check_pattern(key: str, pattern: str, rule: KeyRule) -> None:
    parts = pattern.split(KEY_SEPARATOR)
    if isinstance(rule, re.Pattern):
        # What a regex makes of the names a glob matches cannot be known from the
        # glob's literal head (a longer name may match another way): only a glob-free
        # pattern, one name, is known to stay within the key.
        if any(s in GLOB_SEGMENTS for s in parts) or stream_key(pattern, rule) != key:
            raise _crosses(f"under shard_key_pattern a subscription's pattern names one stream of its key "
                           f"{key!r}, without globs: list the streams instead")
        return
    head = parts[:rule]
    # A glob within the key's segments could match streams of any key.
    if any(s in GLOB_SEGMENTS for s in head) or KEY_SEPARATOR.join(head) != key:
        raise _crosses(f"the pattern must start with the subscription's shard key {key!r}, without globs in it")


def _crosses(message: str) -> ProtocolError:
    return ProtocolError(400, "SUBSCRIPTION_CROSSES_SHARDS", message)


# -- shard_key_pattern: the subset of regular expressions nginx and the server read alike --

# Matchers of one character (a class, a literal, any).
_ONE_CHAR = {C.LITERAL, C.NOT_LITERAL, C.IN, C.ANY}
_REPEATS = {C.MAX_REPEAT, C.MIN_REPEAT}
_WIDTH_MESSAGE = ("shard_key_pattern: '.' and negated classes only in one greedy '*' or '+' repeat "
                  "(nginx counts bytes, the server characters)")
_ASCII_MESSAGE = "shard_key_pattern: ASCII characters only, escapes included (nginx matches bytes)"


def compile_key_pattern(text: str, name_chars_max: int, match_paths_max: int) -> re.Pattern[str]:
    """``text`` compiled, or ValueError saying what is outside the accepted subset.

    Accepted: ASCII literals, classes without category escapes, ``.``, capturing
    groups (not named), ``|``, repeats of a single character, a ``^`` at the very
    start. A match tries at most every combination of its repeats' counts and
    alternatives, each in steps bounded by the pattern's length; that number,
    counted for a name of ``name_chars_max`` characters (the longest a client can
    send), must be at most ``match_paths_max``, so no name can make a match slow.
    """
    if not text.isascii():
        raise ValueError(_ASCII_MESSAGE)
    try:
        compiled = re.compile(text)
        parsed = _parser.parse(text)
    except re.error as e:
        raise ValueError(f"shard_key_pattern does not compile: {e}") from None
    if compiled.groups < 1:
        raise ValueError("shard_key_pattern needs a capture group: its first group is the key")
    if compiled.groupindex or compiled.flags != re.UNICODE:
        raise ValueError("shard_key_pattern: no named groups or inline flags (nginx spells them otherwise)")
    paths = _paths(list(parsed), name_chars_max, top=True)
    if sum(op in _REPEATS and _width_dependent(*arg[2][0]) for op, arg in _nodes(list(parsed))) > 1:
        raise ValueError(_WIDTH_MESSAGE)
    if paths > match_paths_max:
        raise ValueError(f"shard_key_pattern may try {paths} ways of matching a name of {name_chars_max} "
                         f"characters, more than shard_key_pattern_paths_max ({match_paths_max}): "
                         "use fewer or bounded repeats")
    return compiled


def _paths(items: list[Any], name_chars: int, top: bool = False) -> int:
    """Upper bound of the ways a backtracking match of this sequence can go."""
    total = 1
    for i, (op, arg) in enumerate(items):
        total *= _item_paths(op, arg, name_chars, top and i == 0)
    return total


def _item_paths(op: Any, arg: Any, name_chars: int, first: bool) -> int:
    if op in _ONE_CHAR:
        if _width_dependent(op, arg):
            raise ValueError(_WIDTH_MESSAGE)
        return 1
    if op in _REPEATS:
        return _repeat_paths(op, arg, name_chars)
    if op == C.SUBPATTERN:
        _group, add_flags, del_flags, body = arg
        if add_flags or del_flags:
            raise ValueError("shard_key_pattern: no inline flags")
        return _paths(list(body), name_chars)
    if op == C.BRANCH:
        return sum(_paths(list(b), name_chars) for b in arg[1])
    if op == C.AT and arg == C.AT_BEGINNING and first:
        return 1
    raise ValueError(f"shard_key_pattern: {str(op).lower()} is outside the subset nginx and the server "
                     "read alike (see README, shard_key_pattern)")


def _repeat_paths(op: Any, arg: Any, name_chars: int) -> int:
    """One more than the counts the repeat can take: a greedy one stops at the first
    character it cannot take (an ASCII one: the boundary is the same in bytes)."""
    low, high, body = arg
    body = list(body)
    if len(body) != 1 or body[0][0] not in _ONE_CHAR:
        raise ValueError("shard_key_pattern: a repeat applies to one character or class only")
    if _width_dependent(*body[0]) and (op == C.MIN_REPEAT or high != C.MAXREPEAT or low > 1):
        raise ValueError(_WIDTH_MESSAGE)
    return min(high, name_chars) - min(low, name_chars) + 1


def _nodes(items: list[Any]) -> Iterator[tuple[Any, Any]]:
    """Every node of a parsed pattern, depth first."""
    for op, arg in items:
        yield op, arg
        if op == C.SUBPATTERN:
            yield from _nodes(list(arg[3]))
        elif op == C.BRANCH:
            for branch in arg[1]:
                yield from _nodes(list(branch))


def _width_dependent(op: Any, arg: Any) -> bool:
    """Whether this matcher matches non-ASCII characters: one code point in Python,
    one byte of it in nginx. Only in an open repeat (* or +) do both stop at the
    same (ASCII) character. Refused outright: a non-ASCII character (\\xe9 is a
    character in Python, a byte in nginx) and category escapes (\\d \\w \\s:
    Unicode in Python, ASCII in PCRE without UTF mode, as nginx runs it)."""
    if op in (C.ANY, C.NOT_LITERAL):
        _check_ascii(arg if op == C.NOT_LITERAL else 0)
        return True
    if op == C.LITERAL:
        _check_ascii(arg)
        return False
    negated = False
    for kind, value in arg:  # a class
        if kind == C.CATEGORY:
            raise ValueError("shard_key_pattern: no \\d, \\w or \\s (Unicode in Python, ASCII in nginx): "
                             "spell the class out ([0-9], [A-Za-z0-9_])")
        negated = negated or kind == C.NEGATE
        _check_ascii(value[1] if kind == C.RANGE else value if kind == C.LITERAL else 0)
    return negated


def _check_ascii(code: int) -> None:
    if code > 0x7F:
        raise ValueError(_ASCII_MESSAGE)
