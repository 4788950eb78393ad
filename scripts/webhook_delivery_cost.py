#!/usr/bin/env python3
"""What webhook pieces cost: signing, wake tokens, URL checks (µs, on the event loop), and
deliveries to a local receiver (one client and connection per delivery, by design).

    .venv/bin/python scripts/webhook_delivery_cost.py [--deliveries 400] [--concurrency 1,16]

Prints microseconds per operation (median of 5 runs), and for deliveries over HTTP and HTTPS to
a loopback receiver (tests/webhook_receiver.py, a threaded http.server, so the receiver is part
of what is measured): deliveries per second and the median and p99 latency.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from webhook_receiver import WebhookReceiver, make_tls  # noqa: E402

from trio_streams.config import Settings  # noqa: E402
from trio_streams.webhooks.deliver import Deliverer  # noqa: E402
from trio_streams.webhooks.keys import SigningKeys  # noqa: E402
from trio_streams.webhooks.tokens import WakeTokens  # noqa: E402
from trio_streams.webhooks.urls import check_webhook_url  # noqa: E402

BODY = b'{"subscription_id":"sub-1","wake_id":"w_1","generation":7,"streams":[{"path":"events/abc",' \
       b'"link_type":"glob","acked_offset":"0000000000000001_0000000000000042",' \
       b'"tail_offset":"0000000000000002_0000000000000084","has_pending":true}],' \
       b'"callback_url":"https://server.example/v1/stream/__ds/subscriptions/sub-1/callback","callback_token":"x"}'


def per_call_us(call, rounds: int) -> float:  # type: ignore[no-untyped-def]
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            call()
        runs.append((time.perf_counter() - started) / rounds * 1e6)
    return statistics.median(runs)


def micro(data_dir: Path) -> None:
    keys = SigningKeys.load_or_create(data_dir, time.time)
    tokens = WakeTokens.load_or_create(data_dir, time.time)
    token = tokens.issue("sub-1", 7, "w_1", 30)
    print(f"signature_header ({len(BODY)} B body): {per_call_us(lambda: keys.signature_header(1_800_000_000, BODY), 5000):.1f} µs")
    print(f"jwks():                     {per_call_us(keys.jwks, 20000):.1f} µs")
    print(f"WakeTokens.issue:           {per_call_us(lambda: tokens.issue('sub-1', 7, 'w_1', 30), 5000):.1f} µs")
    print(f"WakeTokens.verify:          {per_call_us(lambda: tokens.verify(token, 'sub-1'), 5000):.1f} µs")
    print(f"check_webhook_url:          "
          f"{per_call_us(lambda: check_webhook_url('https://hooks.example.com/a/b?x=1', allow_local_http=False), 20000):.1f} µs")


async def deliveries(deliverer: Deliverer, url: str, count: int, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    left = iter(range(count))

    async def worker() -> None:
        for _ in left:
            started = time.perf_counter()
            result = await deliverer.deliver(url, BODY)
            latencies.append(time.perf_counter() - started)
            assert result.ok, result

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return time.perf_counter() - started, latencies


def report(label: str, elapsed: float, latencies: list[float]) -> None:
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"{label}: {len(latencies) / elapsed:7.0f} deliveries/s, median {statistics.median(latencies) * 1e3:.2f} ms, "
          f"p99 {p99 * 1e3:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deliveries", type=int, default=400)
    parser.add_argument("--concurrency", default="1,16")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        micro(data_dir)
        keys = SigningKeys.load_or_create(data_dir, time.time)
        settings = Settings(webhook_dev_mode=True)
        files, client_context = make_tls(data_dir, ["localhost"], ["127.0.0.1"])
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            with WebhookReceiver() as plain:
                elapsed, lat = trio.run(deliveries, Deliverer(settings, keys, time.time), plain.url(),
                                        args.deliveries, concurrency)
                report(f"http  x{concurrency:<3}", elapsed, lat)
            with WebhookReceiver(tls=files) as secure:
                deliverer = Deliverer(settings, keys, time.time, ssl_context=client_context)
                elapsed, lat = trio.run(deliveries, deliverer, secure.url(), args.deliveries, concurrency)
                report(f"https x{concurrency:<3}", elapsed, lat)


if __name__ == "__main__":
    main()
