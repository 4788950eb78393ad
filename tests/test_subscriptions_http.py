"""Subscriptions end to end through the in-process app (PROTOCOL.md 6–7), with fakes
of the webhook package's interfaces (trio_streams/subscriptions/ports.py) and
virtual time (autojump clock; the wall clock follows trio's): leases, retries
and their persisted schedule run without real waiting."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from trio.testing import MockClock

from conftest import PREFIX, inproc_settings_for
from inproc import InprocClient, running_app
from trio_streams.clock import trio_driven_clock
from trio_streams.config import Settings
from trio_streams.protocol.errors import ProtocolError
from trio_streams.protocol.offsets import format_offset
from trio_streams.subscriptions import ports as ports_module

JSON = {"content-type": "application/json"}
WALL_START = 1_800_000_000.0


# -- fakes of the webhook package -----------------------------------------------


class FakeKeys:
    active_kid = "ds_fakekid"

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": self.active_kid, "use": "sig", "alg": "EdDSA", "x": "AA"}]}


@dataclass(frozen=True)
class Claims:
    subscription_id: str
    generation: int
    wake_id: str


class BadToken(Exception):
    pass


class FakeTokens:
    def issue(self, subscription_id: str, generation: int, wake_id: str, ttl_s: float) -> str:
        return f"tok.{subscription_id}.{generation}.{wake_id}"

    def verify(self, token: str, subscription_id: str) -> Claims:
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != "tok" or parts[1] != subscription_id:
            raise BadToken(token)
        return Claims(parts[1], int(parts[2]), parts[3])


@dataclass(frozen=True)
class Result:
    ok: bool
    done: bool
    status: int | None
    error: str | None


@dataclass
class FakeDeliverer:
    """Records every delivery; answers with ``answer`` (done, ok or failure)."""

    answer: str = "ok"
    calls: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)
    gate: trio.Event | None = None  # when set, deliveries to "slow" URLs wait for it

    async def deliver(self, url: str, body: bytes) -> Result:
        self.calls.append((url, orjson.loads(body), trio.current_time()))
        if self.gate is not None and "slow" in url:
            await self.gate.wait()
        if self.answer == "fail":
            return Result(False, False, 500, "HTTP 500")
        return Result(True, self.answer == "done", 200, None)


async def check_url(url: str) -> None:
    if url.startswith("http://10.") or url.startswith("http://169.254."):
        raise ProtocolError(400, "WEBHOOK_URL_REJECTED", "private address")


def retry_delay_s(attempt: int, rng: random.Random) -> float:
    return float(min(60, 2 ** (attempt - 1)))


@pytest.fixture
def deliverer(monkeypatch: pytest.MonkeyPatch) -> FakeDeliverer:
    fake = FakeDeliverer()

    def load(settings: Settings, clock_wall: Callable[[], float]) -> ports_module.Ports:
        return ports_module.Ports(FakeKeys(), FakeTokens(), fake, BadToken, check_url, retry_delay_s)

    monkeypatch.setattr(ports_module, "load_ports", load)
    return fake


@asynccontextmanager
async def app(data_dir: Path) -> AsyncIterator[InprocClient]:
    settings = Settings(data_dir=str(data_dir))
    async with running_app(settings, trio_driven_clock(WALL_START)) as server:
        yield server.client


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return Path(inproc_settings_for(tmp_path).data_dir)


def sub_url(sub_id: str, action: str = "") -> str:
    return f"{PREFIX}__ds/subscriptions/{sub_id}" + (f"/{action}" if action else "")


async def put_sub(client: InprocClient, sub_id: str, **config: Any) -> Any:
    return await client.request("PUT", sub_url(sub_id), headers=JSON, content=orjson.dumps(config))


async def get_sub(client: InprocClient, sub_id: str) -> dict[str, Any]:
    response = await client.request("GET", sub_url(sub_id))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def create_stream(client: InprocClient, path: str, body: bytes = b"") -> None:
    response = await client.request("PUT", PREFIX + path, headers=JSON, content=body)
    assert response.status_code == 201, response.text


async def append(client: InprocClient, path: str, body: bytes) -> None:
    response = await client.request("POST", PREFIX + path, headers=JSON, content=body)
    assert response.status_code in (200, 204), response.text


async def post(client: InprocClient, sub_id: str, action: str, doc: dict[str, Any], token: str | None = None) -> Any:
    headers = dict(JSON, **({"authorization": f"Bearer {token}"} if token else {}))
    return await client.request("POST", sub_url(sub_id, action), headers=headers, content=orjson.dumps(doc))


async def until(condition: Callable[[], Any], timeout_s: float = 120.0) -> None:
    """Polls in virtual time until ``condition`` (async or not) holds."""
    with trio.fail_after(timeout_s):
        while True:
            value = condition()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return
            await trio.sleep(0.05)


async def wake_events(client: InprocClient, path: str) -> list[dict[str, Any]]:
    response = await client.request("GET", PREFIX + path, params={"offset": "-1"})
    return response.json()  # type: ignore[no-any-return]


HOOK = {"type": "webhook", "pattern": "events/*", "webhook": {"url": "http://localhost:9/hook"}, "lease_ttl_ms": 1000}


# -- control plane ------------------------------------------------------------------


async def test_create_reconfirm_conflict_and_the_described_shape(
        autojump_clock: MockClock, deliverer: FakeDeliverer, data_dir: Path) -> None:
    async with app(data_dir) as client:
        created = await put_sub(client, "s1", **HOOK, description="d")
        assert created.status_code == 201, created.text
        doc = created.json()
        assert "webhook_secret" not in doc
        assert doc["webhook"] == {"url": HOOK["webhook"]["url"], "signing": {  # type: ignore[index]
            "alg": "ed25519", "kid": "ds_fakekid", "jwks_url": f"http://127.0.0.1:4437{PREFIX}__ds/jwks.json"}}
        assert (doc["id"], doc["subscription_id"], doc["type"], doc["status"], doc["lease_ttl_ms"]) == \
            ("s1", "s1", "webhook", "active", 1000)
        assert (await put_sub(client, "s1", **HOOK, description="d")).status_code == 200
        changed = await put_sub(client, "s1", **HOOK, description="other")
        assert (changed.status_code, changed.json()["error"]["code"]) == (409, "SUBSCRIPTION_EXISTS")
        jwks = await client.request("GET", f"{PREFIX}__ds/jwks.json")
        assert jwks.status_code == 200 and jwks.json()["keys"][0]["kid"] == "ds_fakekid"
        assert (jwks.headers["content-type"], jwks.headers["cache-control"]) == \
            ("application/jwk-set+json", "public, max-age=300")
        assert (await client.request("DELETE", sub_url("s1"))).status_code == 204
        assert (await client.request("GET", sub_url("s1"))).status_code == 404


@pytest.mark.parametrize(("config", "status", "code"), [
    ({**HOOK, "webhook": {"url": "http://10.0.0.1/hook"}}, 400, "WEBHOOK_URL_REJECTED"),
    ({**HOOK, "type": "push"}, 400, "INVALID_SUBSCRIPTION_TYPE"),
    ({**HOOK, "lease_ttl_ms": 10}, 400, "INVALID_LEASE_TTL"),
    ({"type": "webhook", "webhook": {"url": "https://x/h"}}, 400, "INVALID_SUBSCRIPTION"),
])
async def test_bad_subscriptions_are_refused(autojump_clock: MockClock, deliverer: FakeDeliverer, data_dir: Path,
                                             config: dict[str, Any], status: int, code: str) -> None:
    async with app(data_dir) as client:
        response = await put_sub(client, "bad", **config)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code)
        assert (await client.request("PUT", sub_url("bad"), headers=JSON, content=b"{")).json()["error"]["code"] == \
            "INVALID_JSON"
        assert (await client.request("PUT", sub_url("a%2Fb"), headers=JSON, content=b"{}")).status_code in (400, 404)
        assert (await client.request("GET", sub_url("nobody"))).status_code == 404


async def test_reserved_paths_are_never_streams(autojump_clock: MockClock, deliverer: FakeDeliverer,
                                                data_dir: Path) -> None:
    async with app(data_dir) as client:
        for path in ("__ds/x", "__ds/subscriptions", "__ds"):  # reserved APIs this server lacks
            response = await client.request("PUT", PREFIX + path, headers=JSON, content=b"[]")
            assert (response.status_code, response.json()["error"]["code"]) == (501, "NOT_IMPLEMENTED")
        for method, status in (("PUT", 400), ("GET", 404), ("POST", 405), ("DELETE", 404), ("PATCH", 405)):
            response = await client.request(method, sub_url("x"), headers=JSON, content=b"[]")
            assert response.status_code == status, (method, response.text)
        assert (await client.request("GET", PREFIX + "__ds/subscriptions/x/unknown")).status_code == 404


async def test_explicit_links_are_added_and_removed_and_a_glob_link_stays(
        autojump_clock: MockClock, deliverer: FakeDeliverer, data_dir: Path) -> None:
    async with app(data_dir) as client:
        await create_stream(client, "events/both", b'{"a":1}')
        assert (await put_sub(client, "m", **HOOK, streams=["manual/a"])).status_code == 201
        add = await post(client, "m", "streams", {"streams": ["manual/b", "events/both"]})
        assert add.status_code == 204
        links = {s["path"]: s["link_type"] for s in (await get_sub(client, "m"))["streams"]}
        assert links == {"events/both": "explicit", "manual/a": "explicit", "manual/b": "explicit"}
        for path in ("manual%2Fb", "events%2Fboth", "manual%2Fnever"):
            assert (await client.request("DELETE", sub_url("m", f"streams/{path}"))).status_code == 204
        links = {s["path"]: s["link_type"] for s in (await get_sub(client, "m"))["streams"]}
        assert links == {"events/both": "glob", "manual/a": "explicit"}


# -- webhooks --------------------------------------------------------------------------


async def test_backfill_links_existing_streams_at_their_tail_without_replay(
        autojump_clock: MockClock, deliverer: FakeDeliverer, data_dir: Path) -> None:
    async with app(data_dir) as client:
        await create_stream(client, "events/old", b'{"n":1}')
        await put_sub(client, "b", **HOOK)
        (link,) = (await get_sub(client, "b"))["streams"]
        assert link["path"] == "events/old" and link["acked_offset"] != format_offset(0)
        await trio.sleep(5)  # a lease and more, in virtual time
        assert deliverer.calls == []


async def test_a_stream_created_later_wakes_and_done_acks_the_snapshot(
        autojump_clock: MockClock, deliverer: FakeDeliverer, data_dir: Path) -> None:
    deliverer.answer = "done"
    async with app(data_dir) as client:
        await put_sub(client, "d", **HOOK)
        await create_stream(client, "events/new", b'{"event":"created"}')
        await until(lambda: deliverer.calls)
        url, body, _ = deliverer.calls[0]
        assert url == HOOK["webhook"]["url"]  # type: ignore[index]
        assert (body["subscription_id"], body["generation"]) == ("d", 1)
        assert body["callback_url"] == f"http://127.0.0.1:4437{PREFIX}__ds/subscriptions/d/callback"
        (stream,) = body["streams"]
        assert stream["path"] == "events/new" and stream["has_pending"] is True
        assert stream["acked_offset"] == format_offset(0)

        async def acked() -> bool:
            return (await get_sub(client, "d"))["streams"][0]["acked_offset"] == stream["tail_offset"]
        await until(acked)
        await trio.sleep(5)
        assert len(deliverer.calls) == 1  # nothing more pending: no new wake


async def first_wake(client: InprocClient, deliverer: FakeDeliverer, sub_id: str,
                     path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A webhook subscription with a long lease woken by a new stream: the delivered
    body, and the callback that acks it all with done."""
    await put_sub(client, sub_id, **{**HOOK, "lease_ttl_ms": 60_000})
    await create_stream(client, path, b'{"e":1}')
    await until(lambda: deliverer.calls)
    body = deliverer.calls[0][1]
    ack = {"wake_id": body["wake_id"], "generation": body["generation"], "done": True,
           "acks": [{"stream": path, "offset": body["streams"][0]["tail_offset"]}]}
    return body, ack


