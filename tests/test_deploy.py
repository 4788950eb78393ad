"""deploy/: the Dockerfile, its command line, the systemd unit and the nginx snippet.

Fast (in ``make test``): the Dockerfile is checked statically and its exact
entrypoint command (ENTRYPOINT + CMD with the image's ENV) runs here against a
temporary directory, health check included; the systemd unit goes through
``systemd-analyze verify`` (or static checks where that is missing); nginx
(installed by scripts/install_nginx.sh when missing) checks the snippet with
``nginx -t`` and proxies real requests to a real server: long-poll and SSE
answers must come through as they are written.

Slow (``make test-all``): the image is built and run with Docker, when a
Docker engine answers.
"""

from __future__ import annotations

import concurrent.futures
import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conftest import EXE, ROOT, Server, deadline_poll, free_port, serving, unique
from nginxproc import SNIPPET, main_config, nginx_exe  # noqa: F401 - nginx_exe is a fixture
from nginxproc import running as nginx_running

DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
UNIT = DEPLOY / "systemd" / "trio-streams.service"
TOKEN = "deploy-test-token"
# What the server's defaults make the longest silent response (long-poll 30 s, SSE connection 60 s).
SILENT_RESPONSE_S_MAX = 60.0
SHUTDOWN_GRACE_S_DEFAULT = 5.0
# Long-polls through the proxy wait this long: far longer than an answer to an append takes.
UPSTREAM_LONG_POLL_S = 20.0


# -- the Dockerfile, statically ----------------------------------------------


@dataclass
class Instruction:
    keyword: str
    arguments: str
    stage: int


def dockerfile() -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions, stage = [], -1
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), arguments.strip(), stage))
    return instructions


def final(keyword: str) -> list[str]:
    """Arguments of ``keyword`` in the final stage, in order."""
    instructions = dockerfile()
    last = instructions[-1].stage
    return [i.arguments for i in instructions if i.keyword == keyword and i.stage == last]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for arguments in final("ENV"):
        for pair in shlex.split(arguments):
            name, _, value = pair.partition("=")
            env[name] = value
    return env


