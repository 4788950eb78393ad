"""Webhook signing keys (persisted, rotated, published) and wake-scoped tokens."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from pathlib import Path

import jwt as pyjwt
import pytest

from trio_streams.webhooks import keys as keys_module
from trio_streams.webhooks.keys import SigningKeys, thumbprint
from trio_streams.webhooks.tokens import InvalidWakeToken, WakeClaims, WakeTokens
from webhook_receiver import verify_signature

NOW = 1_800_000_000.0


class FakeWall:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def key_file(data_dir: Path) -> Path:
    return data_dir / "webhook-keys" / "signing-keys.json"


def test_rfc_8037_thumbprint() -> None:
    # RFC 8037 appendix A.3: the thumbprint of the example Ed25519 key.
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_first_start_creates_a_private_key_file_that_later_starts_reuse(tmp_path: Path) -> None:
    wall = FakeWall()
    keys = SigningKeys.load_or_create(tmp_path, wall)
    path = key_file(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    assert not [p for p in path.parent.iterdir() if p.name != "signing-keys.json"]  # no temp file left
    again = SigningKeys.load_or_create(tmp_path, wall)
    assert again.active_kid == keys.active_kid
    assert again.jwks() == keys.jwks()


def test_jwks_and_signature_verify_as_a_receiver_would(tmp_path: Path) -> None:
    keys = SigningKeys.load_or_create(tmp_path, FakeWall())
    [jwk] = keys.jwks()["keys"]
    assert set(jwk) == {"kty", "crv", "kid", "use", "alg", "x"}  # never "d"
    assert (jwk["kty"], jwk["crv"], jwk["use"], jwk["alg"]) == ("OKP", "Ed25519", "sig", "EdDSA")
    assert jwk["kid"] == keys.active_kid == "ds_" + thumbprint(jwk)
    body = b'{"subscription_id":"s","streams":[]}'
    header = keys.signature_header(int(NOW), body)
    assert header.startswith(f"t={int(NOW)},kid={keys.active_kid},ed25519=")
    assert verify_signature(body, header, keys.jwks(), now=NOW)
    assert not verify_signature(body + b" ", header, keys.jwks(), now=NOW)
    assert not verify_signature(body, header, keys.jwks(), now=NOW + 301)  # outside the replay window
    assert not verify_signature(body, header.replace(f"t={int(NOW)}", f"t={int(NOW) + 1}"), keys.jwks(), now=NOW)


def test_rotation_keeps_the_old_public_key_for_the_replay_window_then_prunes_it(tmp_path: Path) -> None:
    wall = FakeWall()
    keys = SigningKeys.load_or_create(tmp_path, wall, replay_window_s=300)
    old_kid = keys.active_kid
    signed_before = keys.signature_header(int(wall.now), b"{}")
    wall.now += 10
    new_kid = keys.rotate_blocking(wall.now)
    assert new_kid == keys.active_kid != old_kid
    assert [k["kid"] for k in keys.jwks()["keys"]] == [new_kid, old_kid]
    assert verify_signature(b"{}", signed_before, keys.jwks(), now=wall.now)
    assert f"kid={new_kid}," in keys.signature_header(int(wall.now), b"{}")
    # A restart sees the same rotation (it is in the file, durably).
    reloaded = SigningKeys.load_or_create(tmp_path, wall, replay_window_s=300)
    assert reloaded.active_kid == new_kid and reloaded.jwks() == keys.jwks()
    wall.now += 299.9
    assert old_kid in [k["kid"] for k in reloaded.jwks()["keys"]]
    wall.now += 0.2
    assert [k["kid"] for k in reloaded.jwks()["keys"]] == [new_kid]
    # The next rotation drops it from the file too.
    third = reloaded.rotate_blocking(wall.now)
    document = json.loads(key_file(tmp_path).read_text())
    assert [r["kid"] for r in document["retired"]] == [new_kid]
    assert document["active"]["kid"] == third


async def test_rotate_runs_in_a_thread_at_the_clock_time(tmp_path: Path) -> None:
    wall = FakeWall()
    keys = SigningKeys.load_or_create(tmp_path, wall)
    old = keys.active_kid
    wall.now += 5
    new = await keys.rotate()
    assert new != old
    document = json.loads(key_file(tmp_path).read_text())
    assert document["retired"] == [{"kid": old, "x": document["retired"][0]["x"], "retired_at": NOW + 5}]


def _corrupt_with(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


CORRUPTIONS = {
    "not json": lambda p: p.write_text("{"),
    "empty": lambda p: p.write_text(""),
    "version": lambda p: _corrupt_with(p, lambda d: d.update(version=9)),
    "x of another key": lambda p: _corrupt_with(p, lambda d: d["active"].update(x="11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")),
    "kid": lambda p: _corrupt_with(p, lambda d: d["active"].update(kid="ds_other")),
    "short d": lambda p: _corrupt_with(p, lambda d: d["active"].update(d="AAAA")),
    "missing d": lambda p: _corrupt_with(p, lambda d: d["active"].pop("d")),
    "retired kid": lambda p: _corrupt_with(p, lambda d: d["retired"].append(
        {"kid": "ds_x", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "retired_at": 1})),
    "retired list": lambda p: _corrupt_with(p, lambda d: d.update(retired={})),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_key_file_refuses_start_with_one_line_and_is_left_alone(tmp_path: Path, corruption: str) -> None:
    SigningKeys.load_or_create(tmp_path, FakeWall())
    path = key_file(tmp_path)
    CORRUPTIONS[corruption](path)
    before = path.read_bytes()
    with pytest.raises(ValueError) as caught:
        SigningKeys.load_or_create(tmp_path, FakeWall())
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "corrupt" in message
    assert path.read_bytes() == before  # never silently regenerated


def test_an_unreadable_or_exposed_key_file_refuses_start(tmp_path: Path) -> None:
    SigningKeys.load_or_create(tmp_path, FakeWall())
    path = key_file(tmp_path)
    path.chmod(0o644)
    with pytest.raises(ValueError, match="readable by others"):
        SigningKeys.load_or_create(tmp_path, FakeWall())
    if os.geteuid() != 0:  # root reads any file: the mode cannot make it unreadable
        path.chmod(0o000)
        with pytest.raises(ValueError, match="cannot read"):
            SigningKeys.load_or_create(tmp_path, FakeWall())
    path.unlink()
    path.mkdir()
    with pytest.raises(ValueError):
        SigningKeys.load_or_create(tmp_path, FakeWall())


def test_a_crash_before_the_rename_leaves_the_old_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = SigningKeys.load_or_create(tmp_path, FakeWall())
    old = keys.active_kid

    def crash(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        keys.rotate_blocking(NOW + 1)
    monkeypatch.undo()
    assert keys.active_kid == old  # the new key is used only once its file is durable
    assert SigningKeys.load_or_create(tmp_path, FakeWall()).active_kid == old
    assert [p.name for p in key_file(tmp_path).parent.iterdir()] == ["signing-keys.json"]  # no temp file left


def test_rotate_offline_rotates_the_file(tmp_path: Path) -> None:
    first = SigningKeys.load_or_create(tmp_path, FakeWall()).active_kid
    old, new = keys_module.rotate_offline(tmp_path)
    assert old == first and new != first
    assert SigningKeys.load_or_create(tmp_path, FakeWall()).active_kid == new


# -- wake tokens ---------------------------------------------------------------------


def test_wake_token_round_trip_and_persisted_secret(tmp_path: Path) -> None:
    wall = FakeWall()
    tokens = WakeTokens.load_or_create(tmp_path, wall)
    secret_file = tmp_path / "webhook-keys" / "wake-token-secret.json"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    token = tokens.issue("sub-1", 7, "w_abc", ttl_s=30)
    assert tokens.verify(token, "sub-1") == WakeClaims("sub-1", 7, "w_abc")
    # After a restart the same secret verifies the same token.
    assert WakeTokens.load_or_create(tmp_path, wall).verify(token, "sub-1") == WakeClaims("sub-1", 7, "w_abc")


def test_wake_token_expires_on_the_injected_clock(tmp_path: Path) -> None:
    wall = FakeWall()
    tokens = WakeTokens.load_or_create(tmp_path, wall)
    token = tokens.issue("sub-1", 1, "w", ttl_s=30)
    wall.now += 29.9
    tokens.verify(token, "sub-1")
    wall.now += 0.2
    with pytest.raises(InvalidWakeToken, match="expired"):
        tokens.verify(token, "sub-1")


def test_wake_token_refusals(tmp_path: Path) -> None:
    wall = FakeWall()
    tokens = WakeTokens.load_or_create(tmp_path, wall)
    token = tokens.issue("sub-1", 3, "w1", ttl_s=60)
    with pytest.raises(InvalidWakeToken, match="another subscription"):
        tokens.verify(token, "sub-2")
    other_server = WakeTokens.load_or_create(tmp_path / "other", wall).issue("sub-1", 3, "w1", ttl_s=60)
    secret = json.loads((tmp_path / "webhook-keys" / "wake-token-secret.json").read_text())["secret"]
    raw_secret = base64.urlsafe_b64decode(secret)
    forged = {
        "other server's secret": other_server,
        "tampered payload": token[: token.index(".") + 1] + token.split(".")[1][::-1] + "." + token.split(".")[2],
        "alg none": pyjwt.encode({"sub": "sub-1", "gen": 3, "wid": "w1", "exp": NOW + 60,
                                  "aud": "durable-streams-wake"}, None, algorithm="none"),
        "no audience": pyjwt.encode({"sub": "sub-1", "gen": 3, "wid": "w1", "exp": NOW + 60}, raw_secret),
        "gen not int": pyjwt.encode({"sub": "sub-1", "gen": "3", "wid": "w1", "exp": NOW + 60,
                                     "aud": "durable-streams-wake"}, raw_secret),
        "gen bool": pyjwt.encode({"sub": "sub-1", "gen": True, "wid": "w1", "exp": NOW + 60,
                                  "aud": "durable-streams-wake"}, raw_secret),
        "no wake id": pyjwt.encode({"sub": "sub-1", "gen": 3, "exp": NOW + 60, "aud": "durable-streams-wake"},
                                   raw_secret),
        "no exp": pyjwt.encode({"sub": "sub-1", "gen": 3, "wid": "w1", "aud": "durable-streams-wake"}, raw_secret),
        "garbage": "not-a-token",
        "huge": "a" * 100_000,
        "empty": "",
    }
    for what, bad in forged.items():
        with pytest.raises(InvalidWakeToken):
            tokens.verify(bad, "sub-1")
            pytest.fail(what)
    # The same secret with every claim right is accepted: the refusals above are the claims', not the secret's.
    good = pyjwt.encode({"sub": "sub-1", "gen": 3, "wid": "w1", "exp": NOW + 60, "aud": "durable-streams-wake"},
                        raw_secret)
    assert tokens.verify(good, "sub-1") == WakeClaims("sub-1", 3, "w1")


@pytest.mark.parametrize("content", [b"{}", b"not json", b'{"version": 1, "secret": "AAAA"}',
                                     b'{"version": 2, "secret": "AAAA"}'])
def test_a_corrupt_wake_secret_refuses_start(tmp_path: Path, content: bytes) -> None:
    WakeTokens.load_or_create(tmp_path, FakeWall())
    path = tmp_path / "webhook-keys" / "wake-token-secret.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="corrupt") as caught:
        WakeTokens.load_or_create(tmp_path, FakeWall())
    assert "\n" not in str(caught.value)
    assert path.read_bytes() == content


def test_the_readme_receiver_example_verifies_our_signatures(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Webhook signing"):]
    code = section[section.index("```python\n") + len("```python\n"):]
    code = code[:code.index("```")]
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (our own documentation)
    verify = namespace["verify"]
    keys = SigningKeys.load_or_create(tmp_path, time.time)
    body = b'{"subscription_id":"s"}'
    header = keys.signature_header(int(time.time()), body)
    assert verify(body, header, keys.jwks())  # type: ignore[operator]
    assert not verify(body + b"x", header, keys.jwks())  # type: ignore[operator]
    assert not verify(body, header.replace("kid=ds_", "kid=ds_x"), keys.jwks())  # type: ignore[operator]
    old = keys.signature_header(int(time.time()) - 301, body)
    assert not verify(body, old, keys.jwks())  # type: ignore[operator]
