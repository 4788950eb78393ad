"""Backups: online under write load over real HTTP, restored and served; offline
of a stopped directory; and restore's refusals (a non-empty target, a
truncated or damaged archive)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from conftest import EXE, PREFIX, Server, read_all

TEXT = {"content-type": "text/plain"}
JSON = {"content-type": "application/json"}
OK_APPEND = (200, 204)


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *args], capture_output=True, text=stdin is None, input=stdin, timeout=120)


@dataclass
class Ledger:
    """Every append a writer had acknowledged, per stream, in order."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: dict[str, list[bytes]] = field(default_factory=dict)

    def record(self, stream: str, payload: bytes) -> None:
        with self.lock:
            self.acked.setdefault(stream, []).append(payload)

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {s: len(p) for s, p in self.acked.items()}


def _writer(srv: Server, ledger: Ledger, stop: threading.Event, step: Callable[[httpx.Client, int], None]) -> threading.Thread:
    def run() -> None:
        with httpx.Client(timeout=30) as client:
            i = 0
            while not stop.is_set():
                step(client, i)
                i += 1

    return threading.Thread(target=run, daemon=True)


def _byte_step(srv: Server, ledger: Ledger, stream: str) -> Callable[[httpx.Client, int], None]:
    def step(client: httpx.Client, i: int) -> None:
        payload = f"{stream}:{i:08d};".encode()
        assert client.post(srv.stream_url(stream), headers=TEXT, content=payload).status_code in OK_APPEND
        ledger.record(stream, payload)
    return step


def _json_step(srv: Server, ledger: Ledger, stream: str) -> Callable[[httpx.Client, int], None]:
    def step(client: httpx.Client, i: int) -> None:
        payload = json.dumps({"w": stream, "i": i}).encode()
        assert client.post(srv.stream_url(stream), headers=JSON, content=payload).status_code in OK_APPEND
        ledger.record(stream, payload)
    return step


def _producer_step(srv: Server, ledger: Ledger, stream: str) -> Callable[[httpx.Client, int], None]:
    def step(client: httpx.Client, i: int) -> None:
        payload = f"p{i:08d};".encode()
        headers = {**TEXT, "producer-id": "backup-test", "producer-epoch": "0", "producer-seq": str(i)}
        assert client.post(srv.stream_url(stream), headers=headers, content=payload).status_code == 200
        ledger.record(stream, payload)
    return step


def _pair_step(srv: Server, ledger: Ledger) -> Callable[[httpx.Client, int], None]:
    """Appends to pair-a then pair-b, each acknowledged before the next: in the
    log every a_i precedes b_i, which precedes a_(i+1)."""
    def step(client: httpx.Client, i: int) -> None:
        for stream in ("pair-a", "pair-b"):
            payload = f"{stream}:{i:08d};".encode()
            assert client.post(srv.stream_url(stream), headers=TEXT, content=payload).status_code in OK_APPEND
            ledger.record(stream, payload)
    return step


def _read_bytes(client: httpx.Client, url: str) -> bytes:
    responses, _ = read_all(client, url)
    return b"".join(r.content for r in responses)


def _read_messages(client: httpx.Client, url: str) -> list[object]:
    responses, _ = read_all(client, url)
    return [m for r in responses for m in r.json()]


def _prefix_length(restored: bytes, acked: list[bytes]) -> int:
    """How many of ``acked`` ``restored`` is, exactly; fails if it is anything else."""
    joined = b""
    for k, payload in enumerate(acked):
        if joined == restored:
            return k
        joined += payload
    assert joined == restored, f"restored bytes are not a prefix of the acknowledged appends: {restored[-80:]!r}"
    return len(acked)


def _setup(srv: Server) -> bytes:
    """Streams the writers use, and the ones whose state the backup must keep."""
    for stream, headers in (("bytes-0", TEXT), ("bytes-1", TEXT), ("json-0", JSON), ("prod-0", TEXT),
                            ("pair-a", TEXT), ("pair-b", TEXT), ("closing", TEXT), ("gone", TEXT)):
        assert httpx.put(srv.stream_url(stream), headers=headers).status_code == 201
    assert httpx.put(srv.stream_url("ttl"), headers={**TEXT, "stream-ttl": "3600"}, content=b"ttl").status_code == 201
    doomed = os.urandom(2 * 1024 * 1024)
    assert httpx.put(srv.stream_url("doomed"), headers={"content-type": "application/octet-stream"},
                     content=doomed, timeout=30).status_code == 201
    return doomed


