"""Subscription events in the WAL: written by the log writer with stream events,
applied to the subscriptions table, kept in checkpoints and replayed at recovery."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import trio

from logrun import running_log, small_store
from trio_streams.config import Settings
from trio_streams.protocol import subscriptions as S
from trio_streams.protocol.headers import Expiry
from trio_streams.protocol.state import Appended, Created, Event, StreamTable
from trio_streams.storage.checkpoint import decode_table, encode_table
from trio_streams.storage.events import SUBSCRIPTION, decode_event, encode_event
from trio_streams.storage.recovery import RecoveryRefused, recover
from trio_streams.storage.wal import SegmentedLog, encode_record

CONFIG = S.parse_config(orjson.dumps({"type": "pull-wake", "pattern": "e/*", "wake_stream": "w"}), S.Limits())
EVENTS: list[Event] = [
    Created(1, "e/a", "text/plain", Expiry(), 0.0, False, b"abc"),
    S.SubscriptionCreated("s", CONFIG, 1.0, 2, 0, (("e/a", 3, True, False),)),
    Appended(1, 3, b"de"),
    S.Woken("s", 1, "w_1", None),
    S.Claimed("s", 1, "worker", 9.0),
    S.Acked("s", (("e/a", 5),)),
    S.Released("s", 1, True),
    S.SubscriptionCreated("gone", CONFIG, 1.0, 2, 0, ()),
    S.Woken("gone", 1, "w_g", None),
    S.SubscriptionDeleted("gone"),
]


def _recovered(directory: Path, **overrides: object) -> StreamTable:
    store = small_store(directory)
    recovered = recover(directory, store, Settings(data_dir=str(directory)).replace(**overrides))
    store.close_sync()
    recovered.wal.close()
    return recovered.table


def _expected() -> dict[str, object]:
    table = StreamTable()
    for event in EVENTS:
        table.apply(event)
    return S.table_to_json(table.subscriptions)


def test_every_subscription_event_round_trips_through_its_record() -> None:
    for event in EVENTS[1:]:
        if isinstance(event, (Created, Appended)):
            continue
        rtype, payload = encode_event(event)
        assert rtype == SUBSCRIPTION and decode_event(rtype, payload) == event


@pytest.mark.parametrize("checkpoint_wal_bytes", [1, 1 << 30], ids=["checkpointed", "replayed"])
async def test_state_after_a_crash_is_what_was_durable(tmp_path: Path, checkpoint_wal_bytes: int) -> None:
    async with running_log(tmp_path, checkpoint_wal_bytes=checkpoint_wal_bytes) as (log, table):
        for event in EVENTS:
            await log.submit([event])
        live = S.table_to_json(table.subscriptions)
    assert live == _expected()
    recovered = _recovered(tmp_path)
    assert S.table_to_json(recovered.subscriptions) == live
    assert recovered.subscriptions.tombstones == {"gone": 1}
    assert recovered.by_path["e/a"].tail == 5


def test_checkpoints_carry_subscriptions_and_old_checkpoints_still_load() -> None:
    table = StreamTable()
    for event in EVENTS:
        table.apply(event)
    payload = encode_table(table)
    assert S.table_to_json(decode_table(payload).subscriptions) == _expected()
    old = orjson.loads(payload)
    del old["subscriptions"]  # as written before subscriptions existed
    loaded = decode_table(orjson.dumps(old))
    assert loaded.subscriptions.by_id == {} and loaded.by_path["e/a"].tail == 5


def _write_wal(directory: Path, events: list[Event]) -> None:
    with SegmentedLog.open(directory / "wal", 1 << 20) as wal:
        for _ in wal.recover(0):
            pass
        wal.append(b"".join(encode_record(*encode_event(e)) for e in events))
        wal.sync()


def test_a_change_to_an_unknown_subscription_refuses_start_up_unless_fencing(tmp_path: Path) -> None:
    _write_wal(tmp_path, [EVENTS[0], S.Acked("nobody", (("e/a", 1),)), S.SubscriptionCreated("s", CONFIG, 1.0, 2, 0, ())])
    with pytest.raises(RecoveryRefused, match="'nobody', which does not exist"):
        _recovered(tmp_path)
    table = _recovered(tmp_path, wal_recovery_mode="fence_damaged_streams")
    assert list(table.subscriptions.by_id) == ["s"]
