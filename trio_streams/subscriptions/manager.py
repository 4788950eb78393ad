"""The subscriptions task: every subscription decision, one at a time, made durable before it is answered.

Owns: deciding (protocol/subscriptions.py) against the durable subscriptions
table and submitting the events to the log writer — control requests, claims,
acks, callbacks, releases — and, in ``run``, the decisions no request makes:
linking streams created after a pattern subscription, waking subscriptions
with pending work, ending leases that ran out, retrying failed webhook
deliveries when their persisted ``next_attempt_at`` comes. Pull wakes are
appended to the wake stream through the Streams façade; webhook deliveries
run in their own tasks (bounded by the deliverer), so a slow receiver holds
up neither appends nor other subscriptions.

Serialisation: one lock around decide-and-submit. ``Log.submit`` returns once
the events are durable *and applied*, so each decision sees every earlier one.

Never: HTTP, I/O other than through the façade, the log and the ports.
"""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import trio

from ..clock import Clock
from ..config import Settings
from ..protocol import subscriptions as S
from ..protocol.errors import ProtocolError
from ..protocol.headers import AppendRequest, is_json
from ..protocol.state import Appended, Created, Event, StreamState, StreamTable
from ..storage.log import StorageFailed
from ..streams.facade import Streams
from .ports import Ports

log = logging.getLogger("trio_streams.subscriptions")

Submit = Callable[[Sequence[Event]], Awaitable[None]]
# Streams the backfill matches between two yields to other tasks (about 10 ms).
_BACKFILL_SLICE_STREAMS = 10_000


def limits(settings: Settings) -> S.Limits:
    return S.Limits(
        id_chars_max=settings.subscription_id_chars_max,
        pattern_chars_max=settings.subscription_pattern_chars_max,
        request_streams_max=settings.subscription_request_streams_max,
        description_chars_max=settings.subscription_description_chars_max,
        path_bytes_max=settings.stream_path_bytes_max,
        lease_ttl_ms_min=settings.subscription_lease_ttl_ms_min,
        lease_ttl_ms_max=settings.subscription_lease_ttl_ms_max,
        webhook_url_bytes_max=settings.webhook_url_bytes_max,
    )


