"""Many raw HTTP/1.1 readers in one thread (tests/test_edge.py, scripts/edge_fanout.py).

Thousands of long-polls from httpx would cost a task or a thread each; these
are plain keep-alive sockets: one request sent on each, then every answer read
with one selector, each stamped with the moment it was complete.
"""

from __future__ import annotations

import dataclasses
import selectors
import socket
import time

CONNECT_TIMEOUT_S = 30.0


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes
    done_at: float  # time.monotonic() when the last byte arrived


class Pollers:
    """``n`` keep-alive connections to 127.0.0.1:``port``."""

    def __init__(self, port: int, n: int) -> None:
        self.port = port
        self.socks: list[socket.socket] = []
        try:
            for _ in range(n):
                self.socks.append(socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT_S))
        except BaseException:
            self.close()
            raise

    def send(self, target: str) -> None:
        """``GET target`` on every connection."""
        request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode()
        for sock in self.socks:
            sock.sendall(request)

    def collect(self, timeout_s: float) -> list[Answer]:
        """One whole answer from every connection, in connection order."""
        partial = {sock: bytearray() for sock in self.socks}
        answers: dict[socket.socket, Answer] = {}
        end = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as selector:
            for sock in self.socks:
                selector.register(sock, selectors.EVENT_READ, sock)
            while len(answers) < len(self.socks):
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.socks) - len(answers)} of {len(self.socks)} readers "
                                         f"had no complete answer after {timeout_s} s")
                for key, _ in selector.select(left):
                    sock = key.data
                    data = sock.recv(65536)
                    if not data:
                        raise AssertionError(f"a connection closed mid-answer: {bytes(partial[sock][:200])!r}")
                    partial[sock] += data
                    answer = _parse(partial[sock])
                    if answer is not None:
                        answers[sock] = answer
                        selector.unregister(sock)
        return [answers[sock] for sock in self.socks]

    def close(self) -> None:
        for sock in self.socks:
            sock.close()

    def __enter__(self) -> Pollers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse(buffer: bytearray) -> Answer | None:
    """The answer ``buffer`` holds, or None while it is incomplete."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    lines = bytes(buffer[:head_end]).decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    rest = bytes(buffer[head_end + 4:])
    if status in (204, 304):
        body: bytes | None = b""
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunked(rest)
    else:
        length = int(headers.get("content-length", "0"))
        body = rest[:length] if len(rest) >= length else None
    return None if body is None else Answer(status, headers, body, time.monotonic())


def _dechunked(data: bytes) -> bytes | None:
    out, at = bytearray(), 0
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(data[at:line_end].split(b";")[0], 16)
        if size == 0:
            return bytes(out) if data.find(b"\r\n\r\n", line_end) >= 0 else None  # after any trailers
        start = line_end + 2
        if len(data) < start + size + 2:
            return None
        out += data[start:start + size]
        at = start + size + 2