def _changes_under_load(srv: Server) -> None:
    """A fork, a close and a delete while the writers run, all before the backup request."""
    assert httpx.put(srv.stream_url("src"), headers=TEXT, content=b"source-data;").status_code == 201
    assert httpx.put(srv.stream_url("fork"), headers={**TEXT, "stream-forked-from": f"{PREFIX}src"}).status_code == 201
    assert httpx.post(srv.stream_url("fork"), headers=TEXT, content=b"fork-own;").status_code in OK_APPEND
    assert httpx.post(srv.stream_url("src"), headers=TEXT, content=b"after-fork;").status_code in OK_APPEND
    assert httpx.post(srv.stream_url("closing"), headers={**TEXT, "stream-closed": "true"},
                      content=b"last words").status_code in OK_APPEND
    assert httpx.delete(srv.stream_url("gone")).status_code == 204
    # A source deleted while a fork reads it: soft-deleted, its data kept for the fork.
    assert httpx.put(srv.stream_url("src2"), headers=JSON, content=b'[{"m":1},{"m":2}]').status_code == 201
    assert httpx.put(srv.stream_url("fork2"), headers={**JSON, "stream-forked-from": f"{PREFIX}src2"}).status_code == 201
    assert httpx.delete(srv.stream_url("src2")).status_code == 204


def _take_backup(srv: Server, dest: Path) -> int:
    """GET /admin/backup; once its checkpoint is taken (the response has started),
    deletes ``doomed`` and only then reads the archive: its files must still be there."""
    with httpx.stream("GET", f"{srv.url}/admin/backup", timeout=60) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"] == "application/x-tar"
        position = int(resp.headers["backup-position"])
        assert httpx.delete(srv.stream_url("doomed")).status_code == 204
        with open(dest, "wb") as out:
            for chunk in resp.iter_raw():
                out.write(chunk)
    return position


def test_backup_under_write_load_restores_every_acknowledged_append(tmp_path: Path) -> None:
    # Small backup reads: files cross many read boundaries, headers gather between them.
    srv = Server(tmp_path / "data", ["--append-bytes-max", str(4 * 1024 * 1024)],
                 env={"TRIO_STREAMS_BACKUP_READ_CHUNK_BYTES": "65536"})
    srv.data_dir.mkdir()
    ledger, stop = Ledger(), threading.Event()
    try:
        srv.start()
        doomed = _setup(srv)
        writers = [_writer(srv, ledger, stop, step) for step in (
            _byte_step(srv, ledger, "bytes-0"), _byte_step(srv, ledger, "bytes-1"), _json_step(srv, ledger, "json-0"),
            _producer_step(srv, ledger, "prod-0"), _pair_step(srv, ledger))]
        for w in writers:
            w.start()
        _changes_under_load(srv)
        before = ledger.counts()  # acknowledged before the backup request is sent
        position = _take_backup(srv, tmp_path / "backup.tar")
        stop.set()
        for w in writers:
            w.join(30)
        assert sum(before.values()) > 0
    finally:
        stop.set()
        srv.kill_quietly()

    restored = tmp_path / "restored"
    done = cli("restore", str(tmp_path / "backup.tar"), str(restored))
    assert done.returncode == 0, done.stderr
    assert f"log position {position}" in done.stdout and "verify: OK" in done.stdout
    again = cli("restore", str(tmp_path / "backup.tar"), str(restored))
    assert again.returncode == 2 and "not an empty directory" in again.stderr

    back = Server(restored)
    try:
        back.start()
        with httpx.Client(timeout=30) as client:
            _check_restored(back, client, ledger, before, doomed)
    finally:
        back.kill_quietly()


def _check_restored(srv: Server, client: httpx.Client, ledger: Ledger, before: dict[str, int], doomed: bytes) -> None:
    restored_counts = {}
    for stream in ("bytes-0", "bytes-1", "prod-0", "pair-a", "pair-b"):
        k = _prefix_length(_read_bytes(client, srv.stream_url(stream)), ledger.acked.get(stream, []))
        assert k >= before.get(stream, 0), f"{stream}: {k} appends restored, {before.get(stream)} acknowledged before"
        restored_counts[stream] = k
    messages = _read_messages(client, srv.stream_url("json-0"))
    acked_json = [json.loads(p) for p in ledger.acked.get("json-0", [])]
    assert messages == acked_json[:len(messages)] and len(messages) >= before.get("json-0", 0)
    # One point in the log for every stream: pair-b trails pair-a by at most one append.
    assert restored_counts["pair-a"] - restored_counts["pair-b"] in (0, 1), restored_counts
    _check_producer(srv, client, restored_counts["prod-0"])
    assert _read_bytes(client, srv.stream_url("fork")) == b"source-data;fork-own;"
    assert _read_bytes(client, srv.stream_url("src")) == b"source-data;after-fork;"
    closing = client.head(srv.stream_url("closing"))
    assert closing.headers.get("stream-closed") == "true"
    assert _read_bytes(client, srv.stream_url("closing")) == b"last words"
    assert client.post(srv.stream_url("closing"), headers=TEXT, content=b"more").status_code == 409
    assert client.get(srv.stream_url("gone"), params={"offset": "-1"}).status_code == 404
    assert client.head(srv.stream_url("ttl")).headers.get("stream-ttl") == "3600"
    assert client.head(srv.stream_url("json-0")).headers["content-type"] == "application/json"
    assert client.head(srv.stream_url("bytes-0")).headers["content-type"] == "text/plain"
    assert client.get(srv.stream_url("src2"), params={"offset": "-1"}).status_code == 410
    assert _read_messages(client, srv.stream_url("fork2")) == [{"m": 1}, {"m": 2}]
    # Deleted after the checkpoint, while the backup was being read: in the backup whole.
    assert _read_bytes(client, srv.stream_url("doomed")) == doomed


