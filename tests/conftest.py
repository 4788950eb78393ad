"""Shared fixtures for the HTTP integration tests: real `trio-streams serve` processes.

Every server runs as a child process on a free 127.0.0.1 port with its own
temporary data directory. Fixtures always stop what they start (SIGTERM, then
SIGKILL by pid), also when a test fails or the run is interrupted.

Helpers here are plain functions so test modules can import them:
``from conftest import ...`` works because pytest puts this directory on
sys.path (rootdir-relative, no __init__.py).
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXE = ROOT / ".venv" / "bin" / "trio-streams"
PREFIX = "/v1/stream/"
LONG_POLL_TIMEOUT_MS = 500
APPEND_BYTES_MAX = 64 * 1024
READY_TIMEOUT_S = 20.0
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "cross-origin-resource-policy": None,  # any value (cross-origin / same-site / same-origin)
}

_LIVE: set[subprocess.Popen] = set()


def _kill_all_at_exit() -> None:
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


atexit.register(_kill_all_at_exit)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain_client(timeout: float) -> httpx.Client:
    """An httpx client for plain-HTTP test servers. Without certificate loading it costs
    ~1 ms of CPU to build instead of ~140 ms (at load average 13): `httpx.get` builds one per call, which
    made every 20 ms readiness poll compete with the starting server for the 2 cores."""
    return httpx.Client(verify=False, timeout=timeout)


def deadline_poll(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01, what: str = "condition") -> object:
    """Polls ``predicate`` until it returns something truthy; fails after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def parse_metrics(text: str) -> dict[str, float]:
    """The samples of a Prometheus text exposition, by series name (labels included)."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name.strip()] = float(value)
    return values


@dataclass
class Server:
    """One `trio-streams serve` process; restartable on the same data dir and port."""

    data_dir: Path
    extra_args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)  # added to ours: TRIO_STREAMS_* settings without a flag
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stream_url(self, name: str) -> str:
        return f"{self.url}{PREFIX}{name}"

    def command(self) -> list[str]:
        return [
            str(EXE), "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--data-dir", str(self.data_dir), "--long-poll-timeout-ms", str(LONG_POLL_TIMEOUT_MS),
            *self.extra_args,
        ]

    def start(self, *, wait: bool = True) -> Server:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.log_path = self.data_dir.parent / f"server-{self.port}-{time.monotonic_ns()}.log"
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=os.environ | self.env,
            )
        finally:
            log.close()
        _LIVE.add(self.proc)
        if wait:
            self.wait_ready()
        return self

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        end = time.monotonic() + timeout
        with plain_client(timeout=1.0) as probe:
            while time.monotonic() < end:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited with {self.proc.returncode} before ready:\n{self.log_tail()}")
                try:
                    if probe.get(f"{self.url}/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.02)
        raise AssertionError(f"server not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Sends ``sig`` to the server and returns its exit status (killing it if it lingers)."""
        proc = self.proc
        assert proc is not None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                raise AssertionError(f"server did not exit within {timeout}s of signal {sig}:\n{self.log_tail()}")
        _LIVE.discard(proc)
        return proc.returncode

    def restart(self, sig: int = signal.SIGTERM) -> int:
        """Stops with ``sig`` and starts again on the same directory and port; returns the exit status."""
        status = self.stop(sig)
        self.start()
        return status

    def kill_quietly(self) -> None:
        proc = self.proc
        if proc is not None:
            kill_process_group(proc)
            _LIVE.discard(proc)

    # -- observation ---------------------------------------------------

    def metrics(self) -> dict[str, float]:
        with plain_client(timeout=5.0) as c:
            return parse_metrics(c.get(f"{self.url}/metrics").text)

    def subscribers(self) -> int:
        return int(self.metrics().get("trio_streams_subscribers", 0))

    def wait_subscribers(self, predicate: Callable[[int], bool], timeout: float = 5.0, what: str = "") -> int:
        seen: list[int] = []

        def check() -> bool:
            n = self.subscribers()
            seen.append(n)
            return predicate(n)

        try:
            deadline_poll(check, timeout, what=what or "subscriber count")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last subscriber counts {seen[-5:]}") from None
        return seen[-1]


def _make_server(tmp_root: Path, name: str, extra: list[str], env: dict[str, str] | None = None) -> Server:
    data = tmp_root / name
    data.mkdir(parents=True)
    return Server(data, extra, env=env or {})


