"""Machinery shared by the HTTP fuzz suite and the stateful model test.

* Run profiles: how many examples, which seed (environment variables, so
  `make test` stays bounded and `make test-all` runs long).
* A raw HTTP/1.1 connection with a hard deadline, for what an HTTP client
  library would refuse or normalise: pipelining, half-closes, truncated
  bodies, smuggling framings, header floods.
* The invariants every response and every example must keep: no 5xx, no
  hang, JSON error bodies, the process stays up, and data acknowledged
  before the fuzzing still reads back byte-exact.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
from hypothesis import HealthCheck, seed, settings

from conftest import PREFIX, READY_TIMEOUT_S, RawResponse, Server, unique

HANG_TIMEOUT_S = 5.0  # the "never hangs" invariant: any single exchange longer than this fails
EXAMPLES_ENV = "TRIO_STREAMS_FUZZ_EXAMPLES"
SEED_ENV = "TRIO_STREAMS_FUZZ_SEED"
MODEL_EXAMPLES_ENV = "TRIO_STREAMS_MODEL_EXAMPLES"
MODEL_STEPS_ENV = "TRIO_STREAMS_MODEL_STEPS"
# The bounded `make test` profile: each suite ≤ ~25 s on 2 cores (make test-all sets the long one).
FUZZ_EXAMPLES_DEFAULT = 700
MODEL_EXAMPLES_DEFAULT = 12
MODEL_STEPS_DEFAULT = 30
APP_MARKER = "x-content-type-options"  # every response the application writes carries it


# -- profiles ----------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def run_seed() -> int | None:
    """The seed of this run: TRIO_STREAMS_FUZZ_SEED, else None (derandomized) for the
    bounded default run, else a fresh random one for long runs (printed on failure)."""
    raw = os.environ.get(SEED_ENV, "").strip()
    if raw:
        return int(raw)
    if os.environ.get(EXAMPLES_ENV) or os.environ.get(MODEL_EXAMPLES_ENV):
        return random.SystemRandom().randrange(2**32)
    return None


SEED = run_seed()


def reproduce_hint() -> str:
    if SEED is None:
        return "derandomized run: rerun the same command to reproduce"
    return f"reproduce with {SEED_ENV}={SEED} (and the same {EXAMPLES_ENV}/{MODEL_EXAMPLES_ENV})"


def fuzz_examples(share: float) -> int:
    """This test's share of the run's total fuzz examples (700 by default)."""
    return max(1, round(_env_int(EXAMPLES_ENV, FUZZ_EXAMPLES_DEFAULT) * share))


def model_runs() -> tuple[int, int]:
    """(examples, steps per example) of the stateful model test."""
    return _env_int(MODEL_EXAMPLES_ENV, MODEL_EXAMPLES_DEFAULT), _env_int(MODEL_STEPS_ENV, MODEL_STEPS_DEFAULT)


def profile(max_examples: int, **extra: object) -> Callable:
    """Hypothesis settings plus the run's seed: deterministic unless a long run asks otherwise.

    No example database: a rerun must do exactly what the printed seed says.
    """
    chosen = settings(
        max_examples=max_examples, deadline=None, derandomize=SEED is None, database=None,
        print_blob=True, suppress_health_check=list(HealthCheck), **extra,  # type: ignore[arg-type]
    )

    def apply(test: Callable) -> Callable:
        test = chosen(test)
        return seed(SEED)(test) if SEED is not None else test

    return apply


# -- raw connections -----------------------------------------------------------


class Hang(AssertionError):
    """The server neither answered nor closed within HANG_TIMEOUT_S."""


class RawConnection:
    """One TCP connection with a deadline over its whole life, and an incremental
    response parser that handles several responses on one connection."""

    def __init__(self, port: int, timeout: float = HANG_TIMEOUT_S) -> None:
        self.deadline = time.monotonic() + timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.eof = False

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """Sends; False when the server already closed or reset the connection."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def half_close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def abort(self) -> None:
        """Closes with a TCP reset (SO_LINGER 0) instead of an orderly FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def _fill(self) -> bool:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise Hang(f"no answer within {HANG_TIMEOUT_S}s; received so far {self.buf[:200]!r}")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise Hang(f"no answer within {HANG_TIMEOUT_S}s; received so far {self.buf[:200]!r}") from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def _take_until(self, marker: bytes) -> bytes | None:
        while marker not in self.buf:
            if not self._fill():
                return None
        head, _, self.buf = self.buf.partition(marker)
        return head

    def _take(self, size: int) -> bytes | None:
        while len(self.buf) < size:
            if not self._fill():
                return None
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def read_response(self, head_request: bool = False, first_bytes_only: bool = False) -> RawResponse | None:
        """The next final response (1xx skipped), or None at a clean EOF."""
        while True:
            head = self._take_until(b"\r\n\r\n")
            if head is None:
                if self.buf:
                    raise AssertionError(f"connection closed inside a response head: {self.buf[:200]!r}")
                return None
            status, headers = _parse_head(head)
            if status >= 200:
                break
        # An error the HTTP parser answers for a request it could not read whole
        # (a truncated or malformed head) has a body even when that request was
        # a HEAD: the server never learnt the method. The application itself
        # sends no Content-Length on HEAD responses, so that header tells them apart.
        parser_error = status >= 400 and "content-length" in headers
        if (head_request and not parser_error) or status in (204, 304) or first_bytes_only:
            return RawResponse(status, headers, b"")
        return RawResponse(status, headers, self._read_body(headers))

    def _read_body(self, headers: httpx.Headers) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return self._read_chunked()
        if "content-length" in headers:
            body = self._take(int(headers["content-length"]))
            if body is None:
                raise AssertionError("connection closed inside a response body")
            return body
        while self._fill():  # close-delimited
            pass
        body, self.buf = self.buf, b""
        return body

    def _read_chunked(self) -> bytes:
        out = b""
        while True:
            line = self._take_until(b"\r\n")
            if line is None:
                raise AssertionError("connection closed inside a chunked response")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                self._take_until(b"\r\n")  # trailers end with an empty line
                return out
            data = self._take(size + 2)
            if data is None:
                raise AssertionError("connection closed inside a chunk")
            out += data[:size]

    def read_until_eof(self) -> bytes:
        """Everything left until the server closes (within the deadline)."""
        while self._fill():
            pass
        rest, self.buf = self.buf, b""
        return rest


def _parse_head(head: bytes) -> tuple[int, httpx.Headers]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise AssertionError(f"not an HTTP response: {lines[0]!r}")
    headers = httpx.Headers([tuple(p.strip() for p in line.split(":", 1)) for line in lines[1:] if ":" in line])
    return int(parts[1]), headers


def request_bytes(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"",
                  version: bytes = b"HTTP/1.1") -> bytes:
    lines = [method + b" " + target + b" " + version, *(k + b": " + v for k, v in headers)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"


# -- invariants ------------------------------------------------------------------


def is_reserved_path(path: str) -> bool:
    """Subscription paths (PROTOCOL.md 6), which answer 501 until they are implemented."""
    return "__ds" in path


def check_response(status: int, headers: httpx.Headers, body: bytes, *, method: str, path: str, context: str) -> None:
    """Never a 5xx (501 under __ds); every 4xx the application writes is JSON {"error": {...}}."""
    where = f"{method} {path[:120]!r} -> {status} {body[:300]!r} [{context}]"
    if status >= 500:
        assert status == 501 and is_reserved_path(path), f"5xx: {where}"
        return
    if status < 400:
        return
    if APP_MARKER not in headers:
        # Refused by Hypercorn's parser before the application saw it: an empty 4xx.
        assert body == b"", f"parser-level error with a body: {where}"
        return
    if method == "HEAD" or not body:
        assert method == "HEAD", f"error without a body: {where}"
        return
    assert_error_shape(body, where)


def assert_error_shape(body: bytes, where: str) -> None:
    try:
        doc = json.loads(body)
    except ValueError:
        raise AssertionError(f"error body is not JSON: {where}") from None
    err = doc.get("error") if isinstance(doc, dict) else None
    assert isinstance(err, dict), f"error body lacks an 'error' object: {where}"
    assert isinstance(err.get("code"), str) and err["code"], f"error without a code: {where}"
    assert isinstance(err.get("message"), str), f"error without a message: {where}"


@dataclass
class Sentinel:
    """A stream written and acknowledged before fuzzing, and what reading it must give."""

    name: str
    content_type: str
    body: bytes  # the concatenated catch-up read bodies (a JSON array per read for JSON)
    head: dict[str, str]


SENTINEL_HEADERS = ("content-type", "stream-next-offset", "stream-closed", "stream-ttl", "stream-expires-at")


def read_stream(client: httpx.Client, name: str) -> bytes:
    """Every catch-up response body from -1 to the tail, concatenated."""
    out, offset = b"", "-1"
    for _ in range(10_000):
        resp = client.get(PREFIX + name, params={"offset": offset})
        assert resp.status_code == 200, f"sentinel {name}: {resp.status_code} {resp.text[:200]}"
        out += resp.content
        offset = resp.headers["stream-next-offset"]
        if resp.headers.get("stream-up-to-date") == "true":
            return out
    raise AssertionError(f"sentinel {name} never reached its tail")


def head_of(client: httpx.Client, name: str) -> dict[str, str]:
    resp = client.head(PREFIX + name)
    assert resp.status_code == 200, f"sentinel {name}: HEAD {resp.status_code}"
    return {k: resp.headers[k] for k in SENTINEL_HEADERS if k in resp.headers}


def _acked(resp: httpx.Response) -> httpx.Response:
    assert resp.status_code in (200, 201, 204), f"sentinel setup: {resp.status_code} {resp.text[:200]}"
    return resp


SENTINEL_JSON_MESSAGES = [
    {"k": "v", "n": 1},
    "unicode ☃ \u00e9 \U0001F600 \"quoted\" \\ back\nslash",
    [1, [2, [3, [4]]]],
    {"big": 123456789012345678901234567890, "neg": -98765432109876543210},  # exact (non-64-bit) integers
    None, True, 0, -1.5e300,
]


def write_sentinels(client: httpx.Client) -> list[Sentinel]:
    """Creates byte, text, JSON, closed and forked streams; returns what they must read back as."""
    token = unique("guard")
    names = {kind: f"{token}/{kind}" for kind in ("bytes", "json", "closed", "producer", "fork")}
    every_byte = bytes(range(256))
    _acked(client.put(PREFIX + names["bytes"], content=every_byte, headers={"content-type": "application/octet-stream"}))
    _acked(client.post(PREFIX + names["bytes"], content=iter([b"\x00chunk", b"ed\xff"]),
                       headers={"content-type": "application/octet-stream"}))
    _acked(client.put(PREFIX + names["json"], content=b"[]", headers={"content-type": "application/json"}))
    for message in SENTINEL_JSON_MESSAGES:
        _acked(client.post(PREFIX + names["json"], content=json.dumps([message]).encode(),
                           headers={"content-type": "application/json"}))
    _acked(client.put(PREFIX + names["closed"], content=b"final words", headers={
        "content-type": "text/plain; charset=utf-8", "stream-closed": "true", "stream-ttl": "86400"}))
    _acked(client.put(PREFIX + names["producer"], headers={"content-type": "text/plain",
                                                           "stream-expires-at": "2999-01-01T00:00:00Z"}))
    for seq in range(3):
        _acked(client.post(PREFIX + names["producer"], content=f"p{seq};".encode(), headers={
            "content-type": "text/plain", "producer-id": "guard", "producer-epoch": "0", "producer-seq": str(seq)}))
    _acked(client.put(PREFIX + names["fork"], headers={"stream-forked-from": PREFIX + names["bytes"]}))
    _acked(client.post(PREFIX + names["fork"], content=b"fork-own", headers={"content-type": "application/octet-stream"}))
    sentinels = [Sentinel(n, head_of(client, n)["content-type"], read_stream(client, n), head_of(client, n))
                 for n in names.values()]
    json_values = json.loads(sentinels[1].body)
    assert json_values == SENTINEL_JSON_MESSAGES, json_values
    assert sentinels[0].body == every_byte + b"\x00chunked\xff"
    return sentinels


def check_sentinels(client: httpx.Client, sentinels: list[Sentinel]) -> None:
    for s in sentinels:
        body = read_stream(client, s.name)
        assert body == s.body, f"sentinel {s.name} changed: {body[:200]!r} != {s.body[:200]!r}"
        assert head_of(client, s.name) == s.head, f"sentinel {s.name} metadata changed"


@dataclass
class Guard:
    """Checks the process-level invariants after every example and restarts a dead or
    wedged server, so that shrinking a failure runs against a live server."""

    server: Server
    client: httpx.Client
    sentinels: list[Sentinel] = field(default_factory=list)
    examples: int = 0
    check_every: int = 200
    standby: Server | None = None  # the next fresh server, already starting
    keepalive: bool = True  # whether ``client`` reuses connections
    probe: httpx.Client = field(init=False)  # health checks, each on a new connection

    def __post_init__(self) -> None:
        self.probe = new_client(self.server, keepalive=False)

    def healthy(self) -> str | None:
        """None when the process is up and /healthz answers 200 in time; else why not."""
        proc = self.server.proc
        if proc is None or proc.poll() is not None:
            return f"server process exited with status {proc.returncode if proc else None}"
        try:
            status = self.probe.get("/healthz").status_code
        except httpx.HTTPError as exc:
            return f"/healthz failed: {exc!r}"
        return None if status == 200 else f"/healthz answered {status}"

    @contextlib.contextmanager
    def example(self, what: str) -> Iterator[None]:
        """Wraps one example: whatever it raised, a dead, failed or wedged server is
        reported with its log and restarted before the next example runs."""
        try:
            yield
        except BaseException as exc:
            exc.add_note(reproduce_hint())
            problem = self.healthy()
            if problem is None:
                raise
            raise self._down(problem, what) from exc
        problem = self.healthy()
        if problem is not None:
            raise self._down(problem, what)
        self.examples += 1
        if self.examples % self.check_every == 0:
            check_sentinels(self.client, self.sentinels)

    def _down(self, problem: str, what: str) -> AssertionError:
        log = self.server.log_tail(60)
        try:
            self.revive()
        except AssertionError as exc:
            log += f"\n--- and then ---\n{exc}"
        return AssertionError(f"{problem} after {what}\n{reproduce_hint()}\n--- server log ---\n{log}")

    def revive(self) -> None:
        """Kills whatever is left and starts the server again on the same data.

        A server that cannot start on its own data is a finding in itself: it is
        reported, and the run goes on with a fresh data directory (and fresh
        sentinels) so that later examples and shrinking still mean something.
        """
        self.server.kill_quietly()
        try:
            self.start()
        except AssertionError as exc:
            self.fresh_server()
            if self.sentinels:
                self.sentinels = write_sentinels(self.client)
            raise AssertionError(f"the server cannot restart on its data directory:\n{exc}") from None
        self._reconnect()
        check_sentinels(self.client, self.sentinels)  # fsync=always: nothing acknowledged is lost

    def fresh_server(self) -> None:
        """Switches to a server on a new, empty data directory. The next one is
        spawned at once, so its start-up overlaps the work done on this one."""
        self.server.kill_quietly()
        if self.standby is None:
            self.standby = self._spawn()
        self.server, self.standby = self.standby, self._spawn()
        self._reconnect()
        self._wait_ready()

    def _spawn(self) -> Server:
        data = self.server.data_dir.with_name(f"data-{time.monotonic_ns()}")
        data.mkdir()
        return Server(data, self.server.extra_args).start(wait=False)

    def close(self) -> None:
        self.client.close()
        self.probe.close()
        for server in (self.server, self.standby):
            if server is not None:
                server.kill_quietly()

    def restart(self, sig: int) -> int:
        """Stops the server with ``sig``, starts it on the same data; its exit status."""
        status = self.server.stop(sig)
        self.start()
        return status

    def start(self) -> None:
        """Starts the server and waits for /healthz 200 (conftest's wait builds a client per poll)."""
        self.server.start(wait=False)
        self._reconnect()
        self._wait_ready()

    def _wait_ready(self) -> None:
        end = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < end:
            problem = self.healthy()
            if problem is None:
                return
            if self.server.proc is not None and self.server.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"server not ready: {problem}\n{self.server.log_tail()}")

    def _reconnect(self) -> None:
        self.client.close()  # its pooled connections died with the old process
        self.client = new_client(self.server, keepalive=self.keepalive)
        self.probe.close()
        self.probe = new_client(self.server, keepalive=False)


def new_client(server: Server, *, keepalive: bool = True) -> httpx.Client:
    """A client for ``server``. Without keep-alive every request opens its own connection,
    so a connection the server closed after one example cannot fail the next one."""
    limits = httpx.Limits() if keepalive else httpx.Limits(max_keepalive_connections=0)
    # Plain HTTP only: skipping certificate loading makes a client ~0.2 s cheaper to build.
    return httpx.Client(base_url=server.url, timeout=HANG_TIMEOUT_S, verify=False, limits=limits)