async def test_callback_acks_and_stale_or_foreign_requests_are_fenced(
        autojump_clock: MockClock, deliverer: FakeDeliverer, data_dir: Path) -> None:
    async with app(data_dir) as client:
        body, ack = await first_wake(client, deliverer, "c", "events/x")
        tail = body["streams"][0]["tail_offset"]
        for token, wrong, status, code in [
            (None, {}, 401, "UNAUTHORIZED"),
            ("garbage", {}, 401, "INVALID_WAKE_TOKEN"),
            (body["callback_token"], {"wake_id": "w_other"}, 409, "FENCED"),
            (body["callback_token"], {"generation": body["generation"] + 1}, 409, "FENCED"),
            ("tok.c.0." + body["wake_id"], {}, 409, "FENCED"),  # a token of another generation
        ]:
            response = await post(client, "c", "callback", {**ack, **wrong}, token)
            assert (response.status_code, response.json()["error"]["code"]) == (status, code)
        assert (await get_sub(client, "c"))["streams"][0]["acked_offset"] == format_offset(0)
        response = await post(client, "c", "callback", ack, body["callback_token"])
        assert (response.status_code, response.json()) == (200, {"ok": True, "next_wake": False})
        stale = await post(client, "c", "callback", ack, body["callback_token"])
        assert (stale.status_code, stale.json()["error"]["code"]) == (409, "FENCED")
        assert (await get_sub(client, "c"))["streams"][0]["acked_offset"] == tail


