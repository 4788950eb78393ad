"""The subscriptions task when the log refuses its writes (a full disk): the
request gets the storage error, the task keeps running and decides again."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pytest
import trio
from trio.testing import MockClock

from trio_streams.clock import trio_driven_clock
from trio_streams.config import Settings
from trio_streams.protocol import subscriptions as S
from trio_streams.protocol.errors import ProtocolError
from trio_streams.protocol.headers import Expiry
from trio_streams.protocol.state import Appended, Created, Deleted, Event, StreamTable
from trio_streams.storage.log import DiskFull
from trio_streams.subscriptions.manager import SubscriptionManager


class FlakyLog:
    """Applies what it is given, like the log writer, unless the disk is 'full'."""

    def __init__(self, table: StreamTable) -> None:
        self.table = table
        self.full = False
        self.refused = 0

    async def submit(self, events: Sequence[Event]) -> None:
        await trio.lowlevel.checkpoint()
        if self.full:
            self.refused += 1
            raise DiskFull("no space left", 1)
        for event in events:
            self.table.apply(event)


CONFIG = S.parse_config(orjson.dumps({"type": "pull-wake", "streams": ["a"], "wake_stream": "w"}), S.Limits())


async def test_a_refused_write_is_a_507_and_the_task_decides_again(autojump_clock: MockClock) -> None:
    table = StreamTable()
    table.apply(Created(1, "a", "application/json", Expiry(), 0.0, False, b"1\n"))
    flaky = FlakyLog(table)
    manager = SubscriptionManager(Settings(), table, flaky.submit, None, trio_driven_clock(0.0), None)  # type: ignore[arg-type]
    flaky.full = True
    with pytest.raises(ProtocolError) as caught:
        await manager.put("s", CONFIG, "")
    assert caught.value.status == 507 and "s" not in table.subscriptions.by_id
    flaky.full = False
    await manager.put("s", CONFIG, "")  # linked at the tail: nothing pending
    async with trio.open_nursery() as nursery:
        flaky.full = True
        manager._announce = lambda sub: trio.lowlevel.checkpoint()  # type: ignore[method-assign]
        nursery.start_soon(manager.run)
        # New data on the linked stream: the wake's write is refused, then retried.
        state = table.apply(Appended(1, 2, b"2\n"))
        manager.on_applied(state, Appended(1, 2, b"2\n"))
        await trio.sleep(0.5)
        assert flaky.refused >= 1 and table.subscriptions.by_id["s"].generation == 0
        flaky.full = False
        await trio.sleep(Settings().disk_full_retry_after_s + 0.5)
        assert table.subscriptions.by_id["s"].generation == 1
        nursery.cancel_scope.cancel()


async def test_a_link_restart_written_before_a_refused_write_is_not_made_again(autojump_clock: MockClock) -> None:
    """A round restarts the link of a re-created stream, then its wake is refused;
    the retried round must not restart the link again (an ack came meanwhile)."""
    table = StreamTable()
    table.apply(Created(1, "a", "application/json", Expiry(), 0.0, False, b"1\n"))
    flaky = FlakyLog(table)
    manager = SubscriptionManager(Settings(), table, flaky.submit, None, trio_driven_clock(0.0), None)  # type: ignore[arg-type]
    await manager.put("s", CONFIG, "")
    link = table.subscriptions.by_id["s"].links["a"]
    assert link.acked == 2
    submit = flaky.submit

    async def refuse_wakes(events: Sequence[Event]) -> None:
        if any(isinstance(e, S.Woken) for e in events):
            flaky.full = True
        try:
            await submit(events)
        finally:
            flaky.full = False
    manager._submit = refuse_wakes
    async with trio.open_nursery() as nursery:
        manager._announce = lambda sub: trio.lowlevel.checkpoint()  # type: ignore[method-assign]
        table.apply(Deleted(1))
        created = Created(2, "a", "application/json", Expiry(), 0.0, False, b"new\n")
        manager.on_applied(table.apply(created), created)
        nursery.start_soon(manager.run)
        await trio.sleep(0.5)
        assert flaky.refused >= 1 and link.acked == 0
        manager._submit = submit
        table.apply(S.Acked("s", (("a", 4),)))  # a worker's ack, durable meanwhile
        await trio.sleep(Settings().disk_full_retry_after_s + 0.5)
        assert link.acked == 4
        nursery.cancel_scope.cancel()
