"""Test harness for the client: an in-memory fake server for httpx.MockTransport, and the Node server.

Not a conftest (a second ``conftest`` module would shadow tests/conftest.py
for the modules that ``from conftest import ...``); test modules import
what they need from here.

``FakeServer`` speaks just enough of the protocol to drive the client
through realistic sessions (catch-up in small pieces, long-poll that waits
for appends, SSE sent byte by byte) and lets a test inject faults before
any request: a scripted response, or an exception such as a dropped
connection.

``NodeServer`` runs tests/conformance/reference_server.mjs (the pinned npm
@durable-streams/server): one process per test session, stopped at the end.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
NODE_SCRIPT = ROOT / "tests" / "conformance" / "reference_server.mjs"
LONG_POLL_TIMEOUT_MS = 500
BASE = "http://streams.test/v1/stream/"

Fault = Callable[[httpx.Request], "httpx.Response | BaseException | None"]


def offset_of(n: int) -> str:
    return f"{n:016d}"


def index_of(offset: str, tail: int) -> int:
    return 0 if offset == "-1" else tail if offset == "now" else int(offset)


@dataclass
class FakeServer:
    """One stream in memory. Records are messages (JSON streams) or single bytes (others); offsets are indexes."""

    content_type: str = "application/json"
    records: list[bytes] = field(default_factory=list)
    closed: bool = False
    read_limit: int = 1000  # records per catch-up answer
    long_poll_wait_s: float = 0.2
    sse_idle_s: float = 0.2  # an SSE connection without news ends after this (servers' periodic close)
    sse_byte_at_a_time: bool = True
    faults: deque = field(default_factory=deque)
    sse_breaks: deque = field(default_factory=deque)  # per SSE connection: True = break it halfway through a data event
    requests: list[httpx.Request] = field(default_factory=list)
    cursor: int = 100
    _appended: Any = None

    @property
    def is_json(self) -> bool:
        return self.content_type.startswith("application/json")

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))

    def add(self, *values: Any) -> None:
        for value in values:
            if self.is_json:
                self.records.append(json.dumps(value, separators=(",", ":")).encode())
            else:
                self.records.extend(bytes([b]) for b in value)
        if self._appended is not None:
            self._appended.set()

    def body(self, start: int, end: int) -> bytes:
        part = self.records[start:end]
        return b"[" + b",".join(part) + b"]" if self.is_json else b"".join(part)

    def reads(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "GET"]

    async def handle(self, request: httpx.Request) -> httpx.Response:
        await request.aread()  # streamed uploads arrive as an async iterator
        self.requests.append(request)
        if self.faults:
            fault = self.faults.popleft()
            result = fault(request) if callable(fault) else fault
            if isinstance(result, BaseException):
                raise result
            if result is not None:
                return result
        if request.method == "GET":
            return await self._get(request)
        if request.method == "POST":
            return self._post(request)
        if request.method == "HEAD":
            return httpx.Response(200, headers={"content-type": self.content_type, "stream-next-offset": offset_of(len(self.records))})
        return httpx.Response(405)

    def _position_headers(self, end: int, *, live: bool) -> dict[str, str]:
        headers = {"content-type": self.content_type, "stream-next-offset": offset_of(end)}
        if end >= len(self.records):
            headers["stream-up-to-date"] = "true"
            if self.closed:
                headers["stream-closed"] = "true"
        if live and not self.closed:
            self.cursor += 1
            headers["stream-cursor"] = str(self.cursor)
        return headers

    async def _get(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        start = index_of(params.get("offset", "-1"), len(self.records))
        live = params.get("live")
        if live == "sse":
            return self._sse(start)
        if live == "long-poll" and start >= len(self.records) and not self.closed:
            await self._wait_for_append(self.long_poll_wait_s)
            if start >= len(self.records):
                return httpx.Response(204, headers=self._position_headers(start, live=True))
        end = min(len(self.records), start + self.read_limit)
        return httpx.Response(200, headers=self._position_headers(end, live=live is not None), content=self.body(start, end))

    async def _wait_for_append(self, timeout_s: float) -> None:
        self._appended = anyio.Event()
        with anyio.move_on_after(timeout_s):
            await self._appended.wait()

    def _post(self, request: httpx.Request) -> httpx.Response:
        body = request.content
        if body:
            if self.is_json:
                value = json.loads(body)
                self.add(*(value if isinstance(value, list) else [value]))
            else:
                self.add(body)
        if request.headers.get("stream-closed") == "true":
            self.closed = True
        return httpx.Response(204, headers={"stream-next-offset": offset_of(len(self.records))})

    def _sse(self, start: int) -> httpx.Response:
        headers = {"content-type": "text/event-stream"}
        if not self.is_json and not self.content_type.startswith("text/"):
            headers["stream-sse-data-encoding"] = "base64"
        breaks = self.sse_breaks.popleft() if self.sse_breaks else False
        return httpx.Response(200, headers=headers, content=self._sse_body(start, breaks))

    async def _sse_body(self, start: int, breaks: bool) -> AsyncIterator[bytes]:
        while True:
            wire = self._sse_events(start)
            start = len(self.records)
            if breaks and wire.startswith(b"event: data"):
                wire = wire[: wire.index(b"event: control") // 2]
            for piece in ([wire[i:i + 1] for i in range(len(wire))] if self.sse_byte_at_a_time else [wire]):
                yield piece
            if breaks and not wire.endswith(b"\n\n"):
                raise httpx.ReadError("connection reset by fake server")
            if self.closed:
                return
            before = len(self.records)
            await self._wait_for_append(self.sse_idle_s)
            if len(self.records) == before:
                return

    def _sse_events(self, start: int) -> bytes:
        wire = b""
        end = len(self.records)
        if end > start:
            data = self.body(start, end)
            if self.is_json or self.content_type.startswith("text/"):
                wire += b"event: data\n" + b"".join(b"data:" + line + b"\n" for line in data.split(b"\n")) + b"\n"
            else:
                wire += b"event: data\ndata:" + base64.b64encode(data) + b"\n\n"
        control: dict[str, Any] = {"streamNextOffset": offset_of(end), "upToDate": True}
        if self.closed:
            control["streamClosed"] = True
        else:
            self.cursor += 1
            control["streamCursor"] = str(self.cursor)
        return wire + b"event: control\ndata:" + json.dumps(control).encode() + b"\n\n"


# -- the Node reference server ---------------------------------------------------


@dataclass
class NodeServer:
    """`node reference_server.mjs` on a free port (memory store)."""

    port: int
    proc: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stream_url(self, name: str) -> str:
        return f"{self.url}/v1/stream/{name}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


_NODE: dict[str, NodeServer] = {}


def shared_node_server(config: pytest.Config, tmp_root: Path) -> NodeServer:
    """The session's Node server, started on first use; a missing node binary fails the test, never skips it."""
    if "server" in _NODE and _NODE["server"].proc.poll() is None:
        return _NODE["server"]
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the Node reference server tests cannot run (install Node >= 20)")
    if not (ROOT / "tests" / "conformance" / "node_modules" / "@durable-streams" / "server").is_dir():
        pytest.fail("@durable-streams/server is not installed: run `make node-deps`")
    server = _start_node(node, tmp_root)
    _NODE["server"] = server
    config.add_cleanup(server.stop)
    return server


