"""`trio-streams serve` refuses to start with one line on stderr and an exit code per cause.

Each case runs a real server process. "Before recovery" is checked by what
the data directory holds afterwards: recovery creates the WAL, so a refusal
that came after it would leave WAL files behind.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from conftest import EXE, Server, free_port
from trio_streams import startup
from trio_streams.config import Settings
from trio_streams.service import DataDirectoryLocked, Service, lock_data_directory

RUN_TIMEOUT_S = 30
# An address no local interface has (TEST-NET-1, RFC 5737): binding it fails, and nothing is sent to it.
UNASSIGNED_ADDRESS = "192.0.2.1"


def serve(data_dir: Path, *args: str, env: dict[str, str] | None = None,
          port: int | None = None) -> subprocess.CompletedProcess[str]:
    """Runs `trio-streams serve` expecting it to refuse (a start would hit the timeout)."""
    command = [str(EXE), "serve", "--host", "127.0.0.1", "--port", str(port or free_port()),
               "--data-dir", str(data_dir), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                          env=os.environ | (env or {}), stdin=subprocess.DEVNULL)


def assert_refused(done: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Exit ``code``, and the error is one ``trio-streams: …`` line (logging may precede it) naming ``words``."""
    assert done.returncode == code, f"exit {done.returncode}, expected {code}:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("trio-streams: ")]
    assert len(errors) == 1, done.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def assert_not_recovered(data_dir: Path) -> None:
    """Nothing but the lock file: recovery (which writes the WAL) never started."""
    left = set(os.listdir(data_dir)) if data_dir.exists() else set()
    assert left <= {"LOCK"}, left


def test_exit_codes_are_the_documented_ones() -> None:
    assert (startup.EXIT_OK, startup.EXIT_STORAGE_FAILED, startup.EXIT_INVALID_CONFIG, startup.EXIT_DATA_DIR_LOCKED,
            startup.EXIT_DATA_DIR_NOT_WRITABLE, startup.EXIT_CANNOT_BIND,
            startup.EXIT_UNAUTHENTICATED_BIND) == (0, 1, 2, 3, 4, 5, 6)


# -- 2: invalid flags, settings or TLS material ------------------------------


def test_an_invalid_setting_from_the_environment_exits_2_before_touching_the_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = serve(data, env={"TRIO_STREAMS_FSYNC": "sometimes"})
    assert_refused(done, startup.EXIT_INVALID_CONFIG, "fsync", "sometimes")
    assert not data.exists()


def test_a_malformed_flag_exits_2_in_one_line(tmp_path: Path) -> None:
    done = serve(tmp_path / "data", "--long-poll-timeout-ms", "soon")
    assert_refused(done, startup.EXIT_INVALID_CONFIG, "--long-poll-timeout-ms", "soon")
    assert "usage:" not in done.stderr


def test_a_missing_tls_certificate_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    done = serve(tmp_path / "data", "--certfile", str(missing), "--keyfile", str(missing))
    assert_refused(done, startup.EXIT_INVALID_CONFIG, "TLS", str(missing), "no such file")
    assert not (tmp_path / "data").exists()


def test_a_tls_certificate_that_is_not_pem_exits_2(tmp_path: Path) -> None:
    garbage = tmp_path / "cert.pem"
    garbage.write_text("not a certificate\n")
    done = serve(tmp_path / "data", "--certfile", str(garbage), "--keyfile", str(garbage))
    assert_refused(done, startup.EXIT_INVALID_CONFIG, "TLS", str(garbage))


def test_check_tls_accepts_what_ssl_accepts(tmp_path: Path) -> None:
    """The pre-flight loads the pair with the same call Hypercorn makes; a good pair passes."""
    cert, key = _self_signed(tmp_path)
    startup.check_tls(Settings(tls_certfile=str(cert), tls_keyfile=str(key)))
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True, timeout=60)
    return cert, key


# -- 3: the data directory is locked by another server -----------------------


def test_a_data_directory_in_use_exits_3_and_the_running_server_is_untouched(tmp_path: Path) -> None:
    running = Server(tmp_path / "data")
    running.data_dir.mkdir()
    try:
        running.start()
        # Same port too: the lock is checked first, so the cause reported is the directory.
        done = serve(running.data_dir, port=running.port)
        assert_refused(done, startup.EXIT_DATA_DIR_LOCKED, str(running.data_dir), "in use")
        assert httpx.get(f"{running.url}/healthz", timeout=5).status_code == 200
        assert running.stop() == 0
    finally:
        running.kill_quietly()


