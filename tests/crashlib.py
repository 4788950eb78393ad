"""Crash-test harness: kill -9 a real server mid-load and check what survived.

Used by tests/test_crash.py and scripts/crash_test.py. Three parts:

* ``ServerProcess`` runs ``python -m trio_streams serve`` on a free port with
  a fixed data directory, waits for ``GET /healthz`` to answer 200, and can
  SIGKILL, SIGTERM and restart it on the same directory.
* The workload: several streams (``application/octet-stream`` and
  ``application/json``), each with a few writer threads that append
  distinctive records — every byte is a function of (writer id, counter), so
  any byte read back can be checked — some of them as idempotent producers.
  Each writer keeps every acknowledged append with the ``Stream-Next-Offset``
  it got, and the one append it had in flight when the server died.
* The checker, after a restart: the previously verified content is
  unchanged; every acknowledged append is present byte-exact at its
  acknowledged position; everything else present is a whole append that was
  in flight at the kill (each at most once, in each writer's order); no
  garbage, no partial appends. Then writing continues: in-flight producer
  appends are retried and must be applied exactly once (200 if they were
  lost, 204 if they had been committed), new appends are acknowledged at the
  right offsets, a producer can move to a new epoch and the old epoch is
  fenced, and a full re-read matches the model exactly.

Offsets are ``<epoch>_<position>`` tokens; for byte streams the position is
the byte offset (the checker relies on that), for JSON streams they are
treated as opaque but ordered, and positions are checked by reading at them.

The only sleep that stands in for nothing is the randomized load duration
before the kill; every other wait polls for a condition with a deadline.
"""

from __future__ import annotations

import collections
import atexit
import concurrent.futures
import dataclasses
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
STREAM_PREFIX = "/v1/stream/"
BYTES_CT = "application/octet-stream"
JSON_CT = "application/json"
HTTP_TIMEOUT_S = 30.0
# JSON offsets are checked by reading at them (each read returns the rest of
# the stream), so per stream and round at most this many, sampled, plus the last.
JSON_POSITION_CHECKS_MAX = 60
STARTUP_TIMEOUT_S = 60.0
_OFFSET = re.compile(r"\A([0-9]{16})_([0-9]{16})\Z")


def plain_client(base_url: str, timeout: float) -> httpx.Client:
    """A client for the plain-HTTP server under test. Skipping certificate loading
    makes it ~1 ms of CPU to build instead of ~140 ms, and the checks build many
    (one per writer thread and per position-check batch)."""
    return httpx.Client(base_url=base_url, timeout=timeout, verify=False)


class CrashTestError(AssertionError):
    """The harness itself could not proceed (server would not start, ...)."""


def parse_offset(token: str) -> int:
    match = _OFFSET.match(token or "")
    if match is None:
        raise CrashTestError(f"malformed Stream-Next-Offset {token!r}")
    return int(match.group(2))


def format_offset(position: int) -> str:
    return f"{0:016d}_{position:016d}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------ server


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    fsync: str = "always"
    # Extra TRIO_STREAMS_* settings, e.g. {"WAL_SEGMENT_BYTES_MAX": "262144"}.
    env: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        extra = " ".join(f"{k.lower()}={v}" for k, v in self.env)
        return f"fsync={self.fsync}" + (f" {extra}" if extra else "")


