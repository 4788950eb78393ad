"""The admin endpoints: who may call them, their methods, the checkpoint answer,
one backup at a time, and the log writer's on-demand checkpoint and removal hold."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx
import pytest

from conftest import PREFIX, Server, assert_error, deadline_poll, free_port
from trio_streams.auth.local import local_operator as admin_allowed
from trio_streams.http.asgi import Request


def _request(client: tuple[str, int] | None, headers: dict[str, str] | None = None) -> Request:
    scope = {"type": "http", "method": "POST", "path": "/admin/checkpoint", "client": client, "headers": []}

    async def receive() -> dict[str, object]:
        return {"type": "http.request"}

    return Request("POST", "/admin/checkpoint", {"host": "127.0.0.1:4437"} | (headers or {}), [], scope, receive)


@pytest.mark.parametrize("client, allowed", [
    (("127.0.0.1", 5000), True),
    (("127.8.9.10", 5000), True),
    (("::1", 5000, 0, 0), True),
    (("10.0.0.5", 5000), False),
    (("192.168.1.20", 5000), False),
    (("2001:db8::1", 5000, 0, 0), False),
    (("::ffff:10.0.0.5", 5000, 0, 0), False),
    (("not-an-address", 1), False),
    (None, False),
])
def test_admin_allowed_answers_loopback_peers_only(client: tuple[str, int] | None, allowed: bool) -> None:
    assert admin_allowed(_request(client)) is allowed


@pytest.mark.parametrize("header", ["x-forwarded-for", "forwarded", "x-real-ip"])
def test_a_request_forwarded_by_a_local_proxy_is_not_local(header: str) -> None:
    assert admin_allowed(_request(("127.0.0.1", 5000), {header: "203.0.113.9"})) is False


@pytest.mark.parametrize("header, value", [("origin", "https://evil.example"), ("origin", "null"),
                                           ("sec-fetch-site", "same-origin"), ("sec-fetch-mode", "cors")])
def test_a_browser_request_is_refused_even_from_loopback(header: str, value: str) -> None:
    assert admin_allowed(_request(("127.0.0.1", 5000), {header: value})) is False


@pytest.mark.parametrize("host, allowed", [
    ("127.0.0.1:4437", True), ("localhost:4437", True), ("LOCALHOST", True), ("[::1]:4437", True), ("::1", True),
    ("127.0.0.1", True), ("evil.example:4437", False), ("evil.example", False), ("10.0.0.1:4437", False), ("", False),
])
def test_a_name_that_is_not_loopback_is_refused(host: str, allowed: bool) -> None:
    """A DNS-rebound name reaches 127.0.0.1 with its own Host header."""
    assert admin_allowed(_request(("127.0.0.1", 5000), {"host": host})) is allowed


def test_a_forwarded_or_browser_request_gets_403_forbidden(server: Server) -> None:
    resp = httpx.post(f"{server.url}/admin/checkpoint", headers={"x-forwarded-for": "203.0.113.9"})
    assert_error(resp, 403, "FORBIDDEN")
    resp = httpx.get(f"{server.url}/admin/backup", headers={"forwarded": "for=203.0.113.9"})
    assert_error(resp, 403, "FORBIDDEN")
    resp = httpx.get(f"{server.url}/admin/backup", headers={"origin": "https://evil.example"})
    assert_error(resp, 403, "FORBIDDEN")
    resp = httpx.get(f"{server.url}/admin/backup", headers={"host": "rebound.evil.example"})
    assert_error(resp, 403, "FORBIDDEN")


def test_admin_answers_carry_no_cors_headers(server: Server) -> None:
    resp = httpx.post(f"{server.url}/admin/checkpoint")
    assert resp.status_code == 200
    assert not [name for name in resp.headers if name.startswith("access-control-")]


@pytest.mark.parametrize("method, path, allow", [
    ("GET", "/admin/checkpoint", "POST"),
    ("PUT", "/admin/checkpoint", "POST"),
    ("DELETE", "/admin/checkpoint", "POST"),
    ("HEAD", "/admin/checkpoint", "POST"),
    ("POST", "/admin/backup", "GET"),
    ("DELETE", "/admin/backup", "GET"),
    ("OPTIONS", "/admin/backup", "GET"),
])
def test_wrong_methods_get_405_with_allow(server: Server, method: str, path: str, allow: str) -> None:
    resp = httpx.request(method, f"{server.url}{path}")
    assert resp.status_code == 405
    assert resp.headers["allow"] == allow
    if method != "HEAD":
        assert_error(resp, 405, "METHOD_NOT_ALLOWED")


def test_an_unknown_admin_path_is_404(server: Server) -> None:
    assert_error(httpx.post(f"{server.url}/admin/nothing"), 404, "NOT_FOUND")


def test_checkpoint_answers_its_position_once_durable(fresh_server: Server) -> None:
    url = fresh_server.stream_url("cp")
    assert httpx.put(url, headers={"content-type": "text/plain"}, content=b"x" * 100).status_code == 201
    first = httpx.post(f"{fresh_server.url}/admin/checkpoint")
    assert first.status_code == 200
    body = first.json()
    assert body["position"] > 100 and body["duration_s"] >= 0
    assert (fresh_server.data_dir / body["file"]).is_file()
    assert body["file"] == f"checkpoints/checkpoint-{body['position']:020d}.snap"
    assert httpx.post(url, headers={"content-type": "text/plain"}, content=b"y").status_code in (200, 204)
    second = httpx.post(f"{fresh_server.url}/admin/checkpoint").json()
    assert second["position"] > body["position"]  # it covers the append made since
    assert (fresh_server.data_dir / second["file"]).is_file()


def test_the_checkpoint_command_prints_the_answer(fresh_server: Server) -> None:
    import subprocess

    from conftest import EXE

    done = subprocess.run([str(EXE), "checkpoint", "--url", fresh_server.url], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert '"position"' in done.stdout and '"duration_s"' in done.stdout


def test_one_backup_at_a_time(tmp_path: Path) -> None:
    """A backup whose reader stalls holds the slot; a second one is refused with 409."""
    srv = Server(tmp_path / "data", ["--append-bytes-max", str(8 * 1024 * 1024)])
    srv.data_dir.mkdir()
    try:
        srv.start()
        # Far more than the socket buffers hold, so the first backup blocks on its reader.
        chunk = os.urandom(4 * 1024 * 1024)
        assert httpx.put(srv.stream_url("big"), headers={"content-type": "application/octet-stream"}).status_code == 201
        for _ in range(8):
            assert httpx.post(srv.stream_url("big"), headers={"content-type": "application/octet-stream"},
                              content=chunk, timeout=30).status_code in (200, 204)
        with socket.create_connection(("127.0.0.1", srv.port)) as stalled:
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.sendall(b"GET /admin/backup HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            assert stalled.recv(12).startswith(b"HTTP/1.1 200")

            def refused() -> bool:
                return httpx.get(f"{srv.url}/admin/backup", timeout=30).status_code == 409

            deadline_poll(refused, 10.0, what="a second backup refused")
            resp = httpx.get(f"{srv.url}/admin/backup", timeout=30)
            assert_error(resp, 409, "BACKUP_IN_PROGRESS")
        # The stalled client left: the slot frees (its send fails or times out).
        deadline_poll(lambda: _backup_status(srv) == 200, 60.0, what="a backup once the first ended")
    finally:
        srv.kill_quietly()


def _backup_status(srv: Server) -> int:
    with httpx.stream("GET", f"{srv.url}/admin/backup", timeout=60) as resp:
        for _ in resp.iter_raw():
            pass
        return resp.status_code


async def test_deleted_streams_keep_their_files_while_removals_are_held(inproc) -> None:  # type: ignore[no-untyped-def]
    client, log = inproc.client, inproc.app.service.log
    url = f"{PREFIX}held"
    assert (await client.put(url, headers={"content-type": "text/plain"}, content=b"kept")).status_code == 201
    stream_id = inproc.app.service.view.at("held").stream_id
    files = [Path(inproc.settings.data_dir) / "streams" / f"{stream_id:016x}{kind}" for kind in (".dat", ".idx", ".sum")]
    log.hold_removals()
    assert (await client.delete(url)).status_code == 204
    await log.checkpoint_now()  # the writer has been round its loop since the delete
    assert all(f.exists() for f in files)
    assert (await client.get(url)).status_code == 404  # deleted all the same
    log.release_removals()
    # The writer removes held files before the next checkpoint it takes.
    await log.checkpoint_now()
    assert not any(f.exists() for f in files)


async def test_checkpoint_now_covers_everything_acknowledged_before_it(inproc) -> None:  # type: ignore[no-untyped-def]
    client, log = inproc.client, inproc.app.service.log
    assert (await client.put(f"{PREFIX}c", headers={"content-type": "text/plain"}, content=b"abc")).status_code == 201
    end = log.statistics().wal_end_position
    taken = await log.checkpoint_now()
    assert taken.position == end
    assert (Path(inproc.settings.data_dir) / "checkpoints" / f"checkpoint-{end:020d}.snap").is_file()


async def test_a_checkpoint_asked_for_while_one_is_written_follows_it(inproc, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The second request waits for the first checkpoint's end (the writer keeps
    committing meanwhile), then gets a checkpoint of its own that covers more."""
    import trio

    client, log = inproc.client, inproc.app.service.log
    writing, release = trio.Event(), trio.Event()
    original = log._write_snapshot

    async def held(position: int, snapshot: object) -> int | None:
        writing.set()
        await release.wait()
        return await original(position, snapshot)

    monkeypatch.setattr(log, "_write_snapshot", held)
    url = f"{PREFIX}during"
    assert (await client.put(url, headers={"content-type": "text/plain"}, content=b"a")).status_code == 201
    taken: list[object] = []

    async def ask() -> None:
        taken.append(await log.checkpoint_now())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await writing.wait()
        nursery.start_soon(ask)
        # The writer neither spins nor stalls while the first is held: appends go on.
        assert (await client.post(url, headers={"content-type": "text/plain"}, content=b"b")).status_code in (200, 204)
        assert taken == []
        release.set()
    first, second = taken
    assert second.position > first.position  # type: ignore[attr-defined]