def _start_node(node: str, tmp_root: Path) -> NodeServer:
    port = _free_port()
    log_path = tmp_root / f"node-{port}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [node, str(NODE_SCRIPT), "--port", str(port), "--host", "127.0.0.1", "--long-poll-timeout-ms", str(LONG_POLL_TIMEOUT_MS)],
        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True,
    )
    log.close()
    ready = threading.Event()

    def watch() -> None:  # the ready line arrives on stdout; drain the rest so node never blocks
        assert proc.stdout is not None
        for line in proc.stdout:
            if b"reference server listening on" in line:
                ready.set()

    threading.Thread(target=watch, daemon=True).start()
    if not ready.wait(20):
        proc.kill()
        pytest.fail(f"the Node reference server did not start:\n{log_path.read_text(errors='replace')[-2000:]}")
    return NodeServer(port, proc, log_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


# -- fixtures: import them into a test module to use them ---------------------------


@dataclass
class Target:
    """A server under test: ``kind`` is "ours" or "node"; ``base`` is its stream URL prefix."""

    kind: str
    base: str

    def url(self, prefix: str = "c") -> str:
        return f"{self.base}{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def node_server(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> NodeServer:
    return shared_node_server(pytestconfig, tmp_path_factory.mktemp("node"))


@pytest.fixture(params=["ours", "node"])
def target(request: pytest.FixtureRequest) -> Target:
    """Each test twice: against our server (tests/conftest.py's shared ``server``) and the Node one."""
    if request.param == "ours":
        return Target("ours", request.getfixturevalue("server").stream_url(""))
    return Target("node", request.getfixturevalue("node_server").stream_url(""))