def _check_producer(srv: Server, client: httpx.Client, restored: int) -> None:
    """The producer's state came back with its data: the last restored seq is a duplicate."""
    headers = {**TEXT, "producer-id": "backup-test", "producer-epoch": "0"}
    url = srv.stream_url("prod-0")
    assert restored > 0
    assert client.post(url, headers={**headers, "producer-seq": str(restored - 1)}, content=b"dup").status_code == 204
    assert client.post(url, headers={**headers, "producer-seq": str(restored + 1)}, content=b"gap").status_code == 409
    assert client.post(url, headers={**headers, "producer-seq": str(restored)}, content=b"next").status_code == 200


# -- offline backups and restore's refusals ------------------------------------------


@pytest.fixture(scope="module")
def stopped_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """A data directory a server wrote and stopped, with what its streams hold."""
    srv = Server(tmp_path_factory.mktemp("offline") / "data")
    srv.data_dir.mkdir()
    contents = {"a": b"alpha" * 1000, "b": os.urandom(200_000)}
    try:
        srv.start()
        for name, data in contents.items():
            assert httpx.put(srv.stream_url(name), headers={"content-type": "application/octet-stream"},
                             content=data[:1000]).status_code == 201
            assert httpx.post(srv.stream_url(name), headers={"content-type": "application/octet-stream"},
                              content=data[1000:]).status_code in OK_APPEND
        assert srv.stop() == 0
    finally:
        srv.kill_quietly()
    return srv.data_dir, contents


# The directory form is slow (make test-all): test_backup_command_online_to_a_directory_a_tar_and_standard_output
# backs up to a directory and restores from it, and the tar form here shows an offline backup serves.
@pytest.mark.parametrize("dest", ["b.tar", pytest.param("bdir", marks=pytest.mark.slow)])
def test_offline_backup_of_a_stopped_directory_restores_and_serves(tmp_path: Path, dest: str,
                                                                  stopped_dir: tuple[Path, dict[str, bytes]]) -> None:
    data, contents = stopped_dir
    done = cli("backup", "--data-dir", str(data), str(tmp_path / dest))
    assert done.returncode == 0, done.stderr
    restored = tmp_path / f"restored-{dest}"
    done = cli("restore", str(tmp_path / dest), str(restored))
    assert done.returncode == 0, done.stderr
    srv = Server(restored)
    try:
        srv.start()
        with httpx.Client(timeout=30) as client:
            for name, expected in contents.items():
                assert _read_bytes(client, srv.stream_url(name)) == expected
    finally:
        srv.kill_quietly()


def test_offline_backup_refuses_a_directory_in_use(fresh_server: Server, tmp_path: Path) -> None:
    done = cli("backup", "--data-dir", str(fresh_server.data_dir), str(tmp_path / "b.tar"))
    assert done.returncode == 2
    assert "--url" in done.stderr
    assert not (tmp_path / "b.tar").exists()


def test_offline_backup_refuses_what_is_not_a_data_directory(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    done = cli("backup", "--data-dir", str(tmp_path / "elsewhere"), str(tmp_path / "b.tar"))
    assert done.returncode == 2 and "not a trio-streams data directory" in done.stderr
    assert not (tmp_path / "elsewhere" / "LOCK").exists() and not (tmp_path / "b.tar").exists()


def test_backup_refuses_a_destination_that_exists(tmp_path: Path, stopped_dir: tuple[Path, dict[str, bytes]]) -> None:
    (tmp_path / "taken.tar").write_bytes(b"precious")
    done = cli("backup", "--data-dir", str(stopped_dir[0]), str(tmp_path / "taken.tar"))
    assert done.returncode == 2 and "not an empty directory" in done.stderr
    assert (tmp_path / "taken.tar").read_bytes() == b"precious"


@pytest.fixture(scope="module")
def archive_bytes(tmp_path_factory: pytest.TempPathFactory, stopped_dir: tuple[Path, dict[str, bytes]]) -> bytes:
    out = tmp_path_factory.mktemp("archive") / "b.tar"
    done = cli("backup", "--data-dir", str(stopped_dir[0]), str(out))
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


def _member_offset(archive: bytes, suffix: str) -> int:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(suffix) and m.size > 100)
        return member.offset_data