def test_the_image_is_multi_stage_and_the_runtime_stage_copies_only_the_build_result() -> None:
    instructions = dockerfile()
    froms = [i.arguments for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2 and " AS " in froms[0].upper(), froms
    build_stage = froms[0].split()[-1]
    assert any(f"--from={build_stage}" in a for a in final("COPY")), final("COPY")
    # The lock pins what the build installs.
    assert any("requirements.lock" in i.arguments and i.stage == 0 for i in instructions if i.keyword == "RUN")


def test_the_image_runs_as_a_non_root_user_with_a_data_volume_and_a_health_check() -> None:
    users = final("USER")
    assert users, "no USER in the runtime stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    assert "/data" in json.loads(final("VOLUME")[-1])
    assert image_env()["TRIO_STREAMS_DATA_DIR"] == "/data"
    assert final("HEALTHCHECK") and "CMD" in final("HEALTHCHECK")[-1]
    assert final("EXPOSE") == [image_env()["TRIO_STREAMS_PORT"]]
    assert final("STOPSIGNAL") == ["SIGTERM"]
    assert image_env()["TRIO_STREAMS_CONFIG"] == "/etc/trio-streams/config.toml"


def test_dockerignore_keeps_the_build_context_to_what_the_image_copies() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(path: str) -> bool:
        verdict = False
        for pattern in patterns:
            negated = pattern.startswith("!")
            pattern = pattern.lstrip("!").rstrip("/").removeprefix("**/")
            parts = path.split("/")
            prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
            if any(fnmatch.fnmatch(p, pattern) for p in prefixes) or fnmatch.fnmatch(parts[-1], pattern):
                verdict = not negated
        return verdict

    for kept_out in (".venv/bin/python", ".git/HEAD", "data/LOCK", "tests/conftest.py",
                     "tests/conformance/node_modules/x", "trio_streams/__pycache__/app.cpython-311.pyc"):
        assert ignored(kept_out), kept_out
    # Every source of a COPY from the context (the last word is the destination).
    needed = {source for i in dockerfile() if i.keyword == "COPY" and "--from" not in i.arguments
              for source in i.arguments.split()[:-1]}
    assert {"requirements.lock", "trio_streams", "deploy/healthcheck.py"} <= needed, needed
    for source in needed:
        assert not ignored(source.rstrip("/")), source
        assert (ROOT / source).exists(), source
    assert not ignored("trio_streams/http/app.py")


# -- the image's command line, run here ----------------------------------------


def healthcheck_command() -> list[str]:
    """The HEALTHCHECK's command with the image's paths mapped to this checkout."""
    command = json.loads(final("HEALTHCHECK")[-1].split("CMD", 1)[1])
    mapped = {"python": sys.executable, "/opt/trio-streams/healthcheck.py": str(DEPLOY / "healthcheck.py")}
    return [mapped.get(part, part) for part in command]


def write_config(path: Path) -> Path:
    """A config with one token allowed everything a test does (deploy/config.example.toml's shape)."""
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    path.write_text(f'[[auth.tokens]]\nname = "test"\nsha256 = "{digest}"\nscopes = ["read", "write", "delete", "admin"]\n')
    return path


def test_the_image_command_serves_here_and_its_health_check_passes(tmp_path: Path) -> None:
    command = json.loads(final("ENTRYPOINT")[-1]) + json.loads(final("CMD")[-1])
    port = free_port()
    env = os.environ | image_env() | {
        "PATH": f"{EXE.parent}{os.pathsep}{os.environ['PATH']}",
        "TRIO_STREAMS_DATA_DIR": str(tmp_path / "data"),  # the image's /data volume
        "TRIO_STREAMS_PORT": str(port),
        "TRIO_STREAMS_CONFIG": str(write_config(tmp_path / "config.toml")),
    }
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline_poll(lambda: _answers(url, proc, log), timeout=30, what="the image's command to serve")
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"}
        stream = f"{url}/v1/stream/{unique()}"
        assert httpx.put(stream, headers=headers, timeout=10).status_code == 201
        assert httpx.post(stream, content=b"hello", headers=headers, timeout=10).status_code == 204
        read = httpx.get(stream, params={"offset": "-1"}, headers=headers, timeout=10)
        assert (read.status_code, read.content) == (200, b"hello")
        check = subprocess.run(healthcheck_command(), env=env, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
        after = subprocess.run(healthcheck_command(), env=env, capture_output=True, text=True, timeout=30)
        assert after.returncode == 1, "the health check passed with the server stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _answers(url: str, proc: subprocess.Popen, log: Path) -> bool:
    assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text()}"
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


# -- the systemd unit ------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_the_systemd_unit_restarts_on_failure_with_room_to_stop_and_hardening() -> None:
    unit = unit_settings()
    assert unit["Restart"] == ["on-failure"]
    # Refusals an operator must fix are not restarted in a loop.
    assert {"2", "4", "6"} <= set(unit["RestartPreventExitStatus"][0].split())
    assert int(unit["LimitNOFILE"][0]) >= 4096
    assert float(unit["TimeoutStopSec"][0].removesuffix("s")) > SHUTDOWN_GRACE_S_DEFAULT
    assert unit["User"][0] not in ("root", "0")
    for option in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert unit[option] == ["yes"], option
    assert unit["ProtectSystem"] == ["strict"]
    data_dir = shlex.split(unit["ExecStart"][0])[shlex.split(unit["ExecStart"][0]).index("--data-dir") + 1]
    assert data_dir in unit["ReadWritePaths"][0].split()


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the static unit test still runs)")
    # verify checks that ExecStart exists: point it at this checkout's executable.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/trio-streams/bin/trio-streams", str(EXE)))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # It exits 0 even for values it ignores: every complaint is a line on stderr.
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


# -- nginx in front of a real server -------------------------------------------


