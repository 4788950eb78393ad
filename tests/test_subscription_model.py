"""The pure subscription model (protocol/subscriptions.py): parsing, hashing,
globs, links, cursors and the wake/lease/fencing transitions of section 7."""

from __future__ import annotations

import orjson
import pytest

from trio_streams.protocol.errors import ProtocolError
from trio_streams.protocol import subscriptions as S
from trio_streams.protocol.offsets import format_offset

LIMITS = S.Limits()


def body(**fields: object) -> bytes:
    return orjson.dumps(fields)


def pull(**extra: object) -> S.SubscriptionConfig:
    return S.parse_config(body(type="pull-wake", wake_stream="wake/pool", **extra), LIMITS)


def hook(**extra: object) -> S.SubscriptionConfig:
    return S.parse_config(body(type="webhook", webhook={"url": "https://w.example/h"}, **extra), LIMITS)


# -- parsing -------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "code"), [
    (b"{", "INVALID_JSON"),
    (b"[]", "INVALID_JSON"),
    (body(type="push", pattern="a/*"), "INVALID_SUBSCRIPTION_TYPE"),
    (body(pattern="a/*", webhook={"url": "https://x"}), "INVALID_SUBSCRIPTION_TYPE"),
    (body(type="webhook", webhook={"url": "https://x"}), "INVALID_SUBSCRIPTION"),  # neither pattern nor streams
    (body(type="webhook", pattern="a/*"), "INVALID_SUBSCRIPTION"),  # no webhook.url
    (body(type="pull-wake", pattern="a/*"), "INVALID_SUBSCRIPTION"),  # no wake_stream
    (body(type="pull-wake", pattern="a/*", wake_stream="__ds/x"), "INVALID_PATH"),
    (body(type="pull-wake", pattern="a/*", wake_stream="w", webhook={"url": "https://x"}), "INVALID_SUBSCRIPTION"),
    (body(type="pull-wake", pattern="a/*", wake_stream="w", lease_ttl_ms=999), "INVALID_LEASE_TTL"),
    (body(type="pull-wake", pattern="a/*", wake_stream="w", lease_ttl_ms=600_001), "INVALID_LEASE_TTL"),
    (body(type="pull-wake", pattern="a/*", wake_stream="w", lease_ttl_ms="1000"), "INVALID_LEASE_TTL"),
    (body(type="pull-wake", pattern="a/*", wake_stream="w", lease_ttl_ms=True), "INVALID_LEASE_TTL"),
    (body(type="pull-wake", pattern="a/x*", wake_stream="w"), "INVALID_PATTERN"),
    (body(type="pull-wake", pattern="a//b", wake_stream="w"), "INVALID_PATTERN"),
    (body(type="pull-wake", pattern="../b", wake_stream="w"), "INVALID_PATTERN"),
    (body(type="pull-wake", pattern="a" * 513, wake_stream="w"), "INVALID_PATTERN"),
    (body(type="pull-wake", streams=["a/../b"], wake_stream="w"), "INVALID_PATH"),
    (body(type="pull-wake", streams="a", wake_stream="w"), "INVALID_SUBSCRIPTION"),
    (body(type="pull-wake", streams=["s"] * 1001, wake_stream="w"), "INVALID_SUBSCRIPTION"),
    (body(type="pull-wake", streams=["s"], wake_stream="w", description="d" * 1025), "INVALID_SUBSCRIPTION"),
    (body(type="pull-wake", streams=["s"], wake_stream="w", extra=1), "INVALID_SUBSCRIPTION"),
])
def test_bad_configurations_are_400_with_a_code(raw: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        S.parse_config(raw, LIMITS)
    assert (caught.value.status, caught.value.code) == (400, code)


@pytest.mark.parametrize(("sub_id", "ok"), [("sub-1", True), ("a.b~c_d", True), ("", False), ("a/b", False),
                                            ("x" * 128, True), ("x" * 129, False), ("é", False)])
def test_ids_are_bounded_and_plain(sub_id: str, ok: bool) -> None:
    if ok:
        assert S.check_id(sub_id, LIMITS) == sub_id
    else:
        with pytest.raises(ProtocolError):
            S.check_id(sub_id, LIMITS)


def test_lease_defaults_to_30_s_and_streams_are_sorted_and_unique() -> None:
    config = pull(streams=["b", "a", "b"])
    assert config.lease_ttl_ms == 30_000
    assert config.streams == ("a", "b")


def test_the_hash_covers_every_configured_field_and_only_those() -> None:
    base = hook(pattern="e/*", description="d", lease_ttl_ms=1000)
    assert base.config_hash == hook(description="d", lease_ttl_ms=1000.0, pattern="e/*").config_hash
    assert hook(pattern="e/*", streams=["y", "x"]).config_hash == hook(pattern="e/*", streams=["x", "y", "x"]).config_hash
    variants = [hook(pattern="e/**", description="d", lease_ttl_ms=1000),
                hook(pattern="e/*", description="e", lease_ttl_ms=1000),
                hook(pattern="e/*", description="d", lease_ttl_ms=1001),
                hook(pattern="e/*", description="d", lease_ttl_ms=1000, streams=["x"]),
                S.parse_config(body(type="webhook", webhook={"url": "https://other/h"}, pattern="e/*",
                                    description="d", lease_ttl_ms=1000), LIMITS),
                S.parse_config(body(type="pull-wake", wake_stream="w", pattern="e/*", description="d",
                                    lease_ttl_ms=1000), LIMITS)]
    assert len({v.config_hash for v in variants} | {base.config_hash}) == len(variants) + 1


# -- globs ---------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "path", "matches"), [
    ("events/*", "events/a", True),
    ("events/*", "events", False),
    ("events/*", "events/a/b", False),
    ("events/**", "events", True),
    ("events/**", "events/a/b/c", True),
    ("**", "x", True),
    ("**/z", "z", True),
    ("**/z", "a/b/z", True),
    ("**/z", "a/b/zz", False),
    ("a/**/b/*", "a/b/c", True),
    ("a/**/b/*", "a/x/y/b/c", True),
    ("a/**/b/*", "a/x/y/b", False),
    ("*/*", "a/b", True),
    ("*/*", "a", False),
    ("exact/path", "exact/path", True),
    ("exact/path", "exact/pathx", False),
    ("**/**/**/**/**/**/**/**/x", "a/" * 60 + "y", False),  # bounded work, no backtracking blow-up
])
def test_glob_semantics(pattern: str, path: str, matches: bool) -> None:
    assert S.glob_matches(pattern, path) is matches


