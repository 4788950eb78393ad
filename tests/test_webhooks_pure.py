"""The pure webhook pieces: retry delays and the SSRF rules for webhook URLs."""

from __future__ import annotations

import ipaddress
import random

import pytest

from trio_streams.config import Settings, settings_from_env
from trio_streams.protocol.errors import ProtocolError
from trio_streams.webhooks.backoff import retry_delay_s
from trio_streams.webhooks.urls import address_rejection, check_webhook_url, parse_webhook_url

# attempt (failed deliveries so far) → the delay before the next one, without jitter
BACKOFF_TABLE = [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0), (6, 32.0), (7, 60.0), (8, 60.0), (100, 60.0),
                 (10**9, 60.0)]


@pytest.mark.parametrize(("attempt", "base"), BACKOFF_TABLE)
def test_retry_delay_stays_within_twenty_percent_of_its_base(attempt: int, base: float) -> None:
    rng = random.Random(attempt)
    delays = [retry_delay_s(attempt, rng) for _ in range(2000)]
    assert all(base * 0.8 <= d <= base * 1.2 for d in delays)
    # The jitter spreads: both ends of the band are reached, not one fixed value.
    assert min(delays) < base * 0.82 and max(delays) > base * 1.18


def test_retry_delay_extremes_come_from_the_random_source() -> None:
    class Edge(random.Random):
        def __init__(self, value: float) -> None:
            super().__init__()
            self.value = value

        def uniform(self, a: float, b: float) -> float:
            return a if self.value == 0 else b

    assert retry_delay_s(1, Edge(0)) == pytest.approx(0.8)
    assert retry_delay_s(1, Edge(1)) == pytest.approx(1.2)
    assert retry_delay_s(9, Edge(1)) == pytest.approx(72.0)


def test_retry_delay_is_reproducible_with_a_seed() -> None:
    assert [retry_delay_s(a, random.Random(7)) for a in range(1, 9)] == \
        [retry_delay_s(a, random.Random(7)) for a in range(1, 9)]


@pytest.mark.parametrize("attempt", [0, -1])
def test_retry_delay_counts_attempts_from_one(attempt: int) -> None:
    with pytest.raises(ValueError):
        retry_delay_s(attempt, random.Random(0))


ACCEPTED = [
    ("https://hooks.example.com/webhook", False),
    ("https://hooks.example.com:8443/a/b?x=1&y=%20", False),
    ("HTTPS://Hooks.Example.COM/x", False),
    ("https://93.184.216.34/hook", False),
    ("https://[2606:4700::1111]/hook", False),
    ("https://[::ffff:93.184.216.34]/hook", False),  # mapped public IPv4
    ("https://[2002:5db8:d822::1]/hook", False),  # 6to4 of a public IPv4
    ("http://localhost:8080/hook", True),
    ("http://127.0.0.1:9/hook", True),
    ("http://127.0.0.254/hook", True),
    ("https://localhost/hook", True),
    ("http://[::1]:8080/hook", True),
    ("https://hooks.example.com/webhook", True),
]


@pytest.mark.parametrize(("url", "dev"), ACCEPTED)
def test_allowed_webhook_urls(url: str, dev: bool) -> None:
    check_webhook_url(url, allow_local_http=dev)


