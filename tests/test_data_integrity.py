"""Stream data at rest is checksummed: damage is a 500 DATA_CORRUPT, logged and counted, never data."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from conftest import Server, assert_error, unique
from trio_streams.protocol.offsets import format_offset

CT = {"content-type": "application/octet-stream"}


def stream_id(client: httpx.Client, url: str) -> int:
    """The server's stream id, from a read's ETag ("<id>:<start>:<end>")."""
    return int(client.get(url, params={"offset": "-1"}).headers["etag"].strip('"').split(":")[0])


def data_file(srv: Server, sid: int, kind: str = ".dat") -> Path:
    return srv.data_dir / "streams" / f"{sid:016x}{kind}"


def flip_byte(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x08  # '1' (0x31) becomes '9' (0x39): the finding's balance=100 → balance=900
    path.write_bytes(bytes(raw))


# The SIGTERM case is slow (make test-all): test_corruption_streams.py's seed-0-sigterm
# case flips bits after a SIGTERM and checks the same (refused, logged, counted, the
# undamaged streams served).
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGTERM, marks=pytest.mark.slow), signal.SIGKILL])
def test_a_flipped_byte_is_refused_logged_counted_and_other_streams_serve(fresh_server: Server, sig: int) -> None:
    srv = fresh_server
    damaged, intact = f"/v1/stream/{unique('bad')}", f"/v1/stream/{unique('ok')}"
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        for url in (damaged, intact):
            assert c.put(url, headers=CT).status_code == 201
            assert c.post(url, content=b"balance=100;" * 1000, headers=CT).status_code == 204
        sid = stream_id(c, damaged)
    srv.restart()  # a checkpoint: the WAL no longer holds these bytes, the stream file is the only copy
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.post(intact, content=b"more", headers=CT).status_code == 204
    srv.stop(sig)
    flip_byte(data_file(srv, sid), len("balance="))
    srv.start()
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        for _ in range(3):  # retried reads are refused every time, logged once
            assert_error(c.get(damaged, params={"offset": "-1"}), 500, "DATA_CORRUPT")
        got = c.get(intact, params={"offset": "-1"})
        assert got.status_code == 200 and got.content == b"balance=100;" * 1000 + b"more"
        assert c.post(intact, content=b"more", headers=CT).status_code == 204
    metrics = srv.metrics()
    assert metrics["trio_streams_data_corrupt_reads_total"] == 3
    assert metrics["trio_streams_data_corrupt_ranges_total"] == 1
    errors = [line for line in srv.log_tail(200).splitlines() if "ERROR" in line and "damaged" in line]
    assert len(errors) == 1, srv.log_tail(50)
    assert damaged.removeprefix("/v1/stream/") in errors[0] and f"{sid:x}" in errors[0]
    assert "bytes [0, 12000)" in errors[0]


def test_a_fork_read_through_a_damaged_source_is_refused(fresh_server: Server) -> None:
    srv = fresh_server
    source, fork = f"/v1/stream/{unique('src')}", f"/v1/stream/{unique('fork')}"
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.put(source, content=b"a" * 5000, headers=CT).status_code == 201
        assert c.put(fork, headers={"stream-forked-from": source}).status_code == 201
        assert c.post(fork, content=b"own", headers=CT).status_code == 204
        sid = stream_id(c, source)
    srv.restart()  # hot tails are memory only: reads come from the files now
    flip_byte(data_file(srv, sid), 4000)  # the server keeps running: the page cache has the flip
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert_error(c.get(fork, params={"offset": "-1"}), 500, "DATA_CORRUPT")
        own = c.get(fork, params={"offset": format_offset(5000)})
        assert own.status_code == 200 and own.content == b"own"