async def test_deletion_fences_in_flight_callbacks_even_after_re_creation(
        autojump_clock: MockClock, deliverer: FakeDeliverer, data_dir: Path) -> None:
    async with app(data_dir) as client:
        body, ack = await first_wake(client, deliverer, "t", "events/t")
        assert (await client.request("DELETE", sub_url("t"))).status_code == 204
        response = await post(client, "t", "callback", ack, body["callback_token"])
        assert (response.status_code, response.json()["error"]["code"]) == (409, "FENCED")
        # Re-created under the same id: its generations continue above the deleted one's,
        # so the old token and wake stay fenced.
        await put_sub(client, "t", **{**HOOK, "lease_ttl_ms": 60_000})
        assert (await get_sub(client, "t"))["generation"] == body["generation"]
        response = await post(client, "t", "callback", ack, body["callback_token"])
        assert (response.status_code, response.json()["error"]["code"]) == (409, "FENCED")


async def test_failed_deliveries_retry_on_the_backoff_and_report_failed(
        autojump_clock: MockClock, deliverer: FakeDeliverer, data_dir: Path) -> None:
    deliverer.answer = "fail"
    async with app(data_dir) as client:
        await put_sub(client, "f", **HOOK)
        await create_stream(client, "events/f", b'{"e":1}')
        await until(lambda: len(deliverer.calls) >= 3)
        gaps = [round(b[2] - a[2], 3) for a, b in zip(deliverer.calls, deliverer.calls[1:3])]
        assert gaps == [1.0, 2.0]
        doc = await get_sub(client, "f")
        assert doc["status"] == "failed" and doc["next_attempt_at"] is not None
        assert [c[1]["generation"] for c in deliverer.calls[:3]] == [1, 2, 3]
        deliverer.answer = "done"
        await until(lambda: len(deliverer.calls) >= 4)

        async def recovered() -> bool:
            return (await get_sub(client, "f"))["status"] == "active"
        await until(recovered)