def serving(tmp_root: Path, extra: list[str], env: dict[str, str] | None = None) -> Iterator[Server]:
    """Runs a server for a fixture's lifetime: stopped cleanly, and killed whatever happens."""
    srv = _make_server(tmp_root, "data", extra, env)
    try:
        srv.start()
        yield srv
        srv.stop()
    finally:
        srv.kill_quietly()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shared server: 500 ms long-poll timeout, 64 KiB append limit, default 1 MiB read chunks."""
    yield from serving(tmp_path_factory.mktemp("srv"), ["--append-bytes-max", str(APPEND_BYTES_MAX)])


@pytest.fixture(scope="session")
def chunk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose reads return at most 16 bytes per response (or one whole JSON message)."""
    yield from serving(tmp_path_factory.mktemp("chunk"), ["--read-chunk-bytes-max", "16"])


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    """A private server for one test (restarts, signals); always killed afterwards."""
    srv = _make_server(tmp_path, "data", ["--append-bytes-max", str(APPEND_BYTES_MAX)])
    try:
        srv.start()
        yield srv
    finally:
        srv.kill_quietly()


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[httpx.Client]:
    """A client for the shared server (one per session: building an httpx.Client is slow)."""
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        yield c


def kill_process_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL for a process started with ``start_new_session`` and everything it started.

    A plain ``hypercorn`` runs the app in a child process of its own, which
    outlives a killed parent (holding its port and data directory) unless the
    whole group goes.
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already
    if proc.poll() is None:
        proc.wait(5)


def unique(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def name() -> str:
    """A fresh stream name (not yet created)."""
    return unique()


# -- assertions --------------------------------------------------------------


def assert_security_headers(resp: httpx.Response | "RawResponse") -> None:
    headers = resp.headers
    for header, value in SECURITY_HEADERS.items():
        assert header in headers, f"missing {header} on {resp.status_code}: {dict(headers)}"
        if value is not None:
            assert headers[header].lower() == value, (header, headers[header])
    assert headers["cross-origin-resource-policy"] in ("cross-origin", "same-site", "same-origin")


def assert_error(resp: httpx.Response | "RawResponse", status: int, code: str | None = None) -> dict:
    """A clear error: the status, a JSON body {"error": {"code", "message"}}, security headers."""
    body = resp.content if isinstance(resp, httpx.Response) else resp.body
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {body[:300]!r}"
    assert_security_headers(resp)
    ctype = resp.headers.get("content-type", "")
    assert ctype.split(";")[0].strip() == "application/json", f"error content-type {ctype!r}"
    doc = json.loads(body)
    assert isinstance(doc, dict) and isinstance(doc.get("error"), dict), doc
    err = doc["error"]
    assert isinstance(err.get("code"), str) and err["code"], doc
    assert isinstance(err.get("message"), str) and err["message"], doc
    if code is not None:
        assert err["code"] == code, f"expected code {code}, got {err['code']}: {err['message']}"
    return err


# -- raw HTTP/1.1 (for paths and framings httpx would normalise) --------------


@dataclass
class RawResponse:
    status_code: int
    headers: httpx.Headers
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def _read_response(sock: socket.socket, head_request: bool) -> RawResponse:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a full response head: {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = httpx.Headers([tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]])
    if head_request or status in (204, 304) or 100 <= status < 200:
        return RawResponse(status, headers, b"")
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return RawResponse(status, headers, rest[:length])
    while True:  # chunked or close-delimited: read to EOF (we always send Connection: close)
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    if headers.get("transfer-encoding", "").lower() == "chunked":
        rest = _dechunk(rest)
    return RawResponse(status, headers, rest)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return out


def raw_request(
    server: Server,
    method: str,
    target: str | bytes,
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
    *,
    raw_body: bytes | None = None,
    timeout: float = 10.0,
) -> RawResponse:
    """Sends exactly ``method target`` (no normalisation) and reads the whole response.

    ``body`` gets a Content-Length; ``raw_body`` is written verbatim after the
    head (e.g. a hand-made chunked body with its own Transfer-Encoding header).
    """
    if isinstance(target, str):
        target = target.encode("latin-1")
    lines = [method.encode() + b" " + target + b" HTTP/1.1", f"Host: 127.0.0.1:{server.port}".encode(), b"Connection: close"]
    for k, v in headers or []:
        lines.append(f"{k}: {v}".encode("utf-8"))
    if body is not None:
        lines.append(f"Content-Length: {len(body)}".encode())
    data = b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"") + (raw_body or b"")
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        return _read_response(sock, head_request=method == "HEAD")


# -- SSE ---------------------------------------------------------------------


