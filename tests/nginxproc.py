"""A real nginx for tests and scripts (tests/test_deploy.py, tests/test_edge.py,
scripts/edge_fanout.py, scripts/conformance_edge.py).

Owns: the fixture that installs it (``install_nginx`` of scripts/sharded_nginx.py,
which runs scripts/install_nginx.sh; a test skips with the script's reason
where that cannot be done), a main nginx.conf in a temporary directory
around the deploy/nginx files as shipped (only paths and ports replaced), one
nginx process started and stopped, and for the scripts the origin behind it.
Never: what the configuration says (deploy/nginx) or what the tests expect of it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

sys.path.append(str(Path(__file__).resolve().parent.parent / "scripts"))  # after tests/: no shadowing
from serverproc import ManagedProcess, free_port  # noqa: E402
from sharded_nginx import NginxUnavailable, install_nginx  # noqa: E402,F401 - the scripts import it from here

ROOT = Path(__file__).resolve().parent.parent
NGINX_DIR = ROOT / "deploy" / "nginx"
SNIPPET = NGINX_DIR / "trio-streams.conf"
EDGE = NGINX_DIR / "edge.conf"
EDGE_SNIPPET = NGINX_DIR / "trio-streams-edge.conf"
START_TIMEOUT_S = 20.0
EXE = ROOT / ".venv" / "bin" / "trio-streams"
ORIGIN_READY_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def nginx_exe() -> str:
    try:
        return install_nginx()
    except NginxUnavailable as exc:
        pytest.skip(str(exc))


def main_config(root: Path, http_body: str, *, worker_connections: int = 256, nofile: int = 0,
                access_log: bool = False) -> Path:
    """nginx.conf in ``root``: one worker, its files under ``root``, ``http_body`` inside http {}."""
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (root / name).mkdir(parents=True, exist_ok=True)
    user = "user root;" if os.geteuid() == 0 else ""  # workers must reach the temp dirs under /tmp/pytest-of-root
    rlimit = f"worker_rlimit_nofile {nofile};" if nofile else ""
    log = f"access_log {root}/access.log;" if access_log else "access_log off;"
    conf = root / "nginx.conf"
    conf.write_text(f"""
{user}
daemon off;
worker_processes 1;
{rlimit}
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections {worker_connections}; }}
http {{
    {log}
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
{http_body}
}}
""")
    return conf


def edge_http(root: Path, upstream_port: int, listen_port: int, *, write_rate_per_s: int = 0,
              status_port: int = 0) -> str:
    """deploy/nginx/edge.conf for this machine: its cache under ``root``, the given ports,
    the snippet from this checkout; ``write_rate_per_s`` replaces the write rate when given;
    ``status_port`` adds a stub_status server there (how many requests nginx holds)."""
    text = EDGE.read_text()
    replacements = [
        ("/var/cache/nginx/trio-streams", str(root / "cache")),
        ("server 127.0.0.1:4437;", f"server 127.0.0.1:{upstream_port};"),
        ("listen 80;", f"listen 127.0.0.1:{listen_port};"),
        ("/etc/nginx/snippets/trio-streams-edge.conf", str(EDGE_SNIPPET)),
    ]
    for old, new in replacements:
        assert old in text, f"{EDGE.name} no longer holds {old!r}"
        text = text.replace(old, new)
    if write_rate_per_s:
        text, n = re.subn(r"rate=\d+r/s;", f"rate={write_rate_per_s}r/s;", text)
        assert n == 1
    if status_port:
        text += f"\nserver {{ listen 127.0.0.1:{status_port}; location / {{ stub_status; }} }}\n"
    return text


def requests_in_progress(status_port: int) -> int:
    """Client requests nginx is handling now (stub_status "Writing"; the status request is one)."""
    text = httpx.get(f"http://127.0.0.1:{status_port}/", timeout=5).text
    match = re.search(r"Writing: (\d+)", text)
    assert match, text
    return int(match.group(1)) - 1


def check_config(exe: str, conf: Path, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([exe, "-t", "-c", str(conf), "-p", str(root)], capture_output=True, text=True, timeout=60)


@contextmanager
def running(exe: str, conf: Path, root: Path, url: str, ready_path: str = "/healthz") -> Iterator[str]:
    """nginx on ``conf`` until the block ends; ready once ``url + ready_path`` answers 200 through it."""
    proc = ManagedProcess([exe, "-c", str(conf), "-p", str(root)], root / "nginx.out", cwd=root)
    proc.start()
    try:
        with httpx.Client(verify=False, timeout=2) as client:
            try:
                proc.wait_ready(lambda: _answers(client, url + ready_path), START_TIMEOUT_S)
            except RuntimeError as exc:
                logs = [(root / name).read_text()[-3000:] for name in ("nginx.out", "error.log") if (root / name).exists()]
                raise AssertionError("\n".join([str(exc), *logs])) from None
        yield url
    finally:
        proc.stop()


def _answers(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.TransportError:
        return False


def start_origin(root: Path, args: list[str], env: dict[str, str]) -> tuple[ManagedProcess, int]:
    """``trio-streams serve`` on a free port with its data in ``root``/data, once healthy; and its port."""
    (root / "data").mkdir()
    port = free_port()
    origin = ManagedProcess([str(EXE), "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir",
                             str(root / "data"), *args], root / "origin.log", cwd=ROOT, env=env)
    origin.start()
    with httpx.Client(timeout=2) as client:
        origin.wait_ready(lambda: _answers(client, f"http://127.0.0.1:{port}/healthz"), ORIGIN_READY_TIMEOUT_S)
    return origin, port

