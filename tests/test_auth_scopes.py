"""Scopes and the request policy as pure functions: parse, glob-match, and what each request needs."""

from __future__ import annotations

import pytest

from trio_streams.auth import scopes
from trio_streams.auth.policy import ADMIN, PUBLIC, STREAM, Need, request_kind, stream_needs
from trio_streams.auth.scopes import Scope, allows, glob_matches, parse_scope, parse_scopes

GLOB_TABLE = [
    # (glob, path, matches)
    ("chat/**", "chat/a", True),
    ("chat/**", "chat/a/b/c", True),
    ("chat/**", "chat", False),  # a trailing /** needs a segment below, as in .gitignore
    ("chat/**", "chatter/a", False),
    ("chat/*", "chat/a", True),
    ("chat/*", "chat/a/b", False),
    ("chat/*/log", "chat/room/log", True),
    ("chat/*/log", "chat/room/x/log", False),
    ("chat/**/log", "chat/log", True),  # ** in the middle matches no segment too
    ("chat/**/log", "chat/a/b/log", True),
    ("chat/**/log", "chat/a/b/logs", False),
    ("room-*", "room-1", True),
    ("room-*", "room-", True),
    ("room-*", "roo-1", False),
    ("*-archive", "x-archive", True),
    ("a*b*c", "aXXbYYc", True),
    ("a*b*c", "abcab", False),
    ("a*b*c", "abc", True),
    ("ab*ba", "aba", False),  # the two literal ends may not overlap
    ("exact/path", "exact/path", True),
    ("exact/path", "exact/path/more", False),
    ("**", "anything/at/all", True),
    ("*", "one", True),
    ("*", "one/two", False),
]


@pytest.mark.parametrize(("glob", "path", "expected"), GLOB_TABLE)
def test_glob_table(glob: str, path: str, expected: bool) -> None:
    assert glob_matches(tuple(glob.split("/")), path) is expected


def test_glob_matching_is_polynomial_on_hostile_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """``**`` is memoised over (pattern, path) positions: each segment pair is compared
    once at most. The plain recursion compares them combinatorially many times."""
    calls = []
    original = scopes._segment_matches

    def counting(glob: str, segment: str) -> bool:
        calls.append((glob, segment))
        return original(glob, segment)

    monkeypatch.setattr(scopes, "_segment_matches", counting)
    pattern = tuple("**/a*b/**/x/**/y/**/c".split("/"))
    segments = ["ab"] * 30
    assert not glob_matches(pattern, "/".join(segments))
    assert len(calls) <= len(pattern) * len(segments)


SCOPE_TABLE = [
    # (granted, action, path, allowed)
    (["read"], "read", "a/b", True),
    (["read"], "write", "a/b", False),
    (["read:chat/**"], "read", "chat/x", True),
    (["read:chat/**"], "read", "other/x", False),
    (["read:chat/**", "write:chat/*/in"], "write", "chat/r/in", True),
    (["read:chat/**", "write:chat/*/in"], "write", "chat/r/out", False),
    (["admin"], "admin", None, True),
    (["admin:x/**"], "admin", None, False),  # admin acts on no stream: a path-limited admin scope grants nothing
    (["delete:tmp/**"], "delete", "tmp/1", True),
    ([], "read", "x", False),
]


@pytest.mark.parametrize(("granted", "action", "path", "expected"), SCOPE_TABLE)
def test_scope_table(granted: list[str], action: str, path: str | None, expected: bool) -> None:
    assert allows(parse_scopes(granted), action, path) is expected


def test_parse_scope_forms() -> None:
    assert parse_scope("read") == Scope("read")
    assert parse_scope("write:chat/**") == Scope("write", ("chat", "**"))
    assert str(parse_scope("write:chat/**")) == "write:chat/**"
    assert parse_scopes("read write:a/*") == (Scope("read"), Scope("write", ("a", "*")))


@pytest.mark.parametrize("bad", ["", "reed", "read:", "read:/abs", "read:a//b", "read:a/x**/b", "READ", "all"])
def test_parse_scope_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_scope(bad)


POLICY_TABLE = [
    # (method, url path, kind)
    ("GET", "/healthz", PUBLIC),
    ("GET", "/healthz/ready", PUBLIC),
    ("GET", "/metrics", PUBLIC),
    ("POST", "/admin/checkpoint", ADMIN),
    ("GET", "/admin/backup", ADMIN),
    ("GET", "/v1/stream/a", STREAM),
    ("HEAD", "/v1/stream/a", STREAM),
    ("PUT", "/v1/stream/a", STREAM),
    ("POST", "/v1/stream/a", STREAM),
    ("DELETE", "/v1/stream/a", STREAM),
    ("OPTIONS", "/v1/stream/a", PUBLIC),  # preflight: browsers send no token
    ("PATCH", "/v1/stream/a", PUBLIC),  # 405 from the router
    ("GET", "/elsewhere", PUBLIC),  # 404 from the router
]


@pytest.mark.parametrize(("method", "path", "kind"), POLICY_TABLE)
def test_request_kind_table(method: str, path: str, kind: str) -> None:
    assert request_kind(method, path, "/v1/stream/", metrics_require_admin=False) == kind


def test_metrics_protected_when_asked() -> None:
    assert request_kind("GET", "/metrics", "/v1/stream/", metrics_require_admin=True) == ADMIN


def test_stream_needs() -> None:
    assert stream_needs("GET", "a") == (Need("read", "a"),)
    assert stream_needs("HEAD", "a") == (Need("read", "a"),)
    assert stream_needs("POST", "a") == (Need("write", "a"),)
    assert stream_needs("DELETE", "a") == (Need("delete", "a"),)
    assert stream_needs("PUT", "fork", "src") == (Need("write", "fork"), Need("read", "src"))
