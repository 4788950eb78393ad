"""Durability across restarts: SIGTERM (graceful) and SIGKILL (crash) of a real server.

Each test gets its own server and data directory (``fresh_server``) and
restarts it on the same directory and port.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

import httpx
import pytest

from conftest import PREFIX, Server, assert_error, deadline_poll, offset_of, unique

TEXT = "text/plain"
OCTET = "application/octet-stream"
JSON = "application/json"
SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGKILL, id="SIGKILL")]


def path(name: str) -> str:
    return PREFIX + name


def producer(pid: str, epoch: int, seq: int) -> dict[str, str]:
    return {"producer-id": pid, "producer-epoch": str(epoch), "producer-seq": str(seq)}


def snapshot(c: httpx.Client, names: list[str]) -> dict[str, tuple]:
    """What a client can observe about each stream: metadata and full content."""
    out = {}
    for n in names:
        head = c.head(path(n))
        body = c.get(path(n)).content
        keep = ("content-type", "stream-next-offset", "stream-closed", "stream-ttl", "stream-expires-at")
        out[n] = (head.status_code, {k: head.headers.get(k) for k in keep}, body)
    return out


@pytest.mark.parametrize("sig", SIGNALS)
def test_state_survives_restart(fresh_server: Server, sig: int) -> None:
    srv = fresh_server
    binary, text, closed, js, seqd, prod, ttl, expiring, deleted = (unique(x) for x in (
        "bin", "text", "closed", "json", "seq", "prod", "ttl", "exp", "del"))
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.put(path(binary), content=bytes(range(256)), headers={"content-type": OCTET}).status_code == 201
        assert c.post(path(binary), content=b"\x00\xff" * 500, headers={"content-type": OCTET}).status_code == 204
        assert c.put(path(text), content="héllo".encode(), headers={"content-type": TEXT}).status_code == 201
        assert c.post(path(text), content=" wörld".encode(), headers={"content-type": TEXT}).status_code == 204
        assert c.put(path(closed), content=b"the end", headers={"content-type": TEXT}).status_code == 201
        assert c.post(path(closed), content=b"!", headers={"content-type": TEXT, "stream-closed": "true"}).status_code == 204
        assert c.put(path(js), content=b'[{"a":1},[2]]', headers={"content-type": JSON}).status_code == 201
        assert c.post(path(js), content=b'"three"', headers={"content-type": JSON}).status_code == 204
        assert c.put(path(seqd), headers={"content-type": TEXT}).status_code == 201
        assert c.post(path(seqd), content=b"s1", headers={"content-type": TEXT, "stream-seq": "0005"}).status_code == 204
        assert c.put(path(prod), headers={"content-type": TEXT}).status_code == 201
        assert c.post(path(prod), content=b"p0", headers={"content-type": TEXT} | producer("w", 2, 0)).status_code == 200
        assert c.post(path(prod), content=b"p1", headers={"content-type": TEXT} | producer("w", 2, 1)).status_code == 200
        assert c.put(path(ttl), content=b"t", headers={"content-type": TEXT, "stream-ttl": "3600"}).status_code == 201
        assert c.put(path(expiring), headers={"content-type": TEXT, "stream-expires-at": "2099-06-01T12:00:00.5+02:00"}).status_code == 201
        assert c.put(path(deleted), content=b"gone", headers={"content-type": TEXT}).status_code == 201
        assert c.delete(path(deleted)).status_code == 204
        names = [binary, text, closed, js, seqd, prod, ttl, expiring]
        before = snapshot(c, names)

    status = srv.restart(sig)
    assert status == (0 if sig == signal.SIGTERM else -signal.SIGKILL)

    with httpx.Client(base_url=srv.url, timeout=10) as c:
        after = snapshot(c, names)
        assert after == before
        assert before[closed][1]["stream-closed"] == "true"
        assert before[ttl][1]["stream-ttl"] == "3600"
        assert before[expiring][1]["stream-expires-at"] == "2099-06-01T12:00:00.5+02:00"
        assert json.loads(after[js][2]) == [{"a": 1}, [2], "three"]
        assert c.head(path(deleted)).status_code == 404
        # Closure is durable: appends are still refused.
        refused = c.post(path(closed), content=b"x", headers={"content-type": TEXT})
        assert_error(refused, 409)
        assert refused.headers.get("stream-closed") == "true"
        # Producer state is durable: a retry is still a duplicate; the next seq continues; a gap is a gap.
        dup = c.post(path(prod), content=b"p1", headers={"content-type": TEXT} | producer("w", 2, 1))
        assert dup.status_code == 204, dup.text
        assert_error(c.post(path(prod), content=b"p3", headers={"content-type": TEXT} | producer("w", 2, 3)), 409)
        assert_error(c.post(path(prod), content=b"old", headers={"content-type": TEXT} | producer("w", 1, 0)), 403)
        assert c.post(path(prod), content=b"p2", headers={"content-type": TEXT} | producer("w", 2, 2)).status_code == 200
        assert c.get(path(prod)).content == b"p0p1p2"
        # Stream-Seq is durable.
        assert_error(c.post(path(seqd), content=b"x", headers={"content-type": TEXT, "stream-seq": "0005"}), 409)
        assert c.post(path(seqd), content=b"s2", headers={"content-type": TEXT, "stream-seq": "0006"}).status_code == 204
        # Configuration is durable: an identical PUT is 200, a different one 409.
        assert c.put(path(ttl), headers={"content-type": TEXT, "stream-ttl": "3600"}).status_code == 200
        assert_error(c.put(path(ttl), headers={"content-type": TEXT, "stream-ttl": "60"}), 409)
        assert c.put(path(expiring), headers={"content-type": TEXT, "stream-expires-at": "2099-06-01T12:00:00.5+02:00"}).status_code == 200
        assert c.put(path(closed), headers={"content-type": TEXT, "stream-closed": "true"}).status_code == 200
        # Offsets keep increasing after a restart.
        new_tail = offset_of(c.post(path(text), content=b"!", headers={"content-type": TEXT}))
        assert new_tail > before[text][1]["stream-next-offset"]
        assert c.get(path(text)).content == "héllo wörld!".encode()
        # A re-created deleted path starts empty (the old data is not resurrected).
        assert c.put(path(deleted), headers={"content-type": TEXT}).status_code == 201
        assert c.get(path(deleted)).content == b""


# The SIGTERM case is slow (make test-all): test_state_survives_restart[SIGTERM] covers a
# clean restart, and test_crash.py's test_crash_once restarts twice (kill -9, then SIGTERM).
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGTERM, id="SIGTERM", marks=pytest.mark.slow),
                                 pytest.param(signal.SIGKILL, id="SIGKILL")])
def test_acknowledged_appends_survive_repeated_restarts(fresh_server: Server, sig: int) -> None:
    srv = fresh_server
    name = unique()
    expected = b""
    for round_ in range(2):
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            if round_ == 0:
                assert c.put(path(name), headers={"content-type": OCTET}).status_code == 201
            else:
                assert c.get(path(name)).content == expected
            for i in range(10):
                piece = f"[{round_}:{i}]".encode()
                assert c.post(path(name), content=piece, headers={"content-type": OCTET}).status_code == 204
                expected += piece
        srv.restart(sig)
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.get(path(name)).content == expected


def test_sigterm_exits_zero_promptly(fresh_server: Server) -> None:
    with httpx.Client(base_url=fresh_server.url, timeout=10) as c:
        assert c.put(path("x"), content=b"x", headers={"content-type": TEXT}).status_code == 201
    started = time.monotonic()
    assert fresh_server.stop(signal.SIGTERM, timeout=10) == 0
    assert time.monotonic() - started < 3


def open_live_read(srv: Server, query: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    sock.sendall(f"GET {path('x')}?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def timed_sigterm(srv: Server) -> tuple[int, float]:
    started = time.monotonic()
    status = srv.stop(signal.SIGTERM, timeout=15)
    return status, time.monotonic() - started


def test_sigterm_is_prompt_after_finished_live_reads_on_idle_connections(fresh_server: Server) -> None:
    """A keep-alive connection whose last request was a live read that already finished is idle.

    Shutdown must not wait for it any more than for an idle connection after a
    catch-up read (which takes ~0.1 s).
    """
    srv = fresh_server
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.put(path("x"), content=b"x", headers={"content-type": TEXT}).status_code == 201
        closed = unique("closed")
        assert c.put(path(closed), content=b"y", headers={"content-type": TEXT, "stream-closed": "true"}).status_code == 201
    with httpx.Client(base_url=srv.url, timeout=10) as poller, httpx.Client(base_url=srv.url, timeout=10) as sse:
        # Both complete immediately: data is behind the offset / the SSE stream is closed.
        assert poller.get(path("x"), params={"offset": "-1", "live": "long-poll"}).content == b"x"
        assert b"streamClosed" in sse.get(path(closed), params={"offset": "-1", "live": "sse"}).content
        srv.wait_subscribers(lambda n: n == 0, what="no live readers left")
        status, elapsed = timed_sigterm(srv)
    assert status == 0
    assert elapsed < 3, f"SIGTERM took {elapsed:.1f}s with only idle keep-alive connections open"


def test_sigterm_with_open_live_readers_exits_zero_promptly(fresh_server: Server) -> None:
    srv = fresh_server
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        tail = offset_of(c.put(path("x"), content=b"x", headers={"content-type": TEXT}))
    socks = [open_live_read(srv, f"offset={tail}&live=sse")]
    try:
        srv.wait_subscribers(lambda n: n == 1, what="an SSE reader")
        status, elapsed = timed_sigterm(srv)
        assert status == 0
        assert elapsed < 3, f"SIGTERM took {elapsed:.1f}s with one idle SSE reader"
    finally:
        for sock in socks:
            sock.close()
    srv.start()
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.get(path("x")).content == b"x"


def test_second_server_on_the_same_directory_refuses_to_start(fresh_server: Server) -> None:
    other = Server(fresh_server.data_dir)
    other.start(wait=False)
    try:
        assert other.proc is not None
        status = other.proc.wait(timeout=15)
        assert status != 0
    except subprocess.TimeoutExpired:
        pytest.fail("a second server on a locked data directory kept running")
    finally:
        other.kill_quietly()
    # The first one is unaffected.
    assert httpx.get(f"{fresh_server.url}/healthz", timeout=5).status_code == 200


def test_recovery_of_a_larger_log_and_healthz_while_recovering(fresh_server: Server) -> None:
    """Fill the log with ~8 MB in many events, crash, and watch the restart.

    While recovering, /healthz may answer 503 {"error":{"code":"RECOVERING"}}
    and stream requests 503 with Retry-After; nothing else is acceptable.
    Observing the 503 window is best effort (recovery may be too quick).
    """
    srv = fresh_server
    names = [unique("big") for _ in range(4)]
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        for n in names:
            assert c.put(path(n), headers={"content-type": OCTET}).status_code == 201
        chunk = bytes(range(256)) * 256  # 64 KiB, the append limit
        for i in range(32):
            n = names[i % len(names)]
            assert c.post(path(n), content=chunk, headers={"content-type": OCTET}).status_code == 204
        expected_tails = {n: offset_of(c.head(path(n))) for n in names}
    srv.stop(signal.SIGKILL)
    srv.start(wait=False)
    seen: list[int] = []

    def healthy() -> bool:
        try:
            resp = httpx.get(f"{srv.url}/healthz", timeout=2)
        except httpx.TransportError:
            return False
        seen.append(resp.status_code)
        if resp.status_code == 503:
            assert_error(resp, 503, "RECOVERING")
            stream = httpx.head(srv.stream_url(names[0]), timeout=2)
            assert stream.status_code in (200, 503)
            if stream.status_code == 503:
                assert stream.headers.get("retry-after")
        else:
            assert resp.status_code == 200, resp.text
        return resp.status_code == 200

    deadline_poll(healthy, timeout=20, interval=0.002, what="/healthz 200 after recovery")
    assert set(seen) <= {200, 503}
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        for n in names:
            assert offset_of(c.head(path(n))) == expected_tails[n]
            resp = c.get(path(n))
            assert resp.status_code == 200, (resp.status_code, resp.content[:300])
            body = resp.content
            assert len(body) == 8 * len(chunk), (n, len(body))
            assert body == chunk * 8, f"{n}: content differs after recovery at byte {_first_difference(body, chunk * 8)}"


def _first_difference(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_a_stream_deleted_after_a_checkpoint_stays_deleted_across_a_crash(fresh_server: Server) -> None:
    """The checkpoint lists the stream, its files are gone, the WAL deletes it:
    recovery must replay the delete, not refuse the missing file."""
    with httpx.Client(base_url=fresh_server.url, timeout=10) as c:
        assert c.put(path("gone"), content=b"1234567", headers={"content-type": TEXT}).status_code == 201
        assert c.put(path("kept"), content=b"abc", headers={"content-type": TEXT}).status_code == 201
    assert fresh_server.restart(signal.SIGTERM) == 0  # a clean stop writes a checkpoint listing both
    with httpx.Client(base_url=fresh_server.url, timeout=10) as c:
        assert c.delete(path("gone")).status_code == 204
    fresh_server.restart(signal.SIGKILL)
    with httpx.Client(base_url=fresh_server.url, timeout=10) as c:
        assert c.get(path("gone")).status_code == 404
        assert c.get(path("kept")).content == b"abc"
        assert c.put(path("gone"), content=b"new", headers={"content-type": TEXT}).status_code == 201
        assert c.get(path("gone")).content == b"new"


def test_a_deleted_stream_with_both_checkpoints_listing_it_stays_deleted_across_a_crash(tmp_path) -> None:
    """As above, but the WAL before the older kept checkpoint is gone (small
    segments, two checkpoints), so no fallback start avoids the missing files:
    the WAL's delete must clear them, not make recovery refuse."""
    server = Server(tmp_path / "data", env={"TRIO_STREAMS_WAL_SEGMENT_BYTES_MAX": "1024"})
    server.data_dir.mkdir()
    try:
        server.start()
        for round_ in range(2):  # each clean stop writes a checkpoint listing both streams
            with httpx.Client(base_url=server.url, timeout=10) as c:
                for name in ("gone", "kept"):
                    if round_ == 0:
                        assert c.put(path(name), headers={"content-type": TEXT}).status_code == 201
                    for _ in range(8):  # several segments, so the older ones get deleted
                        assert c.post(path(name), content=b"x" * 200, headers={"content-type": TEXT}).status_code == 204
            assert server.restart(signal.SIGTERM) == 0
        assert not (server.data_dir / "wal" / f"{0:020d}.wal").exists(), "the WAL from position 0 should be deleted"
        with httpx.Client(base_url=server.url, timeout=10) as c:
            assert c.delete(path("gone")).status_code == 204
        server.restart(signal.SIGKILL)
        with httpx.Client(base_url=server.url, timeout=10) as c:
            assert c.get(path("gone")).status_code == 404
            assert c.get(path("kept")).content == b"x" * 3200
    finally:
        server.kill_quietly()