_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_live_servers() -> None:
    """Never leave a server behind, even if the run is interrupted."""
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class ServerProcess:
    """One data directory, served by a succession of server processes."""

    def __init__(self, data_dir: Path, log_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.log_dir = Path(log_dir)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.log_path: Path | None = None
        self.config: ServerConfig | None = None
        self.starts = 0

    @property
    def base_url(self) -> str:
        assert self.port is not None
        return f"http://127.0.0.1:{self.port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, config: ServerConfig = ServerConfig()) -> float:
        """Start on the data dir and wait for /healthz 200; returns seconds taken."""
        assert not self.running(), "server already running"
        started = time.monotonic()
        for _attempt in range(5):
            self.starts += 1
            self.port = free_port()
            self.log_path = self.log_dir / f"server-{self.starts:02d}-{config.fsync}.log"
            env = dict(os.environ)
            env.update({f"TRIO_STREAMS_{k}": v for k, v in config.env})
            cmd = [
                sys.executable, "-m", "trio_streams", "serve",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(self.data_dir),
                "--long-poll-timeout-ms", "500",
                "--fsync", config.fsync,
            ]
            with open(self.log_path, "wb") as log_file:
                self.proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
            _LIVE.add(self.proc)
            self.config = config
            if self._wait_healthy(started + STARTUP_TIMEOUT_S):
                return time.monotonic() - started
            if "address already in use" not in self.log_text().lower():
                raise CrashTestError(f"server exited with {self.proc.returncode} during startup:\n{self.log_tail()}")
        raise CrashTestError("could not find a free port to start the server on")

    def _wait_healthy(self, deadline: float) -> bool:
        assert self.proc is not None
        with plain_client(base_url=self.base_url, timeout=2.0) as client:
            while True:
                if self.proc.poll() is not None:
                    return False
                try:
                    if client.get("/healthz").status_code == 200:
                        return True
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise CrashTestError(f"server not healthy within {STARTUP_TIMEOUT_S}s:\n{self.log_tail()}")
                time.sleep(0.02)  # polling interval, not a synchronization stand-in

    def kill(self) -> None:
        """SIGKILL and reap, so the data directory's lock is released."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
            _LIVE.discard(self.proc)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful: drain, flush, checkpoint); returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise CrashTestError(f"server did not exit within {timeout}s of SIGTERM") from None
        _LIVE.discard(self.proc)
        return self.proc.returncode

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


# ------------------------------------------------------------------ records


_TEXT_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 é中😀\n\t\"\\/\u2028\x01{}[],:"
_RECORD_HEADER = re.compile(rb"<([a-z0-9.]{1,32})#([0-9]{1,9})#([0-9]{1,9})>")


def record_bytes(wid: str, n: int) -> bytes:
    """Append number n of byte-stream writer wid: self-delimiting, every byte checkable."""
    rng = random.Random(f"bytes/{wid}/{n}")
    size = rng.randint(64 * 1024, 192 * 1024) if rng.random() < 0.02 else rng.randint(0, 2048)
    return f"<{wid}#{n}#{size}>".encode() + rng.randbytes(size) + b"$"


def json_messages(wid: str, n: int) -> list[dict[str, Any]]:
    """The messages of append number n of JSON-stream writer wid (1 to 3)."""
    rng = random.Random(f"json/{wid}/{n}")
    count = rng.choice((1, 1, 2, 3))
    messages = []
    for i in range(count):
        length = rng.randint(4000, 20000) if rng.random() < 0.02 else rng.randint(0, 200)
        pad = "".join(rng.choice(_TEXT_ALPHABET) for _ in range(length))
        messages.append({"w": wid, "n": n, "i": i, "k": count, "pad": pad, "x": [rng.random(), None, True]})
    return messages


def json_body(wid: str, n: int) -> bytes:
    messages = json_messages(wid, n)
    # A lone message goes either bare or as a one-element array (both mean one message).
    bare = len(messages) == 1 and n % 2 == 0
    return json.dumps(messages[0] if bare else messages, ensure_ascii=False).encode()


def parse_records(data: bytes) -> tuple[list[tuple[str, int, int, int]], int | None]:
    """Split a byte stream into (wid, n, start, end) records; second value is
    the position of the first byte that is not a whole, correct record."""
    records = []
    position = 0
    while position < len(data):
        match = _RECORD_HEADER.match(data, position)
        if match is None:
            return records, position
        wid, n = match.group(1).decode(), int(match.group(2))
        expected = record_bytes(wid, n)
        end = position + len(expected)
        if data[position:end] != expected:
            return records, position
        records.append((wid, n, position, end))
        position = end
    return records, None


def parse_groups(messages: list[Any]) -> tuple[list[tuple[str, int, int]], int | None]:
    """Split JSON messages into whole appends (wid, n, first index); second value
    is the index of the first message that does not start a whole, correct append."""
    groups = []
    index = 0
    while index < len(messages):
        first = messages[index]
        if not (isinstance(first, dict) and isinstance(first.get("w"), str) and isinstance(first.get("n"), int)
                and re.fullmatch(r"[a-z0-9.]{1,32}", first["w"]) and first["n"] >= 0):
            return groups, index
        expected = json_messages(first["w"], first["n"])
        if messages[index : index + len(expected)] != expected:
            return groups, index
        groups.append((first["w"], first["n"], index))
        index += len(expected)
    return groups, None


# ------------------------------------------------------------------ workload


@dataclasses.dataclass
class Attempt:
    wid: str
    n: int
    producer: tuple[str, int, int] | None  # (id, epoch, seq)
    status: int | None = None
    end: int | None = None  # acknowledged Stream-Next-Offset position


class Writer:
    """Appends one record at a time to one stream; remembers what was acknowledged."""

    def __init__(self, stream: StreamModel, wid: str, producer_id: str | None) -> None:
        self.stream = stream
        self.wid = wid
        self.producer_id = producer_id
        self.next_n = 0
        self.epoch = 0
        self.next_seq = 0
        # This round's acknowledged appends, and the one that was in flight at the kill.
        self.acked: list[Attempt] = []
        self.inflight: Attempt | None = None
        self.errors: list[str] = []

    def body(self, n: int) -> bytes:
        return record_bytes(self.wid, n) if self.stream.kind == "bytes" else json_body(self.wid, n)

    def new_attempt(self) -> Attempt:
        producer = None
        if self.producer_id is not None:
            producer = (self.producer_id, self.epoch, self.next_seq)
            self.next_seq += 1
        attempt = Attempt(self.wid, self.next_n, producer)
        self.next_n += 1
        return attempt

    def post(self, client: httpx.Client, attempt: Attempt) -> httpx.Response:
        headers = {"content-type": self.stream.content_type}
        if attempt.producer is not None:
            pid, epoch, seq = attempt.producer
            headers.update({"producer-id": pid, "producer-epoch": str(epoch), "producer-seq": str(seq)})
        return client.post(self.stream.url, content=self.body(attempt.n), headers=headers)

    @property
    def accept_status(self) -> int:
        return 200 if self.producer_id is not None else 204

    def run_load(self, base_url: str, stop: threading.Event, killing: threading.Event, progress: Progress) -> None:
        """Append until the server goes away (or ``stop``); never raises.

        A transport error before ``killing`` is set is an error (a hang or a
        dropped connection), not the expected end of the load."""
        try:
            with plain_client(base_url=base_url, timeout=HTTP_TIMEOUT_S) as client:
                while not stop.is_set():
                    attempt = self.new_attempt()
                    self.inflight = attempt
                    try:
                        response = self.post(client, attempt)
                    except httpx.TransportError as exc:
                        if not killing.is_set():
                            self.errors.append(f"{self.wid}#{attempt.n}: {exc!r} before the kill")
                        return  # the server died: ``attempt`` stays in flight
                    attempt.status = response.status_code
                    if response.status_code != self.accept_status:
                        self.inflight = None
                        self.errors.append(f"{self.wid}#{attempt.n}: status {response.status_code} "
                                           f"{response.text[:200]!r}")
                        return
                    try:
                        attempt.end = parse_offset(response.headers.get("stream-next-offset", ""))
                    except CrashTestError as exc:
                        self.errors.append(f"{self.wid}#{attempt.n}: {exc}")
                        return
                    self.acked.append(attempt)
                    self.inflight = None
                    progress.acked(self)
        except Exception as exc:  # noqa: BLE001 - reported and asserted on by the round
            self.errors.append(f"{self.wid}: writer crashed: {exc!r}")


class Progress:
    """Lets the round wait until every writer has been acknowledged at least once."""

    def __init__(self, writers: int) -> None:
        self._waiting = writers
        self._seen: set[int] = set()
        self._cond = threading.Condition()

    def acked(self, writer: Writer) -> None:
        with self._cond:
            if id(writer) not in self._seen:
                self._seen.add(id(writer))
                self._waiting -= 1
                self._cond.notify_all()

    def wait_all(self, timeout: float, give_up: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._waiting > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or give_up():
                    return False
                self._cond.wait(min(remaining, 0.1))
            return True


@dataclasses.dataclass
class Entry:
    """One verified append in a stream, in stream order."""

    wid: str
    n: int
    end: int | None  # end position, when known (always for byte streams)
    first: int = 0  # JSON streams: index of its first message in the stream


class StreamModel:
    """What a stream must contain: verified content plus this round's attempts."""

    def __init__(self, name: str, kind: str, writer_roles: Sequence[bool]) -> None:
        self.name = name
        self.kind = kind
        self.content_type = BYTES_CT if kind == "bytes" else JSON_CT
        self.url = STREAM_PREFIX + name
        self.writers = [
            Writer(self, f"{name}.w{i}", f"{name}.p{i}" if producer else None)
            for i, producer in enumerate(writer_roles)
        ]
        self.data = b""  # byte streams: verified content
        self.messages: list[Any] = []  # JSON streams: verified messages
        self.entries: list[Entry] = []
        self.tail = 0

    def append_verified(self, writer: Writer, attempt: Attempt, end: int) -> None:
        first = 0
        if self.kind == "bytes":
            self.data += record_bytes(writer.wid, attempt.n)
        else:
            first = len(self.messages)
            self.messages.extend(json_messages(writer.wid, attempt.n))
        self.entries.append(Entry(writer.wid, attempt.n, end, first))
        self.tail = end


def make_streams(streams: int = 8, writers_per_stream: int = 3) -> list[StreamModel]:
    """Half byte streams, half JSON; the last writer of each stream is an idempotent producer."""
    models = []
    for s in range(streams):
        kind = "bytes" if s % 2 == 0 else "json"
        roles = [i == writers_per_stream - 1 for i in range(writers_per_stream)]
        models.append(StreamModel(f"crash{s}{'b' if kind == 'bytes' else 'j'}", kind, roles))
    return models


# ------------------------------------------------------------------ reading


def read_all(client: httpx.Client, model: StreamModel) -> tuple[bytes | list[Any], int]:
    """The whole stream (bytes, or the list of JSON messages) and its tail position."""
    offset = "-1"
    chunks: list[bytes] = []
    messages: list[Any] = []
    for _ in range(100_000):
        response = client.get(model.url, params={"offset": offset})
        if response.status_code != 200:
            raise CrashTestError(f"GET {model.url}?offset={offset}: {response.status_code} {response.text[:200]!r}")
        if model.kind == "bytes":
            chunks.append(response.content)
        else:
            page = response.json()
            if not isinstance(page, list):
                raise CrashTestError(f"GET {model.url}: JSON read is not an array: {response.text[:200]!r}")
            messages.extend(page)
        next_offset = response.headers.get("stream-next-offset", "")
        parse_offset(next_offset)
        if response.headers.get("stream-up-to-date") == "true":
            tail = parse_offset(next_offset)
            return (b"".join(chunks) if model.kind == "bytes" else messages), tail
        if next_offset == offset:
            raise CrashTestError(f"GET {model.url}?offset={offset}: no progress and not up to date")
        offset = next_offset
    raise CrashTestError(f"GET {model.url}: never up to date")


def _page_at(client: httpx.Client, model: StreamModel, position: int) -> tuple[list[Any], int, bool]:
    """(messages, Stream-Next-Offset position, up-to-date) of one read at position."""
    response = client.get(model.url, params={"offset": format_offset(position)})
    if response.status_code != 200:
        raise CrashTestError(f"GET {model.url} at {position}: {response.status_code} {response.text[:200]!r}")
    page = response.json()
    if not isinstance(page, list):
        raise CrashTestError(f"GET {model.url} at {position}: not a JSON array: {response.text[:200]!r}")
    return page, parse_offset(response.headers.get("stream-next-offset", "")), \
        response.headers.get("stream-up-to-date") == "true"


def check_json_positions(base_url: str, model: StreamModel, indices: Sequence[int], tail: int) -> list[str]:
    """For each entry index with a known end offset: a read there returns exactly
    the verified messages that follow that append (nothing, at the tail)."""
    entries = model.entries
    problems: list[str] = []
    jobs = [i for i in indices if entries[i].end is not None]

    def check(batch: list[int]) -> list[str]:
        found = []
        with plain_client(base_url=base_url, timeout=HTTP_TIMEOUT_S) as client:
            for i in batch:
                end = entries[i].end
                assert end is not None
                page, next_pos, up_to_date = _page_at(client, model, end)
                start = entries[i + 1].first if i + 1 < len(entries) else len(model.messages)
                want = model.messages[start : start + max(1, len(page))]
                label = f"{model.name}: read at acknowledged offset {end} of {entries[i].wid}#{entries[i].n}"
                if page != want:
                    got = [(m.get("w"), m.get("n"), m.get("i")) if isinstance(m, dict) else m for m in page[:3]]
                    exp = [(m["w"], m["n"], m["i"]) for m in want[:3]]
                    found.append(f"{label} returned {len(page)} messages starting {got}, expected {exp}")
                elif up_to_date and next_pos != tail:
                    found.append(f"{label} is up to date at {next_pos}, but the tail is {tail}")
                elif not up_to_date and start + len(page) >= len(model.messages):
                    found.append(f"{label} read to the end but is not up to date")
        return found

    batches = [jobs[k::8] for k in range(8) if jobs[k::8]]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(batches))) as pool:
        for found in pool.map(check, batches):
            problems.extend(found)
    return problems


