"""Logs: the app's access log, the JSON format, start-up configuration, lifecycle lines,
and application logs under a plain ``hypercorn -k trio``."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import EXE, PREFIX, Server, deadline_poll, offset_of, serving, unique
from trio_streams import logsetup
from trio_streams.config import Settings
from trio_streams.http.access_log import logged_target, request_id
from trio_streams.storage import recovery

TOKEN = "s3cr3t-t0ken-value"


@pytest.fixture(scope="module")
def text_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(tmp_path_factory.mktemp("textlog"), ["--access-log"])


@pytest.fixture(scope="module")
def json_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(tmp_path_factory.mktemp("jsonlog"), ["--access-log", "--log-format", "json"])


def log_lines(srv: Server) -> list[str]:
    assert srv.log_path is not None
    return srv.log_path.read_text(errors="replace").splitlines()


def access_lines(srv: Server, request_id: str) -> list[str]:
    return [line for line in log_lines(srv) if "trio_streams.access" in line and request_id in line]


def wait_access_line(srv: Server, request_id: str) -> str:
    deadline_poll(lambda: access_lines(srv, request_id), what=f"the access line of {request_id}")
    lines = access_lines(srv, request_id)
    assert len(lines) == 1, lines
    return lines[0]


def test_one_access_line_per_request_with_query_and_redacted_token(text_srv: Server) -> None:
    url = text_srv.stream_url(unique())
    assert httpx.put(url, headers={"x-request-id": "put-1"}, timeout=5).status_code == 201
    resp = httpx.get(url, params={"offset": "-1", "access_token": TOKEN, "x": "1"},
                     headers={"x-request-id": "get-1", "authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert resp.status_code == 200 and resp.headers["x-request-id"] == "get-1"
    line = wait_access_line(text_srv, "get-1")
    assert f"GET {PREFIX}" in line and "?offset=-1&access_token=<redacted>&x=1 200 " in line
    assert "127.0.0.1:" in line and "ms id=get-1" in line
    assert " 201 0B " in wait_access_line(text_srv, "put-1")
    assert TOKEN not in "\n".join(log_lines(text_srv))
    # Hypercorn's own access lines (two per request, without the query) are gone.
    assert not [line for line in log_lines(text_srv) if "hypercorn.access" in line]


def test_request_ids_are_generated_unless_short_and_printable(text_srv: Server) -> None:
    url = f"{text_srv.url}/healthz"
    for bad in ("a" * 129, "has space", "tab\there", ""):
        got = httpx.get(url, headers={"x-request-id": bad}, timeout=5).headers["x-request-id"]
        assert got != bad and len(got) == 32 and all(c in "0123456789abcdef" for c in got)
    assert httpx.get(url, headers={"x-request-id": "a" * 128}, timeout=5).headers["x-request-id"] == "a" * 128
    first, second = (httpx.get(url, timeout=5).headers["x-request-id"] for _ in range(2))
    assert first != second


def test_errors_carry_the_request_id_and_are_logged(text_srv: Server) -> None:
    resp = httpx.get(text_srv.stream_url(unique()), headers={"x-request-id": "missing-1"}, timeout=5)
    assert resp.status_code == 404 and resp.headers["x-request-id"] == "missing-1"
    assert " 404 " in wait_access_line(text_srv, "missing-1")


def test_a_long_poll_logs_one_line_when_it_ends(text_srv: Server) -> None:
    url = text_srv.stream_url(unique())
    tail = offset_of(httpx.put(url, timeout=5))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        poll = pool.submit(httpx.get, url, params={"offset": tail, "live": "long-poll"},
                           headers={"x-request-id": "poll-1"}, timeout=10)
        text_srv.wait_subscribers(lambda n: n >= 1, what="the long-poll parked")
        assert access_lines(text_srv, "poll-1") == []  # nothing while it waits
        assert httpx.post(url, content=b"x", headers={"content-type": "application/octet-stream"}, timeout=5).status_code == 204
        assert poll.result(timeout=10).status_code == 200
    assert "live=long-poll 200 1B " in wait_access_line(text_srv, "poll-1")


def test_json_format_one_object_per_line(json_srv: Server) -> None:
    url = json_srv.stream_url(unique())
    httpx.put(url, headers={"x-request-id": "json-1"}, timeout=5)
    httpx.get(url, params={"offset": "-1", "access_token": TOKEN}, headers={"x-request-id": "json-2"}, timeout=5)
    deadline_poll(lambda: access_lines(json_srv, "json-2"), what="the access line")
    entries = [json.loads(line) for line in log_lines(json_srv)]  # every line parses
    for entry in entries:
        assert {"ts", "level", "logger", "msg"} <= entry.keys(), entry
    access = [e for e in entries if e["logger"] == "trio_streams.access" and e["request_id"] == "json-2"]
    assert len(access) == 1
    entry = access[0]
    assert entry["method"] == "GET" and entry["status"] == 200 and entry["bytes_out"] == 0
    assert entry["target"].endswith("?offset=-1&access_token=<redacted>")
    assert isinstance(entry["duration_ms"], float) and entry["remote"].startswith("127.0.0.1:")
    assert TOKEN not in json.dumps(entries)
    config = [e for e in entries if e["msg"].startswith("configuration:")]
    assert len(config) == 1 and set(config[0]["settings"]) == {f.name for f in dataclasses.fields(Settings)}
    assert any(e["msg"].startswith("ready:") for e in entries)


def test_shutdown_is_logged_from_begin_to_end(tmp_path: Path) -> None:
    for srv in serving(tmp_path, []):
        httpx.put(srv.stream_url("s"), content=b"x", headers={"content-type": "text/plain"}, timeout=5)
    text = "\n".join(log_lines(srv))
    for message in ("shutdown begun", "shutting down: stopping stream actors", "checkpoint written at log position",
                    "storage stopped", "shutdown complete"):
        assert message in text, message
    assert text.index("shutdown begun") < text.index("checkpoint written") < text.index("shutdown complete")


def test_plain_hypercorn_logs_the_application(tmp_path: Path) -> None:
    """No `trio-streams serve`: create_app() installs the handler, settings come from the environment."""
    srv = Server(tmp_path / "data")
    srv.data_dir.mkdir()
    srv.log_path = tmp_path / "hypercorn.log"
    env = {**os.environ, "TRIO_STREAMS_DATA_DIR": str(srv.data_dir), "TRIO_STREAMS_ACCESS_LOG": "1",
           "TRIO_STREAMS_LOG_FORMAT": "json"}
    with open(srv.log_path, "wb") as log:
        srv.proc = subprocess.Popen(
            [str(EXE.parent / "hypercorn"), "-k", "trio", "-b", f"127.0.0.1:{srv.port}", "trio_streams.http.app:create_app()"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        srv.wait_ready()
        httpx.get(f"{srv.url}/healthz/live", headers={"x-request-id": "plain-1"}, timeout=5)
        deadline_poll(lambda: access_lines(srv, "plain-1"), what="the access line")
        ours = [json.loads(line) for line in log_lines(srv) if line.startswith("{")]
        assert any(e["level"] == "INFO" and e["logger"] == "trio_streams" and e["msg"].startswith("ready:") for e in ours)
        assert any(e["msg"].startswith("recovered 0 streams") for e in ours)
        assert any(e.get("request_id") == "plain-1" and e["status"] == 200 for e in ours)
    finally:
        srv.kill_quietly()


# -- units ---------------------------------------------------------------------


def test_secrets_are_redacted_from_the_configuration() -> None:
    @dataclasses.dataclass(frozen=True)
    class Shape:
        auth_token: str = "tok"
        jwt_secret: str = "sec"
        signing_key: str = "key"
        db_password: str = "pw"
        tls_keyfile: str = "/etc/key.pem"  # a path, not the key
        auth_query_token: bool = True
        empty_token: str = ""
        port: int = 1

    shown = logsetup.effective_configuration(Shape())  # type: ignore[arg-type]
    assert shown == {"auth_token": "<redacted>", "jwt_secret": "<redacted>", "signing_key": "<redacted>",
                     "db_password": "<redacted>", "tls_keyfile": "/etc/key.pem", "auth_query_token": True,
                     "empty_token": "", "port": 1}


@pytest.mark.parametrize(("query", "logged"), [
    (b"access_token=abc", "access_token=<redacted>"),
    (b"offset=1&access%5Ftoken=abc&x", "offset=1&access%5Ftoken=<redacted>&x"),
    (b"access_tokens=abc&access_token", "access_tokens=abc&access_token"),
    (b"a=%0a\n", "a=%0a\\x0a"),
])
def test_logged_target(query: bytes, logged: str) -> None:
    assert logged_target({"raw_path": b"/v1/stream/a", "query_string": query}) == f"/v1/stream/a?{logged}"


def test_request_id_rules() -> None:
    scope = {"headers": [(b"x-request-id", b"abc-123")]}
    assert request_id(scope, 7) == b"abc-123"
    assert request_id(scope, 6) != b"abc-123"
    assert request_id({"headers": [(b"x-request-id", b"\xff")]}, 8) != b"\xff"


def test_recovery_logs_start_progress_and_end(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress is looked at every record and due every time (an injected knob): three lines for three records."""
    from trio_streams.storage.store import Store

    directory = tmp_path / "d"
    _write_records(directory, 3)
    monkeypatch.setattr(recovery._Progress, "RECORDS_PER_LOOK", 1)
    settings = Settings(data_dir=str(directory), recovery_progress_interval_s=1e-9)
    caplog.set_level(logging.INFO, "trio_streams.recovery")
    store = Store(directory / "streams", open_files_max=8, hot_tail_bytes_max=0, corrupt_ranges_logged_max=8)
    recovered = recovery.recover(directory, store, settings)
    recovered.wal.close()
    store.close_sync(sync=False)
    messages = [r.getMessage() for r in caplog.records if r.name == "trio_streams.recovery"]
    assert messages[0].startswith("recovery started in")
    assert [m for m in messages if m.startswith("recovery: ")] == [
        m for m in messages if "records replayed, at log position" in m]
    assert len([m for m in messages if "records replayed" in m]) == 3
    assert messages[-1].startswith("recovered 1 streams") and "3 events replayed" in messages[-1]