def nginx_config(root: Path, upstream_port: int, listen_port: int) -> Path:
    """A minimal nginx.conf: the upstream the snippet expects and a server including it."""
    return main_config(root, f"""
    # As a site's http block may have it: everything compressible is compressed,
    # which holds SSE events back unless the snippet turns it off.
    gzip on;
    gzip_types *;
    gzip_min_length 0;
    upstream trio_streams {{
        server 127.0.0.1:{upstream_port};
        keepalive 8;
        keepalive_timeout 25s;
    }}
    server {{
        listen 127.0.0.1:{listen_port};
        include {SNIPPET};
    }}
""")


def test_nginx_accepts_the_snippet(nginx_exe: str, tmp_path: Path) -> None:
    conf = nginx_config(tmp_path, free_port(), free_port())
    done = subprocess.run([nginx_exe, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


@pytest.mark.parametrize("example", ["nginx/site.conf", "compose/nginx.conf"])
def test_nginx_accepts_the_example_server_blocks(nginx_exe: str, tmp_path: Path, example: str) -> None:
    """The examples as shipped, but with the snippet from this checkout, a free port,
    and the compose service name (resolved only on the compose network) as loopback."""
    site = (DEPLOY / example).read_text()
    site = site.replace("/etc/nginx/snippets/trio-streams.conf", str(SNIPPET)).replace("trio-streams:4437", "127.0.0.1:4437")
    site = re.sub(r"listen 80;", f"listen 127.0.0.1:{free_port()};", site)
    conf = nginx_config(tmp_path, free_port(), free_port())
    text = conf.read_text()
    # Only the example's upstream and server: drop the test's own.
    conf.write_text(text[: text.index("    upstream trio_streams")] + site + "\n}\n")
    done = subprocess.run([nginx_exe, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_snippet_outlasts_the_longest_silent_response() -> None:
    text = SNIPPET.read_text()
    read_timeout = re.search(r"^\s*proxy_read_timeout\s+(\d+)s;", text, re.M)
    assert read_timeout and float(read_timeout.group(1)) > SILENT_RESPONSE_S_MAX
    assert re.search(r"^\s*proxy_buffering\s+off;", text, re.M)
    assert re.search(r"^\s*proxy_http_version\s+1\.1;", text, re.M)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(tmp_path_factory.mktemp("upstream"), ["--long-poll-timeout-ms", str(int(UPSTREAM_LONG_POLL_S * 1000))])


@pytest.fixture(scope="module")
def proxy(nginx_exe: str, upstream: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("nginx")
    port = free_port()
    conf = nginx_config(root, upstream.port, port)
    with nginx_running(nginx_exe, conf, root, f"http://127.0.0.1:{port}") as url:
        yield url


def test_writes_and_catch_up_reads_go_through_nginx(proxy: str) -> None:
    stream = f"{proxy}/v1/stream/{unique()}"
    assert httpx.put(stream, headers={"Content-Type": "text/plain"}, timeout=10).status_code == 201
    assert httpx.post(stream, content=b"abc", headers={"Content-Type": "text/plain"}, timeout=10).status_code == 204
    read = httpx.get(stream, params={"offset": "-1"}, timeout=10)
    assert (read.status_code, read.content) == (200, b"abc")


def test_a_parked_long_poll_through_nginx_answers_when_data_arrives(proxy: str, upstream: Server) -> None:
    stream_path = f"/v1/stream/{unique()}"
    headers = {"Content-Type": "text/plain"}
    assert httpx.put(upstream.url + stream_path, headers=headers, timeout=10).status_code == 201
    tail = httpx.head(upstream.url + stream_path, timeout=10).headers["stream-next-offset"]
    before = upstream.subscribers()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        poll = pool.submit(httpx.get, proxy + stream_path, params={"offset": tail, "live": "long-poll"},
                           timeout=UPSTREAM_LONG_POLL_S + 10)
        upstream.wait_subscribers(lambda n: n > before, what="the long-poll to park")
        assert httpx.post(upstream.url + stream_path, content=b"news", headers=headers, timeout=10).status_code == 204
        # Well before the poll's own timeout: an answer only at the timeout would be a 204.
        answer = poll.result(timeout=UPSTREAM_LONG_POLL_S / 2)
    assert (answer.status_code, answer.content) == (200, b"news")


def test_sse_through_nginx_delivers_each_event_as_it_is_written(proxy: str, upstream: Server) -> None:
    stream_path = f"/v1/stream/{unique()}"
    headers = {"Content-Type": "text/plain"}
    assert httpx.put(upstream.url + stream_path, headers=headers, timeout=10).status_code == 201
    before = upstream.subscribers()
    with httpx.Client(timeout=httpx.Timeout(10.0)) as client:
        with client.stream("GET", proxy + stream_path, params={"offset": "now", "live": "sse"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            upstream.wait_subscribers(lambda n: n > before, what="the SSE reader to subscribe")
            lines = response.iter_lines()
            for word in ("first", "second"):
                httpx.post(upstream.url + stream_path, content=word.encode(), headers=headers, timeout=10)
                # The proxy's http block compresses everything (nginx_config). Without the
                # snippet's proxy_buffering off and gzip off, nginx holds the whole response,
                # head included, and the 10 s read timeout fails the test (checked by hand).
                assert _next_data(lines) == word


def _next_data(lines: Iterator[str]) -> str:
    """The payload of the next ``data`` event (a one-line text payload)."""
    event = ""
    for line in lines:
        if line.startswith("event:"):
            event = line.partition(":")[2].strip()
        elif line.startswith("data:") and event == "data":
            return line.partition(":")[2].removeprefix(" ")
    raise AssertionError("the event stream ended")


# -- the image itself, with Docker (slow: make test-all) --------------------------


def docker_or_skip() -> str:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on this machine")
    info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        lines = (info.stderr or info.stdout).strip().splitlines() or ["no output"]
        pytest.skip(f"no Docker engine answers: {lines[-1]}")
    return docker


@pytest.mark.slow
def test_the_image_builds_and_serves_healthy_as_a_non_root_user(tmp_path: Path) -> None:
    docker = docker_or_skip()
    tag = f"trio-streams-test:{unique('t')}"
    build = subprocess.run([docker, "build", "-f", str(DOCKERFILE), "-t", tag, str(ROOT)],
                           capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, build.stderr[-3000:]
    config = write_config(tmp_path / "config.toml")
    config.chmod(0o644)  # read by the image's user through the bind mount
    port = free_port()
    started = subprocess.run([docker, "run", "-d", "-p", f"127.0.0.1:{port}:4437",
                              "-v", f"{config}:/etc/trio-streams/config.toml:ro", tag],
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    container = started.stdout.strip()
    try:
        def inspect(template: str) -> str:
            return subprocess.run([docker, "inspect", "--format", template, container], capture_output=True,
                                  text=True, timeout=60).stdout.strip()

        deadline_poll(lambda: inspect("{{.State.Health.Status}}") == "healthy", timeout=180, interval=1.0,
                      what="the container's health check")
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"}
        stream = f"http://127.0.0.1:{port}/v1/stream/{unique()}"
        assert httpx.put(stream, headers=headers, timeout=10).status_code == 201
        assert httpx.post(stream, content=b"in a box", headers=headers, timeout=10).status_code == 204
        read = httpx.get(stream, params={"offset": "-1"}, headers=headers, timeout=10)
        assert (read.status_code, read.content) == (200, b"in a box")
        uid = subprocess.run([docker, "exec", container, "id", "-u"], capture_output=True, text=True, timeout=60)
        assert uid.stdout.strip() not in ("", "0"), uid
        subprocess.run([docker, "stop", "-t", "60", container], capture_output=True, timeout=120, check=True)
        assert inspect("{{.State.ExitCode}}") == "0", subprocess.run([docker, "logs", container], capture_output=True,
                                                                     text=True, timeout=60).stderr[-3000:]
    finally:
        subprocess.run([docker, "rm", "-f", "-v", container], capture_output=True, timeout=120)
        subprocess.run([docker, "rmi", "-f", tag], capture_output=True, timeout=120)