# ------------------------------------------------------------------ checking


@dataclasses.dataclass
class StreamCheck:
    acked_checked: int = 0
    lost: int = 0
    inflight: int = 0
    inflight_committed: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)


def check_after_crash(client: httpx.Client, base_url: str, model: StreamModel, rng: random.Random) -> StreamCheck:
    """Verify one stream after a restart; on success the model absorbs the new content."""
    result = StreamCheck()
    content, tail = read_all(client, model)
    p = result.problems
    name = model.name

    head = client.head(model.url)
    if head.status_code != 200 or parse_offset(head.headers.get("stream-next-offset", "")) != tail:
        p.append(f"{name}: HEAD says {head.status_code} {head.headers.get('stream-next-offset')}, read tail {tail}")

    # Split into whole appends; anything else is garbage or a partial append.
    found: list[tuple[str, int, int | None, int]]  # (wid, n, end position if known, first message index)
    if model.kind == "bytes":
        assert isinstance(content, bytes)
        data = content
        if tail != len(data):
            p.append(f"{name}: tail offset {tail} but {len(data)} bytes read")
        if data[: len(model.data)] != model.data:
            at = next((i for i, (a, b) in enumerate(zip(data, model.data)) if a != b), min(len(data), len(model.data)))
            p.append(f"{name}: previously verified bytes changed (first difference at byte {at}, "
                     f"{len(data)} bytes now, {len(model.data)} before)")
        records, bad_at = parse_records(data)
        if bad_at is not None:
            p.append(f"{name}: bytes {bad_at}..{len(data)} are not whole appends "
                     f"(tail of stream: {data[bad_at:bad_at + 60]!r}...)")
        found = [(wid, n, end, 0) for wid, n, _start, end in records]
    else:
        assert isinstance(content, list)
        messages = content
        if messages[: len(model.messages)] != model.messages:
            p.append(f"{name}: previously verified messages changed ({len(messages)} now, {len(model.messages)} before)")
        groups, bad_at = parse_groups(messages)
        if bad_at is not None:
            p.append(f"{name}: messages {bad_at}..{len(messages)} are not whole appends: {messages[bad_at]!r:.200}")
        found = [(wid, n, None, first) for wid, n, first in groups]

    old = model.entries
    if [(e.wid, e.n) for e in old] != [(wid, n) for wid, n, _, _ in found[: len(old)]]:
        p.append(f"{name}: the sequence of previously verified appends changed")
    new = found[len(old):]

    new_by_writer: dict[str, list[int]] = collections.defaultdict(list)
    position_of: dict[tuple[str, int], int] = {}
    for index, (wid, n, _end, _first) in enumerate(new):
        new_by_writer[wid].append(n)
        if (wid, n) in position_of:
            p.append(f"{name}: append {wid}#{n} is present twice")
        position_of[(wid, n)] = len(old) + index

    ends: dict[tuple[str, int], int | None] = {(wid, n): end for wid, n, end, _ in new}
    for writer in model.writers:
        got = new_by_writer.pop(writer.wid, [])
        acked = [a.n for a in writer.acked]
        result.acked_checked += len(acked)
        lost_here = []
        for attempt in writer.acked:
            key = (writer.wid, attempt.n)
            if key not in ends:
                lost_here.append(f"{writer.wid}#{attempt.n} (acknowledged at {attempt.end}) is missing")
            elif model.kind == "bytes":
                assert isinstance(content, bytes) and attempt.end is not None
                expected = record_bytes(writer.wid, attempt.n)
                if ends[key] != attempt.end or content[attempt.end - len(expected) : attempt.end] != expected:
                    lost_here.append(f"{writer.wid}#{attempt.n} acknowledged at {attempt.end} is at {ends[key]}")
        result.lost += len(lost_here)
        p.extend(f"{name}: LOST {line}" for line in lost_here)
        allowed = [acked]
        if writer.inflight is not None:
            result.inflight += 1
            allowed.append(acked + [writer.inflight.n])
        if got not in allowed:
            p.append(f"{name}: writer {writer.wid} has appends {got[:5]}..{got[-5:]} (n={len(got)}) present; "
                     f"acknowledged {acked[:5]}..{acked[-5:]} (n={len(acked)}), in flight "
                     f"{writer.inflight.n if writer.inflight else None}")
        elif writer.inflight is not None and got == allowed[-1]:
            result.inflight_committed += 1
    for wid, ns in new_by_writer.items():
        p.append(f"{name}: appends from unknown writer {wid!r}: {ns[:5]}")

    if p:
        return result

    # Absorb: known ends for acknowledged appends (bytes: all of them).
    acked_ends = {(w.wid, a.n): a.end for w in model.writers for a in w.acked}
    new_entries = [Entry(wid, n, end if end is not None else acked_ends.get((wid, n)), first)
                   for wid, n, end, first in new]
    model.entries = old + new_entries
    if model.kind == "bytes":
        model.data = content  # type: ignore[assignment]
    else:
        model.messages = content  # type: ignore[assignment]
        acked_indices = [i for i, e in enumerate(new_entries, start=len(old)) if (e.wid, e.n) in acked_ends]
        if len(acked_indices) > JSON_POSITION_CHECKS_MAX:
            acked_indices = sorted(rng.sample(acked_indices[:-1], JSON_POSITION_CHECKS_MAX - 1)) + acked_indices[-1:]
        position_problems = check_json_positions(base_url, model, acked_indices, tail)
        result.lost += len(position_problems)
        p.extend(f"LOST {line}" for line in position_problems)
        ends_in_order = [e.end for e in new_entries if e.end is not None]
        if ends_in_order != sorted(ends_in_order) or len(set(ends_in_order)) != len(ends_in_order):
            p.append(f"{name}: acknowledged offsets are not increasing in stream order")
    model.tail = tail
    return result