def test_the_status_command_prints_readiness(server: Server) -> None:
    import subprocess

    from conftest import EXE

    done = subprocess.run([str(EXE), "status", "--url", server.url], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert '"status": "ok"' in done.stdout
    down = subprocess.run([str(EXE), "status", "--url", f"http://127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=30)
    assert down.returncode == 1 and "ConnectError" in down.stderr


def test_backup_read_chunk_bytes_must_be_positive() -> None:
    from trio_streams.config import Settings, settings_from_env

    with pytest.raises(ValueError, match="backup_read_chunk_bytes"):
        Settings(backup_read_chunk_bytes=0)
    assert settings_from_env({"TRIO_STREAMS_BACKUP_READ_CHUNK_BYTES": "4096"}).backup_read_chunk_bytes == 4096


async def test_a_checkpoint_abandoned_at_shutdown_is_not_reported_taken(inproc, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import trio

    from trio_streams.storage.log import StorageFailed

    service = inproc.app.service
    log = service.log
    writing = trio.Event()

    async def never(position: int, snapshot: object) -> int | None:
        writing.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    monkeypatch.setattr(log, "_write_snapshot", never)
    outcome: list[object] = []

    async def ask() -> None:
        try:
            outcome.append(await log.checkpoint_now())
        except StorageFailed as error:
            outcome.append(error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await writing.wait()
        monkeypatch.undo()  # the final checkpoint at shutdown writes normally
        service.stop()
        await service.finished.wait()
    assert len(outcome) == 1 and isinstance(outcome[0], StorageFailed), outcome