# (url, development mode, a word the message holds)
REJECTED = [
    ("http://hooks.example.com/webhook", False, "https"),
    ("http://hooks.example.com/webhook", True, "https"),  # dev mode allows http only for localhost
    ("ftp://hooks.example.com/x", False, "https"),
    ("https:hooks.example.com/x", False, "https"),
    ("//hooks.example.com/x", False, "https"),
    ("http://localhost/hook", False, "development"),
    ("https://localhost/hook", False, "development"),
    ("http://127.0.0.1/hook", False, "development"),
    ("https://127.0.0.1/hook", False, "development"),
    ("https://[::1]/hook", False, "development"),
    ("http://127.0.1.1/hook", True, "https"),  # 127.0.0.x only
    ("https://127.0.1.1/hook", True, "loopback"),
    ("https://app.localhost/hook", True, "loopback"),
    ("https://10.0.0.1/hook", False, "RFC 1918"),
    ("http://10.0.0.1/hook", True, "https"),  # the official suite's case
    ("https://10.0.0.1/hook", True, "RFC 1918"),
    ("https://172.16.0.1/hook", False, "RFC 1918"),
    ("https://172.31.255.255/hook", False, "RFC 1918"),
    ("https://192.168.1.1/hook", False, "RFC 1918"),
    ("https://169.254.169.254/latest/meta-data", False, "link-local"),
    ("https://169.254.0.1/hook", False, "link-local"),
    ("https://100.64.0.1/hook", False, "carrier-grade"),
    ("https://100.127.255.254/hook", False, "carrier-grade"),
    ("https://0.0.0.0/hook", False, "this network"),
    ("https://0.1.2.3/hook", False, "this network"),
    ("https://224.0.0.1/hook", False, "multicast"),
    ("https://239.255.255.250/hook", False, "multicast"),
    ("https://255.255.255.255/hook", False, "broadcast"),
    ("https://240.0.0.1/hook", False, "reserved"),
    ("https://198.18.0.1/hook", False, "benchmarking"),
    ("https://192.0.2.1/hook", False, "documentation"),
    ("https://[fd00:ec2::254]/latest", False, "unique-local"),
    ("https://[fc00::1]/hook", False, "unique-local"),
    ("https://[fe80::1]/hook", False, "link-local"),
    ("https://[ff02::1]/hook", False, "multicast"),
    ("https://[::]/hook", False, "unspecified"),
    ("https://[::ffff:10.0.0.1]/hook", False, "RFC 1918"),
    ("https://[::ffff:127.0.0.1]/hook", False, "loopback"),
    ("https://[::ffff:127.0.0.1]/hook", True, "loopback"),  # dev mode: 127.0.0.x literally, not in disguise
    ("https://[::ffff:169.254.169.254]/hook", False, "link-local"),
    ("https://[::ffff:a9fe:a9fe]/hook", False, "link-local"),
    ("https://[64:ff9b::a00:1]/hook", False, "RFC 1918"),  # NAT64 of 10.0.0.1
    ("https://[2002:a00:1::1]/hook", False, "RFC 1918"),  # 6to4 of 10.0.0.1
    ("https://[::a00:1]/hook", False, "IPv4-compatible"),
    ("https://[2001:0:4136:e378::1]/hook", False, "Teredo"),
    ("https://[fe80::1%25eth0]/hook", False, "host"),
    ("https://metadata.google.internal/computeMetadata/v1/", False, "metadata"),
    ("https://METADATA.google.internal/x", False, "metadata"),
    ("https://metadata/x", False, "metadata"),
    ("http://2130706433/hook", True, "dotted-quad"),
    ("https://2130706433/hook", False, "dotted-quad"),
    ("https://0x7f000001/hook", False, "dotted-quad"),
    ("https://0x7f.0.0.1/hook", False, "host"),
    ("https://0177.0.0.1/hook", False, "dotted-quad"),
    ("https://127.1/hook", False, "dotted-quad"),
    ("https://10.0.0.01/hook", False, "dotted-quad"),
    ("https://1.2.3.4.5/hook", False, "dotted-quad"),
    ("https://user:pw@hooks.example.com/x", False, "user name"),
    ("https://hooks.example.com@10.0.0.1/x", False, "user name"),
    ("https://@hooks.example.com/x", False, "user name"),
    ("https://hooks.example.com./x", False, "DNS name"),
    ("https://hooks..example.com/x", False, "DNS name"),
    ("https://-hooks.example.com/x", False, "DNS name"),
    ("https://hooks_x.example.com/x", False, "host"),
    ("https://h%6Foks.example.com/x", False, "host"),
    ("https://bücher.example/x", False, "ASCII"),
    ("https://hooks.example.com/a b", False, "ASCII"),
    ("https://hooks.example.com/\tx", False, "ASCII"),
    ("https://hooks.exa\nmple.com/x", False, "ASCII"),
    ("https://hooks.example.com\\@10.0.0.1/x", False, "ASCII"),
    ("https://hooks.example.com:0/x", False, "port"),
    ("https://hooks.example.com:65536/x", False, "port"),
    ("https://hooks.example.com:123456/x", False, "host"),
    ("https://hooks.example.com:/x", False, "host"),
    ("https://hooks.example.com/x#frag", False, "fragment"),
    ("https:///x", False, "host"),
    ("https://[", False, "host"),  # urlsplit raises ValueError here: must be a 400, not a 500
    ("https://[::1/x", True, "host"),
    ("https://::1]/x", True, "host"),
    ("https://" + "a" * 64 + ".example.com/x", False, "DNS name"),
    ("https://hooks.example.com/" + "a" * 2048, False, "longer"),
    ("", False, "ASCII"),
]