@dataclass
class SseEvent:
    event: str
    data_lines: list[str]
    id: str | None = None  # the event's own ``id:`` line, if it had one

    @property
    def data(self) -> str:
        return "\n".join(self.data_lines)

    def json(self) -> object:
        return json.loads(self.data)

    def b64(self) -> bytes:
        return base64.b64decode("".join(self.data_lines), validate=True)


class SseReader:
    """Incremental SSE parser over an httpx streaming response (per the WHATWG rules we need)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._chunks = response.iter_bytes()
        self._buf = b""
        self.eof = False

    def _line(self) -> bytes | None:
        while True:
            m = re.search(rb"\r\n|\r|\n", self._buf)
            if m is not None and not (m.group() == b"\r" and m.end() == len(self._buf) and not self.eof):
                line, self._buf = self._buf[: m.start()], self._buf[m.end():]
                return line
            if self.eof:
                return None
            try:
                self._buf += next(self._chunks)
            except StopIteration:
                self.eof = True

    def next_event(self) -> SseEvent | None:
        """The next dispatched event, or None at end of stream."""
        event, data, seen, event_id = "message", [], False, None
        while True:
            raw = self._line()
            if raw is None:
                return None
            line = raw.decode("utf-8")  # must be valid UTF-8 on its own
            if line == "":
                if seen:
                    return SseEvent(event, data, event_id)
                continue
            if line.startswith(":"):
                continue
            fieldname, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if fieldname == "event":
                event, seen = value, True
            elif fieldname == "data":
                data.append(value)
                seen = True
            elif fieldname == "id":
                event_id = value

    def until(self, predicate: Callable[[SseEvent], bool]) -> list[SseEvent]:
        """Events up to and including the first one matching ``predicate``."""
        events = []
        while True:
            ev = self.next_event()
            if ev is None:
                raise AssertionError(f"SSE stream ended before the expected event; got {events}")
            events.append(ev)
            if predicate(ev):
                return events

    def rest(self) -> list[SseEvent]:
        """Every remaining event up to the end of the stream (which must come)."""
        events = []
        while (ev := self.next_event()) is not None:
            events.append(ev)
        return events


def is_control(ev: SseEvent) -> bool:
    return ev.event == "control"


def assert_pairs(events: list[SseEvent]) -> None:
    """Every data event is immediately followed by a control event."""
    for i, ev in enumerate(events):
        assert ev.event in ("data", "control"), ev
        if ev.event == "data":
            assert i + 1 < len(events) and events[i + 1].event == "control", [e.event for e in events]


def offset_of(resp: httpx.Response | RawResponse) -> str:
    value = resp.headers.get("stream-next-offset")
    assert value, f"no Stream-Next-Offset on {resp.status_code}"
    return value


def read_all(client: httpx.Client, url: str, offset: str = "-1", limit: int = 10_000) -> tuple[list[httpx.Response], str]:
    """Catch-up reads from ``offset`` until Stream-Up-To-Date; returns the responses and final offset."""
    responses = []
    for _ in range(limit):
        resp = client.get(url, params={"offset": offset})
        assert resp.status_code == 200, resp.text
        responses.append(resp)
        offset = offset_of(resp)
        if resp.headers.get("stream-up-to-date") == "true":
            return responses, offset
    raise AssertionError("never reached Stream-Up-To-Date")



# -- in-process app (tests/inproc.py): the ASGI App driven without sockets ----


def inproc_settings_for(tmp_path: Path, **overrides: object) -> "Settings":
    """Settings like the shared server's (500 ms long-poll, 64 KiB append limit) on a fresh data dir."""
    from trio_streams.config import Settings

    data = tmp_path / f"inproc-{uuid.uuid4().hex[:8]}"
    data.mkdir()
    defaults: dict[str, object] = {"append_bytes_max": APPEND_BYTES_MAX, "long_poll_timeout_ms": LONG_POLL_TIMEOUT_MS}
    return Settings(data_dir=str(data), **(defaults | overrides))  # type: ignore[arg-type]


@pytest.fixture
def inproc_settings() -> dict[str, object]:
    """Settings overrides for the ``inproc`` fixture: override this fixture in a module or class."""
    return {}


@pytest.fixture
async def inproc(tmp_path: Path, inproc_settings: dict[str, object]):  # type: ignore[no-untyped-def]
    """A running in-process app on a fresh data dir (under ``autojump_clock`` if the test asks for it)."""
    from inproc import running_app

    async with running_app(inproc_settings_for(tmp_path, **inproc_settings)) as srv:
        yield srv
