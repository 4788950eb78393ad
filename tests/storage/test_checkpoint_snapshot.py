"""Checkpoints taken while the table moves on: the copy-on-write snapshot
(``checkpoint.TableSnapshot``) and background checkpoints in the log writer.

The property: whatever events are applied between the slices of a snapshot
taken at log position P, its payload is byte for byte ``encode_table`` of the
table at P. In the running service: a checkpoint written while appends
continue is exactly the previous checkpoint plus the WAL up to its position,
and recovery from it after a crash loses nothing acknowledged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_streams.config import Settings
from trio_streams.protocol.headers import AppendRequest, CreateRequest, Expiry, Producer
from trio_streams.protocol.state import Appended, Created, Deleted, Event, ForkOrigin, StreamTable
from trio_streams.service import Service
from trio_streams.storage import log as log_module
from trio_streams.storage.checkpoint import TableSnapshot, decode_table, encode_table
from trio_streams.storage.events import decode_event
from trio_streams.storage.snapshot import decode_snapshot, list_snapshots, snapshot_name
from trio_streams.storage.wal import Record, SegmentedLog
from trio_streams.streams.registry import Registry

CT = "application/octet-stream"


# ---------------------------------------------------------------- random valid events


def _random_event(table: StreamTable, data: st.DataObject) -> Event:
    """One event that ``apply`` accepts on ``table`` as it is now (what actors would decide)."""
    live = [s for s in table.by_id.values() if not s.soft_deleted]
    appendable = [s for s in live if not s.closed]
    kinds = ["create"] + ["append"] * bool(appendable) * 3 + ["delete"] * bool(live)
    kind = data.draw(st.sampled_from(kinds))
    if kind == "create":
        stream_id = table.next_stream_id
        source = data.draw(st.sampled_from([None, *live]))
        fork = None if source is None else ForkOrigin(source.stream_id, source.path, source.tail, 0, source.tail)
        ttl = data.draw(st.sampled_from([None, 60]))
        return Created(stream_id, f"p/{stream_id}", CT, Expiry(ttl), 1.5e9, data.draw(st.booleans()),
                       data.draw(st.binary(max_size=8)), fork)
    if kind == "append":
        state = data.draw(st.sampled_from(appendable))
        producer = data.draw(st.sampled_from([None, Producer("w", 1, len(state.producers))]))
        return Appended(state.stream_id, state.tail, data.draw(st.binary(max_size=8)),
                        data.draw(st.sampled_from([None, f"{state.tail:08d}"])), producer, data.draw(st.booleans()))
    return Deleted(data.draw(st.sampled_from(live)).stream_id)


def _random_table(data: st.DataObject) -> StreamTable:
    table = StreamTable()
    for _ in range(data.draw(st.integers(0, 30))):
        table.apply(_random_event(table, data))
    if data.draw(st.booleans()):
        table.fenced_ids[table.next_stream_id] = "its creation was in damaged WAL"
        table.next_stream_id += 1
    return table


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_snapshot_is_the_table_at_its_position_whatever_happens_between_slices(data: st.DataObject) -> None:
    table = _random_table(data)
    at_position = encode_table(table)
    snapshot = TableSnapshot(table, slice_streams=data.draw(st.integers(1, 4)))
    pieces = []
    for piece in snapshot.pieces():
        pieces.append(piece)
        for _ in range(data.draw(st.integers(0, 3))):  # the log writer commits between slices
            table.apply(_random_event(table, data))
    snapshot.release()
    assert b"".join(pieces) == at_position
    assert table.before_change is None and snapshot.saved_streams == 0
    assert encode_table(decode_table(at_position)) == at_position


def test_a_snapshot_copies_only_streams_changed_before_their_slice() -> None:
    table = StreamTable()
    for stream_id in range(1, 7):
        table.apply(Created(stream_id, f"p/{stream_id}", CT, Expiry(), 1.5e9, False, b"x"))
    at_position = encode_table(table)
    snapshot = TableSnapshot(table, slice_streams=2)
    pieces = snapshot.pieces()
    first = [next(pieces), next(pieces)]  # the head, then ids 0 and 1
    table.apply(Appended(1, 1, b"already encoded"))
    table.apply(Appended(5, 1, b"not yet"))
    table.apply(Deleted(6))
    table.apply(Created(7, "p/7", CT, Expiry(), 1.5e9, False, b"after the snapshot"))
    assert snapshot.saved_streams == 2  # 5 and 6; never 1 (encoded) nor 7 (newer)
    assert b"".join([*first, *pieces]) == at_position
    snapshot.release()
    assert table.before_change is None


# ---------------------------------------------------------------- in the running service


def _append(body: bytes) -> AppendRequest:
    return AppendRequest(CT, body, None, None, False)


class _RecordingSnapshot(TableSnapshot):
    """Counts the states saved by copy-on-write, to show a checkpoint really overlapped appends."""

    copied = 0

    def _before_change(self, state: Any) -> None:
        before = self.saved_streams
        super()._before_change(state)
        _RecordingSnapshot.copied += self.saved_streams - before


def _wal_table(directory: Path, start: int, end: int, table: StreamTable) -> StreamTable:
    """``table`` (the checkpoint at ``start``) moved forward by the WAL records in [start, end)."""
    def replay(record: Record) -> None:
        if start <= record.position < end:
            table.apply(decode_event(record.rtype, record.payload))

    SegmentedLog.for_survey(directory / "wal").survey(start, on_record=replay)
    return table


def _checkpoint_table(directory: Path, position: int) -> StreamTable:
    path = directory / "checkpoints" / snapshot_name(position)
    return decode_table(decode_snapshot(path.read_bytes(), position))


async def _started(nursery: trio.Nursery, config: Settings) -> tuple[Service, Registry]:
    service = Service(config)
    nursery.start_soon(service.run)
    with trio.fail_after(30):
        await service.ready.wait()
    assert service.registry is not None
    return service, service.registry


async def _crash_while_appending(directory: Path, streams: int, rounds: int) -> dict[str, bytes]:
    """Appends to many streams while checkpoints run after every batch, then
    stops the service the way a crash would (no final checkpoint); returns
    what was acknowledged."""
    acked = {f"s{i}": b"" for i in range(streams)}
    config = Settings(data_dir=str(directory), checkpoint_wal_bytes=1, checkpoint_slice_streams=1,
                      checkpoint_write_bytes=1, wal_segment_bytes_max=4096)
    async with trio.open_nursery() as nursery:
        service, registry = await _started(nursery, config)
        for name in acked:
            await registry.create(name, CreateRequest(CT, Expiry(), False, b""))

        async def writer(name: str) -> None:
            for round_ in range(rounds):
                body = b"%s:%d;" % (name.encode(), round_)
                await registry.append(name, _append(body))
                acked[name] += body

        async with trio.open_nursery() as writers:
            for name in acked:
                writers.start_soon(writer, name)
        assert service.log is not None and service.log.statistics().checkpoints >= 2
        nursery.cancel_scope.cancel()  # a crash: the log writer never writes its final checkpoint
    return acked


async def test_a_checkpoint_written_while_appends_continue_is_exact_and_recovery_loses_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_RecordingSnapshot, "copied", 0)
    monkeypatch.setattr(log_module.checkpoint, "TableSnapshot", _RecordingSnapshot)
    acked = await _crash_while_appending(tmp_path, streams=40, rounds=15)
    assert _RecordingSnapshot.copied > 0, "no checkpoint overlapped an append"
    *_, previous, newest = list_snapshots(tmp_path / "checkpoints")
    # Exact: the newest checkpoint is the previous one plus the WAL up to its position.
    expected = _wal_table(tmp_path, previous, newest, _checkpoint_table(tmp_path, previous))
    assert encode_table(_checkpoint_table(tmp_path, newest)) == encode_table(expected)
    async with trio.open_nursery() as nursery:
        service, registry = await _started(nursery, Settings(data_dir=str(tmp_path)))
        for name, content in acked.items():
            state = registry.visible(name)
            assert state is not None and state.tail == len(content), name
            assert service.view is not None
            assert await service.view.read(state, 0, state.tail) == content
        service.stop()