@pytest.mark.parametrize(("url", "dev", "word"), REJECTED)
def test_rejected_webhook_urls(url: str, dev: bool, word: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        check_webhook_url(url, allow_local_http=dev)
    assert caught.value.status == 400
    assert caught.value.code == "WEBHOOK_URL_REJECTED"
    assert word.lower() in caught.value.message.lower(), caught.value.message


@pytest.mark.parametrize("value", [None, 42, b"https://hooks.example.com/", ["https://hooks.example.com/"]])
def test_a_webhook_url_that_is_not_a_string_is_rejected(value: object) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_webhook_url(value, allow_local_http=True)
    assert caught.value.code == "WEBHOOK_URL_REJECTED"


def test_url_length_bound_is_the_given_one() -> None:
    url = "https://hooks.example.com/" + "a" * 100
    check_webhook_url(url, allow_local_http=False, url_bytes_max=len(url))
    with pytest.raises(ProtocolError):
        check_webhook_url(url, allow_local_http=False, url_bytes_max=len(url) - 1)


@pytest.mark.parametrize(("url", "host", "port", "target", "host_header"), [
    ("https://Hooks.Example.com/a?b=1", "hooks.example.com", 443, "/a?b=1", "hooks.example.com"),
    ("https://hooks.example.com:8443", "hooks.example.com", 8443, "/", "hooks.example.com:8443"),
    ("http://localhost:80/x?", "localhost", 80, "/x?", "localhost"),
    ("https://[2606:4700:0::1111]:444/", "2606:4700::1111", 444, "/", "[2606:4700::1111]:444"),
])
def test_parsed_target(url: str, host: str, port: int, target: str, host_header: str) -> None:
    parsed = parse_webhook_url(url, allow_local_http=True)
    assert (parsed.host, parsed.port, parsed.target, parsed.host_header) == (host, port, target, host_header)


# Resolved addresses (what a delivery checks after DNS): (address, development mode, allowed)
ADDRESSES = [
    ("93.184.216.34", False, True), ("2606:4700::1111", False, True),
    ("127.0.0.1", False, False), ("127.0.0.1", True, True), ("127.0.0.200", True, True), ("127.0.1.1", True, False),
    ("::1", False, False), ("::1", True, True), ("::ffff:127.0.0.1", True, False),
    ("10.0.0.1", True, False), ("172.20.1.1", False, False), ("192.168.0.10", False, False),
    ("169.254.169.254", True, False), ("fd00:ec2::254", True, False), ("100.64.1.1", False, False),
    ("0.0.0.0", True, False), ("fe80::1", True, False), ("::ffff:192.168.0.1", False, False),
]


@pytest.mark.parametrize(("address", "dev", "allowed"), ADDRESSES)
def test_resolved_address_rules(address: str, dev: bool, allowed: bool) -> None:
    reason = address_rejection(ipaddress.ip_address(address), allow_loopback=dev)
    assert (reason is None) == allowed, reason


@pytest.mark.parametrize(("overrides", "word"), [
    ({"webhook_timeout_s": 0}, "webhook_timeout_s"),
    ({"webhook_connect_timeout_s": 0}, "webhook_connect_timeout_s"),
    ({"webhook_deliveries_max": 0}, "webhook_deliveries_max"),
    ({"webhook_response_bytes_max": 63}, "webhook_response_bytes_max"),
    ({"webhook_key_replay_window_s": 0}, "webhook_key_replay_window_s"),
    ({"webhook_url_bytes_max": 10}, "webhook_url_bytes_max"),
])
def test_webhook_settings_are_validated(overrides: dict[str, object], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        Settings(**overrides)  # type: ignore[arg-type]


def test_webhook_settings_from_the_environment() -> None:
    settings = settings_from_env({"TRIO_STREAMS_WEBHOOK_DEV_MODE": "1", "TRIO_STREAMS_WEBHOOK_TIMEOUT_S": "3",
                                  "TRIO_STREAMS_WEBHOOK_DELIVERIES_MAX": "8"})
    assert (settings.webhook_dev_mode, settings.webhook_timeout_s, settings.webhook_deliveries_max) == (True, 3.0, 8)
    assert Settings().webhook_dev_mode is False  # production by default


# -- property: what is accepted is connected to exactly as checked ---------------------------

from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402
import httpx  # noqa: E402

_PIECES = st.sampled_from([
    "https://", "http://", "localhost", "127.0.0.1", "10.0.0.1", "example.com", "hooks.", "[", "]", "::1",
    "::ffff:", "@", ":", "443", "0x7f", "/", "//", "?", "#", "%2F", "%40", "\\", ".", "-", "a", "1", "0",
    "evil.com", "\t", " ", "\u00e9", "[fe80::1]", "[2606:4700::1]",
])


@hsettings(max_examples=1000, deadline=None)
@given(pieces=st.lists(_PIECES, max_size=12), dev=st.booleans())
def test_an_accepted_url_is_reached_at_its_checked_host_and_nowhere_else(pieces: list[str], dev: bool) -> None:
    url = "".join(pieces)
    try:
        target = parse_webhook_url(url, allow_local_http=dev)
    except ProtocolError as error:
        assert error.code == "WEBHOOK_URL_REJECTED"
        return
    # httpx, which makes the connection, reads the same host and port from the URL...
    seen = httpx.URL(url)
    assert (seen.host, seen.port or (443 if seen.scheme == "https" else 80)) == (target.host, target.port)
    # ...and from the URL a delivery builds around the checked address (deliver.py).
    address = target.address or ipaddress.ip_address("93.184.216.34")
    literal = f"[{address}]" if address.version == 6 else str(address)
    built = httpx.URL(f"{target.scheme}://{literal}:{target.port}{target.target}")
    assert (built.host, built.port or target.port) == (str(address), target.port)
    if target.address is not None:
        assert address_rejection(target.address, allow_loopback=dev) is None