def continue_after_crash(client: httpx.Client, base_url: str, model: StreamModel, rng: random.Random) -> list[str]:
    """Retry in-flight producer appends, append more, bump a producer's epoch; verify exactly."""
    p: list[str] = []
    present = {(e.wid, e.n) for e in model.entries}
    first_new = len(model.entries)

    def post_expect(writer: Writer, attempt: Attempt, status: int, what: str) -> bool:
        response = writer.post(client, attempt)
        if response.status_code != status:
            p.append(f"{model.name}: {what} {writer.wid}#{attempt.n} producer={attempt.producer}: "
                     f"status {response.status_code} (expected {status}) {response.text[:200]!r}")
            return False
        if status >= 400:
            return True
        end = parse_offset(response.headers.get("stream-next-offset", ""))
        if status == 204 and writer.producer_id is not None:  # duplicate: nothing appended
            if end != model.tail:
                p.append(f"{model.name}: duplicate {writer.wid}#{attempt.n} answered offset {end}, tail is {model.tail}")
            return True
        if model.kind == "bytes" and end != model.tail + len(writer.body(attempt.n)):
            p.append(f"{model.name}: {what} {writer.wid}#{attempt.n} acknowledged at {end}, expected "
                     f"{model.tail + len(writer.body(attempt.n))}")
        if end <= model.tail:
            p.append(f"{model.name}: {what} {writer.wid}#{attempt.n} acknowledged at {end}, not past {model.tail}")
        model.append_verified(writer, attempt, end)
        return True

    for writer in model.writers:
        inflight, writer.inflight = writer.inflight, None
        writer.acked = []
        if inflight is not None and writer.producer_id is not None:
            # The retry must be applied exactly once: 204 if it was committed before the kill.
            committed = (writer.wid, inflight.n) in present
            post_expect(writer, inflight, 204 if committed else 200, "retried in-flight")
        for _ in range(2):
            post_expect(writer, writer.new_attempt(), writer.accept_status, "post-restart")

    producers = [w for w in model.writers if w.producer_id is not None]
    if producers:
        writer = rng.choice(producers)
        old_epoch = writer.epoch
        writer.epoch, writer.next_seq = old_epoch + 1, 0
        post_expect(writer, writer.new_attempt(), 200, "new-epoch")
        stale = Attempt(writer.wid, writer.next_n, (writer.producer_id, old_epoch, 10**6))  # type: ignore[arg-type]
        writer.next_n += 1
        post_expect(writer, stale, 403, "stale-epoch")  # never appended; the re-read checks that

    content, tail = read_all(client, model)
    if tail != model.tail:
        p.append(f"{model.name}: after post-restart appends the tail is {tail}, expected {model.tail}")
    if model.kind == "bytes" and content != model.data:
        p.append(f"{model.name}: after post-restart appends the content differs from the model "
                 f"({len(content)} bytes, expected {len(model.data)})")
    if model.kind == "json":
        if content != model.messages:
            p.append(f"{model.name}: after post-restart appends the messages differ from the model "
                     f"({len(content)} messages, expected {len(model.messages)})")
        else:
            p.extend(check_json_positions(base_url, model, range(first_new, len(model.entries)), tail))
    return p