async def test_the_retry_schedule_survives_a_restart(
        autojump_clock: MockClock, deliverer: FakeDeliverer, data_dir: Path) -> None:
    deliverer.answer = "fail"
    async with app(data_dir) as client:
        await put_sub(client, "r", **HOOK)
        await create_stream(client, "events/r", b'{"e":1}')
        await until(lambda: len(deliverer.calls) >= 4)  # retries 1, 2, 4 s: the next one is 8 s out
        before = await get_sub(client, "r")
    stopped_at = trio.current_time()
    assert before["status"] == "failed"
    async with app(data_dir) as client:
        after = await get_sub(client, "r")
        assert {k: after[k] for k in ("status", "next_attempt_at", "generation")} == \
            {k: before[k] for k in ("status", "next_attempt_at", "generation")}
        calls = len(deliverer.calls)
        await until(lambda: len(deliverer.calls) > calls)
        retried_at = deliverer.calls[calls][2]
        assert retried_at - stopped_at <= 8.0 + 0.5  # at the persisted time, not a fresh schedule
        assert deliverer.calls[calls][1]["generation"] == before["generation"] + 1


async def test_a_webhook_wake_in_flight_at_a_restart_is_sent_again_at_once(
        autojump_clock: MockClock, deliverer: FakeDeliverer, data_dir: Path) -> None:
    """Not when its lease runs out: with a 10-minute lease the work would wait that long."""
    deliverer.answer = "ok"  # accepted; the receiver would call back later
    long_lease = {**HOOK, "lease_ttl_ms": 600_000}
    async with app(data_dir) as client:
        await put_sub(client, "w", **long_lease)
        await create_stream(client, "events/w", b'{"e":1}')
        await until(lambda: len(deliverer.calls) >= 1)
    first = deliverer.calls[0][1]
    restarted_at = trio.current_time()
    async with app(data_dir) as client:
        await until(lambda: len(deliverer.calls) >= 2)
        again_at, again = deliverer.calls[1][2], deliverer.calls[1][1]
        assert again_at - restarted_at < 1.0
        assert (again["wake_id"], again["generation"]) == (first["wake_id"], first["generation"])
        assert again["streams"] == first["streams"]


