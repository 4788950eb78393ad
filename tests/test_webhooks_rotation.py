"""Rotating the webhook signing key: the command line (stopped server) and the admin endpoint."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from trio_streams.config import Settings
from trio_streams.http.admin import Admin
from trio_streams.http.asgi import Request
from trio_streams.protocol.errors import ProtocolError
from trio_streams.webhooks.keys import SigningKeys
from webhook_receiver import verify_signature

ROOT = Path(__file__).resolve().parent.parent
EXE = ROOT / ".venv" / "bin" / "trio-streams"


def rotate_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), "webhook-key", "rotate", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def kids_in_file(data_dir: Path) -> tuple[str, list[str]]:
    document = json.loads((data_dir / "webhook-keys" / "signing-keys.json").read_text())
    return document["active"]["kid"], [r["kid"] for r in document["retired"]]


def test_cli_rotates_a_stopped_servers_key(tmp_path: Path) -> None:
    first = SigningKeys.load_or_create(tmp_path, time.time).active_kid
    done = rotate_cli("--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    active, retired = kids_in_file(tmp_path)
    assert retired == [first] and active != first
    assert active in done.stdout and first in done.stdout
    # The server's next start signs with the new key and still publishes the old one.
    keys = SigningKeys.load_or_create(tmp_path, time.time)
    assert keys.active_kid == active
    assert [k["kid"] for k in keys.jwks()["keys"]] == [active, first]


def test_cli_creates_the_first_key_without_retiring_one(tmp_path: Path) -> None:
    (tmp_path / "wal").mkdir()  # a server ran here, before webhook keys existed
    done = rotate_cli("--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    active, retired = kids_in_file(tmp_path)
    assert retired == [] and active in done.stdout


def test_cli_refuses_a_directory_a_server_holds(tmp_path: Path) -> None:
    SigningKeys.load_or_create(tmp_path, time.time)
    before = kids_in_file(tmp_path)
    fd = os.open(tmp_path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running server holds
        done = rotate_cli("--data-dir", str(tmp_path))
    finally:
        os.close(fd)
    assert done.returncode == 2
    assert "/admin/webhook-key/rotate" in done.stderr
    assert kids_in_file(tmp_path) == before


def test_cli_refuses_a_missing_directory_and_reports_a_corrupt_key(tmp_path: Path) -> None:
    missing = rotate_cli("--data-dir", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "not a trio-streams data directory" in missing.stderr
    assert not (tmp_path / "nope").exists()
    unrelated = rotate_cli("--data-dir", str(tmp_path))
    assert unrelated.returncode == 2 and not (tmp_path / "webhook-keys").exists()
    SigningKeys.load_or_create(tmp_path, time.time)
    (tmp_path / "webhook-keys" / "signing-keys.json").write_text("{")
    corrupt = rotate_cli("--data-dir", str(tmp_path))
    assert corrupt.returncode == 1 and "corrupt" in corrupt.stderr
    assert len(corrupt.stderr.strip().splitlines()) == 1


def test_cli_prunes_with_the_configured_replay_window(tmp_path: Path) -> None:
    SigningKeys.load_or_create(tmp_path, time.time)
    assert rotate_cli("--data-dir", str(tmp_path)).returncode == 0
    # A window shorter than the time between the two rotations drops the first retired key.
    env = {"TRIO_STREAMS_WEBHOOK_KEY_REPLAY_WINDOW_S": "0.000001"}
    assert rotate_cli("--data-dir", str(tmp_path), env=env).returncode == 0
    _, retired = kids_in_file(tmp_path)
    assert len(retired) == 1


# -- POST /admin/webhook-key/rotate, in process -------------------------------------------


class Sent:
    def __init__(self) -> None:
        self.messages: list[dict] = []  # type: ignore[type-arg]

    async def __call__(self, message: dict) -> None:  # type: ignore[type-arg]
        self.messages.append(message)

    @property
    def status(self) -> int:
        return self.messages[0]["status"]

    def json(self) -> dict:  # type: ignore[type-arg]
        return orjson.loads(b"".join(m.get("body", b"") for m in self.messages[1:]))


def admin_request(method: str = "POST") -> Request:
    return Request(method, "/admin/webhook-key/rotate", {}, [], {"type": "http"}, None)  # type: ignore[arg-type]


def admin_with(keys: SigningKeys | None) -> Admin:
    return Admin(None, Settings(), [], None, None, webhook_keys=lambda: keys)  # type: ignore[arg-type]


async def test_admin_endpoint_rotates_the_running_key(tmp_path: Path) -> None:
    keys = SigningKeys.load_or_create(tmp_path, time.time)
    old = keys.active_kid
    sent = Sent()
    await admin_with(keys).handle(admin_request(), sent)
    assert sent.status == 200
    answer = sent.json()
    assert answer["retired_kid"] == old and answer["kid"] == keys.active_kid != old
    assert [k["kid"] for k in answer["jwks"]["keys"]] == [keys.active_kid, old]
    # Signed from now on with the new key; the file holds it for the next start.
    header = keys.signature_header(int(time.time()), b"{}")
    assert f"kid={answer['kid']}," in header and verify_signature(b"{}", header, answer["jwks"])
    assert kids_in_file(tmp_path) == (answer["kid"], [old])


async def test_admin_endpoint_without_loaded_keys_is_503(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError) as caught:
        await admin_with(None).handle(admin_request(), Sent())
    assert (caught.value.status, caught.value.code) == (503, "WEBHOOK_KEYS_UNAVAILABLE")


async def test_admin_endpoint_keeps_the_key_when_storing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = SigningKeys.load_or_create(tmp_path, time.time)
    old = keys.active_kid

    def full_disk(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(ProtocolError) as caught:
        await admin_with(keys).handle(admin_request(), Sent())
    monkeypatch.undo()
    assert (caught.value.status, caught.value.code) == (503, "WEBHOOK_KEY_ROTATION_FAILED")
    assert keys.active_kid == old and kids_in_file(tmp_path) == (old, [])


async def test_admin_endpoint_is_post_only(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError) as caught:
        await admin_with(SigningKeys.load_or_create(tmp_path, time.time)).handle(admin_request("GET"), Sent())
    assert caught.value.status == 405