# ------------------------------------------------------------------ rounds


@dataclasses.dataclass
class RoundResult:
    config: ServerConfig
    load_s: float
    acked_checked: int = 0
    lost: int = 0
    inflight_at_kill: int = 0
    inflight_committed: int = 0
    recovery_s: float = 0.0
    check_s: float = 0.0
    problems: list[str] = dataclasses.field(default_factory=list)

    def describe(self) -> str:
        return (f"{self.config.describe()}: load {self.load_s:.2f}s, {self.acked_checked} acknowledged appends "
                f"checked, {self.lost} lost, {self.inflight_at_kill} in flight at the kill "
                f"({self.inflight_committed} of them committed), restart {self.recovery_s:.2f}s, "
                f"checks {self.check_s:.2f}s")


@dataclasses.dataclass
class Summary:
    rounds: list[RoundResult] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def acked_checked(self) -> int:
        return sum(r.acked_checked for r in self.rounds)

    @property
    def lost(self) -> int:
        return sum(r.lost for r in self.rounds)

    def line(self) -> str:
        return f"crash test: {len(self.rounds)} rounds, {self.acked_checked} acknowledged appends checked, {self.lost} lost"


def _check_log(server: ServerProcess, problems: list[str]) -> None:
    text = server.log_text()
    if "Traceback" in text or " ERROR " in text or "[ERROR]" in text:
        problems.append(f"server log {server.log_path} has errors:\n{server.log_tail()}")


