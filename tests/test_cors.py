"""CORS: the allow-list decides per request from Origin; preflight allows only the protocol's headers.

The preflight table runs in process for each configuration: (settings,
auth on or off, Origin) → the Access-Control-Allow-Origin expected (None:
absent). Every response — preflight, data, error — is checked the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import PREFIX, inproc_settings_for
from inproc import running_app
from trio_streams.auth.config import auth_config
from trio_streams.auth.tokens import token_digest
from trio_streams.config import Settings
from trio_streams.http.asgi import ALLOWED_REQUEST_HEADERS

APP = "https://app.example"
EVIL = "https://evil.example"
DEV = "http://localhost:3000"
AUTH = auth_config({"tokens": [{"name": "all", "sha256": token_digest("tok"), "scopes": ["read", "write", "delete"]}]})
TOKEN = {"authorization": "Bearer tok"}

# (settings overrides, auth on, Origin sent, expected Access-Control-Allow-Origin)
PREFLIGHT_TABLE: list[tuple[dict[str, Any], bool, str | None, str | None]] = [
    ({}, False, APP, "*"),  # no auth, default: open, as before
    ({}, False, None, "*"),
    ({}, True, APP, None),  # auth on, default: no origin
    ({}, True, EVIL, None),
    ({"cors_allow_origins": f"{APP}, {DEV}"}, True, APP, APP),
    ({"cors_allow_origins": f"{APP}, {DEV}"}, True, DEV, DEV),
    ({"cors_allow_origins": f"{APP}, {DEV}"}, True, "http://localhost:3001", None),
    ({"cors_allow_origins": f"{APP}, {DEV}"}, True, "http://app.example", None),  # scheme counts
    ({"cors_allow_origins": f"{APP}, {DEV}"}, True, "https://APP.example", "https://APP.example"),  # host case does not
    ({"cors_allow_origins": f"{APP}/"}, True, "https://app.example:443", "https://app.example:443"),  # default port
    ({"cors_allow_origins": f"{APP}, {DEV}"}, True, "null", None),
    ({"cors_allow_origins": f"{APP}, {DEV}"}, True, None, None),
    ({"cors_allow_origins": f"{APP}"}, False, EVIL, None),  # a list applies without auth too
    ({"cors_allow_origins": "*"}, True, EVIL, "*"),  # '*' with auth only when written
    ({"cors_allow_origins": "none"}, False, APP, None),
    ({"cors_allow_origin": APP}, True, APP, APP),  # the old name still works
]


def settings(tmp_path: Path, overrides: dict[str, Any]) -> Settings:
    return inproc_settings_for(tmp_path, **overrides)


def check_cors(headers: Any, origin: str | None, expected: str | None, overrides: dict[str, Any]) -> None:
    assert headers.get("access-control-allow-origin") == expected, (overrides, origin, dict(headers))
    assert "access-control-allow-credentials" not in headers  # bearer tokens only, never cookies
    if expected is not None:
        assert "stream-next-offset" in headers["access-control-expose-headers"].lower()
    if expected != "*":  # the answer depends on Origin: caches must key on it
        assert "origin" in headers.get("vary", "").lower(), dict(headers)


@pytest.mark.parametrize(("overrides", "auth_on", "origin", "expected"), PREFLIGHT_TABLE)
async def test_preflight_table(tmp_path: Path, overrides: dict[str, Any], auth_on: bool, origin: str | None,
                               expected: str | None) -> None:
    async with running_app(settings(tmp_path, overrides), auth=AUTH if auth_on else None) as srv:
        ask = {"access-control-request-method": "DELETE",
               "access-control-request-headers": "authorization, content-type, x-evil-header"}
        resp = await srv.client.options(PREFIX + "s", headers=ask | ({"origin": origin} if origin else {}))
        assert resp.status_code == 204
        check_cors(resp.headers, origin, expected, overrides)
        allowed = resp.headers["access-control-allow-headers"]
        assert allowed == ALLOWED_REQUEST_HEADERS  # what the protocol uses, never an echo of the request
        assert "x-evil-header" not in allowed.lower()
        # The same decision on real responses, success and error alike.
        put = await srv.client.put(PREFIX + "s", headers={"content-type": "text/plain"} | TOKEN
                                   | ({"origin": origin} if origin else {}))
        assert put.status_code == 201
        check_cors(put.headers, origin, expected, overrides)
        missing = await srv.client.get(PREFIX + "missing", headers=TOKEN | ({"origin": origin} if origin else {}))
        assert missing.status_code == 404
        check_cors(missing.headers, origin, expected, overrides)


async def test_cross_origin_delete_needs_a_token(tmp_path: Path) -> None:
    """The issue's example: a page on another origin deleting a stream. With auth on it gets
    401, and no Allow-Origin, so the page cannot even read the answer."""
    async with running_app(settings(tmp_path, {}), auth=AUTH) as srv:
        assert (await srv.client.put(PREFIX + "victim", headers={"content-type": "text/plain"} | TOKEN)).status_code == 201
        resp = await srv.client.delete(PREFIX + "victim", headers={"origin": EVIL})
        assert resp.status_code == 401
        assert "access-control-allow-origin" not in resp.headers
        assert (await srv.client.head(PREFIX + "victim", headers=TOKEN)).status_code == 200


@pytest.mark.parametrize("bad", ["ftp://x.example", "https://app.example/path", "app.example", "https://", "*, https://a.example"])
def test_bad_allow_list_is_refused_at_start(bad: str) -> None:
    with pytest.raises(ValueError, match="cors_allow_origins"):
        Settings(cors_allow_origins=bad)