# -- links ---------------------------------------------------------------------


def make(config: S.SubscriptionConfig, existing: dict[str, int], sub_id: str = "s",
         table: S.SubscriptionTable | None = None) -> tuple[S.SubscriptionTable, S.Subscription]:
    table = table or S.SubscriptionTable()
    status, events = S.decide_put(table, sub_id, config, 100.0, 50, existing.items(), existing.get, 10_000)
    assert status == 201
    for event in events:
        table.apply(event)
    return table, table.by_id[sub_id]


def test_pattern_backfills_existing_streams_at_their_tail_and_explicit_wins() -> None:
    table, sub = make(pull(pattern="e/*", streams=["e/a", "other"]), {"e/a": 5, "e/b": 7, "f/c": 9, "e/x/y": 1})
    assert {p: (l.acked, l.link_type) for p, l in sub.links.items()} == {
        "e/a": (5, "explicit"), "e/b": (7, "glob"), "other": (0, "explicit")}
    assert S.pending_paths(sub, {"e/a": 5, "e/b": 7}.get) == []  # no replay of history
    described = S.describe(sub, None)["streams"]
    assert [s["link_type"] for s in described] == ["explicit", "glob", "explicit"]
    assert described[0]["acked_offset"] == format_offset(5)


def test_removing_the_explicit_link_keeps_a_matching_glob_link() -> None:
    table, sub = make(pull(pattern="e/*", streams=["e/a", "m"]), {"e/a": 5})
    for event in S.decide_remove_stream(sub, "e/a") + S.decide_remove_stream(sub, "m"):
        table.apply(event)
    assert {p: l.link_type for p, l in sub.links.items()} == {"e/a": "glob"}
    assert S.decide_remove_stream(sub, "e/a") == []  # idempotent: no explicit link left
    assert table.by_path == {"e/a": {"s"}}


