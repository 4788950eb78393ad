"""The reader fan-out (streams/fanout.py): paced wake-ups keep an append's answer ahead of its readers.

In process on the autojump clock (tests/inproc.py). What is checked is the
order of events, never wall time: how many of N parked SSE readers had
their data when the append's 204 arrived. Woken all at once, every reader
runs in the rounds the writer's reply needs, so nearly all have it first;
paced, at most a few rounds' worth have. scripts/bench measures the
latency this buys (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from conftest import PREFIX, inproc_settings_for, offset_of, unique
from inproc import InprocServer, running_app
from trio_streams.protocol.errors import ProtocolError
from trio_streams.streams.fanout import FanOut, Wakeup

READERS = 200
TEXT = "text/plain"


async def _delivered_when_answered(tmp_path: Path, wakes_per_round: int) -> tuple[int, int]:
    """(readers holding the data when the append was answered, readers holding it at the end)."""
    settings = inproc_settings_for(tmp_path, fanout_wakes_per_round=wakes_per_round, sse_connection_s=3600.0)
    async with running_app(settings) as server:
        client = server.client
        name = unique()
        created = await client.put(PREFIX + name, headers={"content-type": TEXT})
        tail = offset_of(created)
        got: set[int] = set()

        async def reader(i: int, ready: trio.Event) -> None:
            async with client.stream("GET", PREFIX + name, params={"offset": tail, "live": "sse"}) as resp:
                ready.set()
                async for piece in resp.iter_bytes():
                    if b"event: data" in piece:
                        got.add(i)
                        return

        async with trio.open_nursery() as nursery:
            for i in range(READERS):
                ready = trio.Event()
                nursery.start_soon(reader, i, ready)
                await ready.wait()
            await server.wait_subscribers(lambda n: n == READERS, f"{READERS} SSE readers")
            answered = await client.post(PREFIX + name, content=b"news", headers={"content-type": TEXT})
            assert answered.status_code == 204
            at_answer = len(got)
        return at_answer, len(got)


# Trio orders each round at random, so how many readers beat the writer varies
# from run to run: woken at once, 4 to 244 of them were seen (about one run in
# ten under 10); paced, 0 to 5. Each test therefore looks at several runs.
RUNS = 3


async def test_an_append_is_answered_before_its_readers_are_served(autojump_clock: MockClock, tmp_path: Path) -> None:
    for _ in range(RUNS):
        at_answer, at_end = await _delivered_when_answered(tmp_path, wakes_per_round=2)
        assert at_end == READERS
        assert at_answer <= READERS // 20, f"{at_answer} of {READERS} readers were served before the writer"


async def test_waking_every_reader_at_once_serves_them_before_the_writer(autojump_clock: MockClock, tmp_path: Path) -> None:
    """The contrast that makes the test above meaningful: one round for all readers delays the reply."""
    served_first = []
    for _ in range(RUNS + 1):
        at_answer, at_end = await _delivered_when_answered(tmp_path, wakes_per_round=READERS)
        assert at_end == READERS
        served_first.append(at_answer)
    assert max(served_first) > READERS // 20, served_first


# -- FanOut on its own ----------------------------------------------------------------


async def test_every_reader_is_woken_once_however_often_it_was_queued() -> None:
    fanout = FanOut(subscribers_per_stream_max=100, wakes_per_round=3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fanout.run)
        with fanout.subscribe(1) as a, fanout.subscribe(1) as b, fanout.subscribe(2) as other:
            for _ in range(5):
                fanout.notify(1)
            assert fanout.statistics()["fanout_pending"] == 2
            await trio.testing.wait_all_tasks_blocked()
            assert fanout.statistics()["fanout_pending"] == 0
            assert a.pending and b.pending and not other.pending
            await a.wait()
            assert not a.pending
        nursery.cancel_scope.cancel()


async def test_wakes_are_spread_over_rounds() -> None:
    """At most ``wakes_per_round`` readers get their wake-up before the next scheduler round."""
    fanout = FanOut(subscribers_per_stream_max=100, wakes_per_round=3)
    woken_per_round: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fanout.run)
        with contextlib.ExitStack() as stack:
            wakeups = [stack.enter_context(fanout.subscribe(7)) for _ in range(10)]
            await trio.testing.wait_all_tasks_blocked()
            fanout.notify(7)
            while sum(woken_per_round) < 10:
                await trio.lowlevel.checkpoint()
                woken_per_round.append(sum(_take(w) for w in wakeups))
        nursery.cancel_scope.cancel()
    # The pacer and this task share rounds in either order, so one look may span two of its rounds.
    assert max(woken_per_round) <= 2 * 3
    assert sum(woken_per_round) == 10 and len(woken_per_round) >= 2


def _take(wakeup: Wakeup) -> int:
    """1 if a wake-up was pending (and is now taken), else 0."""
    if not wakeup.pending:
        return 0
    wakeup._pending = False
    return 1


async def test_a_reader_that_leaves_is_no_longer_queued() -> None:
    fanout = FanOut(subscribers_per_stream_max=100, wakes_per_round=1)
    with fanout.subscribe(1):
        with fanout.subscribe(1):
            fanout.notify(1)
            assert fanout.statistics()["fanout_pending"] == 2
        assert fanout.statistics()["fanout_pending"] == 1
    assert fanout.statistics() == {"subscribed_streams": 0, "subscribers": 0, "fanout_pending": 0,
                                   "fanout_admissions_waiting": 0}


# -- admission: a long-poll's next request waits behind the queued wake-ups -----------


async def test_admission_is_free_when_nothing_is_queued() -> None:
    fanout = FanOut(subscribers_per_stream_max=100, wakes_per_round=1)
    with trio.CancelScope() as scope:
        scope.cancel()
        await fanout.admit()  # neither waits nor checkpoints (a checkpoint would raise Cancelled)
    assert not scope.cancelled_caught


async def test_newcomers_are_paced_and_kept_in_arrival_order_behind_the_readers() -> None:
    fanout = FanOut(subscribers_per_stream_max=100, wakes_per_round=1)
    order: list[str] = []

    async def newcomer(name: str) -> None:
        await fanout.admit()
        order.append(name)

    async with trio.open_nursery() as nursery:
        with contextlib.ExitStack() as stack:
            readers = [stack.enter_context(fanout.subscribe(4)) for _ in range(3)]
            fanout.notify(4)
            for name in "abc":
                nursery.start_soon(newcomer, name)
                await trio.testing.wait_all_tasks_blocked()
            assert fanout.statistics()["fanout_admissions_waiting"] == 3
            nursery.start_soon(fanout.run)
            rounds = 0
            while len(order) - rounds < 3:
                await trio.lowlevel.checkpoint()
                order.append(f"readers:{sum(w.pending for w in readers)}")
                rounds += 1
        nursery.cancel_scope.cancel()
    assert [entry for entry in order if not entry.startswith("readers")] == ["a", "b", "c"]
    # Every reader had its wake-up before the first newcomer went on, and they went on in
    # different rounds (paced), not all in one.
    assert order.index("a") > order.index("readers:3")
    assert order.index("c") - order.index("a") >= 3
    assert fanout.statistics()["fanout_admissions_waiting"] == 0


async def test_a_newcomer_that_leaves_before_its_turn_leaves_nothing_queued() -> None:
    fanout = FanOut(subscribers_per_stream_max=100, wakes_per_round=1)  # no pacer: nothing is given
    async with trio.open_nursery() as nursery:
        with fanout.subscribe(1):
            fanout.notify(1)
            leaver = trio.CancelScope()
            nursery.start_soon(_admit_in, fanout, leaver)
            await trio.testing.wait_all_tasks_blocked()
            assert fanout.statistics()["fanout_admissions_waiting"] == 1
            assert fanout.statistics()["fanout_pending"] == 2
            leaver.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert fanout.statistics()["fanout_admissions_waiting"] == 0
            assert fanout.statistics()["fanout_pending"] == 1


async def test_when_the_pacer_stops_every_queued_newcomer_goes_on() -> None:
    fanout = FanOut(subscribers_per_stream_max=100, wakes_per_round=1)
    admitted = trio.Event()

    async def newcomer() -> None:
        await fanout.admit()
        admitted.set()

    async with trio.open_nursery() as nursery:
        pacer = trio.CancelScope()
        nursery.start_soon(_run_in, fanout, pacer)
        await trio.testing.wait_all_tasks_blocked()
        fanout._pending.update({Wakeup(): None for _ in range(50)})  # readers' wake-ups, queued
        nursery.start_soon(newcomer)
        while not fanout.statistics()["fanout_admissions_waiting"]:
            await trio.lowlevel.checkpoint()
        assert fanout.statistics()["fanout_pending"] > 40  # the pacer is far from the newcomer's turn
        pacer.cancel()
        with trio.fail_after(10):  # a bound for the failure only: without the release it waits forever
            await admitted.wait()
    assert fanout.statistics()["fanout_pending"] == 0


async def _admit_in(fanout: FanOut, scope: trio.CancelScope) -> None:
    with scope:
        await fanout.admit()


async def _run_in(fanout: FanOut, scope: trio.CancelScope) -> None:
    with scope:
        await fanout.run()


async def test_readers_over_the_limit_are_refused_and_leave_nothing_behind() -> None:
    fanout = FanOut(subscribers_per_stream_max=1, wakes_per_round=1)
    with fanout.subscribe(1):
        with pytest.raises(ProtocolError) as refused:
            with fanout.subscribe(1):
                pass
        assert refused.value.status == 503
    refused_alone = FanOut(subscribers_per_stream_max=0, wakes_per_round=1)
    with pytest.raises(ProtocolError):
        with refused_alone.subscribe(2):
            pass
    assert refused_alone.statistics()["subscribed_streams"] == 0


async def test_a_wakeup_wakes_its_waiting_task_or_is_kept_for_its_next_wait() -> None:
    wakeup = Wakeup()
    woke = trio.Event()

    async def waiter() -> None:
        await wakeup.wait()
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()
        wakeup.set()
        await woke.wait()
    assert not wakeup.pending
    wakeup.set()
    wakeup.set()
    assert wakeup.pending
    await wakeup.wait()  # kept: returns at once
    assert not wakeup.pending


async def test_a_cancelled_wait_leaves_the_wakeup_usable() -> None:
    wakeup = Wakeup()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wakeup.wait)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()  # cancelled while it waits
    wakeup.set()
    assert wakeup.pending  # nobody waits any more: kept, not lost
    with trio.CancelScope() as scope:
        scope.cancel()
        await wakeup.wait()
    assert wakeup.pending  # a wait cancelled before it began takes nothing
