"""URLs: how stream names are spelled in URLs, and whose URL a URL is.

Owns: strict percent-decoding of a path (request targets and
``Stream-Forked-From`` alike), the one canonical percent-encoding of a
name (what ``Location`` prints), splitting a ``Stream-Forked-From`` value
into origin and path, and the syntax of origins (``public_base_url``, the
``Host`` header). Never: knows the stream prefix or a request.

A stream's name is its percent-decoded path: ``x%2Fy`` and ``x/y`` are one
stream, as are ``p%2Bq`` and ``p+q``. Decoding every escape means a proxy
that normalises escapes reaches the same stream as one that does not, and
no name is unreachable. Printing escapes exactly what RFC 3986 forbids raw
in a path, so each name has one printed form.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import quote, unquote_to_bytes

from .errors import bad_request

DEFAULT_PORTS = {"http": 80, "https": 443}
# RFC 3986 pchar and "/", beyond the unreserved characters quote() never escapes.
_PATH_SAFE = "/!$&'()*+,;=:@"
# A DNS name or IPv4 address, or a bracketed IPv6 literal; then an optional port.
_AUTHORITY = re.compile(r"\A(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*)|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?\Z")
_SCHEME = re.compile(r"\A([A-Za-z][A-Za-z0-9+.-]*):")


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int


def decode_path(raw: bytes, code: str = "INVALID_PATH") -> str:
    """Percent-decodes ``raw`` and reads the bytes as strict UTF-8 (400 otherwise).

    Replacing undecodable bytes (as Hypercorn's ``scope["path"]`` does) would
    make ``/x-%ff`` and ``/x-%fe`` the same stream.
    """
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("the path is not valid UTF-8 once percent-decoded", code) from None


def encode_path(path: str) -> str:
    """The canonical spelling of a decoded path: escapes only what may not appear raw."""
    return quote(path, safe=_PATH_SAFE)


def parse_origin(scheme: str, authority: str) -> Origin | None:
    """``(scheme, host, port)`` with defaults filled in and case folded; None if malformed."""
    scheme = scheme.lower()
    match = _AUTHORITY.match(authority)
    if match is None or scheme not in DEFAULT_PORTS:
        return None
    port = int(match["port"]) if match["port"] else DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        return None
    return Origin(scheme, match["host"].lower(), port)


def split_reference(value: str) -> tuple[Origin | None, bytes]:
    """A ``Stream-Forked-From`` value → (its origin, or None for a bare path; the raw path).

    Query and fragment are dropped, as they are from a request target.
    Anything that is neither an absolute http(s) URL nor a path starting
    with one ``/`` is a 400.
    """
    raw = value.encode("latin-1")  # the header's bytes as sent, so UTF-8 decodes strictly below
    scheme = _SCHEME.match(value)
    if scheme is not None:
        rest = value[scheme.end():]
        if not rest.startswith("//"):
            raise bad_request("Stream-Forked-From is not an http(s) URL or a path", "INVALID_FORK")
        authority, slash, path = rest[2:].partition("/")
        authority = re.split(r"[?#]", authority, maxsplit=1)[0]
        origin = parse_origin(scheme[1], authority)
        if origin is None:
            raise bad_request("Stream-Forked-From is not an http(s) URL with a valid host", "INVALID_FORK")
        raw = (slash + path).encode("latin-1")
    elif value.startswith("/") and not value.startswith("//"):
        origin = None
    else:
        raise bad_request("Stream-Forked-From must be a path starting with '/' or an absolute URL", "INVALID_FORK")
    return origin, re.split(rb"[?#]", raw, maxsplit=1)[0]


def normalise_base_url(value: str) -> str:
    """``public_base_url`` as ``scheme://host[:port]``; ValueError for anything else.

    A path is refused rather than guessed at: a proxy that mounts the server
    below a path expresses that through ``stream_prefix``.
    """
    scheme = _SCHEME.match(value)
    rest = value[scheme.end():] if scheme is not None else ""
    authority = rest[2:].removesuffix("/") if rest.startswith("//") else ""
    if scheme is None or parse_origin(scheme[1], authority) is None:
        raise ValueError(
            f"public_base_url must be http:// or https:// with a host, an optional port and nothing else, not {value!r}"
        )
    return f"{scheme[1].lower()}://{authority.lower()}"
