"""Access control for the reserved __ds routes (auth/policy.py): the control plane
needs admin, claim a token with read on the subscription's wake stream, the
wake-token routes pass the guard (their handler verifies the wake token), the
JWKS is public."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import PREFIX, inproc_settings_for
from inproc import running_app
from test_subscriptions_http import FakeDeliverer, deliverer  # noqa: F401 (a fixture)
from trio_streams.auth.config import auth_config
from trio_streams.auth.policy import PUBLIC, SERVICE, STREAM, SUBSCRIPTION_ADMIN as ADMIN, request_kind
from trio_streams.auth.tokens import token_digest


@pytest.mark.parametrize(("method", "path", "kind"), [
    ("PUT", "__ds/subscriptions/s", ADMIN),
    ("GET", "__ds/subscriptions/s", ADMIN),
    ("DELETE", "__ds/subscriptions/s", ADMIN),
    ("POST", "__ds/subscriptions/s/streams", ADMIN),
    ("DELETE", "__ds/subscriptions/s/streams/a%2Fb", ADMIN),
    ("POST", "__ds/subscriptions/s/claim", SERVICE),
    ("POST", "__ds/subscriptions/s/ack", PUBLIC),
    ("POST", "__ds/subscriptions/s/callback", PUBLIC),
    ("POST", "__ds/subscriptions/s/release", PUBLIC),
    ("GET", "__ds/subscriptions/s/ack", ADMIN),  # not a wake-token route: no way around the admin scope
    ("GET", "__ds/jwks.json", PUBLIC),
    ("GET", "__ds/anything", ADMIN),
    ("OPTIONS", "__ds/subscriptions/s", PUBLIC),
    ("GET", "__dsx/stream", STREAM),  # only the whole first segment is reserved
])
def test_reserved_route_kinds(method: str, path: str, kind: str) -> None:
    assert request_kind(method, PREFIX + path, PREFIX, metrics_require_admin=False) == kind


TOKENS = {"admin": ["admin"], "worker": ["read:wake/**"], "other": ["read:elsewhere/**", "write:**"]}


def bearer(name: str | None) -> dict[str, str]:
    return {"content-type": "application/json", **({} if name is None else {"authorization": f"Bearer tok-{name}"})}


async def test_access_to_subscription_routes(tmp_path: Path, deliverer: FakeDeliverer) -> None:  # noqa: F811
    auth = auth_config({"tokens": [{"name": n, "sha256": token_digest(f"tok-{n}"), "scopes": s}
                                   for n, s in TOKENS.items()]})
    sub = f"{PREFIX}__ds/subscriptions/p"
    config = orjson.dumps({"type": "pull-wake", "streams": ["events/a"], "wake_stream": "wake/pool"})
    async with running_app(inproc_settings_for(tmp_path), auth=auth) as server:
        client = server.client

        async def status(method: str, path: str, who: str | None, body: Any = b"{}") -> int:
            response = await client.request(method, path, headers=bearer(who), content=body)
            return response.status_code

        assert await status("PUT", sub, None, config) == 401
        assert await status("PUT", sub, "other", config) == 403
        assert await status("PUT", sub, "admin", config) == 201
        assert await status("GET", sub, "worker", None) == 403
        assert await status("GET", sub, "admin", None) == 200
        claim = orjson.dumps({"worker": "w"})
        assert await status("POST", f"{sub}/claim", None, claim) == 401
        assert await status("POST", f"{sub}/claim", "other", claim) == 403  # no read on wake/pool
        response = await client.request("POST", f"{sub}/claim", headers=bearer("worker"), content=claim)
        assert response.status_code == 200, response.text
        claimed = response.json()
        # The wake-scoped token is all a release needs; a service token is not one.
        release = orjson.dumps({"wake_id": claimed["wake_id"], "generation": claimed["generation"]})
        assert await status("POST", f"{sub}/release", "admin", release) == 401
        response = await client.request("POST", f"{sub}/release", content=release, headers={
            "content-type": "application/json", "authorization": f"Bearer {claimed['token']}"})
        assert response.status_code == 204, response.text
        assert await status("GET", f"{PREFIX}__ds/jwks.json", None, None) == 200


async def test_without_auth_the_control_plane_is_open_even_to_browsers(
        tmp_path: Path, deliverer: FakeDeliverer) -> None:  # noqa: F811
    """Like stream routes, not like /admin/: fetch from Node and browsers sends Sec-Fetch-Mode."""
    config = orjson.dumps({"type": "pull-wake", "streams": ["events/a"], "wake_stream": "wake/pool"})
    headers = {"content-type": "application/json", "sec-fetch-mode": "cors", "origin": "https://app.example"}
    async with running_app(inproc_settings_for(tmp_path)) as server:
        response = await server.client.request("PUT", f"{PREFIX}__ds/subscriptions/open", headers=headers,
                                               content=config)
        assert response.status_code == 201, response.text
        assert (await server.client.request("GET", "/admin/backup", headers=headers)).status_code == 403
