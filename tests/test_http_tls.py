"""HTTPS and HTTP/2: --certfile/--keyfile serve the same protocol over TLS."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import free_port

OPENSSL = shutil.which("openssl")


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    if OPENSSL is None:
        pytest.fail("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def test_https_with_http2(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "trio_streams", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"),
         "--certfile", str(cert), "--keyfile", str(key), "--log-level", "warning"],
    )
    base = f"https://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, verify=ssl.create_default_context(cafile=str(cert)), http2=True, timeout=10) as c:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline and server.poll() is None, "TLS server did not become ready"
                time.sleep(0.05)
            created = c.put("/v1/stream/tls", content=b"secure", headers={"content-type": "text/plain"})
            assert created.status_code == 201 and created.http_version == "HTTP/2"
            assert created.headers["location"] == f"{base}/v1/stream/tls"
            c.post("/v1/stream/tls", content=b" bytes", headers={"content-type": "text/plain"})
            read = c.get("/v1/stream/tls")
            assert (read.status_code, read.content, read.http_version) == (200, b"secure bytes", "HTTP/2")
    finally:
        server.terminate()
        assert server.wait(timeout=15) == 0
