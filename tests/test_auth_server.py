"""Access control on real `trio-streams serve` processes: --config, 401 on the wire, the query
token, secrets kept out of logs, the refusal to serve the network unauthenticated, the token
commands, and the same configuration under plain `hypercorn -k trio` via TRIO_STREAMS_CONFIG."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import EXE, PREFIX, ROOT, Server, assert_error, deadline_poll, free_port, kill_process_group

TOKEN = "s3cret-token-for-the-test"
QUERY_TOKEN = "another-s3cret-for-the-query"


def digest(token: str) -> str:
    out = subprocess.run([str(EXE), "token", "hash"], input=token + "\n", capture_output=True, text=True, check=True)
    return out.stdout.strip()


def write_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "auth.toml"
    path.write_text(f"""
auth_query_token = true
{extra}
[[auth.tokens]]
name = "writer"
sha256 = "{digest(TOKEN)}"
scopes = ["read", "write"]

[[auth.tokens]]
name = "browser"
sha256 = "{digest(QUERY_TOKEN)}"
scopes = ["read:public/**"]
""")
    return path


@pytest.fixture
def guarded(tmp_path: Path):  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    data.mkdir()
    server = Server(data, ["--config", str(write_config(tmp_path)), "--access-log", "--log-level", "debug"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_config_file_tokens_over_http(guarded: Server) -> None:
    url = guarded.stream_url("public/feed")
    resp = httpx.put(url, headers={"content-type": "text/plain"})
    assert_error(resp, 401, "UNAUTHORIZED")
    assert resp.headers["www-authenticate"].startswith("Bearer realm=")
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert httpx.put(url, headers={"content-type": "text/plain"} | auth).status_code == 201
    assert httpx.post(url, headers={"content-type": "text/plain"} | auth, content=b"hello").status_code == 204
    # The query token (on in this config): GET only, and only what its scopes allow.
    got = httpx.get(url, params={"offset": "-1", "access_token": QUERY_TOKEN})
    assert got.status_code == 200 and got.content == b"hello"
    assert httpx.head(url, params={"access_token": QUERY_TOKEN}).status_code == 401
    assert httpx.post(url, params={"access_token": TOKEN}, content=b"x").status_code == 401
    assert httpx.get(guarded.stream_url("private"), params={"access_token": QUERY_TOKEN}).status_code == 403
    assert httpx.get(f"{guarded.url}/healthz").status_code == 200


def test_tokens_never_reach_the_log(guarded: Server) -> None:
    url = guarded.stream_url("public/log")
    httpx.put(url, headers={"authorization": f"Bearer {TOKEN}", "content-type": "text/plain"})
    httpx.get(url, params={"offset": "-1", "access_token": QUERY_TOKEN})
    httpx.get(url, headers={"authorization": f"Bearer {TOKEN}x"})  # a wrong one too
    deadline_poll(lambda: "GET" in guarded.log_tail(200), what="the access log lines")
    log = guarded.log_path.read_text(errors="replace") if guarded.log_path else ""
    assert TOKEN not in log and QUERY_TOKEN not in log


def test_unauthenticated_start_warns(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    server = Server(data).start()
    try:
        assert "no authentication configured" in server.log_tail(200)
    finally:
        server.stop()


def run_serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    data = tmp_path / "data-refused"
    return subprocess.run([str(EXE), "serve", "--port", str(free_port()), "--data-dir", str(data), *args],
                          capture_output=True, text=True, timeout=60, env=os.environ | (env or {}))


@pytest.mark.parametrize("how", ["flag", "env", "ipv6"])
def test_refuses_non_loopback_without_auth(tmp_path: Path, how: str) -> None:
    args, env = {"flag": (["--host", "0.0.0.0"], {}), "env": ([], {"TRIO_STREAMS_HOST": "0.0.0.0"}),
                 "ipv6": (["--host", "::"], {})}[how]
    done = run_serve(tmp_path, *args, env=env)
    assert done.returncode == 6, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trio-streams: refusing to serve"), done.stderr
    assert "--allow-unauthenticated" in lines[0]
    assert not (tmp_path / "data-refused").exists()  # refused before touching the data directory


def test_invalid_config_is_exit_2_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[[auth.tokens]]\nname = \"x\"\nsha256 = \"nothex\"\nscopes = [\"read\"]\n")
    done = run_serve(tmp_path, "--config", str(path))
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "auth.tokens[0].sha256" in lines[0], done.stderr


def test_token_commands() -> None:
    new = subprocess.run([str(EXE), "token", "new"], capture_output=True, text=True, check=True)
    token, hashed = new.stdout.split()
    assert len(token) >= 40 and hashed == digest(token)
    assert digest("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2 test vector
    bad = subprocess.run([str(EXE), "token", "hash"], input="two words\n", capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""


def test_plain_hypercorn_reads_trio_streams_config(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    env = os.environ | {"TRIO_STREAMS_CONFIG": str(write_config(tmp_path)), "TRIO_STREAMS_DATA_DIR": str(data)}
    log = open(tmp_path / "hypercorn.log", "wb")
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "hypercorn"), "-k", "trio", "-b", f"127.0.0.1:{port}",
                             "trio_streams.http.app:create_app()"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "hypercorn.log").read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        deadline_poll(ready, timeout=20, what="hypercorn ready")
        url = f"http://127.0.0.1:{port}{PREFIX}x"
        assert_error(httpx.put(url, headers={"content-type": "text/plain"}), 401, "UNAUTHORIZED")
        assert httpx.put(url, headers={"content-type": "text/plain", "authorization": f"Bearer {TOKEN}"}).status_code == 201
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        kill_process_group(proc)  # Hypercorn's worker process too
        log.close()