def run_load_and_kill(server: ServerProcess, models: list[StreamModel], load_s: float) -> tuple[int, list[str]]:
    """Run every writer until all have been acknowledged once plus ``load_s``, then SIGKILL."""
    writers = [w for m in models for w in m.writers]
    progress = Progress(len(writers))
    stop = threading.Event()
    killing = threading.Event()
    threads = [threading.Thread(target=w.run_load, args=(server.base_url, stop, killing, progress), daemon=True,
                                name=f"writer-{w.wid}") for w in writers]
    for t in threads:
        t.start()
    problems: list[str] = []
    try:
        if not progress.wait_all(60.0, give_up=lambda: not server.running() or any(w.errors for w in writers)):
            problems.append("not every writer got an acknowledgement before the kill")
        elif not server.running():
            problems.append(f"server died by itself under load:\n{server.log_tail()}")
        else:
            time.sleep(load_s)  # the randomized load duration: the kill lands mid-load
            if not server.running():
                problems.append(f"server died by itself under load:\n{server.log_tail()}")
    finally:
        inflight = sum(1 for w in writers if w.inflight is not None)
        killing.set()
        server.kill()
        stop.set()
        for t in threads:
            t.join(HTTP_TIMEOUT_S + 5)
    if any(t.is_alive() for t in threads):
        problems.append("writer threads did not finish after the kill")
    for w in writers:
        problems.extend(w.errors)
    return inflight, problems