async def test_a_slow_webhook_blocks_neither_appends_nor_other_subscriptions(
        autojump_clock: MockClock, deliverer: FakeDeliverer, data_dir: Path) -> None:
    deliverer.gate = trio.Event()
    deliverer.answer = "done"
    async with app(data_dir) as client:
        await put_sub(client, "slow", **{**HOOK, "webhook": {"url": "http://localhost:9/slow"}})
        await put_sub(client, "fast", **HOOK)
        await create_stream(client, "events/s", b'{"e":1}')
        await until(lambda: {c[1]["subscription_id"] for c in deliverer.calls} == {"slow", "fast"})
        for n in range(5):
            await append(client, "events/s", orjson.dumps({"n": n}))
        await until(lambda: sum(c[1]["subscription_id"] == "fast" for c in deliverer.calls) >= 2)
        assert sum(c[1]["subscription_id"] == "slow" for c in deliverer.calls) == 1
        deliverer.gate.set()


# -- pull-wake ----------------------------------------------------------------------------


PULL = {"type": "pull-wake", "pattern": "events/*", "wake_stream": "wake/pool", "lease_ttl_ms": 1000}


async def test_pull_wake_claim_ack_release_and_already_claimed(
        autojump_clock: MockClock, deliverer: FakeDeliverer, data_dir: Path) -> None:
    async with app(data_dir) as client:
        await create_stream(client, "wake/pool", b"[]")
        assert (await put_sub(client, "p", **PULL)).status_code == 201
        await create_stream(client, "events/p", b'{"event":"created"}')

        async def woken() -> bool:
            return any(e["subscription_id"] == "p" for e in await wake_events(client, "wake/pool"))
        await until(woken)
        (event,) = await wake_events(client, "wake/pool")
        assert event == {"type": "wake", "subscription_id": "p", "stream": "events/p", "generation": 1,
                         "ts": event["ts"]}
        claim = await post(client, "p", "claim", {"worker": "worker-1"})
        assert claim.status_code == 200, claim.text
        claimed = claim.json()
        assert (claimed["generation"], claimed["lease_ttl_ms"]) == (1, 1000)
        tail = claimed["streams"][0]["tail_offset"]
        busy = await post(client, "p", "claim", {"worker": "worker-2"})
        assert busy.status_code == 409
        assert busy.json()["error"] | {"message": ""} == \
            {"code": "ALREADY_CLAIMED", "current_holder": "worker-1", "generation": 1, "message": ""}
        ack = {"wake_id": claimed["wake_id"], "generation": 1, "acks": [{"stream": "events/p", "offset": tail}],
               "done": True}
        response = await post(client, "p", "ack", ack, claimed["token"])
        assert (response.status_code, response.json()) == (200, {"ok": True, "next_wake": False})
        stale = await post(client, "p", "release", {"wake_id": claimed["wake_id"], "generation": 1}, claimed["token"])
        assert (stale.status_code, stale.json()["error"]["code"]) == (409, "FENCED")
        await append(client, "events/p", b'{"event":"second"}')
        claim2 = (await post(client, "p", "claim", {"worker": "worker-1"})).json()
        assert claim2["generation"] == 2
        release = await post(client, "p", "release", {"wake_id": claim2["wake_id"], "generation": 2}, claim2["token"])
        assert release.status_code == 204
        # Work is still pending after the release: another wake event is written.

        async def rewoken() -> bool:
            return any(e["generation"] == 3 for e in await wake_events(client, "wake/pool"))
        await until(rewoken)


