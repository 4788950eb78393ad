"""Actor, registry and log tests with trio.testing: no HTTP, real files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trio_streams.clock import SYSTEM_CLOCK, Clock, trio_driven_clock
from trio_streams.config import Settings
from trio_streams.protocol.errors import ProtocolError
from trio_streams.protocol.headers import AppendRequest, CreateRequest, Expiry, Producer
from trio_streams.protocol.reads import metadata_headers
from trio_streams.service import Service
from trio_streams.storage.log import Log
from trio_streams.protocol.state import StreamState
from trio_streams.streams.lifetimes import Lifetimes
from trio_streams.streams.registry import Registry
from trio_streams.streams.view import DurableView


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
    def __init__(self, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> None:
        self.service = Service(settings, clock=clock)

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


def _view(service: Service) -> DurableView:
    assert service.view is not None
    return service.view


def _log(service: Service) -> Log:
    assert service.log is not None
    return service.log


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
    state = registry.visible("s")
    assert state is not None and state.tail == 300
    data = await _view(service).read(state, 0, 300)
    assert sorted(data[i:i + 3] for i in range(0, 300, 3)) == [b"%03d" % i for i in range(100)]
    # Group commit: 100 concurrent appends need far fewer WAL batches than appends.
    assert _log(service).statistics().batches < 100


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
    state = registry.visible("live")
    assert state is not None
    woke = trio.Event()

    async def reader() -> None:
        with registry.subscribe(state.stream_id) as wakeup:
            await wakeup.wait()
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
    state = registry.visible("c")
    assert state is not None
    with registry.subscribe(state.stream_id) as wakeup:
        for _ in range(5):
            await registry.append("c", _append(b"x"))
        await trio.testing.wait_all_tasks_blocked()
        assert wakeup.pending
        await wakeup.wait()
        assert not wakeup.pending  # five changes, one wake-up


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


# -- time: MockClock drives both trio's clock and the wall clock ----------------

WALL_START_S = 1_800_000_000.0  # any fixed UNIX time: the fake wall clock starts here


@pytest.fixture
def threads_on_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """File work runs on the event loop, so the autojump clock moves only when every task
    waits on time (a worker thread would let it jump while the thread works)."""

    async def run_sync(function: Any, *args: Any, **_: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return function(*args)

    monkeypatch.setattr(trio.to_thread, "run_sync", run_sync)


@pytest.fixture
def mock_time(autojump_clock: trio.testing.MockClock, threads_on_loop: None) -> Clock:
    """The fake wall clock; a test must also take ``autojump_clock`` itself (pytest-trio
    runs a test on the mock clock only when the test asks for it directly)."""
    return trio_driven_clock(WALL_START_S)


async def _until(predicate: Any, what: str) -> None:
    """Polls ``predicate`` in (mock) time, for at most a minute of it."""
    with trio.fail_after(60):
        while not predicate():
            await trio.sleep(0.01)
    assert predicate(), what


def _status(call: Any) -> int:
    try:
        call()
    except ProtocolError as exc:
        return exc.status
    return 200


async def test_expired_stream_is_reported_gone_and_deleted(tmp_path: Path, autojump_clock: trio.testing.MockClock, mock_time: Clock) -> None:
    async with run_service(Settings(data_dir=str(tmp_path)), mock_time) as service:
        registry = _registry(service)
        await registry.create("ttl", _create(expiry=Expiry(ttl_s=3600)))
        await trio.sleep(3599)
        assert registry.visible("ttl") is not None
        await trio.sleep(1)
        assert registry.visible("ttl") is None
        await _until(lambda: _view(service).at("ttl") is None, "the expiry to become a durable delete")


async def test_sliding_ttl_reads_and_writes_reset_head_does_not(tmp_path: Path, autojump_clock: trio.testing.MockClock, mock_time: Clock) -> None:
    async with run_service(Settings(data_dir=str(tmp_path)), mock_time) as service:
        streams = service.streams
        assert streams is not None
        for name in ("read", "written", "headed", "idle"):
            await streams.create(name, _create(body=b"x", expiry=Expiry(ttl_s=100)))
        await trio.sleep(60)
        streams.open("read")
        await streams.append("written", _append(b"y"))
        streams.head("headed")
        await trio.sleep(40)  # 100 s after creation, 40 s after the accesses
        assert _status(lambda: streams.head("idle")) == 404
        assert _status(lambda: streams.head("headed")) == 404, "HEAD reset the sliding TTL"
        assert streams.open("read").tail == 1, "a read did not reset the sliding TTL"
        assert streams.open("written").tail == 2, "an append did not reset the sliding TTL"
        await trio.sleep(100)
        assert _status(lambda: streams.open("read")) == 404
        with pytest.raises(ProtocolError) as info:
            await streams.append("written", _append(b"z"))
        assert info.value.status == 404
        await _until(lambda: _view(service).at("read") is None, "the expired stream's delete")
        assert (await streams.create("read", _create())).status == 201  # an expired path is free again


async def test_expires_at_is_absolute_and_reads_do_not_extend_it(tmp_path: Path, autojump_clock: trio.testing.MockClock, mock_time: Clock) -> None:
    deadline = WALL_START_S + 50
    expiry = Expiry(expires_at="(the instant)", expires_at_s=deadline)
    async with run_service(Settings(data_dir=str(tmp_path)), mock_time) as service:
        streams = service.streams
        assert streams is not None
        await streams.create("brief", _create(body=b"brief", expiry=expiry))
        assert ("stream-expires-at", "(the instant)") in metadata_headers(streams.head("brief"))
        await trio.sleep(49)
        assert streams.open("brief").tail == 5
        await trio.sleep(1)
        assert _status(lambda: streams.head("brief")) == 404
        await _until(lambda: _view(service).at("brief") is None, "the expired stream's delete")
        assert (await streams.create("brief", _create())).status == 201


async def test_expiry_sweep_deletes_streams_nobody_asks_for(tmp_path: Path, autojump_clock: trio.testing.MockClock, mock_time: Clock) -> None:
    settings = Settings(data_dir=str(tmp_path), expiry_sweep_interval_s=30.0)
    async with run_service(settings, mock_time) as service:
        streams = service.streams
        assert streams is not None
        await streams.create("forgotten", _create(expiry=Expiry(ttl_s=10)))
        started = trio.current_time()
        await _until(lambda: _view(service).at("forgotten") is None, "the sweep to delete the stream")
        # Nothing looked the stream up: only the sweep, every 30 s, can have found it.
        assert trio.current_time() - started >= 30


async def test_expiry_sweep_in_slices_finds_every_expired_stream(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, mock_time: Clock) -> None:
    settings = Settings(data_dir=str(tmp_path), expiry_sweep_interval_s=30.0, expiry_sweep_slice_streams=2)
    async with run_service(settings, mock_time) as service:
        streams = service.streams
        assert streams is not None
        for i in range(7):  # four slices: 2 + 2 + 2 + 1, with a lasting stream in the middle
            expiry = Expiry() if i == 3 else Expiry(ttl_s=10)
            await streams.create(f"s{i}", _create(expiry=expiry))
        view = _view(service)
        await _until(lambda: all(view.at(f"s{i}") is None for i in range(7) if i != 3), "the sweep to delete them")
        assert view.at("s3") is not None


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
        assert registry.visible("gone") is None
    async with run_service(settings) as service:
        registry = _registry(service)
        state = registry.visible("r")
        assert state is not None and state.closed and state.tail == 6
        assert await _view(service).read(state, 0, 6) == b"abcdef"


async def test_checkpoint_bounds_replay(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), checkpoint_wal_bytes=4096, wal_segment_bytes_max=2048)
    async with run_service(settings) as service:
        registry = _registry(service)
        await registry.create("big", _create())
        for i in range(200):
            await registry.append("big", _append(b"%050d" % i))
        assert _log(service).statistics().checkpoints > 0
    wal_bytes = sum(p.stat().st_size for p in (tmp_path / "wal").iterdir())
    assert wal_bytes < 8192  # segments before the checkpoint were deleted
    async with run_service(settings) as service:
        registry = _registry(service)
        state = registry.visible("big")
        assert state is not None and state.tail == 200 * 50
        data = await _view(service).read(state, 0, state.tail)
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


def test_lifetimes_count_a_restart_as_an_access_and_snapshot_whole() -> None:
    now = [5000.0]
    lifetimes = Lifetimes(Clock(wall=lambda: now[0]), [1, 2])
    ttl = StreamState(1, "a", "text/plain", Expiry(ttl_s=10), created_at=0.0)
    assert not lifetimes.is_expired(ttl)  # created long ago, but the restart counted as an access
    now[0] = 5010.0
    assert lifetimes.is_expired(ttl)
    lifetimes.touch(1)
    now[0] = 5019.0
    assert not lifetimes.is_expired(ttl)
    snapshot = lifetimes.last_access()
    assert snapshot == {1: 5010.0, 2: 5000.0}
    lifetimes.forget(1)
    assert lifetimes.is_expired(ttl)  # forgotten: back to its creation time
    lifetimes.restore(snapshot)
    assert not lifetimes.is_expired(ttl) and lifetimes.last_access() == snapshot