def run_crash_test(
    work_dir: Path,
    configs: Sequence[ServerConfig],
    *,
    seed: int,
    streams: int = 8,
    writers_per_stream: int = 3,
    load_s: tuple[float, float] = (0.5, 2.0),
    out: Callable[[str], None] = print,
    after_kill: Callable[[Path], None] | None = None,
) -> Summary:
    """One data directory; per config one round: load, kill -9 mid-load, restart, check, continue.

    Round i loads under configs[i] and restarts under configs[i+1] (the last
    round restarts under its own config). Finally a graceful SIGTERM must
    exit 0 and a clean restart must show exactly the verified content.
    ``after_kill(data_dir)``, if given, runs between each kill and restart
    (the harness's self-test uses it to damage the WAL).
    """
    rng = random.Random(seed)
    work_dir = Path(work_dir)
    server = ServerProcess(work_dir / "data", work_dir)
    summary = Summary()
    models = make_streams(streams, writers_per_stream)
    out(f"crash test: seed {seed}, {len(configs)} rounds, {streams} streams x {writers_per_stream} writers, "
        f"work dir {work_dir}")
    try:
        server.start(configs[0])
        with plain_client(base_url=server.base_url, timeout=HTTP_TIMEOUT_S) as client:
            for model in models:
                response = client.put(model.url, headers={"content-type": model.content_type})
                if response.status_code != 201:
                    raise CrashTestError(f"PUT {model.url}: {response.status_code} {response.text[:200]!r}")
        for index, config in enumerate(configs):
            result = RoundResult(config, rng.uniform(*load_s))
            summary.rounds.append(result)
            result.inflight_at_kill, load_problems = run_load_and_kill(server, models, result.load_s)
            result.problems.extend(load_problems)
            _check_log(server, result.problems)
            if after_kill is not None:
                after_kill(server.data_dir)
            try:
                _restart_and_check(server, models, configs[min(index + 1, len(configs) - 1)], result, rng)
            except (CrashTestError, httpx.HTTPError) as exc:  # the server refused to restart or to answer
                result.problems.append(f"{exc!r}\nserver log {server.log_path}:\n{server.log_tail()}")
            out(f"  round {index + 1}: {result.describe()}")
            if result.problems:
                summary.problems.extend(result.problems)
                break
        else:
            try:
                _graceful_restart(server, models, configs[-1], summary.problems)
            except (CrashTestError, httpx.HTTPError) as exc:
                summary.problems.append(f"{exc!r}\nserver log {server.log_path}:\n{server.log_tail()}")
            if not summary.problems:
                out(f"  graceful stop and clean restart: content of {len(models)} streams unchanged")
    finally:
        server.kill()
    out(summary.line())
    for problem in summary.problems[:30]:
        out(f"  PROBLEM: {problem}")
    if len(summary.problems) > 30:
        out(f"  ... and {len(summary.problems) - 30} more problems")
    return summary