class SubscriptionManager:
    def __init__(self, settings: Settings, table: StreamTable, submit: Submit, streams: Streams, clock: Clock,
                 ports: Ports | None, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.limits = limits(settings)
        self._streams_table = table
        self._submit = submit
        self._streams = streams
        self._clock = clock
        self.ports = ports
        self._rng = rng or random.Random()
        self._lock = trio.Lock()
        self._dirty = trio.Event()
        # Noted by ``on_applied`` (the log writer's hook, synchronous): streams
        # created (path, id, start) and paths appended to since the last round.
        self._created: list[tuple[str, int, int]] = []
        self._created_pending: list[tuple[str, int, int]] = []
        self._recreated_pending: list[tuple[str, int, frozenset[str]]] = []
        # Streams created at a path already linked: (path, start, the linking
        # subscriptions then), whose cursors restart (a deleted stream's new incarnation).
        self._recreated: list[tuple[str, int, frozenset[str]]] = []
        self._touched: set[str] = set()
        self._recheck: set[str] = set()
        self._delivering: set[str] = set()
        self._nursery: trio.Nursery | None = None

    @property
    def table(self) -> S.SubscriptionTable:
        return self._streams_table.subscriptions

    def tail(self, path: str) -> int | None:
        state = self._live_stream(path)
        return None if state is None else state.tail

    def head(self, path: str) -> int | None:
        """The earliest retained position: a cursor below it points at data retention removed."""
        state = self._live_stream(path)
        return None if state is None else state.head

    def _live_stream(self, path: str) -> StreamState | None:
        state = self._streams_table.by_path.get(path)
        return None if state is None or state.soft_deleted else state

    # -- the log writer's hook -------------------------------------------------

    def on_applied(self, state: StreamState | None, event: Event) -> None:
        """Called for every durable stream event: notes what may need a wake."""
        if isinstance(event, Created):
            self._created.append((event.path, event.stream_id, event.position))
            if event.path in self.table.by_path:
                self._recreated.append((event.path, event.position, frozenset(self.table.by_path[event.path])))
        elif isinstance(event, Appended) and state is not None and state.path in self.table.by_path:
            self._touched.add(state.path)
        else:
            return
        self._dirty.set()

    # -- control plane ----------------------------------------------------------

    def get(self, subscription_id: str) -> S.Subscription:
        return S.require(self.table, subscription_id)

    async def put(self, subscription_id: str, config: S.SubscriptionConfig, base_url: str) -> tuple[int, S.Subscription]:
        if config.webhook_url is not None:
            await self._require_ports().check_url(config.webhook_url)
        async with self._lock:
            if subscription_id not in self.table.by_id and len(self.table.by_id) >= self.settings.subscriptions_max:
                raise ProtocolError(507, "SUBSCRIPTIONS_FULL",
                                    f"this server holds at most {self.settings.subscriptions_max} subscriptions")
            floor = self._streams_table.next_stream_id
            existing = await self._matching_streams(config) if subscription_id not in self.table.by_id else []
            status, events = S.decide_put(
                self.table, subscription_id, config, self._clock.wall(), floor,
                existing, self.tail, self.settings.subscription_streams_max, base_url,
                self.settings.subscription_links_total_max)
            await self._commit(events)
            self._recheck.add(subscription_id)
        self._dirty.set()
        return status, self.table.by_id[subscription_id]

    async def _matching_streams(self, config: S.SubscriptionConfig) -> list[tuple[str, int]]:
        """The backfill: existing streams the pattern matches, at their tail, found in
        slices between which the event loop serves others (about 1 µs a stream).
        A stream created meanwhile has an id at or above the floor taken before:
        the created-stream path links it from its start, so none is missed."""
        if config.pattern is None:
            return []
        states = list(self._streams_table.by_id.values())
        found: list[tuple[str, int]] = []
        for first in range(0, len(states), _BACKFILL_SLICE_STREAMS):
            found += [(s.path, s.tail) for s in states[first:first + _BACKFILL_SLICE_STREAMS]
                      if not s.soft_deleted and S.glob_matches(config.pattern, s.path)]
            await trio.lowlevel.checkpoint()
        return found

    async def delete(self, subscription_id: str) -> None:
        async with self._lock:
            S.require(self.table, subscription_id)
            await self._commit([S.SubscriptionDeleted(subscription_id)])

    async def add_streams(self, subscription_id: str, paths: Sequence[str]) -> None:
        async with self._lock:
            sub = S.require(self.table, subscription_id)
            await self._commit(S.decide_add_streams(sub, paths, self.tail, self.settings.subscription_streams_max,
                                                    self.table, self.settings.subscription_links_total_max))
            self._recheck.add(subscription_id)
        self._dirty.set()

    async def remove_stream(self, subscription_id: str, path: str) -> None:
        async with self._lock:
            await self._commit(S.decide_remove_stream(S.require(self.table, subscription_id), path))

    # -- data plane -------------------------------------------------------------

    async def claim(self, subscription_id: str, worker: str) -> dict[str, Any]:
        ports = self._require_ports()
        async with self._lock:
            sub = S.require(self.table, subscription_id)
            events = S.decide_claim(sub, worker, self.tail, self._clock.wall(), _wake_id())
            await self._commit(events)
            answer = {
                "wake_id": sub.wake_id, "generation": sub.generation,
                "token": ports.tokens.issue(sub.id, sub.generation, sub.wake_id or "",
                                            self.settings.subscription_wake_token_ttl_s),
                "streams": S.stream_views(sub, self.tail, self.head), "lease_ttl_ms": sub.config.lease_ttl_ms,
            }
        self._dirty.set()  # its lease is a new deadline
        return answer

    async def ack(self, subscription_id: str, token: str, body: bytes) -> bool:
        """An ack (pull-wake) or callback (webhook); returns ``next_wake``."""
        request = S.parse_ack(body, self.limits)
        claims = self._verified(subscription_id, token)
        async with self._lock:
            sub = await self._current(subscription_id)
            S.check_fence(sub, claims.generation, claims.wake_id, request)
            events, next_wake = S.decide_ack(sub, request, self.tail, self._clock.wall())
            await self._commit(events)
            self._recheck.add(subscription_id)
        self._dirty.set()
        return next_wake

    async def release(self, subscription_id: str, token: str, body: bytes) -> None:
        request = S.parse_ack(body, self.limits, with_acks=False)
        claims = self._verified(subscription_id, token)
        async with self._lock:
            sub = await self._current(subscription_id)
            S.check_fence(sub, claims.generation, claims.wake_id, request)
            await self._commit([S.Released(sub.id, sub.generation)])
            self._recheck.add(subscription_id)
        self._dirty.set()

    def _verified(self, subscription_id: str, token: str) -> Any:
        ports = self._require_ports()
        try:
            return ports.tokens.verify(token, subscription_id)
        except ports.invalid_token:
            raise ProtocolError(401, "INVALID_WAKE_TOKEN", "the bearer token is not a valid wake token "
                                "for this subscription") from None

    async def _current(self, subscription_id: str) -> S.Subscription:
        """The subscription a wake-token request is checked against: a deleted one
        fences whatever was in flight for it, and a lease that ran out has ended
        its wake even if the task has not got round to it yet."""
        if subscription_id in self.table.tombstones:
            raise S.fenced()
        sub = S.require(self.table, subscription_id)
        expired = S.decide_expiry(sub, self._clock.wall())
        if expired is not None:
            await self._commit([expired])
            self._recheck.add(subscription_id)
            self._dirty.set()
        return sub

    def _require_ports(self) -> Ports:
        if self.ports is None:
            raise ProtocolError(503, "SUBSCRIPTIONS_UNAVAILABLE", "webhook signing and wake tokens are unavailable")
        return self.ports

    async def _commit(self, events: Sequence[S.SubscriptionEvent]) -> None:
        """Returns once ``events`` are durable and applied; a refused write is the
        request's 503/507 (nothing changed), as for an append."""
        if events:
            try:
                await self._submit(list(events))
            except StorageFailed as error:
                raise error.protocol_error() from None

    # -- the task ---------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._decide_or_retry(self._start_up)
            while True:
                with trio.move_on_at(self._next_deadline()):
                    await self._dirty.wait()
                self._dirty = trio.Event()
                await self._decide_or_retry(self._round)

    async def _decide_or_retry(self, decide: Callable[[], Awaitable[None]]) -> None:
        """A round the log refused (a full disk) changed nothing: every subscription
        is decided again after ``disk_full_retry_after_s``."""
        try:
            async with self._lock:
                await decide()
        except ProtocolError as error:
            log.error("subscription decisions not written, retrying in %d s: %s",
                      self.settings.disk_full_retry_after_s, error.message)
            await trio.sleep(self.settings.disk_full_retry_after_s)
            self._created += self._created_pending
            self._recreated += self._recreated_pending
            self._recheck.update(self.table.by_id)
            self._dirty.set()

    async def _start_up(self) -> None:
        await self._commit(S.decide_stale_cursors(self.table, self._start_and_tail))
        await self._link_streams_created_while_down()
        self._recheck.update(self.table.by_id)  # pending work from before the restart wakes
        self._dirty.set()
        await self._announce_unclaimed_wakes()
        self._resend_webhook_wakes()

    def _start_and_tail(self, path: str) -> tuple[int, int] | None:
        state = self._live_stream(path)
        return None if state is None else (state.base, state.tail)

    def _next_deadline(self) -> float:
        """The trio time of the soonest lease end or retry (inf: none)."""
        deadlines = [d for sub in self.table.by_id.values() if (d := S.next_deadline(sub)) is not None]
        if not deadlines:
            return float("inf")
        return self._clock.monotonic() + max(0.0, min(deadlines) - self._clock.wall())

    async def _round(self) -> None:
        created, self._created = self._created, []
        self._created_pending = created  # given back if the round's write is refused
        recreated, self._recreated = self._recreated, []
        self._recreated_pending = recreated
        await self._commit(S.decide_streams_recreated(self.table, recreated))
        self._recreated_pending = []  # written: retrying it would move cursors acked since back
        await self._commit(S.decide_streams_created(self.table, created, self.settings.subscription_streams_max,
                                                      self.settings.subscription_links_total_max))
        self._touched.update(path for path, _, _ in created)
        await self._announce_to_recreated_wake_streams({path for path, _, _ in created})
        now = self._clock.wall()
        candidates = self._recheck | {i for p in self._touched for i in self.table.by_path.get(p, ())}
        candidates |= {sub.id for sub in self.table.by_id.values()
                       if (d := S.next_deadline(sub)) is not None and d <= now}
        self._recheck, self._touched = set(), set()
        expired = [e for i in sorted(candidates) if i in self.table.by_id
                   and (e := S.decide_expiry(self.table.by_id[i], now)) is not None]
        await self._commit(expired)
        woken = [w for i in sorted(candidates) if (w := self._decide_wake(i, now)) is not None]
        await self._commit(woken)
        for wake in woken:  # durable first: a crash now re-wakes, never loses the wake
            sub = self.table.by_id[wake.subscription_id]
            if sub.config.type == S.PULL_WAKE:
                await self._announce(sub)
            else:
                self._start_delivery(sub)

    def _decide_wake(self, subscription_id: str, now: float) -> S.Woken | None:
        sub = self.table.by_id.get(subscription_id)
        if sub is None or subscription_id in self._delivering:
            return None
        return S.decide_wake(sub, self.tail, now, _wake_id())

    async def _link_streams_created_while_down(self) -> None:
        """A stream created just before a crash may be durable without its link.
        Only streams created after the oldest pattern subscription can be."""
        floors = [s.stream_id_floor for s in self.table.by_id.values() if s.config.pattern is not None]
        if not floors:
            return
        floor = min(floors)
        created = [(s.path, s.stream_id, s.base) for s in self._streams_table.by_id.values() if s.stream_id >= floor]
        await self._commit(S.decide_streams_created(self.table, created, self.settings.subscription_streams_max,
                                                      self.settings.subscription_links_total_max))

    async def _announce_unclaimed_wakes(self) -> None:
        """A crash may have come between a pull wake and its wake event: announce it
        again (a duplicate wake event is harmless; a lost one would strand the work)."""
        for sub in list(self.table.by_id.values()):
            if sub.config.type == S.PULL_WAKE and sub.wake_id is not None and sub.holder is None:
                await self._announce(sub)

    async def _announce_to_recreated_wake_streams(self, paths: set[str]) -> None:
        """A wake stream deleted while its subscription had a wake unclaimed lost
        the announcement (the wake stays claimable): once the application
        creates it again, the wake is announced there."""
        if not paths:
            return
        for sub in list(self.table.by_id.values()):
            if sub.config.wake_stream in paths and sub.wake_id is not None and sub.holder is None:
                await self._announce(sub)

    def _resend_webhook_wakes(self) -> None:
        """A crash may have come between a webhook wake and its delivery, or while the
        receiver had it: send it again now, not when its lease runs out (up to 10 min).
        The lease goes on from where it was.
        A receiver may so see one wake twice, which at-least-once allows: both carry
        the same wake_id and generation, and the first callback that is done fences
        the other."""
        now = self._clock.wall()
        for sub in list(self.table.by_id.values()):
            if sub.config.type == S.WEBHOOK and sub.wake_id is not None and sub.next_attempt_at is None \
                    and (sub.lease_expires_at or now) >= now and sub.id not in self._delivering:
                self._start_delivery(sub)  # an expired lease instead ends the wake and wakes anew

    # -- pull wakes ---------------------------------------------------------------

    async def _announce(self, sub: S.Subscription) -> None:
        """Appends the wake event(s) to the wake stream: one per pending stream."""
        wake_stream = sub.config.wake_stream
        assert wake_stream is not None
        ts = int(self._clock.wall() * 1000)
        wakes = [{"type": "wake", "subscription_id": sub.id, "stream": path, "generation": sub.generation, "ts": ts}
                 for path in sorted(S.pending_paths(sub, self.tail))] or \
                [{"type": "wake", "subscription_id": sub.id, "stream": None, "generation": sub.generation, "ts": ts}]
        try:
            content_type = self._streams.head(wake_stream).content_type
            body = orjson.dumps(wakes) if is_json(content_type) else b"".join(orjson.dumps(w) + b"\n" for w in wakes)
            reply = await self._streams.append(wake_stream, AppendRequest(content_type, body, None, None, False))
            if reply.status >= 300:
                log.warning("wake for subscription %r not written to %r: status %d", sub.id, wake_stream, reply.status)
        except ProtocolError as error:  # the application has not created it (7.2), or closed it
            log.warning("wake for subscription %r not written to %r: %s", sub.id, wake_stream, error.message)

    # -- webhook deliveries ---------------------------------------------------------

    def _start_delivery(self, sub: S.Subscription) -> None:
        ports = self.ports
        assert self._nursery is not None and sub.config.webhook_url is not None
        if ports is None:
            log.error("webhook subscription %r cannot be delivered: no webhook package", sub.id)
            return
        views = S.stream_views(sub, self.tail, self.head)
        snapshot = {v["path"]: _position(v["tail_offset"]) for v in views}
        body = orjson.dumps({
            "subscription_id": sub.id, "wake_id": sub.wake_id, "generation": sub.generation, "streams": views,
            "callback_url": f"{sub.base_url}__ds/subscriptions/{sub.id}/callback",
            "callback_token": ports.tokens.issue(sub.id, sub.generation, sub.wake_id or "",
                                                 self.settings.subscription_wake_token_ttl_s),
        })
        self._delivering.add(sub.id)
        self._nursery.start_soon(self._deliver, ports, sub.id, sub.generation, sub.config.webhook_url, body, snapshot)

    async def _deliver(self, ports: Ports, subscription_id: str, generation: int, url: str, body: bytes,
                       snapshot: dict[str, int]) -> None:
        try:
            result = await ports.deliverer.deliver(url, body)
            async with self._lock:
                sub = self.table.by_id.get(subscription_id)
                if sub is None:
                    return
                if result.ok:
                    events = S.decide_delivered(sub, generation, result.done, snapshot, self.tail)
                else:
                    delay = ports.retry_delay_s(sub.attempts + 1, self._rng)
                    log.warning("webhook delivery for subscription %r failed (%s); retry %d in %.1f s",
                                subscription_id, result.error or result.status, sub.attempts + 1, delay)
                    events = S.decide_delivery_failed(sub, generation, self._clock.wall(), delay)
                await self._commit(events)
                self._recheck.add(subscription_id)
        except ProtocolError as error:  # the outcome is lost: the wake's lease runs out and it is sent again
            log.error("outcome of a webhook delivery for subscription %r not written: %s", subscription_id, error.message)
        finally:
            self._delivering.discard(subscription_id)
            self._dirty.set()


def _wake_id() -> str:
    return "w_" + secrets.token_urlsafe(12)


def _position(offset: str) -> int:
    return int(offset.rpartition("_")[2])