async def test_leases_expire_unless_heartbeats_extend_them(
        autojump_clock: MockClock, deliverer: FakeDeliverer, data_dir: Path) -> None:
    async with app(data_dir) as client:
        await create_stream(client, "wake/pool", b"[]")
        await put_sub(client, "l", **PULL)
        await create_stream(client, "events/l", b'{"e":1}')
        claimed = (await post(client, "l", "claim", {"worker": "w1"})).json()
        heartbeat = {"wake_id": claimed["wake_id"], "generation": claimed["generation"]}
        for _ in range(4):  # 4 × 0.6 s: past the 1 s lease, kept alive by the heartbeats
            await trio.sleep(0.6)
            response = await post(client, "l", "ack", heartbeat, claimed["token"])
            assert (response.status_code, response.json()) == (200, {"ok": True, "next_wake": True})
        assert (await post(client, "l", "claim", {"worker": "w2"})).status_code == 409
        await trio.sleep(1.5)  # no heartbeat: the lease runs out, the pending work wakes again
        late = await post(client, "l", "ack", heartbeat, claimed["token"])
        assert (late.status_code, late.json()["error"]["code"]) == (409, "FENCED")
        claim = await post(client, "l", "claim", {"worker": "w2"})
        assert claim.status_code == 200 and claim.json()["generation"] > claimed["generation"]


async def claim_and_ack_all(client: InprocClient, sub_id: str) -> dict[str, Any]:
    claim = (await post(client, sub_id, "claim", {"worker": "w"})).json()
    acks = [{"stream": v["path"], "offset": v["tail_offset"]} for v in claim["streams"]]
    done = {"wake_id": claim["wake_id"], "generation": claim["generation"], "acks": acks, "done": True}
    response = await post(client, sub_id, "ack", done, claim["token"])
    assert response.status_code == 200, response.text
    return claim  # type: ignore[no-any-return]


@pytest.mark.parametrize("link", ["explicit", "glob"])
async def test_a_linked_stream_deleted_and_created_again_restarts_at_its_start(
        link: str, autojump_clock: MockClock, deliverer: FakeDeliverer, data_dir: Path) -> None:
    """The old cursor (beyond the new stream's tail) must neither hide the new
    stream's data nor show in GET; the restart is in the WAL (same after restart)."""
    config = dict(PULL, streams=["events/a"]) if link == "explicit" else PULL
    async with app(data_dir) as client:
        await create_stream(client, "wake/pool", b"[]")
        await create_stream(client, "events/a", b'[{"e":"' + b"x" * 200 + b'"}]')
        assert (await put_sub(client, "r", **config)).status_code == 201
        await append(client, "events/a", b'{"e":2}')
        old_tail = (await claim_and_ack_all(client, "r"))["streams"][0]["tail_offset"]
        assert (await client.request("DELETE", PREFIX + "events/a")).status_code == 204
        await create_stream(client, "events/a", b'{"e":"new"}')

        async def rewoken() -> bool:
            return any(e["generation"] == 2 and e["stream"] == "events/a" for e in await wake_events(client, "wake/pool"))
        await until(rewoken)
        (view,) = (await get_sub(client, "r"))["streams"]
        assert (view["link_type"], view["acked_offset"]) == (link, format_offset(0))
        claim = await claim_and_ack_all(client, "r")
        assert claim["streams"][0]["has_pending"] and claim["streams"][0]["tail_offset"] < old_tail
    async with app(data_dir) as client:
        (view,) = (await get_sub(client, "r"))["streams"]
        assert view["acked_offset"] == claim["streams"][0]["tail_offset"]


async def test_a_deleted_wake_stream_loses_no_wake_once_created_again(
        autojump_clock: MockClock, deliverer: FakeDeliverer, data_dir: Path) -> None:
    """With its wake stream gone a wake is not announced but stays claimable;
    the application creating the wake stream again gets it announced."""
    async with app(data_dir) as client:
        await create_stream(client, "wake/pool", b"[]")
        assert (await put_sub(client, "d", **PULL)).status_code == 201
        assert (await client.request("DELETE", PREFIX + "wake/pool")).status_code == 204
        await create_stream(client, "events/d", b'{"e":1}')

        async def woken() -> bool:
            return bool((await get_sub(client, "d"))["generation"] == 1)
        await until(woken)
        await create_stream(client, "wake/pool", b"[]")

        async def announced() -> bool:
            return any(e["generation"] == 1 for e in await wake_events(client, "wake/pool"))
        await until(announced)
        claim = await post(client, "d", "claim", {"worker": "w"})
        assert (claim.status_code, claim.json()["generation"]) == (200, 1)


