"""Positioned events: every append carries the stream position it starts at,
and nothing — the table, the log writer, replay — accepts one that does not
continue its stream exactly (docs/storage.md, "Events")."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import orjson
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from logrun import running_log, small_store
from trio_streams.config import Settings, settings_from_env
from trio_streams.protocol.errors import ProtocolError
from trio_streams.protocol.headers import AppendRequest, CreateRequest, Expiry, Producer
from trio_streams.protocol.rules import ResolvedFork, decide_append, decide_create
from trio_streams.protocol.state import (
    Appended, ContinuityError, Created, Deleted, Event, ForkOrigin, StreamTable, check_batch,
)
from trio_streams.storage.events import APPENDED, CREATED, decode_event, encode_event
from trio_streams.storage.log import Log, StorageFailed
from trio_streams.service import Service
from trio_streams.storage.recovery import RecoveryRefused, recover
from trio_streams.storage.wal import SegmentedLog, encode_record


def _created(stream_id: int, path: str, data: bytes = b"", fork: ForkOrigin | None = None) -> Created:
    return Created(stream_id, path, "text/plain", Expiry(), 0.0, False, data, fork)


# ---------------------------------------------------------------- the table


@pytest.mark.parametrize("position", [2, 4, None], ids=["overlap", "gap", "no position"])
def test_apply_refuses_an_append_that_does_not_start_at_the_tail(position: int | None) -> None:
    table = StreamTable()
    table.apply(_created(1, "a", b"abc"))
    with pytest.raises(ContinuityError):
        table.apply(Appended(1, position, b"de"))
    assert table.by_id[1].tail == 3  # checked before anything moved
    table.apply(Appended(1, 3, b"de"))
    assert table.by_id[1].tail == 5


def test_a_fork_starts_at_its_base() -> None:
    table = StreamTable()
    table.apply(_created(1, "a", b"abcdef"))
    fork = table.apply(_created(2, "f", b"XY", ForkOrigin(1, "a", 4, 0, 4)))
    assert fork is not None and fork.tail == 6
    with pytest.raises(ContinuityError):
        table.apply(Appended(2, 2, b"z"))  # the fork's own bytes, not its file offset
    table.apply(Appended(2, 6, b"z"))
    assert fork.tail == 7


def test_check_batch_follows_the_batch_and_names_each_streams_base() -> None:
    table = StreamTable()
    table.apply(_created(1, "a", b"abcdef"))
    fork = _created(2, "f", b"XY", ForkOrigin(1, "a", 4, 0, 4))
    batch: list[Event] = [Appended(1, 6, b"g"), fork, Appended(2, 6, b"z"), Appended(1, 7, b"h")]
    assert check_batch(table, batch) == {1: 0, 2: 4}
    assert table.by_id[1].tail == 6  # the table itself is untouched
    with pytest.raises(ContinuityError):
        check_batch(table, [Appended(1, 6, b"g"), Appended(1, 6, b"h")])  # the second ignores the first


def test_decided_appends_start_at_the_tail_they_were_decided_against() -> None:
    table = StreamTable()
    table.apply(_created(1, "a", b"abc"))
    event, reply = decide_append(table.by_id[1], AppendRequest("text/plain", b"de", None, None, False))
    assert isinstance(event, Appended) and event.position == 3
    assert dict(reply.headers)["stream-next-offset"].endswith("_0000000000000005")


def test_wal_records_carry_the_position_and_decode_it() -> None:
    rtype, payload = encode_event(Appended(7, 12, b"xyz", "s1", Producer("p", 1, 2), True))
    assert decode_event(rtype, payload) == Appended(7, 12, b"xyz", "s1", Producer("p", 1, 2), True)


# ---------------------------------------------------------------- the log writer


def _recovered(directory: Path, **overrides: object) -> tuple[StreamTable, int]:
    store = small_store(directory)
    recovered = recover(directory, store, Settings(data_dir=str(directory)).replace(**overrides))
    store.close_sync()
    recovered.wal.close()
    return recovered.table, recovered.replayed_events


async def test_a_batch_that_does_not_continue_its_stream_stops_the_writer_before_it_is_written(tmp_path: Path) -> None:
    failures: list[BaseException] = []
    async with running_log(tmp_path) as (log, table):
        log.on_failed = failures.append
        await log.submit([_created(1, "a", b"abc")])
        # The first append is fine, the second overlaps it: the whole batch is refused.
        with pytest.raises(StorageFailed):
            await log.submit([Appended(1, 3, b"de"), Appended(1, 4, b"x")])
        assert isinstance(log.failed, ContinuityError) and failures == [log.failed]
        assert log.health.state == "failed"
        with pytest.raises(StorageFailed):  # and so is everything after it
            await log.submit([Appended(1, 3, b"de")])
        assert table.by_id[1].tail == 3
    table, replayed = _recovered(tmp_path)
    assert replayed == 1 and table.by_id[1].tail == 3  # nothing of the refused batch became durable
    assert (tmp_path / "streams" / f"{1:016x}.dat").read_bytes() == b"abc"


async def test_a_continuity_violation_stops_the_service_and_a_restart_serves_what_was_acknowledged(tmp_path: Path) -> None:
    async def run(check: Callable[[Service], Awaitable[None]]) -> Service:
        service = Service(Settings(data_dir=str(tmp_path), fsync="always"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run)
            with trio.fail_after(30):
                await service.ready.wait()
            await check(service)
            service.stop()
            with trio.fail_after(30):
                await service.finished.wait()
        return service

    async def write_then_break(service: Service) -> None:
        assert service.registry is not None
        await service.registry.create("s", CreateRequest("text/plain", Expiry(), False, b"acked"))
        state = service.registry.visible("s")
        assert state is not None
        with pytest.raises(StorageFailed):  # a bug handed the log an append that overlaps the stream
            await service.log.submit([Appended(state.stream_id, 2, b"XX")])
        with trio.fail_after(30):
            await service.finished.wait()  # storage_failure=exit: the service stops by itself

    async def read_back(service: Service) -> None:
        assert service.registry is not None
        state = service.registry.visible("s")
        assert state is not None and state.tail == 5
        assert await service.view.read(state, 0, 5) == b"acked"

    failure = (await run(write_then_break)).failure
    assert isinstance(failure, StorageFailed) and "starts at 2, but the stream's tail is 5" in str(failure)
    assert (await run(read_back)).failure is None


async def test_a_submitter_finds_its_events_in_the_table_when_submit_returns(tmp_path: Path) -> None:
    """The log wakes submitters before applying their batch; no submitter may run
    (and decide its next batch) before the apply: it would read a stale table."""
    seen: list[tuple[int, int]] = []
    async with running_log(tmp_path) as (log, table):
        await log.submit([_created(1, "a"), _created(2, "b")])

        async def actor(stream_id: int, rounds: int) -> None:
            for _ in range(rounds):
                position = table.by_id[stream_id].tail
                await log.submit([Appended(stream_id, position, b"0123")])
                seen.append((stream_id, table.by_id[stream_id].tail - position))

        async with trio.open_nursery() as nursery:
            for stream_id in (1, 2):
                nursery.start_soon(actor, stream_id, 20)
        assert log.failed is None
    assert len(seen) == 40 and {grown for _, grown in seen} == {4}


async def test_the_log_batch_and_queue_are_bounded_by_their_settings(tmp_path: Path) -> None:
    async def queued_then_written(**overrides: object) -> tuple[int, int]:
        directory = Path(tempfile.mkdtemp(dir=tmp_path))
        # Submitters run in no fixed order: each appends to a stream of its own.
        _write_wal(directory, [encode_event(_created(stream_id, f"s{stream_id}")) for stream_id in (1, 2, 3)])
        settings = Settings(data_dir=str(directory), fsync="never").replace(**overrides)
        store = small_store(directory)
        recovered = recover(directory, store, settings)
        log = Log(settings, directory, recovered.wal, store, recovered.table)
        async with trio.open_nursery() as writer:
            async with trio.open_nursery() as submitters:
                for stream_id in (1, 2, 3):
                    submitters.start_soon(log.submit, [Appended(stream_id, 0, b"x")])
                # Every submission sent, or waiting for room; no thread runs yet.
                await trio.testing.wait_all_tasks_blocked()
                depth = log.statistics().queue_depth
                writer.start_soon(log.run)
            batches = log.statistics().batches  # every submission answered
            log.close_intake()
        store.close_sync()
        recovered.wal.close()
        return depth, batches

    assert await queued_then_written() == (3, 1)
    assert await queued_then_written(log_batch_events_max=1) == (3, 3)
    assert (await queued_then_written(log_queue_depth=1))[0] == 1


def test_log_settings_are_validated_and_read_from_the_environment() -> None:
    assert settings_from_env({"TRIO_STREAMS_LOG_BATCH_EVENTS_MAX": "7", "TRIO_STREAMS_LOG_QUEUE_DEPTH": "3"}).log_batch_events_max == 7
    for name in ("log_batch_events_max", "log_queue_depth"):
        with pytest.raises(ValueError, match=name):
            Settings(**{name: 0})  # type: ignore[arg-type]


# ---------------------------------------------------------------- replay


def _write_wal(directory: Path, payloads: Sequence[tuple[int, bytes]]) -> None:
    with SegmentedLog.open(directory / "wal", 1 << 20) as wal:
        for _ in wal.recover(0):
            pass
        wal.append(b"".join(encode_record(rtype, payload) for rtype, payload in payloads))
        wal.sync()


def _legacy_append(stream_id: int, data: bytes, **meta: object) -> tuple[int, bytes]:
    """An append record as written before records kept ``pos``, built by hand."""
    encoded = orjson.dumps({"id": stream_id, **meta})
    return APPENDED, len(encoded).to_bytes(4, "little") + encoded + data


def test_a_wal_written_before_positions_were_kept_still_loads(tmp_path: Path) -> None:
    meta = orjson.dumps({"id": 1, "path": "a", "ct": "text/plain", "at": 0.0})
    _write_wal(tmp_path, [
        (CREATED, len(meta).to_bytes(4, "little") + meta + b"abc"),
        _legacy_append(1, b"de", seq="1"),
        _legacy_append(1, b"fgh"),
        encode_event(Appended(1, 8, b"ij")),  # a newer server continued the same log
    ])
    table, replayed = _recovered(tmp_path)
    assert replayed == 4 and table.by_id[1].tail == 10 and table.by_id[1].last_seq == "1"
    assert (tmp_path / "streams" / f"{1:016x}.dat").read_bytes() == b"abcdefghij"


@pytest.mark.parametrize("position, kind", [(7, "a gap"), (4, "an overlap")])
def test_replay_detects_positions_that_jump_without_damage(tmp_path: Path, position: int, kind: str) -> None:
    _write_wal(tmp_path, [
        encode_event(_created(1, "a", b"abc")),
        encode_event(Appended(1, 3, b"de")),
        encode_event(Appended(1, position, b"x")),
        encode_event(_created(2, "b", b"ok")),
        encode_event(Appended(1, position + 1, b"y")),
    ])
    with pytest.raises(RecoveryRefused, match=f"'a'.*log position .*stream position {position}.*ends at 5 \\({kind}"):
        _recovered(tmp_path)
    table, _ = _recovered(tmp_path, wal_recovery_mode="fence_damaged_streams")
    a, b = table.by_path["a"], table.by_path["b"]
    assert a.damaged is not None and kind in a.damaged and a.tail == 5  # nothing after the jump is taken
    assert b.damaged is None and b.tail == 2


# ---------------------------------------------------------------- property


@dataclasses.dataclass(frozen=True)
class _Op:
    kind: str  # create, fork, append, close, delete
    path: int
    body: bytes
    where: int = 0  # which stream a fork's source is, and where in it the fork starts (per mille)


_ops = st.lists(
    st.builds(_Op, st.sampled_from(["create", "fork", "append", "append", "append", "close", "delete"]),
              st.integers(0, 2), st.binary(max_size=40), st.integers(0, 1000)),
    min_size=1, max_size=40,
)


class _Decider:
    """Decides requests the way actors do: against a view that already holds every
    earlier decision, with an independent running tail as the oracle."""

    def __init__(self) -> None:
        self.view = StreamTable()
        self.tails: dict[int, int] = {}
        self.files: dict[int, bytes] = {}

    def decide(self, op: _Op) -> Event | None:
        path, state = f"s{op.path}", self.view.by_path.get(f"s{op.path}")
        try:
            event = self._event(op, path, state)
        except ProtocolError:
            return None
        if event is None:
            return None
        if isinstance(event, Appended):
            assert event.position == self.tails[event.stream_id]  # the tail before it, whatever decided it
            self.tails[event.stream_id] += len(event.data)
            self.files[event.stream_id] += event.data
        elif isinstance(event, Created):
            self.tails[event.stream_id] = event.position + len(event.data)
            self.files[event.stream_id] = event.data
        self.view.apply(event)
        return event

    def _event(self, op: _Op, path: str, state: object) -> Event | None:
        from trio_streams.protocol.state import StreamState

        assert state is None or isinstance(state, StreamState)
        if op.kind == "delete":
            return Deleted(state.stream_id) if state is not None and not state.soft_deleted else None
        if op.kind in ("append", "close") and state is not None:
            return decide_append(state, AppendRequest("text/plain", op.body, None, None, op.kind == "close"))[0]
        fork = None
        if op.kind == "fork":
            sources = list(self.view.by_id.values())
            if not sources:
                return None
            source = sources[op.where % len(sources)]
            base = source.base + (source.tail - source.base) * op.where // 1000
            fork = ResolvedFork(source, source.path, base, 0, base)
        request = CreateRequest("text/plain", Expiry(), False, op.body, content_type_given=fork is None)
        return decide_create(state, path, request, self.view.next_stream_id, 0.0, fork)[0]


async def _write_through_log(directory: Path, batches: list[list[Event]], checkpoint_wal_bytes: int) -> StreamTable:
    async with running_log(directory, fsync="never", checkpoint_wal_bytes=checkpoint_wal_bytes) as (log, table):
        for batch in batches:
            await log.submit(batch)
    return table


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops, cuts=st.lists(st.booleans(), min_size=40, max_size=40),
       checkpoint_wal_bytes=st.sampled_from([1, 300, 1 << 30]))
def test_decided_events_continue_their_streams_and_replay_reproduces_the_table(
    ops: list[_Op], cuts: list[bool], checkpoint_wal_bytes: int,
) -> None:
    decider = _Decider()
    batches: list[list[Event]] = [[]]
    for op, cut in zip(ops, cuts):
        event = decider.decide(op)
        if event is not None:
            batches[-1].append(event)
        if cut and batches[-1]:
            batches.append([])
    batches = [b for b in batches if b]
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        durable = trio.run(_write_through_log, directory, batches, checkpoint_wal_bytes)
        assert durable.by_id == decider.view.by_id
        replayed, _ = _recovered(directory)
        assert replayed.by_id == durable.by_id and replayed.next_stream_id == durable.next_stream_id
        for stream_id in replayed.by_id:
            assert (directory / "streams" / f"{stream_id:016x}.dat").read_bytes() == decider.files[stream_id]