def test_adding_streams_is_idempotent_and_keeps_cursors() -> None:
    table, sub = make(pull(streams=["a"]), {"a": 3})
    table.apply(S.Acked("s", (("a", 3),)))
    for event in S.decide_add_streams(sub, ["a", "b"], {"a": 9, "b": 4}.get, 100):
        table.apply(event)
    assert {p: l.acked for p, l in sub.links.items()} == {"a": 3, "b": 4}
    with pytest.raises(ProtocolError) as caught:
        S.decide_add_streams(sub, ["c", "d"], lambda p: None, 3)
    assert caught.value.code == "TOO_MANY_STREAMS"


def test_reconfirm_is_200_and_a_changed_config_is_409() -> None:
    table, _ = make(pull(pattern="e/*"), {})
    assert S.decide_put(table, "s", pull(pattern="e/*"), 1.0, 1, [], lambda p: None, 10) == (200, [])
    with pytest.raises(ProtocolError) as caught:
        S.decide_put(table, "s", pull(pattern="e/**"), 1.0, 1, [], lambda p: None, 10)
    assert (caught.value.status, caught.value.code) == (409, "SUBSCRIPTION_EXISTS")


def test_streams_created_later_are_linked_at_their_start() -> None:
    table, sub = make(pull(pattern="e/*"), {})
    assert S.decide_streams_created(table, [("e/new", 49, 0)], 10) == []  # below the floor: backfill's business
    assert S.decide_streams_created(table, [("f/new", 60, 0)], 10) == []
    events = S.decide_streams_created(table, [("e/new", 60, 0), ("f/x", 61, 0), ("e/two", 62, 5)], 10)
    assert events == [S.Linked("s", (("e/new", 0, True, False), ("e/two", 5, True, False)))]
    table.apply(events[0])
    assert sub.links["e/new"].acked == 0
    assert S.pending_paths(sub, {"e/new": 12}.get) == ["e/new"]
    assert S.decide_streams_created(table, [("e/new", 60, 0)], 10) == []  # linked already
    # The bound holds within one decision too.
    assert S.decide_streams_created(table, [(f"e/{n}", 70 + n, 0) for n in range(20)], 5) == \
        [S.Linked("s", (("e/0", 0, True, False), ("e/1", 0, True, False), ("e/2", 0, True, False)))]


# -- cursors, wakes, leases, fencing -------------------------------------------


def woken_pull() -> tuple[S.SubscriptionTable, S.Subscription]:
    table, sub = make(pull(streams=["a"], lease_ttl_ms=1000), {"a": 0})
    wake = S.decide_wake(sub, {"a": 10}.get, 200.0, "w_1")
    assert wake == S.Woken("s", 1, "w_1", None)
    table.apply(wake)
    return table, sub


def test_nothing_pending_or_a_wake_in_flight_means_no_new_wake() -> None:
    table, sub = make(pull(streams=["a"]), {"a": 10})
    assert S.decide_wake(sub, {"a": 10}.get, 0.0, "w") is None
    table.apply(S.Woken("s", 1, "w", None))
    assert S.decide_wake(sub, {"a": 11}.get, 0.0, "w2") is None


def test_claim_takes_the_wake_and_a_second_claim_is_409_already_claimed() -> None:
    table, sub = woken_pull()
    for event in S.decide_claim(sub, "worker-1", {"a": 10}.get, 200.0, "unused"):
        table.apply(event)
    assert (sub.generation, sub.wake_id, sub.holder, sub.lease_expires_at) == (1, "w_1", "worker-1", 201.0)
    with pytest.raises(S.Claimed409) as caught:
        S.decide_claim(sub, "worker-2", {"a": 10}.get, 200.5, "w_2")
    assert caught.value.details == {"current_holder": "worker-1", "generation": 1}
    # Once the lease has run out a claim starts a new generation.
    events = S.decide_claim(sub, "worker-2", {"a": 10}.get, 201.0, "w_2")
    assert [type(e) for e in events] == [S.Woken, S.Claimed] and events[0].generation == 2