def write_crashed_log(data_dir: Path, links: tuple[Any, ...]) -> None:
    """A log as a crash leaves it: HOOK's subscription "crash" with ``links``, then
    stream 1 ``events/late`` created with one message, and nothing after."""
    from trio_streams.protocol import subscriptions as S
    from trio_streams.protocol.headers import Expiry
    from trio_streams.protocol.state import Created
    from trio_streams.storage.events import encode_event
    from trio_streams.storage.wal import SegmentedLog, encode_record

    config = S.parse_config(orjson.dumps(HOOK), S.Limits())
    events = [S.SubscriptionCreated("crash", config, WALL_START, 1, 0, links, f"http://127.0.0.1:4437{PREFIX}"),
              Created(1, "events/late", "application/json", Expiry(), WALL_START, False, b'{"e":1}\n')]
    with SegmentedLog.open(data_dir / "wal", 1 << 20) as wal:
        for _ in wal.recover(0):
            pass
        wal.append(b"".join(encode_record(*encode_event(e)) for e in events))
        wal.sync()
    (data_dir / "streams").mkdir(exist_ok=True)
    (data_dir / "streams" / f"{1:016x}.dat").write_bytes(b'{"e":1}\n')


@pytest.mark.parametrize("links", [(), (("events/late", 500, False, True),)], ids=["unlinked", "stale-cursor"])
async def test_a_stream_durable_without_its_link_or_its_restart_is_woken_at_start_up(
        links: tuple[Any, ...], autojump_clock: MockClock, deliverer: FakeDeliverer, data_dir: Path) -> None:
    """A crash between a stream's creation and its link (two log batches) loses
    no wake; nor does one before the restart of a link whose cursor counted in
    an older ``events/late`` (acked 500, beyond the new stream's tail)."""
    write_crashed_log(data_dir, links)
    async with app(data_dir):
        await until(lambda: deliverer.calls)
        (stream,) = deliverer.calls[0][1]["streams"]
        assert (stream["path"], stream["acked_offset"], stream["has_pending"]) == \
            ("events/late", format_offset(0), True)


async def test_hostile_data_plane_requests_get_a_clear_4xx(
        autojump_clock: MockClock, deliverer: FakeDeliverer, data_dir: Path) -> None:
    async with app(data_dir) as client:
        await create_stream(client, "wake/pool", b"[]")
        await put_sub(client, "h", **{**PULL, "lease_ttl_ms": 60_000})
        await create_stream(client, "events/h", b'{"e":1}')
        huge = b'{"worker":"' + b"x" * 300_000 + b'"}'
        assert (await client.request("POST", sub_url("h", "claim"), headers=JSON, content=huge)).status_code == 413
        for doc in ({}, {"worker": ""}, {"worker": 7}, {"worker": "x" * 129}):
            response = await post(client, "h", "claim", doc)
            assert (response.status_code, response.json()["error"]["code"]) == (400, "INVALID_CLAIM")
        claimed = (await post(client, "h", "claim", {"worker": "w"})).json()
        base = {"wake_id": claimed["wake_id"], "generation": claimed["generation"]}
        tail = claimed["streams"][0]["tail_offset"]
        beyond = format_offset(int(tail.rpartition("_")[2]) + 1)
        for extra, code in [({"acks": [{"stream": "events/other", "offset": tail}]}, "STREAM_NOT_LINKED"),
                            ({"acks": [{"stream": "events/h", "offset": beyond}]}, "ACK_BEYOND_TAIL"),
                            ({"acks": [{"stream": "events/h", "offset": "now"}]}, "INVALID_OFFSET"),
                            ({"acks": [{"stream": "events/h", "offset": "zz"}]}, "INVALID_OFFSET"),
                            ({"acks": "all"}, "INVALID_ACK"), ({"done": "yes"}, "INVALID_ACK"),
                            ({"generation": "1"}, "INVALID_ACK")]:
            response = await post(client, "h", "ack", {**base, **extra}, claimed["token"])
            assert (response.status_code, response.json()["error"]["code"]) == (400, code), extra
        assert (await get_sub(client, "h"))["streams"][0]["acked_offset"] == format_offset(0)
        claim_on_webhook = await post(client, "c", "claim", {"worker": "w"})
        assert claim_on_webhook.status_code == 404