# -- 4: the data directory cannot be created or written ----------------------


def test_a_data_directory_under_a_file_exits_4(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    done = serve(tmp_path / "file" / "data")
    assert_refused(done, startup.EXIT_DATA_DIR_NOT_WRITABLE, "file/data", "not a directory")


def test_a_data_directory_that_is_a_file_exits_4(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("")
    done = serve(tmp_path / "data")
    assert_refused(done, startup.EXIT_DATA_DIR_NOT_WRITABLE, "not a directory")


def test_an_existing_unwritable_data_directory_exits_4(tmp_path: Path) -> None:
    """Root ignores permission bits, so the directory is made immutable (or a read-only
    mount). It holds a LOCK from an earlier run: opening that must not pass for writable."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "LOCK").write_text("")
    with _unwritable(data) as how:
        done = serve(data)
    assert_refused(done, startup.EXIT_DATA_DIR_NOT_WRITABLE, str(data))
    assert set(os.listdir(data)) == {"LOCK"}, how


@contextlib.contextmanager
def _unwritable(directory: Path) -> Iterator[str]:
    if os.geteuid() != 0:
        directory.chmod(0o500)
        try:
            yield "mode 0500"
        finally:
            directory.chmod(0o700)
        return
    if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0:
        try:
            yield "chattr +i"
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        return
    if subprocess.run(["mount", "--bind", "-o", "ro", str(directory), str(directory)], capture_output=True).returncode == 0:
        try:
            yield "read-only bind mount"
        finally:
            subprocess.run(["umount", str(directory)], check=True)
        return
    pytest.skip("running as root without chattr +i or a read-only bind mount: no directory is unwritable")


# -- 5: the address is in use or cannot be bound -----------------------------


def test_a_port_in_use_exits_5_before_recovery(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = serve(tmp_path / "data", port=port)
    assert_refused(done, startup.EXIT_CANNOT_BIND, f"127.0.0.1:{port}", "in use")
    assert_not_recovered(tmp_path / "data")


def test_an_address_no_interface_has_exits_5(tmp_path: Path) -> None:
    done = serve(tmp_path / "data", "--host", UNASSIGNED_ADDRESS, "--allow-unauthenticated")
    assert_refused(done, startup.EXIT_CANNOT_BIND, UNASSIGNED_ADDRESS, "not available")
    assert_not_recovered(tmp_path / "data")


def test_the_lock_is_released_when_binding_fails(tmp_path: Path) -> None:
    """A refused start leaves the directory free for the next one."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        assert serve(tmp_path / "data", port=holder.getsockname()[1]).returncode == startup.EXIT_CANNOT_BIND
    fd = startup.claim_data_directory(tmp_path / "data")
    os.close(fd)


def test_listen_accepts_a_bracketed_ipv6_literal() -> None:
    try:
        sock = startup.listen("[::1]", 0)
    except startup.StartupError as error:
        pytest.skip(f"no IPv6 loopback here: {error.message}")
    with sock:
        assert sock.family == socket.AF_INET6 and sock.getsockname()[0] == "::1"


# -- the lock handed to the service ----------------------------------------------


async def test_a_service_runs_on_the_lock_taken_before_it_and_releases_it(tmp_path: Path) -> None:
    fd = startup.claim_data_directory(tmp_path / "data")
    service = Service(Settings(data_dir=str(tmp_path / "data"), fsync="never"))
    service.adopt_lock(fd)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.run)
        await service.ready.wait()
        with pytest.raises(DataDirectoryLocked):  # still held, by the service now
            lock_data_directory(tmp_path / "data")
        service.stop()
    assert service.failure is None, service.failure
    os.close(lock_data_directory(tmp_path / "data"))


async def test_a_service_on_its_own_takes_the_lock_itself(tmp_path: Path) -> None:
    held = lock_data_directory(tmp_path / "data")
    try:
        service = Service(Settings(data_dir=str(tmp_path / "data"), fsync="never"))
        await service.run()  # never raises: the failure is recorded
        assert isinstance(service.failure, DataDirectoryLocked)
    finally:
        os.close(held)


def test_the_command_line_refuses_bad_flags_with_startups_config_exit_code() -> None:
    """``__main__`` keeps its own copy of the code so that commands other than serve start without the server."""
    from trio_streams import __main__ as cli
    from trio_streams import startup

    assert cli.EXIT_INVALID_CONFIG == startup.EXIT_INVALID_CONFIG