def test_claim_on_a_webhook_subscription_is_refused() -> None:
    _, sub = make(hook(streams=["a"]), {})
    with pytest.raises(ProtocolError) as caught:
        S.decide_claim(sub, "w", lambda p: None, 0.0, "w")
    assert caught.value.code == "NOT_PULL_WAKE"


def ack(wake_id: str, generation: int, acks: tuple[tuple[str, int], ...] = (), done: bool = False) -> S.AckRequest:
    return S.AckRequest(wake_id, generation, acks, done)


@pytest.mark.parametrize(("token", "request_"), [
    ((0, "w_1"), ack("w_1", 1)),  # token of an older generation
    ((1, "w_0"), ack("w_1", 1)),  # token of another wake
    ((1, "w_1"), ack("w_1", 2)),  # request generation not current
    ((1, "w_1"), ack("w_x", 1)),  # request wake id not current
])
def test_fencing_needs_token_and_request_to_name_the_current_wake(token: tuple[int, str], request_: S.AckRequest) -> None:
    _, sub = woken_pull()
    S.check_fence(sub, 1, "w_1", ack("w_1", 1))
    with pytest.raises(ProtocolError) as caught:
        S.check_fence(sub, *token, request_)
    assert (caught.value.status, caught.value.code) == (409, "FENCED")


def test_a_heartbeat_extends_the_lease_and_done_releases_with_next_wake() -> None:
    table, sub = woken_pull()
    for event in S.decide_claim(sub, "w", {"a": 10}.get, 200.0, "x"):
        table.apply(event)
    events, next_wake = S.decide_ack(sub, ack("w_1", 1, (("a", 4),)), {"a": 10}.get, 200.6)
    for event in events:
        table.apply(event)
    assert (sub.links["a"].acked, sub.lease_expires_at, next_wake) == (4, 201.6, True)
    assert S.decide_expiry(sub, 201.5) is None
    events, next_wake = S.decide_ack(sub, ack("w_1", 1, (("a", 10),), done=True), {"a": 10}.get, 201.0)
    for event in events:
        table.apply(event)
    assert (sub.links["a"].acked, sub.wake_id, sub.holder, next_wake) == (10, None, None, False)
    _, next_wake = S.decide_ack(sub, ack("w_1", 1, (), done=True), {"a": 11}.get, 0.0)
    assert next_wake


def test_cursors_never_go_backwards_and_acks_are_checked() -> None:
    table, sub = woken_pull()
    table.apply(S.Acked("s", (("a", 8),)))
    table.apply(S.Acked("s", (("a", 3),)))
    assert sub.links["a"].acked == 8
    events, _ = S.decide_ack(sub, ack("w_1", 1, (("a", 5),)), {"a": 10}.get, 0.0)
    assert not any(isinstance(e, S.Acked) for e in events)
    for request, code in [(ack("w_1", 1, (("b", 1),)), "STREAM_NOT_LINKED"),
                          (ack("w_1", 1, (("a", 11),)), "ACK_BEYOND_TAIL")]:
        with pytest.raises(ProtocolError) as caught:
            S.decide_ack(sub, request, {"a": 10}.get, 0.0)
        assert caught.value.code == code


def test_an_expired_lease_ends_the_wake_and_pending_work_wakes_again() -> None:
    table, sub = woken_pull()
    for event in S.decide_claim(sub, "w", {"a": 10}.get, 200.0, "x"):
        table.apply(event)
    assert S.decide_expiry(sub, 200.9) is None
    released = S.decide_expiry(sub, 201.0)
    assert released == S.Released("s", 1)
    table.apply(released)
    assert (sub.wake_id, sub.holder) == (None, None)
    assert S.decide_wake(sub, {"a": 10}.get, 201.0, "w_2") == S.Woken("s", 2, "w_2", None)