def _write_records(directory: Path, appends: int) -> None:
    """A data directory whose WAL holds a create and ``appends - 1`` appends past any checkpoint:
    a server killed before it could checkpoint."""
    import trio

    from trio_streams.protocol.headers import AppendRequest, CreateRequest, Expiry
    from trio_streams.service import Service

    async def main() -> None:
        service = Service(Settings(data_dir=str(directory), checkpoint_wal_bytes=1 << 40))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run)
            await service.ready.wait()
            assert service.registry is not None
            await service.registry.create("s", CreateRequest("text/plain", Expiry(), False, b"a"))
            for _ in range(appends - 1):
                await service.registry.append("s", AppendRequest("text/plain", b"b", None, None, False))
            assert service.log is not None
            service.log._final_flush = _no_checkpoint  # type: ignore[method-assign]
            service.stop()

    trio.run(main)


async def _no_checkpoint() -> None:
    """Leave the WAL to be replayed, as after a crash."""


@pytest.mark.parametrize(("env", "message"), [
    ({"TRIO_STREAMS_LOG_FORMAT": "xml"}, "log_format must be one of"),
    ({"TRIO_STREAMS_LOG_LEVEL": "loud"}, "log_level must be one of"),
    ({"TRIO_STREAMS_REQUEST_ID_BYTES_MAX": "0"}, "request_id_bytes_max must be at least 1"),
])
def test_invalid_observability_settings_refuse_to_start(tmp_path: Path, env: dict[str, str], message: str) -> None:
    result = subprocess.run([str(EXE), "serve", "--data-dir", str(tmp_path), "--port", "0"],
                            capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
