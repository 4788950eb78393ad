"""Actor, registry and log tests with trio.testing: no HTTP, real files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_streams.config import Settings
from trio_streams.protocol.errors import ProtocolError
from trio_streams.protocol.headers import AppendRequest, CreateRequest, Expiry, Producer
from trio_streams.service import Service
from trio_streams.streams.registry import Registry


def _create(content_type: str = "text/plain", body: bytes = b"", **kw: object) -> CreateRequest:
    return CreateRequest(content_type, kw.pop("expiry", Expiry()), bool(kw.pop("closed", False)), body)  # type: ignore[arg-type]


def _append(body: bytes, producer: Producer | None = None, close: bool = False) -> AppendRequest:
    return AppendRequest("text/plain", body, None, producer, close)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    settings = Settings(data_dir=str(tmp_path), fsync="always", actor_idle_s=5.0)
    async with run_service(settings) as svc:
        yield svc


class run_service:
    def __init__(self, settings: Settings) -> None:
        self.service = Service(settings)

    async def __aenter__(self) -> Service:
        self._nursery_cm = trio.open_nursery()
        nursery = await self._nursery_cm.__aenter__()
        nursery.start_soon(self.service.run)
        await self.service.ready.wait()
        return self.service

    async def __aexit__(self, *exc: object) -> None:
        self.service.stop()
        await self.service.finished.wait()
        await self._nursery_cm.__aexit__(None, None, None)
        assert self.service.failure is None


def _registry(service: Service) -> Registry:
    assert service.registry is not None
    return service.registry


async def test_concurrent_appends_get_distinct_contiguous_offsets(service: Service) -> None:
    registry = _registry(service)
    await registry.create("s", _create())
    replies = []

    async def writer(i: int) -> None:
        replies.append(await registry.append("s", _append(b"%03d" % i)))

    async with trio.open_nursery() as nursery:
        for i in range(100):
            nursery.start_soon(writer, i)
    tails = sorted(int(dict(r.headers)["stream-next-offset"].split("_")[1]) for r in replies)
    assert tails == list(range(3, 301, 3))
    state = registry.lookup("s")
    assert state is not None and state.tail == 300
    data = await registry.store.read(registry.table, state, 0, 300)
    assert sorted(data[i:i + 3] for i in range(0, 300, 3)) == [b"%03d" % i for i in range(100)]
    # Group commit: 100 concurrent appends need far fewer WAL batches than appends.
    assert registry.log.statistics().batches < 100


async def test_pipelined_producer_batch_is_serialized(service: Service) -> None:
    registry = _registry(service)
    await registry.create("p", _create())
    results: dict[int, int] = {}

    async def send(seq: int) -> None:
        try:
            results[seq] = (await registry.append("p", _append(b"x", Producer("w", 0, seq)))).status
        except ProtocolError as exc:
            results[seq] = exc.status

    async with trio.open_nursery() as nursery:
        for seq in range(5):  # started in order, so they reach the actor in order
            nursery.start_soon(send, seq)
            await trio.testing.wait_all_tasks_blocked()
    assert results == {0: 200, 1: 200, 2: 200, 3: 200, 4: 200}
    assert (await registry.append("p", _append(b"x", Producer("w", 0, 2)))).status == 204


async def test_subscriber_wakes_on_append_and_not_before(service: Service) -> None:
    registry = _registry(service)
    await registry.create("live", _create())
    state = registry.lookup("live")
    assert state is not None
    woke = trio.Event()

    async def reader() -> None:
        with registry.subscribe(state.stream_id) as wakeups:
            await wakeups.receive()
            woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()
        await registry.append("live", _append(b"hello"))
        await woke.wait()
    assert registry.statistics()["subscribers"] == 0


async def test_subscriber_buffer_coalesces_wakeups(service: Service) -> None:
    registry = _registry(service)
    await registry.create("c", _create())
    state = registry.lookup("c")
    assert state is not None
    with registry.subscribe(state.stream_id) as wakeups:
        for _ in range(5):
            await registry.append("c", _append(b"x"))
        await wakeups.receive()
        with pytest.raises(trio.WouldBlock):
            wakeups.receive_nowait()


async def test_idle_actor_exits_and_restarts_on_demand(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    settings = Settings(data_dir=str(tmp_path), actor_idle_s=30.0)
    async with run_service(settings) as service:
        registry = _registry(service)
        await registry.create("idle", _create())
        assert registry.statistics()["actors"] == 1
        await trio.sleep(31)
        assert registry.statistics()["actors"] == 0
        reply = await registry.append("idle", _append(b"again"))
        assert reply.status == 204 and registry.statistics()["actors"] == 1


async def test_expired_stream_is_reported_gone_and_deleted(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path))
    async with run_service(settings) as service:
        registry = _registry(service)
        await registry.create("ttl", _create(expiry=Expiry(ttl_s=3600)))
        state = registry.lookup("ttl")
        assert state is not None
        # Expiry uses the wall clock; move the stream's last access into the past.
        registry._last_access[state.stream_id] -= 3601
        assert registry.lookup("ttl") is None
        with trio.fail_after(5):
            while "ttl" in registry.table.by_path:  # the expiry becomes a durable delete
                await trio.sleep(0.01)


async def test_state_survives_restart(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path))
    async with run_service(settings) as service:
        registry = _registry(service)
        await registry.create("r", _create(body=b"abc"))
        await registry.append("r", _append(b"def", Producer("w", 2, 0)))
        await registry.create("gone", _create())
        await registry.delete("gone")
    async with run_service(settings) as service:
        registry = _registry(service)
        reply = await registry.append("r", _append(b"def", Producer("w", 2, 0)))
        assert reply.status == 204  # still a duplicate: producer state is durable
        await registry.append("r", _append(b"", close=True))
        assert registry.lookup("gone") is None
    async with run_service(settings) as service:
        registry = _registry(service)
        state = registry.lookup("r")
        assert state is not None and state.closed and state.tail == 6
        assert await registry.store.read(registry.table, state, 0, 6) == b"abcdef"


async def test_checkpoint_bounds_replay(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), checkpoint_wal_bytes=4096, wal_segment_bytes_max=2048)
    async with run_service(settings) as service:
        registry = _registry(service)
        await registry.create("big", _create())
        for i in range(200):
            await registry.append("big", _append(b"%050d" % i))
        assert registry.log.statistics().checkpoints > 0
    wal_bytes = sum(p.stat().st_size for p in (tmp_path / "wal").iterdir())
    assert wal_bytes < 8192  # segments before the checkpoint were deleted
    async with run_service(settings) as service:
        registry = _registry(service)
        state = registry.lookup("big")
        assert state is not None and state.tail == 200 * 50
        data = await registry.store.read(registry.table, state, 0, state.tail)
        assert data == b"".join(b"%050d" % i for i in range(200))


async def test_second_server_on_same_directory_fails(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path))
    async with run_service(settings):
        other = Service(settings)
        await other.run()
        assert other.failure is not None and "in use" in str(other.failure)


async def test_stream_limit_refuses_creates_with_507(tmp_path: Path) -> None:
    async with run_service(Settings(data_dir=str(tmp_path), streams_max=2)) as service:
        registry = _registry(service)
        await registry.create("a", _create())
        await registry.create("b", _create())
        with pytest.raises(ProtocolError) as info:
            await registry.create("c", _create())
        assert info.value.status == 507
        assert (await registry.create("a", _create())).status == 200  # re-confirming is still fine
