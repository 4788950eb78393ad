"""Request header parsing: raw header values in, typed requests out.

Owns: the syntax of every protocol header (Stream-TTL, Stream-Expires-At,
Stream-Closed, Stream-Seq, Producer-*, Content-Type). Never: decides what a
valid request *does* to a stream — that is rules.py.

Headers arrive as a mapping of lower-case names to values.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Final

from .errors import bad_request
from .jsonmode import Framed
from .retention import Retention
from .retention import parse_headers as parse_retention

DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"
JS_SAFE_INT_MAX: Final = 2**53 - 1
_TTL = re.compile(r"\A(0|[1-9][0-9]{0,15})\Z")
_NON_NEGATIVE = re.compile(r"\A(0|[1-9][0-9]{0,15})\Z")
_RFC3339 = re.compile(
    r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})\Z"
)
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf"\A{_TOKEN}/{_TOKEN}\Z")


@dataclasses.dataclass(frozen=True, slots=True)
class Producer:
    id: str
    epoch: int
    seq: int


@dataclasses.dataclass(frozen=True, slots=True)
class Expiry:
    ttl_s: int | None = None
    expires_at: str | None = None  # as the client wrote it, echoed on HEAD
    expires_at_s: float | None = None  # the same instant as a UNIX time


@dataclasses.dataclass(frozen=True, slots=True)
class ForkSpec:
    source: str  # Stream-Forked-From as sent: a URL path (or URL) of the source stream
    offset: str | None  # Stream-Fork-Offset token; None means the source's tail
    sub_offset: int  # Stream-Fork-Sub-Offset; 0 when absent


@dataclasses.dataclass(frozen=True, slots=True)
class CreateRequest:
    content_type: str
    expiry: Expiry
    closed: bool
    body: bytes
    fork: ForkSpec | None = None
    content_type_given: bool = True
    framed: Framed | None = None  # the body as stored messages, when it is JSON
    retention: Retention | None = None  # Trio-Streams-Retention-*, when given


@dataclasses.dataclass(frozen=True, slots=True)
class AppendRequest:
    content_type: str | None
    body: bytes
    seq: str | None
    producer: Producer | None
    close: bool
    framed: Framed | None = None  # the body as stored messages, when it is JSON


def media_type(content_type: str) -> str:
    """``Text/Plain; charset=utf-8`` → ``text/plain``: what type comparisons use."""
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: str) -> bool:
    return media_type(content_type) == "application/json"


def is_sse_text(content_type: str) -> bool:
    """Text and JSON travel as UTF-8 in SSE; everything else is base64 (5.8)."""
    media = media_type(content_type)
    return media.startswith("text/") or media == "application/json"


def flag(headers: Mapping[str, str], name: str) -> bool:
    """Presence headers count only when exactly ``true`` (any case); others are ignored."""
    return headers.get(name, "").strip().lower() == "true"


def parse_content_type(value: str) -> str:
    if len(value) > 256 or not _MEDIA_TYPE.match(media_type(value)):
        raise bad_request(f"invalid Content-Type {value[:64]!r}", "INVALID_HEADER")
    return value.strip()


def parse_expiry(headers: Mapping[str, str]) -> Expiry:
    ttl_raw = headers.get("stream-ttl")
    expires_raw = headers.get("stream-expires-at")
    if ttl_raw is not None and expires_raw is not None:
        raise bad_request("Stream-TTL and Stream-Expires-At are mutually exclusive", "INVALID_HEADER")
    if ttl_raw is not None:
        if not _TTL.match(ttl_raw.strip()):
            raise bad_request(f"invalid Stream-TTL {ttl_raw[:32]!r}", "INVALID_HEADER")
        return Expiry(ttl_s=int(ttl_raw))
    if expires_raw is not None:
        return Expiry(expires_at=expires_raw.strip(), expires_at_s=parse_rfc3339(expires_raw.strip()))
    return Expiry()


def parse_rfc3339(value: str) -> float:
    if not _RFC3339.match(value):
        raise bad_request(f"invalid Stream-Expires-At {value[:64]!r}", "INVALID_HEADER")
    text = value.replace("z", "Z").replace("t", "T")
    whole, _, rest = text.partition(".")
    if rest:  # fromisoformat accepts at most 6 fractional digits.
        digits = re.match(r"[0-9]+", rest).group(0)  # type: ignore[union-attr]
        text = f"{whole}.{digits[:6]}{rest[len(digits):]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise bad_request(f"invalid Stream-Expires-At {value[:64]!r}", "INVALID_HEADER") from None


def parse_producer(headers: Mapping[str, str]) -> Producer | None:
    raw = [headers.get(n) for n in ("producer-id", "producer-epoch", "producer-seq")]
    if all(v is None for v in raw):
        return None
    if any(v is None for v in raw):
        raise bad_request("Producer-Id, Producer-Epoch and Producer-Seq must be sent together", "INVALID_PRODUCER")
    producer_id, epoch, seq = (v.strip() for v in raw)  # type: ignore[union-attr]
    if not producer_id:
        raise bad_request("Producer-Id must not be empty", "INVALID_PRODUCER")
    return Producer(producer_id, _producer_int(epoch, "Producer-Epoch"), _producer_int(seq, "Producer-Seq"))


def _producer_int(value: str, name: str) -> int:
    if not _NON_NEGATIVE.match(value) or int(value) > JS_SAFE_INT_MAX:
        raise bad_request(f"{name} must be an integer in [0, 2^53-1]", "INVALID_PRODUCER")
    return int(value)


def parse_create(headers: Mapping[str, str], body: bytes) -> CreateRequest:
    raw_type = headers.get("content-type")
    content_type = DEFAULT_CONTENT_TYPE if not raw_type else parse_content_type(raw_type)
    return CreateRequest(
        content_type, parse_expiry(headers), flag(headers, "stream-closed"), body,
        parse_fork(headers), content_type_given=bool(raw_type), retention=parse_retention(headers),
    )


def parse_fork(headers: Mapping[str, str]) -> ForkSpec | None:
    source = headers.get("stream-forked-from")
    offset = headers.get("stream-fork-offset")
    raw_sub = headers.get("stream-fork-sub-offset")
    if source is None:
        if offset is not None or raw_sub is not None:
            raise bad_request("Stream-Fork-Offset and Stream-Fork-Sub-Offset require Stream-Forked-From", "INVALID_FORK")
        return None
    if not source.strip():
        raise bad_request("Stream-Forked-From must not be empty", "INVALID_FORK")
    sub_offset = 0
    if raw_sub is not None:
        if not _NON_NEGATIVE.match(raw_sub.strip()):
            raise bad_request(f"invalid Stream-Fork-Sub-Offset {raw_sub[:32]!r}", "INVALID_FORK")
        sub_offset = int(raw_sub)
        if sub_offset > 0 and offset is None:
            raise bad_request("a non-zero Stream-Fork-Sub-Offset needs a Stream-Fork-Offset anchor", "INVALID_FORK")
    return ForkSpec(source.strip(), offset.strip() if offset is not None else None, sub_offset)


def parse_append(headers: Mapping[str, str], body: bytes) -> AppendRequest:
    close = flag(headers, "stream-closed")
    raw_type = headers.get("content-type")
    content_type = parse_content_type(raw_type) if raw_type and body else raw_type
    if body and not raw_type:
        raise bad_request("Content-Type is required on an append with a body", "INVALID_HEADER")
    if not body and not close:
        raise bad_request("empty append body (only a close may be empty)", "EMPTY_BODY")
    seq = headers.get("stream-seq")
    if seq is not None and (not seq or len(seq) > 256):
        raise bad_request("invalid Stream-Seq", "INVALID_HEADER")
    return AppendRequest(content_type, body, seq, parse_producer(headers), close)