def test_webhook_wake_has_a_lease_done_acks_the_snapshot_and_failure_schedules_a_retry() -> None:
    table, sub = make(hook(streams=["a"], lease_ttl_ms=2000), {"a": 0})
    wake = S.decide_wake(sub, {"a": 10}.get, 300.0, "w_1")
    assert wake == S.Woken("s", 1, "w_1", 302.0)
    table.apply(wake)
    assert S.next_deadline(sub) == 302.0
    failed = S.decide_delivery_failed(sub, 1, 300.5, 1.5)
    table.apply(failed[0])
    assert (sub.status, sub.attempts, sub.next_attempt_at, sub.wake_id) == ("failed", 1, 302.0, None)
    assert S.decide_wake(sub, {"a": 10}.get, 301.9, "w_2") is None  # the retry is not due
    table.apply(S.decide_wake(sub, {"a": 10}.get, 302.0, "w_2"))  # type: ignore[arg-type]
    assert sub.status == "active" and sub.attempts == 1
    # The snapshot had tail 10; 15 arrived since: acked to 10, the wake ends, more is pending.
    for event in S.decide_delivered(sub, 2, True, {"a": 10}):
        table.apply(event)
    assert (sub.links["a"].acked, sub.wake_id, sub.attempts) == (10, None, 0)
    assert S.pending_paths(sub, {"a": 15}.get) == ["a"]
    assert S.decide_delivered(sub, 1, True, {"a": 15}) == []  # a stale delivery changes nothing


def test_deletion_tombstones_and_a_recreated_subscription_continues_the_generation() -> None:
    table, sub = woken_pull()
    table.apply(S.SubscriptionDeleted("s"))
    assert "s" not in table.by_id and table.tombstones == {"s": 1} and table.by_path == {}
    table2, sub2 = make(pull(streams=["a"]), {"a": 0}, table=table)
    assert sub2.generation == 1 and table.tombstones == {}
    wake = S.decide_wake(sub2, {"a": 1}.get, 0.0, "w")
    assert wake is not None and wake.generation == 2


# -- serialisation -----------------------------------------------------------


def test_every_event_and_the_table_round_trip_through_json() -> None:
    config = hook(pattern="e/*", streams=["x"], description="d")
    events: list[S.SubscriptionEvent] = [
        S.SubscriptionCreated("s", config, 1.5, 7, 0, (("x", 0, False, True), ("e/a", 3, True, False))),
        S.Linked("s", (("e/b", 2, True, False),)), S.LinksRestarted("s", (("e/b", 0),)), S.ExplicitUnlinked("s", "x"), S.Acked("s", (("e/a", 4),)),
        S.Woken("s", 1, "w", 9.0), S.LeaseExtended("s", 1, 10.0), S.DeliveryFailed("s", 1, 1, 11.0),
        S.Woken("s", 2, "w2", None), S.Claimed("s", 2, "k", 12.0), S.Released("s", 2, True),
    ]
    table = S.SubscriptionTable()
    for event in events:
        decoded = S.event_from_json(orjson.loads(orjson.dumps(S.event_to_json(event))))
        assert decoded == event
        table.apply(decoded)
    restored = S.table_from_json(orjson.loads(orjson.dumps(S.table_to_json(table))))
    assert S.table_to_json(restored) == S.table_to_json(table)
    assert restored.by_path == table.by_path
    table.apply(S.SubscriptionDeleted("s"))
    assert S.table_from_json(orjson.loads(orjson.dumps(S.table_to_json(table)))).tombstones == {"s": 2}