def _restart_and_check(server: ServerProcess, models: list[StreamModel], config: ServerConfig,
                       result: RoundResult, rng: random.Random) -> None:
    result.recovery_s = server.start(config)
    checks_started = time.monotonic()
    with plain_client(base_url=server.base_url, timeout=HTTP_TIMEOUT_S) as client:
        for model in models:
            check = check_after_crash(client, server.base_url, model, rng)
            result.acked_checked += check.acked_checked
            result.lost += check.lost
            result.inflight_committed += check.inflight_committed
            result.problems.extend(check.problems)
        if not result.problems:
            for model in models:
                result.problems.extend(continue_after_crash(client, server.base_url, model, rng))
    result.check_s = time.monotonic() - checks_started


def _graceful_restart(server: ServerProcess, models: list[StreamModel], config: ServerConfig,
                      problems: list[str]) -> None:
    code = server.terminate()
    if code != 0:
        problems.append(f"server exited with {code} after SIGTERM:\n{server.log_tail()}")
    _check_log(server, problems)
    server.start(config)
    with plain_client(base_url=server.base_url, timeout=HTTP_TIMEOUT_S) as client:
        for model in models:
            content, tail = read_all(client, model)
            expected = model.data if model.kind == "bytes" else model.messages
            if content != expected or tail != model.tail:
                problems.append(f"{model.name}: content changed across a graceful restart (tail {tail}, "
                                f"expected {model.tail})")
    code = server.terminate()
    if code != 0:
        problems.append(f"server exited with {code} after SIGTERM:\n{server.log_tail()}")
    _check_log(server, problems)
