"""Stream paths: the only place a URL becomes a stream name, and a name a URL.

Owns: the rules that keep names unambiguous and harmless (no empty, ``.``
or ``..`` segments, no control characters, bounded length), the reserved
``__ds`` namespace, reading ``Stream-Forked-From``, and printing a stream's
URL for ``Location``. Names never reach the file system (files are named by
stream id), but they are echoed and used as keys, so they stay clean.

A name is the percent-decoded path below the prefix (``protocol/urls.py``
says why); every entry point decodes the same way and every printed URL
uses the one canonical encoding.
"""

from __future__ import annotations

import re

from ..config import Settings
from ..protocol import urls
from ..protocol.errors import ProtocolError, bad_request
from .asgi import Request, server_authority

_BAD_PATH_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
RESERVED_SEGMENT = "__ds"


def stream_name(url_path: str, settings: Settings) -> str:
    """The stream's name below the prefix; 400 for anything that could escape or confuse."""
    name = url_path[len(settings.stream_prefix):]
    if not name or len(name.encode()) > settings.stream_path_bytes_max:
        raise ProtocolError(400, "INVALID_PATH", "stream path is empty or too long")
    segments = name.split("/")
    if _BAD_PATH_CHARS.search(name) or any(s in ("", ".", "..") for s in segments):
        raise ProtocolError(400, "INVALID_PATH", "stream path has empty, '.' or '..' segments or control characters")
    if segments[0] == RESERVED_SEGMENT:
        raise ProtocolError(501, "NOT_IMPLEMENTED", "subscription APIs are not implemented by this server")
    return name


def base_url(req: Request, settings: Settings) -> str:
    """``scheme://host[:port]`` clients reach us by: the configured one, else the request's.

    Without ``public_base_url`` the Host header decides (so a client can make
    its own ``Location`` point anywhere); a malformed Host falls back to the
    address the request arrived on.
    """
    if settings.public_base_url:
        return settings.public_base_url
    scheme = req.scope.get("scheme", "http")
    host = req.headers.get("host", "")
    if urls.parse_origin(scheme, host) is None:
        host = server_authority(req.scope)
    return f"{scheme}://{host}"


def stream_url(req: Request, name: str, settings: Settings) -> str:
    return base_url(req, settings) + urls.encode_path(settings.stream_prefix + name)


def fork_source_name(value: str, req: Request, settings: Settings) -> str:
    """Stream-Forked-From (a path, or an absolute URL of this server) → the source's name.

    An absolute URL must have the origin of ``base_url``: forks across
    servers are not supported (4.2), and silently forking our own stream of
    the same path would fork the wrong data.
    """
    origin, raw_path = urls.split_reference(value)
    if origin is not None and origin != _own_origin(req, settings):
        raise bad_request("Stream-Forked-From names another server; forks must stay on this one", "INVALID_FORK")
    path = urls.decode_path(raw_path, "INVALID_FORK")
    if not path.startswith(settings.stream_prefix):
        raise ProtocolError(404, "NOT_FOUND", "Stream-Forked-From does not name a stream on this server")
    return stream_name(path, settings)


def _own_origin(req: Request, settings: Settings) -> urls.Origin | None:
    scheme, _, authority = base_url(req, settings).partition("://")
    return urls.parse_origin(scheme, authority)
