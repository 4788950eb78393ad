"""Scopes: ``action`` or ``action:glob``, and whether a set of them allows an access.

Pure functions over plain data. The glob is over the stream path relative to
the stream prefix, segment by segment: ``*`` matches within one segment
(``chat/*`` matches ``chat/a`` but not ``chat/a/b``), a ``**`` segment any
number of whole segments, none included (``chat/**/log`` matches
``chat/log``). A trailing ``/**`` needs at least one segment below
(``chat/**`` matches ``chat/a/b`` but not the stream ``chat`` itself), as in
``.gitignore``. Every other character is literal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

ACTIONS = ("read", "write", "delete", "admin")
# Patterns come from the operator's config, so their size is the operator's
# choice; this only stops a typo (a pasted file) from becoming a scope.
PATTERN_CHARS_MAX = 1024


@dataclasses.dataclass(frozen=True)
class Scope:
    action: str
    # Segments of the glob; None: every path (the scope was written without one).
    pattern: tuple[str, ...] | None = None

    def __str__(self) -> str:
        return self.action if self.pattern is None else f"{self.action}:{'/'.join(self.pattern)}"


def parse_scope(text: str) -> Scope:
    """``read`` or ``read:chat/**``; ValueError naming what is wrong."""
    action, sep, glob = text.strip().partition(":")
    if action not in ACTIONS:
        raise ValueError(f"scope {text[:64]!r}: action must be one of {', '.join(ACTIONS)}")
    if not sep:
        return Scope(action)
    if not glob or len(glob) > PATTERN_CHARS_MAX or glob.startswith("/"):
        raise ValueError(f"scope {text[:64]!r}: the path glob must be non-empty, relative and "
                         f"at most {PATTERN_CHARS_MAX} characters")
    segments = tuple(glob.split("/"))
    if any(not s or ("**" in s and s != "**") for s in segments):
        raise ValueError(f"scope {text[:64]!r}: empty segment, or '**' not alone in its segment")
    return Scope(action, segments)


def parse_scopes(texts: Iterable[str] | str) -> tuple[Scope, ...]:
    """A list of scopes, or one space-separated string of them (OAuth's ``scope`` claim)."""
    items = texts.split() if isinstance(texts, str) else texts
    return tuple(parse_scope(t) for t in items)


def allows(scopes: Iterable[Scope], action: str, path: str | None) -> bool:
    """True if a scope grants ``action`` on ``path`` (None: an action on no stream, like admin)."""
    for scope in scopes:
        if scope.action != action:
            continue
        if scope.pattern is None or (path is not None and glob_matches(scope.pattern, path)):
            return True
    return False


def glob_matches(pattern: tuple[str, ...], path: str) -> bool:
    segments = path.split("/")
    if "**" not in pattern:
        return len(pattern) == len(segments) and all(map(_segment_matches, pattern, segments))
    # Memoised over (pattern index, path index): with several ``**`` the plain
    # recursion would be exponential in a client-chosen path's length.
    memo: dict[tuple[int, int], bool] = {}

    def match(p: int, s: int) -> bool:
        if (p, s) not in memo:
            memo[p, s] = _match_from(p, s)
        return memo[p, s]

    def _match_from(p: int, s: int) -> bool:
        if p == len(pattern):
            return s == len(segments)
        if pattern[p] == "**":
            if p == len(pattern) - 1:
                return s < len(segments)
            return any(match(p + 1, i) for i in range(s, len(segments) + 1))
        return s < len(segments) and _segment_matches(pattern[p], segments[s]) and match(p + 1, s + 1)

    return match(0, 0)


def _segment_matches(glob: str, segment: str) -> bool:
    """``*`` wildcards by leftmost search: linear, where a regex could backtrack
    polynomially on a client-chosen segment."""
    parts = glob.split("*")
    if len(parts) == 1:
        return glob == segment
    first, *middle, last = parts
    if not segment.startswith(first):
        return False
    position = len(first)
    for part in middle:
        found = segment.find(part, position)
        if found < 0:
            return False
        position = found + len(part)
    return len(segment) - position >= len(last) and segment.endswith(last)
