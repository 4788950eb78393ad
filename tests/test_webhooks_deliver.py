"""One webhook delivery against a real local receiver (tests/webhook_receiver.py).

Development mode throughout (the receiver listens on loopback), except where
a test checks what production mode refuses.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_streams.config import Settings
from trio_streams.webhooks import deliver as deliver_module
from trio_streams.protocol.errors import ProtocolError
from trio_streams.webhooks.deliver import Deliverer, DeliveryResult, check_webhook_destination
from trio_streams.webhooks.keys import SigningKeys
from webhook_receiver import Reply, WebhookReceiver, make_tls, verify_signature

ROOT = Path(__file__).resolve().parent.parent
BODY = json.dumps({"subscription_id": "sub-1", "wake_id": "w_1", "generation": 1, "streams": []}).encode()


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"webhook_dev_mode": True, "webhook_timeout_s": 10.0, "webhook_connect_timeout_s": 5.0}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def keys(tmp_path: Path) -> SigningKeys:
    return SigningKeys.load_or_create(tmp_path, time.time)


@pytest.fixture
def receiver() -> WebhookReceiver:
    with WebhookReceiver() as r:
        yield r  # type: ignore[misc]


def fake_resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        calls.append(host)
        return [ipaddress.ip_address(a) for a in table[host]]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


async def test_signed_post_verifies_against_the_jwks(keys: SigningKeys, receiver: WebhookReceiver) -> None:
    result = await Deliverer(settings(), keys, time.time).deliver(receiver.url("/hooks/a?x=1"), BODY)
    assert result == DeliveryResult(ok=True, done=False, status=200, error=None)
    [request] = receiver.received
    assert (request.method, request.path, request.body) == ("POST", "/hooks/a?x=1", BODY)
    assert request.headers["content-type"] == "application/json"
    assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
    assert verify_signature(request.body, request.headers["webhook-signature"], keys.jwks())


@pytest.mark.skipif(shutil.which("node") is None, reason="node runs the official suite; make test needs it")
async def test_the_official_suites_verifier_accepts_the_signature(keys: SigningKeys, receiver: WebhookReceiver) -> None:
    """The exact check of @durable-streams/server-conformance-tests (verifyWebhookSignature), run in node."""
    await Deliverer(settings(), keys, time.time).deliver(receiver.url(), BODY)
    [request] = receiver.received
    script = ROOT / "tests" / "webhook_verify.mjs"
    verdicts = []
    for body in (request.body, request.body + b" "):
        payload = json.dumps({"rawBody": body.decode(), "signature": request.headers["webhook-signature"],
                              "jwks": keys.jwks()})
        out = subprocess.run(["node", str(script)], input=payload, capture_output=True, text=True, timeout=30,
                             check=True)
        verdicts.append(out.stdout.strip())
    assert verdicts == ["true", "false"]


@pytest.mark.parametrize(("reply", "done"), [
    (Reply(body=b'{"done": true}'), True),
    (Reply(body=b' {"done":true,"extra":[1,2]} '), True),
    (Reply(status=202, body=b'{"done": true}'), True),
    (Reply(body=b'{"done": false}'), False),
    (Reply(body=b'{"done": "true"}'), False),
    (Reply(body=b'{"done": 1}'), False),
    (Reply(body=b'[{"done": true}]'), False),
    (Reply(body=b'{"done": tru'), False),
    (Reply(body=b""), False),
    (Reply(body=b"done", headers={"content-type": "text/plain"}), False),
])
async def test_done_only_for_a_2xx_json_object_with_done_true(keys: SigningKeys, receiver: WebhookReceiver,
                                                              reply: Reply, done: bool) -> None:
    receiver.reply = reply
    result = await Deliverer(settings(), keys, time.time).deliver(receiver.url(), BODY)
    assert (result.ok, result.done, result.status) == (True, done, reply.status)


@pytest.mark.parametrize("status", [400, 404, 409, 500, 503])
async def test_an_error_status_is_a_failed_delivery(keys: SigningKeys, receiver: WebhookReceiver, status: int) -> None:
    receiver.reply = Reply(status=status, body=b'{"done": true}')
    result = await Deliverer(settings(), keys, time.time).deliver(receiver.url(), BODY)
    assert (result.ok, result.done, result.status) == (False, False, status)
    assert str(status) in (result.error or "")


async def test_a_redirect_is_not_followed(keys: SigningKeys, receiver: WebhookReceiver) -> None:
    with WebhookReceiver() as elsewhere:
        receiver.reply = Reply(status=307, body=b"", headers={"location": elsewhere.url()})
        result = await Deliverer(settings(), keys, time.time).deliver(receiver.url(), BODY)
        assert (result.ok, result.done, result.status) == (False, False, 307)
        assert "redirect" in (result.error or "")
        assert elsewhere.received == []


async def test_a_slow_receiver_times_out(keys: SigningKeys, receiver: WebhookReceiver) -> None:
    receiver.reply = Reply(hold=True, body=b'{"done": true}')
    result = await Deliverer(settings(webhook_timeout_s=0.5, webhook_connect_timeout_s=0.5), keys,
                             time.time).deliver(receiver.url(), BODY)
    assert len(receiver.received) == 1  # it arrived; the answer did not come in time
    assert result == DeliveryResult(False, False, None, "no answer within 0.5 s")


async def test_a_huge_response_is_not_read_past_the_limit(keys: SigningKeys, receiver: WebhookReceiver) -> None:
    receiver.reply = Reply(stream_bytes=-1)  # a body without end
    limit = 64 * 1024
    result = await Deliverer(settings(webhook_response_bytes_max=limit), keys, time.time).deliver(receiver.url(), BODY)
    assert (result.ok, result.done, result.status) == (True, False, 200)
    assert f"larger than {limit} bytes" in (result.error or "")
    # The deliverer hung up: the receiver's writes fail, it did not send without end.
    assert receiver.send_failed.wait(10)


async def test_a_huge_done_answer_is_not_done(keys: SigningKeys, receiver: WebhookReceiver) -> None:
    receiver.reply = Reply(body=b'{"done": true, "pad": "' + b"x" * 200_000 + b'"}')
    result = await Deliverer(settings(webhook_response_bytes_max=1024), keys, time.time).deliver(receiver.url(), BODY)
    assert (result.ok, result.done) == (True, False)


async def test_dns_rebinding_to_a_private_address_is_refused_at_delivery(
        keys: SigningKeys, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    # Accepted when the subscription was made (a public-looking name); now it resolves inside.
    resolver = fake_resolver({"hooks.example.com": ["10.0.0.1"]})
    monkeypatch.setattr(deliver_module, "resolve_addresses", resolver)
    result = await Deliverer(settings(), keys, time.time).deliver("https://hooks.example.com/hook", BODY)
    assert (result.ok, result.status) == (False, None)
    assert "resolves to 10.0.0.1" in (result.error or "") and "RFC 1918" in (result.error or "")
    assert resolver.calls == ["hooks.example.com"]


@pytest.mark.parametrize("answer", [["93.184.216.34", "169.254.169.254"], ["fd00:ec2::254"], ["::ffff:10.1.2.3"],
                                    ["127.0.0.1", "10.0.0.1"], []])
async def test_every_resolved_address_must_be_allowed(keys: SigningKeys, monkeypatch: pytest.MonkeyPatch,
                                                      answer: list[str]) -> None:
    monkeypatch.setattr(deliver_module, "resolve_addresses", fake_resolver({"localhost": answer}))
    with WebhookReceiver() as r:
        result = await Deliverer(settings(), keys, time.time).deliver(r.url(host="localhost"), BODY)
        assert not result.ok and r.received == []
        assert "resolves to" in (result.error or ""), result  # refused before any connection was tried


async def test_loopback_resolution_is_refused_outside_development_mode(
        keys: SigningKeys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deliver_module, "resolve_addresses", fake_resolver({"hooks.example.com": ["127.0.0.1"]}))
    result = await Deliverer(settings(webhook_dev_mode=False), keys, time.time).deliver(
        "https://hooks.example.com/x", BODY)
    assert not result.ok and "loopback" in (result.error or "")


async def test_the_connection_goes_to_the_checked_address_with_the_name_as_host(
        keys: SigningKeys, monkeypatch: pytest.MonkeyPatch) -> None:
    # The receiver listens on 127.0.0.2 only: the delivery reaches it only by connecting to the
    # address the check saw, not by resolving "localhost" (127.0.0.1) again.
    monkeypatch.setattr(deliver_module, "resolve_addresses", fake_resolver({"localhost": ["127.0.0.2"]}))
    with WebhookReceiver("127.0.0.2") as r:
        result = await Deliverer(settings(), keys, time.time).deliver(r.url("/h", host="localhost"), BODY)
        assert result.ok, result
        assert r.received[0].headers["host"] == f"localhost:{r.port}"


async def test_an_unreachable_first_address_falls_back_to_the_next(keys: SigningKeys, receiver: WebhookReceiver,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.socket.socket() as unused:  # a bound port that does not listen: connection refused
        await unused.bind(("127.0.0.3", receiver.port))
        monkeypatch.setattr(deliver_module, "resolve_addresses", fake_resolver({"localhost": ["127.0.0.3", "127.0.0.1"]}))
        result = await Deliverer(settings(), keys, time.time).deliver(receiver.url(host="localhost"), BODY)
    assert result.ok, result


async def test_nothing_listening_is_a_failed_delivery(keys: SigningKeys) -> None:
    with trio.socket.socket() as unused:
        await unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        result = await Deliverer(settings(), keys, time.time).deliver(f"http://127.0.0.1:{port}/", BODY)
    assert (result.ok, result.status) == (False, None) and "connect" in (result.error or "")


async def test_a_rejected_url_is_a_failed_delivery_not_an_exception(keys: SigningKeys) -> None:
    result = await Deliverer(settings(webhook_dev_mode=False), keys, time.time).deliver("http://127.0.0.1:9/", BODY)
    assert not result.ok and "rejected" in (result.error or "")


async def test_https_checks_the_certificate_against_the_name_and_sends_sni(
        keys: SigningKeys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files, client_context = make_tls(tmp_path, ["localhost"])
    monkeypatch.setattr(deliver_module, "resolve_addresses", fake_resolver({"localhost": ["127.0.0.1"]}))
    with WebhookReceiver(tls=files, reply=Reply(body=b'{"done": true}')) as r:
        deliverer = Deliverer(settings(), keys, time.time, ssl_context=client_context)
        result = await deliverer.deliver(r.url(host="localhost"), BODY)
        assert result == DeliveryResult(True, True, 200, None)
        assert r.server_names == ["localhost"]
        assert r.received[0].headers["host"] == f"localhost:{r.port}"
        assert verify_signature(r.received[0].body, r.received[0].headers["webhook-signature"], keys.jwks())


async def test_https_with_a_certificate_for_another_name_fails(
        keys: SigningKeys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files, client_context = make_tls(tmp_path, ["other.example"], ["127.0.0.1"])
    monkeypatch.setattr(deliver_module, "resolve_addresses", fake_resolver({"localhost": ["127.0.0.1"]}))
    with WebhookReceiver(tls=files) as r:
        result = await Deliverer(settings(), keys, time.time, ssl_context=client_context).deliver(
            r.url(host="localhost"), BODY)
        assert not result.ok and r.received == []
        assert "certificate" in (result.error or "").lower()


async def test_concurrent_deliveries_are_bounded(keys: SigningKeys, receiver: WebhookReceiver) -> None:
    receiver.reply = Reply(hold=True)
    deliverer = Deliverer(settings(webhook_deliveries_max=2), keys, time.time)
    results: list[DeliveryResult] = []

    async def one() -> None:
        results.append(await deliverer.deliver(receiver.url(), BODY))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
        await trio.to_thread.run_sync(receiver.wait_for_requests, 2)
        await trio.testing.wait_all_tasks_blocked(0.05)
        stats = deliverer.statistics()
        assert (stats.in_flight, stats.waiting) == (2, 3)
        assert len(receiver.received) == 2  # the other three wait for a slot, not for the receiver
        receiver.release()
    assert len(results) == 5 and all(r.ok for r in results)
    assert deliverer.statistics().succeeded == 5


# -- accepting a subscription: the URL and its current DNS answer ---------------------------

@pytest.mark.parametrize(("answer", "accepted"), [
    (["93.184.216.34"], True), (["93.184.216.34", "2606:4700::1111"], True),
    (["10.0.0.1"], False), (["93.184.216.34", "169.254.169.254"], False), (["fd00:ec2::254"], False),
    (["127.0.0.1"], False), ([], False),
])
async def test_a_host_resolving_to_a_refused_address_is_rejected_when_subscribing(
        monkeypatch: pytest.MonkeyPatch, answer: list[str], accepted: bool) -> None:
    monkeypatch.setattr(deliver_module, "resolve_addresses", fake_resolver({"hooks.example.com": answer}))
    url = "https://hooks.example.com/hook"
    if accepted:
        await check_webhook_destination(url, settings(webhook_dev_mode=False))
        return
    with pytest.raises(ProtocolError) as caught:
        await check_webhook_destination(url, settings(webhook_dev_mode=False))
    assert (caught.value.status, caught.value.code) == (400, "WEBHOOK_URL_REJECTED")
    assert "resolves to" in caught.value.message


async def test_a_host_that_does_not_resolve_is_rejected_when_subscribing(monkeypatch: pytest.MonkeyPatch) -> None:
    async def nxdomain(host: str, port: int) -> list[ipaddress.IPv4Address]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(deliver_module, "resolve_addresses", nxdomain)
    with pytest.raises(ProtocolError) as caught:
        await check_webhook_destination("https://nowhere.example/x", settings())
    assert caught.value.code == "WEBHOOK_URL_REJECTED" and "does not resolve" in caught.value.message


async def test_subscribing_checks_the_url_itself_first() -> None:
    with pytest.raises(ProtocolError) as caught:
        await check_webhook_destination("http://10.0.0.1/hook", settings())
    assert caught.value.code == "WEBHOOK_URL_REJECTED"
    await check_webhook_destination("http://127.0.0.1:1/hook", settings())  # development mode, no DNS


# -- receivers that misbehave at the HTTP level: a result, never an exception ---------------

@pytest.mark.parametrize("answer", [
    b"",  # closes without a response
    b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"done\": true}",  # body cut short
    b"HTTP/1.1 200 OK\r\n" + b"x-pad: " + b"a" * 200_000 + b"\r\n\r\n",  # an endless head
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
])
async def test_a_broken_http_answer_is_a_failed_delivery(keys: SigningKeys, answer: bytes) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]

    async def serve_once() -> None:
        connection, _ = await listener.accept()
        with connection:
            await connection.recv(65536)
            if answer:
                with trio.move_on_after(5):
                    await connection.send(answer)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_once)
        result = await Deliverer(settings(webhook_timeout_s=5), keys, time.time).deliver(
            f"http://127.0.0.1:{port}/", BODY)
    listener.close()
    assert (result.ok, result.done, result.status) == (False, False, None) and result.error, result