def test_a_recreated_stream_restarts_the_links_it_had_and_no_cursor_stays_beyond_a_tail() -> None:
    """A stream deleted and created again at a linked path: the old cursor
    counted in the deleted stream, so the link restarts at the new start."""
    table, sub = make(pull(pattern="e/*", streams=["x"]), {"x": 40, "e/a": 30})
    assert (sub.links["x"].acked, sub.links["e/a"].acked) == (40, 30)
    events = S.decide_streams_recreated(table, [("x", 0, {"s"}), ("e/a", 5, {"s"}), ("e/new", 0, set())])
    assert events == [S.LinksRestarted("s", (("x", 0), ("e/a", 5)))]
    for event in events:
        table.apply(event)
    assert (sub.links["x"].acked, sub.links["e/a"].acked) == (0, 5)
    assert sorted(S.pending_paths(sub, {"x": 3, "e/a": 9}.get)) == ["e/a", "x"]
    # A link made after the creation (not among its linking ids) is left alone.
    table.apply(S.Acked("s", (("x", 3),)))
    assert S.decide_streams_recreated(table, [("x", 0, set())]) == []
    # Start-up: a cursor beyond its stream's tail (the restart lost to a crash)
    # restarts; an absent stream's at 0; a cursor within its tail stays.
    table.apply(S.Acked("s", (("x", 50),)))
    starts = {"x": (0, 7), "e/a": (5, 9)}.get
    assert S.decide_stale_cursors(table, starts) == [S.LinksRestarted("s", (("x", 0),))]
    assert S.decide_stale_cursors(table, {"e/a": (5, 9)}.get) == [S.LinksRestarted("s", (("x", 0),))]
    assert S.decide_stale_cursors(table, {"x": (0, 50), "e/a": (5, 9)}.get) == []


def test_a_webhook_done_acks_no_further_than_a_recreated_streams_tail() -> None:
    table, sub = make(hook(streams=["a"]), {"a": 0})
    table.apply(S.Woken("s", 1, "w", 9.0))
    table.apply(S.LinksRestarted("s", (("a", 0),)))
    events = S.decide_delivered(sub, 1, True, {"a": 40}, {"a": 4}.get)
    assert events == [S.Acked("s", (("a", 4),)), S.Released("s", 1, succeeded=True)]


def test_a_pattern_never_links_the_subscriptions_own_wake_stream() -> None:
    config = S.parse_config(body(type="pull-wake", pattern="**", wake_stream="wake/pool"), LIMITS)
    table, sub = make(config, {"wake/pool": 3, "e/a": 1})
    assert set(sub.links) == {"e/a"}
    assert S.decide_streams_created(table, [("wake/pool", 99, 0)], 10) == []
    assert len(S.decide_streams_created(table, [("wake/other", 99, 0)], 10)) == 1


@pytest.mark.parametrize("bad", [{"subscription_streams_max": 0}, {"subscription_body_bytes_max": 0},
                                 {"subscription_lease_ttl_ms_min": 0},
                                 {"subscription_lease_ttl_ms_min": 5000, "subscription_lease_ttl_ms_max": 4000},
                                 {"subscription_wake_token_ttl_s": 0},
                                 {"subscription_streams_max": 200_000}])  # would not fit one WAL record
def test_subscription_settings_are_checked_at_start_up(bad: dict[str, int]) -> None:
    from trio_streams.config import Settings

    with pytest.raises(ValueError, match="subscription_"):
        Settings(**bad)  # type: ignore[arg-type]


def test_links_of_all_subscriptions_together_are_bounded() -> None:
    table, sub = make(pull(pattern="e/*", streams=["x"]), {"e/a": 1, "e/b": 1})
    assert table.link_count == 3
    with pytest.raises(ProtocolError) as caught:
        S.decide_put(table, "t", pull(streams=["y", "z"]), 0.0, 0, [], lambda p: None, 100, "", links_total_max=4)
    assert (caught.value.status, caught.value.code) == (507, "SUBSCRIPTION_LINKS_FULL")
    with pytest.raises(ProtocolError):
        S.decide_add_streams(sub, ["y", "z"], lambda p: None, 100, table, links_total_max=4)
    assert S.decide_add_streams(sub, ["x", "y"], lambda p: None, 100, table, links_total_max=4)  # x is linked
    events = S.decide_streams_created(table, [("e/c", 99, 0), ("e/d", 100, 0)], 100, links_total_max=4)
    assert events == [S.Linked("s", (("e/c", 0, True, False),))]
    for event in events + S.decide_remove_stream(sub, "x"):
        table.apply(event)
    assert table.link_count == 3 == len(sub.links)
    assert S.table_from_json(S.table_to_json(table)).link_count == 3
    table.apply(S.SubscriptionDeleted("s"))
    assert table.link_count == 0
