"""A local webhook receiver for tests: records every request, answers what the test says.

Runs ``http.server`` in a thread on a loopback address (HTTP, or HTTPS with a
throw-away CA from ``make_tls``), so it serves both in-process trio tests and
tests of ``trio-streams serve`` processes (with ``webhook_dev_mode`` on).

    with WebhookReceiver(reply=Reply(body=b'{"done": true}')) as receiver:
        ... subscribe with receiver.url() ...
        [request] = receiver.wait_for_requests(1)
        assert verify_signature(request.body, request.headers["webhook-signature"], jwks)

``verify_signature`` is the official suite's ``verifyWebhookSignature``
(tests/conformance/node_modules/@durable-streams/server-conformance-tests)
in Python: the same header pattern, kid lookup, ±300 s window and Ed25519
check over ``<t>.<raw body>``; the JWK is turned into a key by PyJWT, as a
receiver would.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import http.server
import ipaddress
import json
import re
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID
from jwt.algorithms import OKPAlgorithm

SIGNATURE = re.compile(r"t=(\d+),kid=([^,]+),ed25519=([A-Za-z0-9_-]+)")
REPLAY_WINDOW_S = 300
# A held reply gives up after this, so a test that forgets release() cannot hang a thread forever.
HOLD_LIMIT_S = 60.0
FILLER_CHUNK = b"x" * 65536


@dataclasses.dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclasses.dataclass
class Reply:
    """What the receiver answers. ``hold``: wait for ``release()`` first. ``stream_bytes``: after the
    head, send this much filler (``-1``: without end) instead of ``body``, without Content-Length."""

    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = dataclasses.field(default_factory=lambda: {"content-type": "application/json"})
    hold: bool = False
    stream_bytes: int = 0


class WebhookReceiver:
    def __init__(self, host: str = "127.0.0.1", *, reply: Reply | None = None,
                 tls: tuple[Path, Path] | None = None) -> None:
        self.reply = reply or Reply()
        self.received: list[Received] = []
        self.server_names: list[str | None] = []  # TLS SNI of each handshake
        self.bytes_sent = 0
        self.send_failed = threading.Event()
        self._changed = threading.Condition()
        self._released = threading.Event()
        self._server = _Server((host, 0), _handler_for(self))
        self._server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            self._server.socket = _tls_context(tls, self.server_names).wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self.host = host
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="webhook-receiver",
                                        daemon=True)
        self._thread.start()

    def url(self, path: str = "/webhook", host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[Received]:
        """The first ``count`` requests, once they have arrived (AssertionError after ``timeout``)."""
        end = time.monotonic() + timeout
        with self._changed:
            while len(self.received) < count:
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.received)} webhook requests within {timeout}s, expected {count}")
                self._changed.wait(left)
            return self.received[:count]

    def release(self) -> None:
        """Lets held replies go."""
        self._released.set()

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _record(self, request: Received) -> None:
        with self._changed:
            self.received.append(request)
            self._changed.notify_all()


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 drops connections of a burst of deliveries (1 s SYN retry)


def _handler_for(receiver: WebhookReceiver) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # The head and the body are two writes: with Nagle on, the body waits for the
        # client's delayed ACK (40 ms) on every response.
        disable_nagle_algorithm = True

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            self._answer()

        def do_GET(self) -> None:  # noqa: N802
            self._answer()

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            receiver._record(Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            reply = receiver.reply
            if reply.hold:
                receiver._released.wait(HOLD_LIMIT_S)
            try:
                self._send(reply)
            except OSError:  # the deliverer hung up, as it should past its limits
                receiver.send_failed.set()
                self.close_connection = True

        def _send(self, reply: Reply) -> None:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.stream_bytes:
                self.send_header("connection", "close")
                self.end_headers()
                self._send_filler(reply.stream_bytes)
                self.close_connection = True
                return
            self.send_header("content-length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
            receiver.bytes_sent += len(reply.body)

        def _send_filler(self, total: int) -> None:
            while total < 0 or receiver.bytes_sent < total:
                self.wfile.write(FILLER_CHUNK)
                receiver.bytes_sent += len(FILLER_CHUNK)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
            pass

    return Handler


def _tls_context(files: tuple[Path, Path], server_names: list[str | None]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*files)
    context.sni_callback = lambda _sock, name, _ctx: server_names.append(name)  # type: ignore[assignment,misc]
    return context


def make_tls(directory: Path, names: list[str], ips: list[str] = ()) -> tuple[tuple[Path, Path], ssl.SSLContext]:  # type: ignore[assignment]
    """A throw-away CA and a server certificate for ``names``/``ips``: ((cert, key) files, a client context)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    alt = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (names or ips)[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / "receiver.pem", directory / "receiver.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode("ascii"))
    return (cert_path, key_path), client


def verify_signature(raw_body: bytes, header: str | None, jwks: dict[str, Any], now: float | None = None) -> bool:
    """The official suite's verifyWebhookSignature, as a Python receiver would write it."""
    if not header:
        return False
    match = SIGNATURE.fullmatch(header)
    if match is None:
        return False
    timestamp, kid, signature = match.groups()
    key = next((k for k in jwks["keys"] if k.get("kid") == kid), None)
    if key is None:
        return False
    if abs((time.time() if now is None else now) // 1 - int(timestamp)) > REPLAY_WINDOW_S:
        return False
    public = OKPAlgorithm.from_jwk(key)
    assert isinstance(public, Ed25519PublicKey)
    padded = signature + "=" * (-len(signature) % 4)
    try:
        public.verify(base64.urlsafe_b64decode(padded), timestamp.encode() + b"." + raw_body)
    except InvalidSignature:
        return False
    return True