@pytest.mark.parametrize("damage", ["half", "manifest_cut", "no_manifest", "flipped_data_byte", "flipped_snapshot_byte"])
def test_restore_refuses_a_truncated_or_damaged_archive(tmp_path: Path, archive_bytes: bytes, damage: str) -> None:
    damaged = bytearray(archive_bytes)
    if damage == "half":
        damaged = damaged[: len(damaged) // 2]
    elif damage in ("manifest_cut", "no_manifest"):
        with tarfile.open(fileobj=io.BytesIO(archive_bytes)) as tar:
            manifest = next(m for m in tar.getmembers() if m.name == "MANIFEST.json")
        damaged = damaged[: manifest.offset_data + 10 if damage == "manifest_cut" else manifest.offset]
    else:
        at = _member_offset(archive_bytes, ".dat" if damage == "flipped_data_byte" else ".snap") + 50
        damaged[at] ^= 0x01
    path = tmp_path / "damaged.tar"
    path.write_bytes(bytes(damaged))
    target = tmp_path / "restored"
    done = cli("restore", str(path), str(target))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "refused" in done.stderr
    assert not target.exists()
    assert not any(p.name.startswith(".restored") for p in tmp_path.iterdir())  # the staging directory is gone


def test_restore_from_standard_input_and_into_an_empty_directory(tmp_path: Path, archive_bytes: bytes) -> None:
    target = tmp_path / "empty"
    target.mkdir()
    done = subprocess.run([str(EXE), "restore", "-", str(target)], input=archive_bytes, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert b"verify: OK" in done.stdout
    assert (target / "streams").is_dir() and not (target / "MANIFEST.json").exists()


def _crafted(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return out.getvalue()


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


@pytest.mark.parametrize("members, why", [
    ([(tarfile.TarInfo("../escaped.dat"), b"x")], "not a file a backup holds"),
    ([(tarfile.TarInfo("streams/../../escaped.dat"), b"x")], "not a file a backup holds"),
    ([(tarfile.TarInfo("/etc/escaped"), b"x")], "not a file a backup holds"),
    ([(_link("streams/0000000000000001.dat", "/etc/passwd"), b"")], "not a regular file"),
    ([(tarfile.TarInfo("streams/0000000000000001.dat"), b"a"), (tarfile.TarInfo("streams/0000000000000001.dat"), b"b")],
     "appears twice"),
    ([(tarfile.TarInfo("MANIFEST.json"), b'{"format": "something else"}')], "not a trio-streams backup"),
])
def test_restore_refuses_a_hostile_archive_and_writes_nothing_outside(tmp_path: Path, members: list, why: str) -> None:
    path = tmp_path / "hostile.tar"
    path.write_bytes(_crafted(members))
    done = cli("restore", str(path), str(tmp_path / "restored"))
    assert done.returncode == 1 and why in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.tar"]
    assert not (tmp_path.parent / "escaped.dat").exists()


def test_backup_command_online_to_a_directory_a_tar_and_standard_output(fresh_server: Server, tmp_path: Path) -> None:
    assert httpx.put(fresh_server.stream_url("x"), headers=TEXT, content=b"online via the command").status_code == 201
    (tmp_path / "as-dir").mkdir()  # an empty directory is a valid destination
    for dest in ("as-dir", "as.tar"):
        done = cli("backup", "--url", fresh_server.url, str(tmp_path / dest))
        assert done.returncode == 0, done.stderr
    piped = subprocess.run([str(EXE), "backup", "--url", fresh_server.url, "-"], capture_output=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    (tmp_path / "piped.tar").write_bytes(piped.stdout)
    assert (tmp_path / "as-dir" / "MANIFEST.json").is_file()
    for source in ("as-dir", "as.tar", "piped.tar"):
        restored = tmp_path / f"restored-{source}"
        done = cli("restore", str(tmp_path / source), str(restored))
        assert done.returncode == 0, done.stderr
        assert "online backup" in done.stdout
        assert (restored / "streams" / "0000000000000001.dat").read_bytes() == b"online via the command"


def test_backup_command_leaves_nothing_when_the_server_is_unreachable(tmp_path: Path) -> None:
    from conftest import free_port

    for dest in ("b.tar", "bdir"):
        done = cli("backup", "--url", f"http://127.0.0.1:{free_port()}", str(tmp_path / dest))
        assert done.returncode == 1 and "ConnectError" in done.stderr
    assert list(tmp_path.iterdir()) == []
