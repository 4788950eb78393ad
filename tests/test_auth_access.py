"""The access-control table: (token, method, path) → status, through the in-process app.

Static tokens with path-scoped scopes (issue 10). The guard answers before
any stream is touched, so 401 and 403 never depend on whether the stream
exists; "PASS" rows only say the guard let the request through (the route
decides the rest, e.g. /admin/* endpoints that live in another module).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import PREFIX, assert_error, inproc_settings_for
from inproc import InprocServer, running_app
from trio_streams.auth.config import auth_config
from trio_streams.auth.tokens import token_digest

TOKENS = {
    "reader": ["read:chat/**"],
    "writer": ["write:chat/**", "read:chat/**"],
    "deleter": ["delete"],
    "admin": ["admin"],
    "all": ["read", "write", "delete", "admin"],
    "room": ["read:chat/*/log", "write:logs/*"],
}
TEXT = {"content-type": "text/plain"}
# SSE responses end after this, so the table's SSE reads return.
SSE_CONNECTION_S = 0.2
# Streams created before the table, by the "all" token.
EXISTING = ["chat/a", "chat/r1/log", "chat/r1/x/log", "logs/1", "other/x", "other/del"]
PASS = "PASS"

TABLE: list[tuple[str | None, str, str, dict[str, str], Any]] = [
    # (token, method, path or URL path, extra headers, expected status)
    (None, "GET", "chat/a", {}, 401),
    ("bogus", "GET", "chat/a", {}, 401),
    ("reader", "GET", "chat/a", {}, 200),
    ("reader", "HEAD", "chat/a", {}, 200),
    ("reader", "GET", "chat/a?offset=-1&live=long-poll", {}, 200),
    ("reader", "GET", "chat/a?offset=-1&live=sse", {}, 200),
    ("reader", "GET", "other/x", {}, 403),
    ("reader", "GET", "chat", {}, 403),  # chat/** is below chat, not chat itself
    ("reader", "POST", "chat/a", TEXT, 403),
    ("reader", "PUT", "chat/new", TEXT, 403),
    ("reader", "DELETE", "chat/a", {}, 403),
    ("reader", "GET", "missing-elsewhere", {}, 403),  # 403 before 404: no probing for names
    ("writer", "PUT", "chat/created", TEXT, 201),
    ("writer", "POST", "chat/a", TEXT, 204),
    ("writer", "POST", "chat/created", {"stream-closed": "true"}, 204),  # close
    ("writer", "PUT", "other/new", TEXT, 403),
    ("writer", "DELETE", "chat/a", {}, 403),
    ("writer", "PUT", "chat/fork-ok", TEXT | {"stream-forked-from": PREFIX + "chat/a"}, 201),
    ("writer", "PUT", "chat/fork-bad", TEXT | {"stream-forked-from": PREFIX + "other/x"}, 403),  # no read on source
    ("deleter", "DELETE", "other/del", {}, 204),
    ("deleter", "GET", "other/x", {}, 403),
    ("admin", "GET", "chat/a", {}, 403),
    ("room", "GET", "chat/r1/log", {}, 200),
    ("room", "GET", "chat/r1/x/log", {}, 403),
    ("room", "POST", "logs/1", TEXT, 204),
    ("room", "POST", "logs/1/2", TEXT, 403),
    ("all", "GET", "other/x", {}, 200),
    ("all", "GET", "chat", {}, 404),  # allowed; simply not there
    (None, "OPTIONS", "chat/a", {"origin": "https://x.example", "access-control-request-method": "PUT"}, 204),
    (None, "GET", "/healthz", {}, 200),
    (None, "GET", "/metrics", {}, 200),
    (None, "POST", "/admin/checkpoint", {}, 401),
    ("reader", "POST", "/admin/checkpoint", {}, 403),
    ("admin", "POST", "/admin/checkpoint", {}, PASS),
    ("admin", "GET", "/admin/backup", {}, PASS),
    (None, "PATCH", "chat/a", {}, 405),
    ("reader", "GET", "/not-a-stream", {}, 404),
]


def settings_for(tmp_path: Path, **overrides: Any) -> Any:
    return inproc_settings_for(tmp_path, sse_connection_s=SSE_CONNECTION_S, **overrides)


def auth_for(tokens: dict[str, list[str]]) -> Any:
    return auth_config({"tokens": [{"name": n, "sha256": token_digest(f"tok-{n}"), "scopes": s}
                                   for n, s in tokens.items()]})


def bearer(name: str | None) -> dict[str, str]:
    return {} if name is None else {"authorization": f"Bearer tok-{name}"}


def url(path: str) -> str:
    return path if path.startswith("/") else PREFIX + path


async def test_access_table(tmp_path: Path) -> None:
    async with running_app(settings_for(tmp_path), auth=auth_for(TOKENS)) as srv:
        for name in EXISTING:
            resp = await srv.client.put(url(name), headers=TEXT | bearer("all"), content=b"hello")
            assert resp.status_code == 201, (name, resp.status_code, resp.body)
        wrong = []
        for token, method, path, headers, expected in TABLE:
            resp = await srv.client.request(method, url(path), headers=headers | bearer(token),
                                            content=b"x" if method == "POST" and "stream-closed" not in headers else None)
            ok = resp.status_code not in (401, 403) if expected == PASS else resp.status_code == expected
            if not ok:
                wrong.append(f"{token} {method} {path}: {resp.status_code} (expected {expected}) {resp.body[:120]!r}")
        assert not wrong, "\n".join(wrong)


@pytest.fixture
async def guarded(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with running_app(settings_for(tmp_path), auth=auth_for(TOKENS)) as srv:
        yield srv


async def test_401_shape(guarded: InprocServer) -> None:
    resp = await guarded.client.get(url("chat/a"))
    assert_error(resp, 401, "UNAUTHORIZED")
    assert resp.headers["www-authenticate"].startswith("Bearer ")
    assert "error=" not in resp.headers["www-authenticate"]  # no token sent: no error code (RFC 6750 3.1)
    resp = await guarded.client.get(url("chat/a"), headers=bearer("bogus"))
    assert_error(resp, 401, "UNAUTHORIZED")
    assert 'error="invalid_token"' in resp.headers["www-authenticate"]
    assert "tok-bogus" not in resp.text


async def test_403_shape(guarded: InprocServer) -> None:
    resp = await guarded.client.post(url("chat/a"), headers=TEXT | bearer("reader"), content=b"x")
    assert_error(resp, 403, "FORBIDDEN")
    assert 'error="insufficient_scope"' in resp.headers["www-authenticate"]


@pytest.mark.parametrize("header", [
    "Basic dXNlcjpwYXNz",  # another scheme
    "Bearer",  # no token
    "Bearer tok-reader, Bearer tok-all",  # two headers, joined
    "Bearer tok reader",  # not a b64token
    "Bearer " + "a" * 9000,  # longer than auth_token_bytes_max
])
async def test_malformed_authorization_is_401(guarded: InprocServer, header: str) -> None:
    resp = await guarded.client.get(url("chat/a"), headers={"authorization": header})
    assert_error(resp, 401, "UNAUTHORIZED")


async def test_header_and_query_token_together_is_400(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, auth_query_token=True)
    async with running_app(settings, auth=auth_for(TOKENS)) as srv:
        resp = await srv.client.get(url("chat/a"), params={"access_token": "tok-reader"}, headers=bearer("reader"))
        assert_error(resp, 400)


async def test_query_token_off_by_default(guarded: InprocServer) -> None:
    resp = await guarded.client.get(url("chat/a"), params={"access_token": "tok-all"})
    assert_error(resp, 401, "UNAUTHORIZED")
    assert "disabled" in resp.json()["error"]["message"]
    # Off, the parameter is just an unknown one: the header decides.
    both = await guarded.client.get(url("chat/a"), params={"access_token": "x"}, headers=bearer("reader"))
    assert both.status_code == 404  # past the guard; this fixture created no stream


async def test_query_token_on_get_only(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, auth_query_token=True)
    async with running_app(settings, auth=auth_for(TOKENS)) as srv:
        put = await srv.client.put(url("chat/q"), params={"access_token": "tok-all"}, headers=TEXT)
        assert_error(put, 401, "UNAUTHORIZED")
        created = await srv.client.put(url("chat/q"), headers=TEXT | bearer("all"), content=b"hi")
        assert created.status_code == 201
        got = await srv.client.get(url("chat/q"), params={"access_token": "tok-reader", "offset": "-1"})
        assert got.status_code == 200 and got.body == b"hi"
        head = await srv.client.head(url("chat/q"), params={"access_token": "tok-reader"})
        assert head.status_code == 401
        sse = await srv.client.get(url("chat/q"), params={"access_token": "tok-reader", "offset": "-1", "live": "sse"})
        assert sse.status_code == 200 and b"hi" in sse.body


async def test_metrics_require_admin(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, metrics_require_admin=True)
    async with running_app(settings, auth=auth_for(TOKENS)) as srv:
        assert (await srv.client.get("/metrics")).status_code == 401
        assert (await srv.client.get("/metrics", headers=bearer("reader"))).status_code == 403
        assert (await srv.client.get("/metrics", headers=bearer("admin"))).status_code == 200
        assert (await srv.client.get("/healthz")).status_code == 200  # always public


async def test_without_auth_everything_is_open_but_admin_answers_loopback_only(tmp_path: Path) -> None:
    async with running_app(settings_for(tmp_path)) as srv:
        resp = await srv.client.put(url("open"), headers=TEXT | {"authorization": "Bearer whatever"})
        assert resp.status_code == 201  # no auth configured: the header is ignored, as before
        assert (await srv.client.post("/admin/checkpoint")).status_code not in (401, 403)
        original = srv.client._scope

        def from_afar(*args: Any) -> dict[str, Any]:
            return original(*args) | {"client": ("192.0.2.7", 40000)}

        srv.client._scope = from_afar  # type: ignore[method-assign]
        assert_error(await srv.client.post("/admin/checkpoint"), 403, "FORBIDDEN")
        assert (await srv.client.get(url("open"))).status_code == 200


async def test_protected_metrics_without_auth_answer_loopback_only(tmp_path: Path) -> None:
    async with running_app(settings_for(tmp_path, metrics_require_admin=True)) as srv:
        assert (await srv.client.get("/metrics")).status_code == 200  # the harness's peer is 127.0.0.1
        original = srv.client._scope
        srv.client._scope = lambda *args: original(*args) | {"client": ("2001:db8::7", 40000)}  # type: ignore[method-assign]
        assert_error(await srv.client.get("/metrics"), 403, "FORBIDDEN")
        assert (await srv.client.get("/healthz")).status_code == 200
