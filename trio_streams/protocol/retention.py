"""Retention: how much of a stream's head is kept, and where a trim may cut.

Owns: the policy (an age and a byte budget, each optional), its request
headers (``Trio-Streams-Retention-Max-Age`` in seconds,
``Trio-Streams-Retention-Max-Bytes``), the operator's per-prefix rules
(``retention_rules``), which policy applies to a stream, the age marks that
date a stream's data, the trim target a policy gives, the limit a stream's
forks put on it, and the 410 for reads below the retained head (with
``Trio-Streams-Earliest-Offset``). Never: I/O, clocks (callers pass
``now_s``), trio.

The project's own headers live under ``Trio-Streams-``, a namespace the
protocol's ``Stream-*`` headers can never collide with.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Final

from .errors import ProtocolError, bad_request
from .offsets import format_offset

MAX_AGE_HEADER: Final = "trio-streams-retention-max-age"
MAX_BYTES_HEADER: Final = "trio-streams-retention-max-bytes"
EARLIEST_OFFSET_HEADER: Final = "trio-streams-earliest-offset"
# Decimal, no sign, no leading zeros: at most 16 digits, like Stream-TTL.
_LIMIT = re.compile(r"\A(0|[1-9][0-9]{0,15})\Z")
# A stream keeps at most this many age marks (time, position) however long its
# max age: adjacent marks merge, so trims by age come late, never early.
AGE_MARKS_MAX: Final = 64
# Appends closer together than this share one mark.
AGE_MARK_INTERVAL_S: Final = 1.0
TRIMMED_CODE: Final = "OFFSET_TRIMMED"


@dataclasses.dataclass(frozen=True, slots=True)
class Retention:
    """0 means no limit of that kind; both 0 keeps everything (and overrides the config)."""

    max_age_s: int = 0
    max_bytes: int = 0

    @property
    def limited(self) -> bool:
        return bool(self.max_age_s or self.max_bytes)


KEEP_ALL: Final = Retention()


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    prefix: str
    policy: Retention


# -- the request headers and the operator's rules ---------------------------


def parse_headers(headers: Mapping[str, str]) -> Retention | None:
    """The per-stream policy a create asks for; None when it names none (400 when malformed)."""
    age, size = headers.get(MAX_AGE_HEADER), headers.get(MAX_BYTES_HEADER)
    if age is None and size is None:
        return None
    return Retention(_limit(age, "Trio-Streams-Retention-Max-Age"), _limit(size, "Trio-Streams-Retention-Max-Bytes"))


def _limit(raw: str | None, name: str) -> int:
    if raw is None:
        return 0
    if not _LIMIT.match(raw.strip()):
        raise bad_request(f"invalid {name} {raw[:32]!r}: expected a non-negative integer", "INVALID_HEADER")
    return int(raw)


def parse_rules(text: str) -> tuple[Rule, ...]:
    """``retention_rules``: ``PREFIX max_age_s=N max_bytes=N; PREFIX ...`` (ValueError when malformed)."""
    rules = []
    for part in text.split(";"):
        words = part.split()
        if not words:
            continue
        prefix, values = words[0], dict(_key_value(w) for w in words[1:])
        unknown = set(values) - {"max_age_s", "max_bytes"}
        if unknown:
            raise ValueError(f"retention_rules: unknown key {sorted(unknown)[0]!r} for prefix {prefix!r}")
        rules.append(Rule(prefix, Retention(values.get("max_age_s", 0), values.get("max_bytes", 0))))
    if len({r.prefix for r in rules}) != len(rules):
        raise ValueError("retention_rules: a prefix is given twice")
    return tuple(rules)


def _key_value(word: str) -> tuple[str, int]:
    key, sep, value = word.partition("=")
    if not sep or not _LIMIT.match(value):
        raise ValueError(f"retention_rules: expected key=non-negative integer, got {word[:40]!r}")
    return key, int(value)


def policy_for(path: str, explicit: Retention | None, rules: Sequence[Rule], default: Retention) -> Retention:
    """The stream's own policy if it was created with one, else the longest matching prefix rule's,
    else the server default. A policy replaces the ones below it whole, never field by field."""
    if explicit is not None:
        return explicit
    best: Rule | None = None
    for rule in rules:
        if path.startswith(rule.prefix) and (best is None or len(rule.prefix) > len(best.prefix)):
            best = rule
    return best.policy if best is not None else default


# -- age marks -----------------------------------------------------------------


def add_age_mark(marks: list[tuple[float, int]], at: float, end: int) -> None:
    """Notes that the stream's data up to ``end`` was all written by ``at``.

    A mark holds the *latest* time of the appends it covers, so data is
    dated no older than it is. Past ``AGE_MARKS_MAX`` the two closest marks
    merge (the later one absorbs the earlier).
    """
    if marks and at - marks[-1][0] < AGE_MARK_INTERVAL_S:
        marks[-1] = (max(at, marks[-1][0]), end)
        return
    marks.append((at, end))
    if len(marks) > AGE_MARKS_MAX:
        gaps = [marks[i + 1][0] - marks[i][0] for i in range(len(marks) - 1)]
        closest = gaps.index(min(gaps))
        marks[closest : closest + 2] = [marks[closest + 1]]


def drop_marks_below(marks: list[tuple[float, int]], head: int) -> None:
    """Marks that date only trimmed data are of no more use."""
    kept = 0
    while kept < len(marks) and marks[kept][1] <= head:
        kept += 1
    del marks[:kept]


# -- trim targets ----------------------------------------------------------


def age_target(marks: Sequence[tuple[float, int]], max_age_s: int, now_s: float) -> int | None:
    """The furthest append end whose data is all older than ``max_age_s``; None if there is none."""
    if not max_age_s:
        return None
    target = None
    for at, end in marks:
        if now_s - at < max_age_s:
            break
        target = end
    return target


def bytes_target(head: int, tail: int, max_bytes: int, step_bytes: int) -> int | None:
    """Where the byte budget cuts, once at least ``step_bytes`` are over it (trims come in
    steps, not after every append); None when within budget."""
    if not max_bytes or tail - head - max_bytes < max(step_bytes, 1):
        return None
    return tail - max_bytes


def fork_limit(head: int, base: int) -> int | None:
    """How far a fork lets its source trim: its own head while that lies below its base
    (it still reads the source from there), no limit once it has trimmed past it."""
    return head if head < base else None


# -- reads below the head ------------------------------------------------------


def earliest_header(head: int) -> tuple[str, str]:
    return (EARLIEST_OFFSET_HEADER, format_offset(head))


def trimmed_error(head: int) -> ProtocolError:
    """410 for an offset below the earliest retained position, which the header names."""
    return ProtocolError(410, TRIMMED_CODE,
                         "data before the requested offset was removed by the stream's retention policy",
                         (earliest_header(head),))
