"""Subscriptions: configuration, links, cursors and the wake/lease/fencing rules (PROTOCOL.md 6–7).

Owns: parsing and bounding a subscription's configuration and its
normalised hash, glob matching over stream paths, what a subscription *is*
(``Subscription``: links with their acked cursors, generation, the wake in
flight, the lease, the retry schedule), the events that change it, the one
``SubscriptionTable.apply`` that moves it forward (the running server and
recovery alike), and every decision of sections 6–7 as a pure function
from state and input to events (or a ``ProtocolError``).

Positions: a cursor is a stream position (protocol/offsets.py), inclusive:
``acked`` N means everything before N was processed; 0 is nothing yet.
Times are wall-clock UNIX seconds, given by the caller.

Never: I/O, clocks, trio, randomness (wake ids come from the caller).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Union

import orjson

from .errors import ProtocolError, bad_request, not_found
from .offsets import START, format_offset, parse_offset

WEBHOOK: Final = "webhook"
PULL_WAKE: Final = "pull-wake"
TYPES: Final = (WEBHOOK, PULL_WAKE)
LEASE_TTL_MS_DEFAULT: Final = 30_000
_ID = re.compile(r"\A[A-Za-z0-9._~-]+\Z")
_BAD_PATH_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
RESERVED_SEGMENT: Final = "__ds"
_CONFIG_FIELDS: Final = frozenset({"type", "pattern", "streams", "webhook", "wake_stream", "lease_ttl_ms", "description"})

# The tail of a linked stream, or None when it does not exist (nothing is pending on it).
Tails = Callable[[str], "int | None"]


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """The bounds on a request (config.py's "Subscriptions" settings)."""

    id_chars_max: int = 128
    pattern_chars_max: int = 512
    request_streams_max: int = 1000
    description_chars_max: int = 1024
    path_bytes_max: int = 1024
    lease_ttl_ms_min: int = 1000
    lease_ttl_ms_max: int = 600_000
    webhook_url_bytes_max: int = 2048


# -- configuration ---------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SubscriptionConfig:
    type: str
    pattern: str | None
    streams: tuple[str, ...]  # sorted, unique
    webhook_url: str | None
    wake_stream: str | None
    lease_ttl_ms: int
    description: str | None

    def normalised(self) -> dict[str, Any]:
        """The configuration as hashed and stored: every field, in one spelling."""
        return {
            "type": self.type, "pattern": self.pattern, "streams": list(self.streams),
            "webhook": {"url": self.webhook_url} if self.webhook_url is not None else None,
            "wake_stream": self.wake_stream, "lease_ttl_ms": self.lease_ttl_ms, "description": self.description,
        }

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(orjson.dumps(self.normalised(), option=orjson.OPT_SORT_KEYS)).hexdigest()

    @classmethod
    def from_normalised(cls, doc: Mapping[str, Any]) -> SubscriptionConfig:
        webhook = doc["webhook"]
        return cls(doc["type"], doc["pattern"], tuple(doc["streams"]), webhook["url"] if webhook else None,
                   doc["wake_stream"], doc["lease_ttl_ms"], doc["description"])


def check_id(subscription_id: str, limits: Limits) -> str:
    if len(subscription_id) > limits.id_chars_max or not _ID.match(subscription_id):
        raise bad_request(f"a subscription id is 1 to {limits.id_chars_max} of [A-Za-z0-9._~-]",
                          "INVALID_SUBSCRIPTION_ID")
    return subscription_id


def check_stream_path(path: object, limits: Limits, what: str = "stream path") -> str:
    """A stream-root-relative path, held to the rules stream URLs are (http/paths.py)."""
    if not isinstance(path, str) or not path or len(path.encode()) > limits.path_bytes_max:
        raise bad_request(f"a {what} is a non-empty string of at most {limits.path_bytes_max} bytes", "INVALID_PATH")
    segments = path.split("/")
    if _BAD_PATH_CHARS.search(path) or any(s in ("", ".", "..") for s in segments):
        raise bad_request(f"the {what} {path[:64]!r} has empty, '.' or '..' segments or control characters",
                          "INVALID_PATH")
    if segments[0] == RESERVED_SEGMENT:
        raise bad_request(f"the {what} {path[:64]!r} is in the reserved __ds namespace", "INVALID_PATH")
    return path


def check_pattern(pattern: object, limits: Limits) -> str:
    """``*`` is one whole segment, ``**`` zero or more; a segment may not mix them with text."""
    if not isinstance(pattern, str) or len(pattern) > limits.pattern_chars_max:
        raise bad_request(f"pattern is a string of at most {limits.pattern_chars_max} characters", "INVALID_PATTERN")
    bounded = dataclasses.replace(limits, path_bytes_max=max(limits.path_bytes_max, limits.pattern_chars_max * 4))
    try:
        check_stream_path(pattern, bounded, "pattern")
    except ProtocolError as error:
        raise bad_request(error.message, "INVALID_PATTERN") from None
    if any("*" in s and s not in ("*", "**") for s in pattern.split("/")):
        raise bad_request("a pattern segment is either '*', '**' or has no '*'", "INVALID_PATTERN")
    return pattern


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise bad_request("the body is not valid JSON", "INVALID_JSON") from None
    if not isinstance(doc, dict):
        raise bad_request("the body must be a JSON object", "INVALID_JSON")
    return doc


def parse_config(body: bytes, limits: Limits) -> SubscriptionConfig:
    """A PUT body → its configuration; 400 with a code naming what is wrong."""
    doc = parse_json_object(body)
    unknown = sorted(doc.keys() - _CONFIG_FIELDS)
    if unknown:
        raise bad_request(f"unknown field {unknown[0][:64]!r}", "INVALID_SUBSCRIPTION")
    kind = doc.get("type")
    if kind not in TYPES:
        raise bad_request("type must be 'webhook' or 'pull-wake'", "INVALID_SUBSCRIPTION_TYPE")
    pattern = check_pattern(doc["pattern"], limits) if doc.get("pattern") is not None else None
    streams = parse_stream_list(doc.get("streams", []), limits)
    if pattern is None and not streams:
        raise bad_request("at least one of pattern or streams is required", "INVALID_SUBSCRIPTION")
    webhook_url, wake_stream = _delivery(kind, doc, limits)
    return SubscriptionConfig(kind, pattern, streams, webhook_url, wake_stream, _lease_ttl_ms(doc, limits),
                              _description(doc, limits))


def parse_stream_list(value: object, limits: Limits) -> tuple[str, ...]:
    """``streams[]``: sorted and unique, each a valid path; None or absent is empty."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > limits.request_streams_max:
        raise bad_request(f"streams is an array of at most {limits.request_streams_max} paths", "INVALID_SUBSCRIPTION")
    return tuple(sorted({check_stream_path(p, limits) for p in value}))


def _delivery(kind: str, doc: Mapping[str, Any], limits: Limits) -> tuple[str | None, str | None]:
    """The webhook URL (its SSRF check is the caller's: it needs a setting) or the wake stream."""
    if kind == WEBHOOK:
        webhook = doc.get("webhook")
        url = webhook.get("url") if isinstance(webhook, dict) else None
        if not isinstance(url, str) or not url or len(url) > limits.webhook_url_bytes_max or len(webhook or ()) != 1:
            raise bad_request(f"a webhook subscription needs webhook.url (a URL of at most "
                              f"{limits.webhook_url_bytes_max} characters)",
                              "INVALID_SUBSCRIPTION")
        if doc.get("wake_stream") is not None:
            raise bad_request("wake_stream is for pull-wake subscriptions", "INVALID_SUBSCRIPTION")
        return url, None
    if doc.get("webhook") is not None:
        raise bad_request("webhook is for webhook subscriptions", "INVALID_SUBSCRIPTION")
    if doc.get("wake_stream") is None:
        raise bad_request("a pull-wake subscription needs wake_stream", "INVALID_SUBSCRIPTION")
    return None, check_stream_path(doc["wake_stream"], limits, "wake_stream")


def _lease_ttl_ms(doc: Mapping[str, Any], limits: Limits) -> int:
    ttl = doc.get("lease_ttl_ms", LEASE_TTL_MS_DEFAULT)
    if ttl is None:
        return LEASE_TTL_MS_DEFAULT
    if isinstance(ttl, float) and ttl.is_integer():
        ttl = int(ttl)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not limits.lease_ttl_ms_min <= ttl <= limits.lease_ttl_ms_max:
        raise bad_request(f"lease_ttl_ms must be an integer from {limits.lease_ttl_ms_min} to {limits.lease_ttl_ms_max}",
                          "INVALID_LEASE_TTL")
    return ttl


def _description(doc: Mapping[str, Any], limits: Limits) -> str | None:
    description = doc.get("description")
    if description is not None and (not isinstance(description, str) or len(description) > limits.description_chars_max):
        raise bad_request(f"description is a string of at most {limits.description_chars_max} characters",
                          "INVALID_SUBSCRIPTION")
    return description


# -- globs -------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> tuple[tuple[str, ...], str, bool]:
    """A pattern's segments, its literal prefix (every match starts with it) and
    whether it has ``**``: matching runs for every stream created, so once."""
    parts = tuple(pattern.split("/"))
    literal: list[str] = []
    for part in parts:
        if part in ("*", "**"):
            break
        literal.append(part)
    return parts, "/".join(literal), "**" in parts


def glob_matches(pattern: str, path: str) -> bool:
    """``*`` matches exactly one segment, ``**`` zero or more; other segments literally.

    The literal prefix rejects most paths at once; a pattern without ``**``
    compares segment by segment; one with it runs over segment positions (a
    set of reachable path indices per pattern segment), so time is pattern ×
    path segments whatever the input."""
    parts, prefix, deep = _compiled(pattern)
    if not path.startswith(prefix):
        return False
    segments = path.split("/")
    if not deep:
        return len(segments) == len(parts) and all(p == "*" or p == s for p, s in zip(parts, segments))
    reachable = {0}
    for part in parts:
        if part == "**":
            reachable = set(range(min(reachable), len(segments) + 1)) if reachable else set()
        else:
            reachable = {i + 1 for i in reachable if i < len(segments) and (part == "*" or segments[i] == part)}
        if not reachable:
            return False
    return len(segments) in reachable


# -- state -------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Link:
    acked: int  # stream position; everything before it is processed
    glob: bool = False
    explicit: bool = False

    @property
    def link_type(self) -> str:
        return "explicit" if self.explicit else "glob"  # explicit wins (6.1)


@dataclasses.dataclass(slots=True)
class Subscription:
    id: str
    config: SubscriptionConfig
    created_at: float
    # Streams with an id at or above it were created after the subscription: a
    # matching one is linked from its start (its creating append wakes), the
    # others were backfilled at their tail when the subscription was created.
    stream_id_floor: int
    links: dict[str, Link] = dataclasses.field(default_factory=dict)
    generation: int = 0
    wake_id: str | None = None  # the wake in flight, if any
    holder: str | None = None  # the pull-wake worker holding the lease
    lease_expires_at: float | None = None  # the wake in flight ends then unless extended
    attempts: int = 0  # failed webhook deliveries in a row
    next_attempt_at: float | None = None  # a failed webhook delivery is retried then
    base_url: str = ""  # as in SubscriptionCreated

    @property
    def status(self) -> str:
        return "failed" if self.next_attempt_at is not None else "active"

    @property
    def idle(self) -> bool:
        return self.wake_id is None


# -- events ------------------------------------------------------------------

LinkSpec = tuple[str, int, bool, bool]  # path, acked position, glob, explicit


@dataclasses.dataclass(frozen=True, slots=True)
class SubscriptionCreated:
    subscription_id: str
    config: SubscriptionConfig
    created_at: float
    stream_id_floor: int
    generation: int  # where fencing starts: above any earlier subscription of this id
    links: tuple[LinkSpec, ...]
    # ``scheme://host[:port]`` + stream prefix the subscription was created through:
    # where its webhook's callback_url points.
    base_url: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Linked:
    """Adds link flags; a stream already linked keeps its cursor."""

    subscription_id: str
    links: tuple[LinkSpec, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class LinksRestarted:
    """A linked path has a new stream (deleted and created again): its cursor
    restarts at that stream's start, so all of the new stream's data is
    pending. The only event that moves a cursor back: the old cursor counted
    in a stream that no longer exists."""

    subscription_id: str
    links: tuple[tuple[str, int], ...]  # path, the new stream's start


@dataclasses.dataclass(frozen=True, slots=True)
class ExplicitUnlinked:
    """Drops the explicit flag; the link stays while its glob flag is set."""

    subscription_id: str
    path: str


@dataclasses.dataclass(frozen=True, slots=True)
class Acked:
    """Cursors move to these positions, never back."""

    subscription_id: str
    acks: tuple[tuple[str, int], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Woken:
    subscription_id: str
    generation: int
    wake_id: str
    lease_expires_at: float | None  # None: a pull wake not yet claimed has no lease


@dataclasses.dataclass(frozen=True, slots=True)
class Claimed:
    subscription_id: str
    generation: int
    holder: str
    lease_expires_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseExtended:
    subscription_id: str
    generation: int
    lease_expires_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class Released:
    """The wake of ``generation`` ended (done, released, lease expired); a delivery
    that ended it successfully resets the retry schedule."""

    subscription_id: str
    generation: int
    succeeded: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryFailed:
    """The webhook delivery of ``generation`` failed: the wake ends, retried at ``next_attempt_at``."""

    subscription_id: str
    generation: int
    attempts: int
    next_attempt_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class SubscriptionDeleted:
    subscription_id: str


SubscriptionEvent = Union[SubscriptionCreated, Linked, LinksRestarted, ExplicitUnlinked, Acked, Woken, Claimed, LeaseExtended,
                          Released, DeliveryFailed, SubscriptionDeleted]
SUBSCRIPTION_EVENTS: Final = (SubscriptionCreated, Linked, LinksRestarted, ExplicitUnlinked, Acked, Woken, Claimed, LeaseExtended,
                              Released, DeliveryFailed, SubscriptionDeleted)


def unappliable_subscription(table: SubscriptionTable, event: SubscriptionEvent) -> str | None:
    """Why ``table.apply`` must not take ``event`` (None: it may); said of its WAL record."""
    exists = event.subscription_id in table.by_id
    if isinstance(event, SubscriptionCreated):
        return f"creates subscription {event.subscription_id!r}, which exists" if exists else None
    return None if exists else f"changes subscription {event.subscription_id!r}, which does not exist"


class SubscriptionTable:
    """Every live subscription and the tombstones of deleted ones. Mutated only through ``apply``."""

    def __init__(self) -> None:
        self.by_id: dict[str, Subscription] = {}
        # Deleted id → its last generation: a subscription re-created under the id
        # continues above it, so nothing fenced before is accepted after.
        self.tombstones: dict[str, int] = {}
        # Stream path → ids of the subscriptions linking it.
        self.by_path: dict[str, set[str]] = {}
        # Links of every subscription together: what memory and checkpoints hold.
        self.link_count = 0

    def apply(self, event: SubscriptionEvent) -> Subscription | None:
        if isinstance(event, SubscriptionCreated):
            return self._create(event)
        sub = self.by_id[event.subscription_id]
        if isinstance(event, SubscriptionDeleted):
            self._delete(sub)
            return None
        _APPLY[type(event)](self, sub, event)
        return sub

    def _create(self, event: SubscriptionCreated) -> Subscription:
        assert event.subscription_id not in self.by_id, event.subscription_id
        self.tombstones.pop(event.subscription_id, None)
        sub = Subscription(event.subscription_id, event.config, event.created_at, event.stream_id_floor,
                           generation=event.generation, base_url=event.base_url)
        self.by_id[sub.id] = sub
        self._link(sub, event.links)
        return sub

    def _delete(self, sub: Subscription) -> None:
        for path in sub.links:
            self._index_remove(path, sub.id)
        self.link_count -= len(sub.links)
        del self.by_id[sub.id]
        self.tombstones[sub.id] = sub.generation

    def _link(self, sub: Subscription, links: Iterable[LinkSpec]) -> None:
        for path, acked, glob, explicit in links:
            link = sub.links.get(path)
            if link is None:
                sub.links[path] = Link(acked, glob, explicit)
                self.by_path.setdefault(path, set()).add(sub.id)
                self.link_count += 1
            else:
                link.glob, link.explicit = link.glob or glob, link.explicit or explicit

    def _unlink(self, sub: Subscription, path: str) -> None:
        link = sub.links.get(path)
        if link is None:
            return
        link.explicit = False
        if not link.glob:
            del sub.links[path]
            self._index_remove(path, sub.id)
            self.link_count -= 1

    def _index_remove(self, path: str, subscription_id: str) -> None:
        ids = self.by_path[path]
        ids.discard(subscription_id)
        if not ids:
            del self.by_path[path]

    def restore(self, sub: Subscription) -> None:
        """One subscription from a checkpoint."""
        self.by_id[sub.id] = sub
        self.link_count += len(sub.links)
        for path in sub.links:
            self.by_path.setdefault(path, set()).add(sub.id)


def _apply_acked(sub: Subscription, event: Acked) -> None:
    for path, position in event.acks:
        link = sub.links.get(path)
        if link is not None and position > link.acked:
            link.acked = position


def _apply_restarted(sub: Subscription, event: LinksRestarted) -> None:
    for path, start in event.links:
        link = sub.links.get(path)
        if link is not None:
            link.acked = start


def _apply_woken(sub: Subscription, event: Woken) -> None:
    assert event.generation > sub.generation, (event.generation, sub.generation)
    sub.generation, sub.wake_id, sub.holder = event.generation, event.wake_id, None
    sub.lease_expires_at, sub.next_attempt_at = event.lease_expires_at, None


def _apply_claimed(sub: Subscription, event: Claimed) -> None:
    assert event.generation == sub.generation and sub.wake_id is not None
    sub.holder, sub.lease_expires_at = event.holder, event.lease_expires_at


def _apply_extended(sub: Subscription, event: LeaseExtended) -> None:
    if event.generation == sub.generation and sub.wake_id is not None:
        sub.lease_expires_at = event.lease_expires_at


def _apply_released(sub: Subscription, event: Released) -> None:
    if event.generation == sub.generation:
        sub.wake_id = sub.holder = sub.lease_expires_at = None
        if event.succeeded:
            sub.attempts, sub.next_attempt_at = 0, None


def _apply_failed(sub: Subscription, event: DeliveryFailed) -> None:
    if event.generation == sub.generation:
        sub.wake_id = sub.holder = sub.lease_expires_at = None
        sub.attempts, sub.next_attempt_at = event.attempts, event.next_attempt_at


_APPLY: Final[dict[type, Callable[[SubscriptionTable, Subscription, Any], None]]] = {
    Linked: lambda table, sub, e: table._link(sub, e.links),
    LinksRestarted: lambda table, sub, e: _apply_restarted(sub, e),
    ExplicitUnlinked: lambda table, sub, e: table._unlink(sub, e.path),
    Acked: lambda table, sub, e: _apply_acked(sub, e),
    Woken: lambda table, sub, e: _apply_woken(sub, e),
    Claimed: lambda table, sub, e: _apply_claimed(sub, e),
    LeaseExtended: lambda table, sub, e: _apply_extended(sub, e),
    Released: lambda table, sub, e: _apply_released(sub, e),
    DeliveryFailed: lambda table, sub, e: _apply_failed(sub, e),
}


# -- decisions: configuration and membership ---------------------------------


def decide_put(table: SubscriptionTable, subscription_id: str, config: SubscriptionConfig, now: float,
               stream_id_floor: int, existing: Iterable[tuple[str, int]], tails: Tails,
               links_max: int, base_url: str = "", links_total_max: int | None = None,
               ) -> tuple[int, list[SubscriptionEvent]]:
    """201 and the creating event, 200 and nothing for the same configuration, 409 otherwise.

    A pattern never links the subscription's own wake stream: its wake events
    would be pending work, and every wake would cause the next.

    ``existing``: every stream (path, tail) now, for the pattern's eager
    backfill at the current tail (no replay); explicit streams are linked at
    their tail too (0 if they do not exist yet: their first data is pending).
    """
    current = table.by_id.get(subscription_id)
    if current is not None:
        if current.config.config_hash != config.config_hash:
            raise ProtocolError(409, "SUBSCRIPTION_EXISTS",
                                "a subscription with this id exists with a different configuration")
        return 200, []
    links: dict[str, LinkSpec] = {}
    if config.pattern is not None:
        for path, tail in existing:
            if glob_matches(config.pattern, path) and path != config.wake_stream:
                links[path] = (path, tail, True, False)
    for path in config.streams:
        glob = path in links
        links[path] = (path, links[path][1] if glob else tails(path) or 0, glob, True)
    _check_links_max(len(links), links_max)
    _check_links_free(len(links), table, links_total_max)
    generation = table.tombstones.get(subscription_id, 0)
    return 201, [SubscriptionCreated(subscription_id, config, now, stream_id_floor, generation,
                                     tuple(links[p] for p in sorted(links)), base_url)]


def _check_links_max(count: int, links_max: int) -> None:
    if count > links_max:
        raise ProtocolError(400, "TOO_MANY_STREAMS", f"a subscription links at most {links_max} streams")


def _check_links_free(new: int, table: SubscriptionTable, links_total_max: int | None) -> None:
    if links_total_max is not None and table.link_count + new > links_total_max:
        raise ProtocolError(507, "SUBSCRIPTION_LINKS_FULL",
                            f"this server holds at most {links_total_max} subscription links in all")


def decide_add_streams(sub: Subscription, paths: Iterable[str], tails: Tails, links_max: int,
                       table: SubscriptionTable | None = None, links_total_max: int | None = None,
                       ) -> list[SubscriptionEvent]:
    """New explicit links at the stream's tail; an existing link only gains the explicit flag."""
    links = tuple((p, sub.links[p].acked if p in sub.links else tails(p) or 0, False, True) for p in paths)
    _check_links_max(len(sub.links.keys() | {p for p, *_ in links}), links_max)
    if table is not None:
        _check_links_free(sum(p not in sub.links for p, *_ in links), table, links_total_max)
    return [Linked(sub.id, links)] if links else []


def decide_remove_stream(sub: Subscription, path: str) -> list[SubscriptionEvent]:
    link = sub.links.get(path)
    return [ExplicitUnlinked(sub.id, path)] if link is not None and link.explicit else []


def decide_streams_created(table: SubscriptionTable, created: Iterable[tuple[str, int, int]],
                           links_max: int, links_total_max: int | None = None) -> list[SubscriptionEvent]:
    """Streams (path, id, start) created after a pattern subscription are linked at
    their start, so the data each was created with is pending (linked "before
    that append"). One decision for many streams: one event per subscription."""
    links: dict[str, list[LinkSpec]] = {}
    free = links_total_max - table.link_count if links_total_max is not None else None
    for path, stream_id, start in created:
        for sub in table.by_id.values():
            pattern = sub.config.pattern
            if pattern is None or stream_id < sub.stream_id_floor or path == sub.config.wake_stream \
                    or not glob_matches(pattern, path):
                continue
            link = sub.links.get(path)
            if link is not None and link.glob:
                continue
            added = links.setdefault(sub.id, [])
            if link is None and (len(sub.links) + len(added) >= links_max or free == 0):
                continue  # bounded; the operator sees it in GET (the stream is absent)
            if link is None and free is not None:
                free -= 1
            added.append((path, start if link is None else link.acked, True, False))
    return [Linked(sub_id, tuple(specs)) for sub_id, specs in links.items() if specs]


def decide_streams_recreated(table: SubscriptionTable, created: Iterable[tuple[str, int, Iterable[str]]],
                             ) -> list[SubscriptionEvent]:
    """Streams (path, start, ids of the subscriptions that linked the path when
    it was created) made at a path already linked (explicit links survive a
    stream's deletion, glob links too): the old cursor counted in the deleted
    stream, so it restarts at the new stream's start. A link made after the
    creation is at the new stream's tail already and is left alone."""
    restarts: dict[str, list[tuple[str, int]]] = {}
    for path, start, linked in created:
        for sub_id in sorted(linked):
            link = table.by_id[sub_id].links.get(path) if sub_id in table.by_id else None
            if link is not None and link.acked != start:
                restarts.setdefault(sub_id, []).append((path, start))
    return [LinksRestarted(sub_id, tuple(links)) for sub_id, links in restarts.items()]


def decide_stale_cursors(table: SubscriptionTable, starts: Callable[[str], "tuple[int, int] | None"],
                         ) -> list[SubscriptionEvent]:
    """At start-up: a cursor beyond its stream's tail counts in a stream deleted
    (and perhaps created again) before a crash that came before its restart
    was written. ``starts``: a path's (start, tail), None when absent; the
    cursor of an absent stream restarts at 0, ready for its next creation."""
    restarts: dict[str, list[tuple[str, int]]] = {}
    for path in sorted(table.by_path):
        start, tail = starts(path) or (0, 0)
        for sub_id in sorted(table.by_path[path]):
            if table.by_id[sub_id].links[path].acked > tail:
                restarts.setdefault(sub_id, []).append((path, start))
    return [LinksRestarted(sub_id, tuple(links)) for sub_id, links in restarts.items()]


# -- decisions: wakes, claims, acks, leases ----------------------------------


def pending_paths(sub: Subscription, tails: Tails) -> list[str]:
    return [path for path, link in sub.links.items() if (tail := tails(path)) is not None and tail > link.acked]


def stream_views(sub: Subscription, tails: Tails, heads: Tails | None = None) -> list[dict[str, Any]]:
    """The ``streams`` of a wake (webhook body, claim answer), path order.

    ``heads``: a stream's earliest retained position. A cursor retention has
    passed gets ``earliest_offset``: a read at ``acked_offset`` would be 410,
    the data up to ``earliest_offset`` is gone, and the worker decides what
    the loss means (its acks go on from there as usual). The cursor itself
    stays where it was acked, so the loss shows until a worker acks past it."""
    views = []
    for path in sorted(sub.links):
        link = sub.links[path]
        tail = tails(path)
        tail = link.acked if tail is None else max(tail, link.acked)
        view: dict[str, Any] = {"path": path, "link_type": link.link_type, "acked_offset": format_offset(link.acked),
                                "tail_offset": format_offset(tail), "has_pending": tail > link.acked}
        head = heads(path) if heads is not None else None
        if head is not None and head > link.acked:
            view["earliest_offset"] = format_offset(head)
        views.append(view)
    return views


def decide_wake(sub: Subscription, tails: Tails, now: float, wake_id: str) -> Woken | None:
    """Pending work on an idle subscription (no wake in flight, no retry waiting) wakes it."""
    if not sub.idle or (sub.next_attempt_at is not None and now < sub.next_attempt_at):
        return None
    if not pending_paths(sub, tails):
        return None
    lease = now + sub.config.lease_ttl_ms / 1000 if sub.config.type == WEBHOOK else None
    return Woken(sub.id, sub.generation + 1, wake_id, lease)


def decide_expiry(sub: Subscription, now: float) -> Released | None:
    """A lease (or a pull wake left unclaimed for a lease's length) that ran out ends its wake."""
    if sub.wake_id is not None and sub.lease_expires_at is not None and now >= sub.lease_expires_at:
        return Released(sub.id, sub.generation)
    return None


def next_deadline(sub: Subscription) -> float | None:
    """When this subscription next needs a decision without any input: a lease
    expiring, or a retry coming due."""
    if sub.wake_id is not None:
        return sub.lease_expires_at
    return sub.next_attempt_at


class Claimed409(ProtocolError):
    """409 ALREADY_CLAIMED, with the holder and generation in the error body."""

    def __init__(self, holder: str, generation: int) -> None:
        super().__init__(409, "ALREADY_CLAIMED", "another worker holds this subscription's lease")
        self.details = {"current_holder": holder, "generation": generation}


def decide_claim(sub: Subscription, worker: str, tails: Tails, now: float, wake_id: str) -> list[SubscriptionEvent]:
    """A pull-wake claim: takes the wake in flight, or starts one; 409 while a lease is held."""
    if sub.config.type != PULL_WAKE:
        raise bad_request("claim is for pull-wake subscriptions", "NOT_PULL_WAKE")
    if sub.holder is not None and sub.lease_expires_at is not None and now < sub.lease_expires_at:
        raise Claimed409(sub.holder, sub.generation)
    events: list[SubscriptionEvent] = []
    generation = sub.generation
    if sub.wake_id is None or sub.holder is not None:  # none in flight, or its lease ran out
        generation += 1
        events.append(Woken(sub.id, generation, wake_id, None))
    events.append(Claimed(sub.id, generation, worker, now + sub.config.lease_ttl_ms / 1000))
    return events


def fenced() -> ProtocolError:
    return ProtocolError(409, "FENCED", "this wake is no longer current (stale wake_id, generation or token)")


@dataclasses.dataclass(frozen=True, slots=True)
class AckRequest:
    wake_id: str
    generation: int
    acks: tuple[tuple[str, int], ...]
    done: bool


def parse_ack(body: bytes, limits: Limits, *, with_acks: bool = True) -> AckRequest:
    doc = parse_json_object(body)
    wake_id, generation = doc.get("wake_id"), doc.get("generation")
    if not isinstance(wake_id, str) or not isinstance(generation, int) or isinstance(generation, bool):
        raise bad_request("wake_id (a string) and generation (an integer) are required", "INVALID_ACK")
    raw_acks = doc.get("acks", []) if with_acks else []
    if not isinstance(raw_acks, list) or len(raw_acks) > limits.request_streams_max:
        raise bad_request(f"acks is an array of at most {limits.request_streams_max} entries", "INVALID_ACK")
    done = doc.get("done", False)
    if not isinstance(done, bool):
        raise bad_request("done must be a boolean", "INVALID_ACK")
    return AckRequest(wake_id, generation, tuple(_ack(a, limits) for a in raw_acks), done)


def _ack(item: object, limits: Limits) -> tuple[str, int]:
    if not isinstance(item, dict) or not isinstance(item.get("offset"), str):
        raise bad_request("each ack is {stream, offset}", "INVALID_ACK")
    position = parse_offset(item["offset"])
    if isinstance(position, str) and position != START:
        raise bad_request("an ack offset is a stream offset (or -1)", "INVALID_OFFSET")
    return check_stream_path(item.get("stream"), limits), 0 if isinstance(position, str) else position


def check_fence(sub: Subscription, token_generation: int, token_wake_id: str, request: AckRequest) -> None:
    """7.3: token and request must both name the current generation and wake."""
    if sub.wake_id is None or not (token_generation == request.generation == sub.generation) \
            or not (token_wake_id == request.wake_id == sub.wake_id):
        raise fenced()


def decide_ack(sub: Subscription, request: AckRequest, tails: Tails, now: float) -> tuple[list[SubscriptionEvent], bool]:
    """A fenced-checked ack or callback: cursors forward; ``done`` ends the wake,
    otherwise the lease is extended (a heartbeat). Returns the events and
    ``next_wake``: whether work is still pending after these acks."""
    acks: dict[str, int] = {}
    for path, position in request.acks:
        if path not in sub.links:
            raise bad_request(f"{path[:64]!r} is not linked to this subscription", "STREAM_NOT_LINKED")
        tail = tails(path)
        if position > (tail or 0):
            raise bad_request(f"the ack for {path[:64]!r} is beyond the stream's tail", "ACK_BEYOND_TAIL")
        if position > max(sub.links[path].acked, acks.get(path, 0)):
            acks[path] = position
    events: list[SubscriptionEvent] = [Acked(sub.id, tuple(sorted(acks.items())))] if acks else []
    if request.done:
        events.append(Released(sub.id, sub.generation, succeeded=True))
    else:
        events.append(LeaseExtended(sub.id, sub.generation, now + sub.config.lease_ttl_ms / 1000))
    after = {p: max(link.acked, acks.get(p, 0)) for p, link in sub.links.items()}
    next_wake = any((tail := tails(p)) is not None and tail > acked for p, acked in after.items())
    return events, next_wake


def decide_delivered(sub: Subscription, generation: int, done: bool,
                     snapshot: Mapping[str, int], tails: Tails | None = None) -> list[SubscriptionEvent]:
    """A webhook answered 2xx: with ``{done: true}``, ack the wake's snapshot of
    tails and end the wake; else wait for the callback (the lease runs). A
    snapshot tail beyond today's tail (the stream was deleted and created
    again meanwhile) is acked only up to today's tail."""
    if generation != sub.generation or sub.wake_id is None:
        return []
    if not done:
        return []
    if tails is not None:
        snapshot = {p: min(t, tails(p) or 0) for p, t in snapshot.items()}
    acks = tuple(sorted((p, t) for p, t in snapshot.items() if p in sub.links and t > sub.links[p].acked))
    events: list[SubscriptionEvent] = [Acked(sub.id, acks)] if acks else []
    return events + [Released(sub.id, generation, succeeded=True)]


def decide_delivery_failed(sub: Subscription, generation: int, now: float, delay_s: float) -> list[SubscriptionEvent]:
    if generation != sub.generation or sub.wake_id is None:
        return []
    return [DeliveryFailed(sub.id, generation, sub.attempts + 1, now + delay_s)]


def require(table: SubscriptionTable, subscription_id: str) -> Subscription:
    sub = table.by_id.get(subscription_id)
    if sub is None:
        raise not_found("subscription not found")
    return sub


# -- serialisation: responses, the WAL, checkpoints ---------------------------


def describe(sub: Subscription, signing: Mapping[str, str] | None) -> dict[str, Any]:
    """GET's body (6.3). ``signing``: the webhook's signing metadata (alg, kid, jwks_url)."""
    config = sub.config
    webhook: dict[str, Any] | None = None
    if config.webhook_url is not None:
        webhook = {"url": config.webhook_url, **({"signing": dict(signing)} if signing else {})}
    return {
        "id": sub.id, "subscription_id": sub.id, "type": config.type, "pattern": config.pattern,
        "streams": [{"path": p, "link_type": link.link_type, "acked_offset": format_offset(link.acked)}
                    for p, link in sorted(sub.links.items())],
        "webhook": webhook, "wake_stream": config.wake_stream, "lease_ttl_ms": config.lease_ttl_ms,
        "created_at": _iso(sub.created_at), "status": sub.status, "description": config.description,
        "generation": sub.generation,
        "next_attempt_at": _iso(sub.next_attempt_at) if sub.next_attempt_at is not None else None,
    }


def _iso(at: float) -> str:
    moment = datetime.datetime.fromtimestamp(at, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def event_to_json(event: SubscriptionEvent) -> dict[str, Any]:
    """The event as a JSON object: its kind and its fields (the configuration normalised)."""
    doc: dict[str, Any] = {"k": type(event).__name__}
    for field in dataclasses.fields(event):
        value = getattr(event, field.name)
        doc[field.name] = value.normalised() if isinstance(value, SubscriptionConfig) else value
    return doc


_KINDS: Final = {cls.__name__: cls for cls in SUBSCRIPTION_EVENTS}


def event_from_json(doc: Mapping[str, Any]) -> SubscriptionEvent:
    cls = _KINDS[doc["k"]]
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        value = doc[field.name] if field.name in doc or field.default is dataclasses.MISSING else field.default
        if field.name == "config":
            value = SubscriptionConfig.from_normalised(value)
        elif field.name in ("links", "acks"):  # LinksRestarted's links are pairs, the same way
            value = tuple(tuple(item) for item in value)
        values[field.name] = value
    return cls(**values)


def table_to_json(table: SubscriptionTable) -> dict[str, Any]:
    return {
        "subscriptions": [_sub_to_json(sub) for sub in table.by_id.values()],
        "tombstones": sorted(table.tombstones.items()),
    }


def _sub_to_json(sub: Subscription) -> dict[str, Any]:
    return {
        "id": sub.id, "config": sub.config.normalised(), "created_at": sub.created_at,
        "floor": sub.stream_id_floor, "generation": sub.generation, "wake_id": sub.wake_id, "holder": sub.holder,
        "lease": sub.lease_expires_at, "attempts": sub.attempts, "next_attempt_at": sub.next_attempt_at,
        "base": sub.base_url,
        "links": [[p, link.acked, link.glob, link.explicit] for p, link in sub.links.items()],
    }


def table_from_json(doc: Mapping[str, Any]) -> SubscriptionTable:
    table = SubscriptionTable()
    for s in doc.get("subscriptions", []):
        table.restore(Subscription(
            s["id"], SubscriptionConfig.from_normalised(s["config"]), s["created_at"], s["floor"],
            {p: Link(acked, glob, explicit) for p, acked, glob, explicit in s["links"]},
            s["generation"], s["wake_id"], s["holder"], s["lease"], s["attempts"], s["next_attempt_at"],
            s.get("base", ""),
        ))
    table.tombstones = {k: v for k, v in doc.get("tombstones", [])}
    return table
