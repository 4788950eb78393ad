"""The TOML config file: settings by their field names, [auth], errors naming the key, precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_streams.auth.scopes import Scope
from trio_streams.auth.tokens import token_digest
from trio_streams.config_file import load_configuration

DIGEST = token_digest("tok")


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "trio-streams.toml"
    path.write_text(text)
    return str(path)


def test_settings_and_auth_from_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
port = 9000
long_poll_timeout_ms = 1500
send_timeout_s = 2          # an integer is a fine float
auth_query_token = true
cors_allow_origins = "https://app.example"

[[auth.tokens]]
name = "ingest"
sha256 = "{DIGEST.upper()}"
scopes = ["write:chat/**", "read"]
""")
    config = load_configuration(path, environ={})
    s = config.settings
    assert (s.port, s.long_poll_timeout_ms, s.send_timeout_s, s.auth_query_token) == (9000, 1500, 2.0, True)
    assert s.cors_allow_origins == "https://app.example"
    (token,) = config.auth.tokens
    assert token.name == "ingest" and token.sha256 == bytes.fromhex(DIGEST)
    assert token.scopes == (Scope("write", ("chat", "**")), Scope("read"))
    assert config.auth.configured


def test_precedence_flags_then_env_then_file(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 9000\nhost = \"127.0.0.2\"\nfsync = \"never\"\n")
    env = {"TRIO_STREAMS_PORT": "9001", "TRIO_STREAMS_HOST": "127.0.0.3"}
    s = load_configuration(path, environ=env, port=9002).settings
    assert (s.port, s.host, s.fsync) == (9002, "127.0.0.3", "never")


def test_file_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 9005\n")
    assert load_configuration(None, environ={"TRIO_STREAMS_CONFIG": path}).settings.port == 9005
    assert not load_configuration(None, environ={}).auth.configured


@pytest.mark.parametrize(("text", "named"), [
    ("prot = 1\n", "'prot'"),
    ("port = \"80\"\n", "port"),
    ("port = 1.5\n", "port"),
    ("auth_query_token = 1\n", "auth_query_token"),
    ("send_timeout_s = true\n", "send_timeout_s"),
    ("fsync = \"sometimes\"\n", "fsync"),
    ("port = \n", "trio-streams.toml"),  # TOML syntax
    ("[auth]\nusers = []\n", "'users'"),
    ("[[auth.tokens]]\nname = \"a\"\nsha256 = \"abc\"\nscopes = [\"read\"]\n", "auth.tokens[0].sha256"),
    (f"[[auth.tokens]]\nname = \"a\"\nsha256 = \"{DIGEST}\"\nscopes = [\"raed\"]\n", "auth.tokens[0].scopes"),
    (f"[[auth.tokens]]\nname = \"a\"\nsha256 = \"{DIGEST}\"\nscopes = \"read\"\n", "auth.tokens[0].scopes"),
    (f"[[auth.tokens]]\nname = \"a\"\nsha256 = \"{DIGEST}\"\nscopes = []\ntoken = \"x\"\n", "'token'"),
    (f"[[auth.tokens]]\nname = \"a\"\nsha256 = \"{DIGEST}\"\nscopes = []\n"
     f"[[auth.tokens]]\nname = \"a\"\nsha256 = \"{DIGEST}\"\nscopes = []\n", "unique"),
    (f"[[auth.tokens]]\nname = \"a\"\nsha256 = \"{DIGEST}\"\nscopes = []\n"
     f"[[auth.tokens]]\nname = \"b\"\nsha256 = \"{DIGEST}\"\nscopes = []\n", "same sha256"),
    ("[auth.jwt]\nissuer = \"x\"\n", "exactly one of jwks_file and jwks_url"),
    ("[auth.jwt]\njwks_url = \"ftp://x\"\n", "jwks_url"),
    ("[auth.jwt]\njwks_url = \"https://x\"\nalgorithms = [\"none\"]\n", "algorithms"),
    ("[auth.jwt]\njwks_url = \"https://x\"\nleeway = 5\n", "'leeway'"),
    ("[auth.jwt]\njwks_file = \"/nonexistent/jwks.json\"\n", None),  # read when the app is built
])
def test_invalid_file_is_one_line_naming_the_key(tmp_path: Path, text: str, named: str | None) -> None:
    path = write(tmp_path, text)
    if named is None:
        load_configuration(path, environ={})
        return
    with pytest.raises(ValueError) as raised:
        load_configuration(path, environ={})
    message = str(raised.value)
    assert named in message and "\n" not in message, message
    assert message.startswith(f"config file {path}: "), message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nope.toml"):
        load_configuration(str(tmp_path / "nope.toml"), environ={})


def test_huge_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = write(tmp_path, "# " + "x" * (2 * 1024 * 1024) + "\n")
    with pytest.raises(ValueError, match="larger than"):
        load_configuration(path, environ={})
