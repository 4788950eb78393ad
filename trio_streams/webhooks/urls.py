"""SSRF rules for webhook URLs (PROTOCOL.md 6.2, 12.8): pure, no I/O.

A webhook URL names a host the server will POST to from inside its own
network, so only public destinations are allowed: ``https://`` to a DNS
name or a global address. ``allow_local_http`` (the ``webhook_dev_mode``
setting) adds exactly ``localhost`` and ``127.0.0.x`` (http or https), and
the addresses they resolve to (127.0.0.0/24, ::1), for tests and local
development.

The parse is strict on purpose: ``urllib`` and HTTP clients accept forms
that resolve somewhere unexpected (``http://2130706433/``, ``0x7f.1``,
``127.1``, userinfo, percent-encoded or non-ASCII hosts, whitespace they
silently strip), so anything but a plain LDH name, a dotted-quad IPv4 or a
bracketed IPv6 literal is refused before ``ipaddress`` looks at it. A name
is checked again after resolution, at every delivery (deliver.py), because
its DNS answer may change after the subscription was accepted.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from urllib.parse import urlsplit

from ..protocol.errors import ProtocolError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

REJECTED = "WEBHOOK_URL_REJECTED"
# The default of the webhook_url_bytes_max setting (config.py).
URL_BYTES_MAX_DEFAULT = 2048

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network
# Destinations no webhook may reach, with the reason shown to the client.
_BLOCKED_V4: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_V4("0.0.0.0/8"), "'this network'"),
    (_V4("10.0.0.0/8"), "private (RFC 1918)"),
    (_V4("100.64.0.0/10"), "carrier-grade NAT (RFC 6598)"),
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("169.254.0.0/16"), "link-local (cloud metadata lives here)"),
    (_V4("172.16.0.0/12"), "private (RFC 1918)"),
    (_V4("192.0.0.0/24"), "IETF protocol assignments"),
    (_V4("192.0.2.0/24"), "documentation"),
    (_V4("192.88.99.0/24"), "6to4 relay anycast"),
    (_V4("192.168.0.0/16"), "private (RFC 1918)"),
    (_V4("198.18.0.0/15"), "benchmarking"),
    (_V4("198.51.100.0/24"), "documentation"),
    (_V4("203.0.113.0/24"), "documentation"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("240.0.0.0/4"), "reserved or broadcast"),
)
_BLOCKED_V6: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("::/96"), "IPv4-compatible (deprecated)"),
    (_V6("64:ff9b:1::/48"), "local-use NAT64"),
    (_V6("100::/64"), "discard-only"),
    (_V6("2001::/32"), "Teredo"),
    (_V6("2001:db8::/32"), "documentation"),
    (_V6("fc00::/7"), "unique-local (cloud metadata fd00:ec2::254 lives here)"),
    (_V6("fe80::/10"), "link-local"),
    (_V6("fec0::/10"), "site-local (deprecated)"),
    (_V6("ff00::/8"), "multicast"),
)
# IPv6 forms that carry an IPv4 destination: the IPv4 address is what gets reached.
_NAT64 = _V6("64:ff9b::/96")
_SIXTOFOUR = _V6("2002::/16")
# What development mode allows besides public destinations.
_DEV_LOOPBACK = (_V4("127.0.0.0/24"), _V6("::1/128"))
_DEV_HOSTNAME = "localhost"
# Metadata services reachable by name on the major clouds.
_BLOCKED_NAMES = frozenset({
    "metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal",
})

_URL_CHARACTERS = re.compile(r"[!#-\[\]-~]+")  # printable ASCII without space, '"' or backslash
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NAME_BYTES_MAX = 253
_HOST_PORT = re.compile(r"(?P<host>[A-Za-z0-9.-]+|\[(?P<v6>[0-9A-Fa-f:.]+)\])(?::(?P<port>[0-9]{1,5}))?")
# WHATWG URL parsing treats a host whose last label is numeric (or 0x…) as an
# IPv4 address in any of its old forms: such a host must be a canonical dotted quad.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*")


@dataclasses.dataclass(frozen=True)
class WebhookTarget:
    """A checked webhook URL, split the way a delivery connects to it."""

    scheme: str
    host: str  # lower-case name, or the address literal without brackets
    port: int
    target: str  # path and query, as sent in the request line
    address: IPAddress | None  # set when the URL names an address, not a host name

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if isinstance(self.address, ipaddress.IPv6Address) else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def check_webhook_url(url: str, *, allow_local_http: bool, url_bytes_max: int = URL_BYTES_MAX_DEFAULT) -> None:
    """Raises ProtocolError(400, WEBHOOK_URL_REJECTED) unless ``url`` is an allowed webhook URL."""
    parse_webhook_url(url, allow_local_http=allow_local_http, url_bytes_max=url_bytes_max)


def parse_webhook_url(url: object, *, allow_local_http: bool,
                      url_bytes_max: int = URL_BYTES_MAX_DEFAULT) -> WebhookTarget:
    if not isinstance(url, str):
        raise _rejected("webhook url must be a string")
    if len(url) > url_bytes_max:
        raise _rejected(f"webhook url is longer than {url_bytes_max} bytes")
    if not _URL_CHARACTERS.fullmatch(url):
        raise _rejected("webhook url may hold only printable ASCII characters, without spaces, quotes or backslashes")
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced "[" or "]" in the authority
        raise _rejected("webhook url has no valid host (unbalanced brackets)") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not url[len(scheme):].startswith("://"):
        raise _rejected("webhook url must start with https://")
    if parts.fragment or url.endswith("#"):
        raise _rejected("webhook url must not have a fragment")
    host, address, port = _authority(parts.netloc, scheme)
    local = _is_dev_local(host, address)
    if local and not allow_local_http:
        raise _rejected(f"webhook host {host} is loopback: allowed only in development mode (webhook_dev_mode)")
    if scheme == "http" and not local:
        raise _rejected("webhook url must use https://" + (
            " (http only for localhost and 127.0.0.x)" if allow_local_http else ""))
    if address is not None:
        reason = address_rejection(address, allow_loopback=allow_local_http)
        if reason:
            raise _rejected(f"webhook address {address} is {reason}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query or url.endswith("?") else "")
    return WebhookTarget(scheme, host, port, target, address)


def address_rejection(address: IPAddress, *, allow_loopback: bool) -> str | None:
    """Why a webhook may not reach ``address`` (None: it may). ``allow_loopback``: development mode."""
    if allow_loopback and any(address in network for network in _DEV_LOOPBACK):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = address_rejection(embedded, allow_loopback=False)
            return f"an IPv6 form of {embedded}, which is {reason}" if reason else None
        blocked = _BLOCKED_V6
    else:
        blocked = _BLOCKED_V4  # type: ignore[assignment]
    for network, reason in blocked:
        if address in network:
            return reason
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    return None


def _authority(netloc: str, scheme: str) -> tuple[str, IPAddress | None, int]:
    if "@" in netloc:
        raise _rejected("webhook url must not hold a user name or password")
    match = _HOST_PORT.fullmatch(netloc)
    if match is None:
        raise _rejected("webhook url has no valid host (a DNS name, a dotted-quad IPv4 or a bracketed IPv6 address)")
    port = int(match["port"]) if match["port"] else (443 if scheme == "https" else 80)
    if not 1 <= port <= 65535:
        raise _rejected("webhook url port must be 1..65535")
    if match["v6"] is not None:
        return _ipv6_host(match["v6"]), ipaddress.IPv6Address(match["v6"]), port
    host = match["host"].lower()
    if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        return _ipv4_host(host), ipaddress.IPv4Address(host), port
    return _checked_name(host), None, port


def _ipv6_host(text: str) -> str:
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise _rejected(f"webhook host [{text}] is not an IPv6 address") from None


def _ipv4_host(host: str) -> str:
    try:
        # ipaddress accepts only the canonical form: four decimal parts, no leading zeros.
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        raise _rejected(f"webhook host {host} is not a dotted-quad IPv4 address "
                        "(decimal, octal, hex and short forms are refused)") from None


def _checked_name(host: str) -> str:
    if len(host) > _NAME_BYTES_MAX or not all(_LABEL.fullmatch(label) for label in host.split(".")):
        raise _rejected(f"webhook host {host[:64]} is not a valid DNS name (letters, digits, hyphens; "
                        "no trailing dot)")
    if host in _BLOCKED_NAMES:
        raise _rejected(f"webhook host {host} is a cloud metadata service")
    if host.endswith(".localhost"):
        raise _rejected(f"webhook host {host} is loopback")
    return host


def _is_dev_local(host: str, address: IPAddress | None) -> bool:
    """localhost, 127.0.0.x or [::1]: what development mode allows over http."""
    if address is None:
        return host == _DEV_HOSTNAME
    return any(address in network for network in _DEV_LOOPBACK)


def _rejected(message: str) -> ProtocolError:
    return ProtocolError(400, REJECTED, message)
