"""A real nginx running deploy/nginx/sharded.conf in front of given upstreams.

Used by tests/test_shard.py, scripts/run_conformance_sharded.py and
scripts/shard_rebalance.py (and ``install_nginx`` by tests/nginxproc.py): the shipped map and upstream block
(deploy/nginx/sharded-site.conf) with the example's node addresses replaced
by the ones given, the location snippet from this checkout, and temporary
paths under one directory. ``install_nginx`` runs scripts/install_nginx.sh
(which installs Debian's nginx when it is missing) and says why when it
cannot.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NGINX_DIR = ROOT / "deploy" / "nginx"
SHARD_MAP = NGINX_DIR / "sharded.conf"
SHARDED_SITE = NGINX_DIR / "sharded-site.conf"
SNIPPET = NGINX_DIR / "trio-streams.conf"
INSTALL_SCRIPT = ROOT / "scripts" / "install_nginx.sh"
INSTALL_TIMEOUT_S = 900
START_TIMEOUT_S = 20.0
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
# The example's node lines, all together (each with its parameters).
_EXAMPLE_SERVERS = re.compile(r"(?:^ *server 10\.0\.0\.\d+:4437 max_fails=0;\n)+", re.M)


class NginxUnavailable(RuntimeError):
    """nginx is not installed and cannot be; the message says why."""


def install_nginx() -> str:
    """The nginx executable, installed first when missing."""
    try:
        done = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise NginxUnavailable(f"installing nginx took over {INSTALL_TIMEOUT_S} s") from None
    if done.returncode != 0:
        lines = (done.stdout + done.stderr).strip().splitlines() or ["no output"]
        raise NginxUnavailable(f"{INSTALL_SCRIPT.name}: {lines[-1]}")
    exe = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if exe is None:
        raise NginxUnavailable("nginx is not on PATH after the install script succeeded")
    return exe


def site_with(upstreams: Sequence[str], listen_port: int, snippet: Path = SNIPPET, shard_map: Path = SHARD_MAP) -> str:
    """sharded-site.conf with these upstreams (``host:port``), this port and file paths."""
    servers = "".join(f"    server {u} max_fails=0;\n" for u in upstreams)
    site, found = _EXAMPLE_SERVERS.subn(servers, SHARDED_SITE.read_text(), count=1)
    if not found:
        raise ValueError(f"{SHARDED_SITE} has no example 'server 10.0.0.N:4437 max_fails=0;' lines")
    site = site.replace("/etc/nginx/trio-streams/sharded.conf", str(shard_map))
    site = site.replace("/etc/nginx/snippets/trio-streams.conf", str(snippet))
    return site.replace("listen 80;", f"listen 127.0.0.1:{listen_port};")


def pattern_map(pattern: str) -> str:
    """sharded.conf's commented shard_key_pattern map, uncommented, for ``pattern``
    (a setting compile_key_pattern accepts)."""
    block = re.search(r'^# map \$uri[^\n]*\n(?:#[^\n]*\n)*?#     "~\^/v1/stream/\([^\n]*\$1;\n.*?^# \}$',
                      SHARD_MAP.read_text(), re.M | re.S)
    if block is None:
        raise ValueError(f"{SHARD_MAP} lost its commented shard_key_pattern map")
    text = re.sub(r"^# ?", "", block.group(0), flags=re.M)
    line = re.search(r'^ *"~\^/v1/stream/(\S+)" +\$1;$', text, re.M)
    assert line is not None
    # nginx unescapes \\ and \" in its configuration (and \t, \n, \r: kept by doubling).
    quoted = pattern.removeprefix("^").replace("\\", "\\\\").replace('"', '\\"')
    return text.replace(line.group(1), quoted, 1)


def write_config(root: Path, site: str, extra_http: str = "", access_log: str = "off", log_format: str = "") -> Path:
    """A whole nginx.conf around ``site`` (one worker, temp paths under ``root``);
    ``log_format`` (a whole directive) comes before ``access_log``, which may name it."""
    for name in TEMP_DIRS:
        (root / name).mkdir(parents=True, exist_ok=True)
    user = "user root;" if os.geteuid() == 0 else ""  # workers must reach temp dirs under /tmp/pytest-of-root
    temp_paths = "\n".join(f"    {name}_temp_path {root / name};" for name in TEMP_DIRS)
    conf = root / "nginx.conf"
    conf.write_text(f"""
{user}
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 1024; }}
http {{
    {log_format}
    access_log {access_log};
{temp_paths}
{site}
{extra_http}
}}
""")
    return conf


def check_config(exe: str, conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([exe, "-t", "-c", str(conf), "-p", str(conf.parent)], capture_output=True, text=True,
                          timeout=60)


class Nginx:
    """nginx on ``conf`` in its own process group; ``stop`` ends it (and only it)."""

    def __init__(self, exe: str, conf: Path) -> None:
        self.conf = conf
        self.proc = subprocess.Popen([exe, "-c", str(conf), "-p", str(conf.parent)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)

    def error_log(self) -> str:
        path = self.conf.parent / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no error log)"

    def wait_until(self, ready: Callable[[], bool], timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited {self.proc.returncode}:\n{self.error_log()}")
            if ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"nginx not ready after {timeout} s:\n{self.error_log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
