"""Forks: sub-offset resolution, soft delete and cascading GC, chains across restarts."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import httpx
import orjson
import pytest
import trio
import trio.testing

from conftest import Server, unique
from trio_streams.clock import Clock
from trio_streams.config import Settings
from trio_streams.protocol.errors import ProtocolError
from trio_streams.protocol.headers import CreateRequest, Expiry, ForkSpec
from trio_streams.protocol.offsets import format_offset
from trio_streams.protocol.state import Created, Deleted, ForkOrigin, StreamTable
from trio_streams.streams.forks import resolve_fork
from test_streams import _append, _create, mock_time, run_service, threads_on_loop  # noqa: F401 (fixtures)


def _fork(source: str, offset: int | None = None, sub: int = 0, content_type: str = "text/plain") -> CreateRequest:
    spec = ForkSpec(source, None if offset is None else format_offset(offset), sub)
    return CreateRequest(content_type, Expiry(), False, b"", spec, content_type_given=False)


# -- the event-sourced table: refcounts, soft delete, cascade --------------

def _created(stream_id: int, path: str, source: int | None = None, base: int = 0) -> Created:
    fork = ForkOrigin(source, f"p{source}", base, 0, base) if source is not None else None
    return Created(stream_id, path, "text/plain", Expiry(), 0.0, False, b"", fork)


def test_delete_with_forks_soft_deletes_then_cascades_up_the_chain() -> None:
    table = StreamTable()
    for event in (_created(1, "a"), _created(2, "b", 1), _created(3, "c", 2), _created(4, "d", 1)):
        table.apply(event)
    assert table.by_id[1].refcount == 2 and table.by_id[2].refcount == 1
    table.apply(Deleted(1))
    table.apply(Deleted(2))
    assert table.by_id[1].soft_deleted and table.by_id[2].soft_deleted
    assert table.removed == []
    table.apply(Deleted(3))  # c goes, b (soft-deleted, now unreferenced) goes; a still has d
    assert sorted(table.removed) == [2, 3]
    assert set(table.by_id) == {1, 4} and table.by_id[1].refcount == 1
    table.apply(Deleted(4))
    assert sorted(table.removed) == [1, 2, 3, 4] and not table.by_id and not table.by_path


def test_deleting_the_last_fork_keeps_a_live_source() -> None:
    table = StreamTable()
    table.apply(_created(1, "a"))
    table.apply(_created(2, "b", 1))
    table.apply(Deleted(2))
    assert set(table.by_id) == {1} and table.by_id[1].refcount == 0 and not table.by_id[1].soft_deleted


# -- resolution through a real registry ------------------------------------

@pytest.fixture
async def service(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with run_service(Settings(data_dir=str(tmp_path))) as service:
        yield service


@pytest.fixture
def registry(service):  # type: ignore[no-untyped-def]
    return service.registry


async def _resolve(registry, source: str, offset: int | None, sub: int) -> int:  # type: ignore[no-untyped-def]
    spec = ForkSpec(source, None if offset is None else format_offset(offset), sub)
    return (await resolve_fork(registry.context, spec)).base


@pytest.mark.parametrize(("offset", "sub", "base"), [
    (None, 0, 9), (0, 0, 0), (0, 3, 3), (0, 5, 5), (5, 2, 7), (5, 4, 9), (9, 0, 9),
])
async def test_byte_sub_offsets_resolve_within_the_append(registry, offset, sub, base) -> None:  # type: ignore[no-untyped-def]
    await registry.create("src", _create(body=b"hello"))
    await registry.append("src", _append(b"word"))
    assert await _resolve(registry, "src", offset, sub) == base


@pytest.mark.parametrize(("offset", "sub"), [(0, 6), (5, 5), (9, 1), (10, 0)])
async def test_byte_sub_offset_overshoot_is_400(registry, offset, sub) -> None:  # type: ignore[no-untyped-def]
    await registry.create("src", _create(body=b"hello"))
    await registry.append("src", _append(b"word"))
    with pytest.raises(ProtocolError) as info:
        await _resolve(registry, "src", offset, sub)
    assert info.value.status == 400


async def test_json_sub_offsets_count_flattened_messages(registry) -> None:  # type: ignore[no-untyped-def]
    await registry.create("j", CreateRequest("application/json", Expiry(), False, b'[{"a":1},{"b":2},{"c":3}]'))
    first_end = len(b'{"a":1}\n{"b":2}\n{"c":3}\n')
    from trio_streams.protocol.headers import AppendRequest
    await registry.append("j", AppendRequest("application/json", b'[10,20]', None, None, False))
    assert await _resolve(registry, "j", 0, 1) == len(b'{"a":1}\n')
    assert await _resolve(registry, "j", 0, 3) == first_end
    assert await _resolve(registry, "j", first_end, 2) == first_end + len(b"10\n20\n")
    with pytest.raises(ProtocolError):
        await _resolve(registry, "j", 0, 4)  # the first append has only three messages


async def test_sub_offsets_compose_through_a_chain(registry) -> None:  # type: ignore[no-untyped-def]
    await registry.create("l0", _create(body=b"abcdef"))
    await registry.create("l1", _fork("l0", 0, 4))
    assert await _resolve(registry, "l1", 0, 4) == 4  # the boundary is capped at l1's base
    with pytest.raises(ProtocolError):
        await _resolve(registry, "l1", 0, 5)
    await registry.create("l2", _fork("l1", 0, 2))
    await registry.append("l2", _append(b"Z"))
    state = registry.visible("l2")
    assert await registry.view.read(state, 0, state.tail) == b"abZ"


async def test_missing_or_deleted_source(registry) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProtocolError) as missing:
        await registry.create("f", _fork("nope"))
    assert missing.value.status == 404
    await registry.create("src", _create(body=b"x"))
    await registry.create("f", _fork("src"))
    await registry.delete("src")
    with pytest.raises(ProtocolError) as gone:
        await registry.create("g", _fork("src"))
    assert gone.value.status == 409


async def test_forking_is_constant_space(service, registry) -> None:  # type: ignore[no-untyped-def]
    await registry.create("big", _create("application/octet-stream"))
    chunk = bytes(range(256)) * 4096  # 1 MiB
    from trio_streams.protocol.headers import AppendRequest
    for _ in range(32):
        await registry.append("big", AppendRequest("application/octet-stream", chunk, None, None, False))
    wal_before = service.log.statistics().wal_end_position
    await registry.create("fork", _fork("big", content_type="application/octet-stream"))
    fork = registry.visible("fork")
    assert fork.tail == 32 * len(chunk)
    # No data copied: the fork's file is empty and its WAL record is a few hundred bytes.
    assert service.store.path(fork.stream_id).stat().st_size == 0
    assert service.log.statistics().wal_end_position - wal_before < 512
    tail = await registry.view.read(fork, fork.tail - 10, fork.tail)
    assert tail == chunk[-10:]


# -- over HTTP, across restarts ----------------------------------------------

def _put(c: httpx.Client, url: str, body: bytes = b"", **headers: str) -> httpx.Response:
    return c.put(url, content=body, headers={"content-type": "text/plain", **headers})


def _read_all(c: httpx.Client, url: str) -> bytes:
    out, offset = b"", "-1"
    while True:
        r = c.get(url, params={"offset": offset})
        assert r.status_code == 200, r.text
        out += r.content
        offset = r.headers["stream-next-offset"]
        if r.headers.get("stream-up-to-date") == "true":
            return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_fork_chain_and_soft_delete_survive_restart(fresh_server: Server, sig: int) -> None:
    srv = fresh_server
    l0, l1, l2 = (f"/v1/stream/{unique(n)}" for n in ("l0", "l1", "l2"))
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert _put(c, l0, b"hello ").status_code == 201
        mid = c.post(l0, content=b"world", headers={"content-type": "text/plain"}).headers["stream-next-offset"]
        c.post(l0, content=b"!!!", headers={"content-type": "text/plain"})
        assert _put(c, l1, b"[l1]", **{"stream-forked-from": l0, "stream-fork-offset": mid}).status_code == 201
        assert _put(c, l2, **{"stream-forked-from": l1, "stream-fork-offset": format_offset(0),
                              "stream-fork-sub-offset": "3"}).status_code == 201
        c.post(l2, content=b"<l2>", headers={"content-type": "text/plain"})
        assert c.delete(l0).status_code == 204  # soft: l1 still reads it
    srv.restart(sig)
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert _read_all(c, l1) == b"hello world[l1]"
        assert _read_all(c, l2) == b"hel<l2>"
        assert c.head(l0).status_code == 410
        assert c.get(l0).status_code == 410
        assert _put(c, l0).status_code == 409
        assert c.delete(l1).status_code == 204  # l1 is still referenced by l2: soft
        assert c.head(l1).status_code == 410
        assert _read_all(c, l2) == b"hel<l2>"
        assert c.delete(l2).status_code == 204  # cascades: l2, then l1, then l0
    srv.restart(sig)
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        for url in (l0, l1, l2):
            assert c.head(url).status_code == 404, url
        assert _put(c, l0, b"new").status_code == 201  # the path is free again
    data_files = [p for p in (srv.data_dir / "streams").iterdir() if p.suffix == ".dat"]
    assert len(data_files) == 1  # only the new l0: the chain's files were collected


def test_json_fork_reads_one_array_across_the_boundary(server: Server) -> None:
    src, fork = f"/v1/stream/{unique('js')}", f"/v1/stream/{unique('jf')}"
    with httpx.Client(base_url=server.url, timeout=10) as c:
        c.put(src, content=b'[{"n":1},{"n":2},{"n":3}]', headers={"content-type": "application/json"})
        r = c.put(fork, headers={"stream-forked-from": src, "stream-fork-offset": format_offset(0),
                                 "stream-fork-sub-offset": "2"})
        assert r.status_code == 201 and r.headers["content-type"] == "application/json"
        c.post(fork, content=b'{"n":"own"}', headers={"content-type": "application/json"})
        assert orjson.loads(c.get(fork).content) == [{"n": 1}, {"n": 2}, {"n": "own"}]
        c.post(src, content=b'{"n":4}', headers={"content-type": "application/json"})
        assert orjson.loads(c.get(fork).content) == [{"n": 1}, {"n": 2}, {"n": "own"}]


async def test_json_fork_anchor_must_be_a_message_boundary(registry) -> None:  # type: ignore[no-untyped-def]
    await registry.create("j", CreateRequest("application/json", Expiry(), False, b'[{"a":1},{"b":2}]'))
    assert await _resolve(registry, "j", len(b'{"a":1}\n'), 0) == len(b'{"a":1}\n')
    with pytest.raises(ProtocolError) as info:
        await _resolve(registry, "j", 3, 0)
    assert info.value.status == 400


async def test_delete_and_recreate_in_one_batch_respects_soft_delete(registry) -> None:  # type: ignore[no-untyped-def]
    """A delete and a PUT decided in one actor batch: with forks alive the PUT must get 409."""
    from trio_streams.streams.actor import Command, DeleteRequest, StreamActor
    await registry.create("src", _create(body=b"x"))
    await registry.create("f", _fork("src"))
    delete, put = Command(DeleteRequest()), Command(_create(body=b"x"))
    await StreamActor(registry.context, "src")._process([delete, put])
    assert (await delete.wait()).status == 204
    with pytest.raises(ProtocolError) as info:
        await put.wait()
    assert info.value.status == 409
    assert registry.view.at("src").soft_deleted


async def test_an_expired_source_is_missing_or_soft_deleted_for_forks(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, mock_time: Clock
) -> None:
    """Expiry is a delete: forking an expired source is 404 without forks, 409 with them."""
    settings = Settings(data_dir=str(tmp_path), expiry_sweep_interval_s=1000)  # no sweep: requests notice
    async with run_service(settings, mock_time) as service:
        registry = service.registry
        await registry.create("lonely", _create(body=b"x", expiry=Expiry(ttl_s=100)))
        await registry.create("shared", _create(body=b"x", expiry=Expiry(ttl_s=100)))
        long_lived = dataclasses.replace(_fork("shared"), expiry=Expiry(ttl_s=10_000))  # else it inherits the TTL
        await registry.create("fork", long_lived)
        await trio.sleep(100)
        for source, status in (("lonely", 404), ("shared", 409)):
            with pytest.raises(ProtocolError) as info:
                await registry.create(f"from-{source}", _fork(source))
            assert info.value.status == status, source
        assert registry.visible("fork").tail == 1  # the fork still reads its expired source
