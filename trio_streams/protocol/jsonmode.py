"""JSON mode (PROTOCOL.md 9.1): message framing for application/json streams.

Owns: turning a request body into stored messages and stored messages back
into a JSON array. Never: touches storage or HTTP.

Stored form: each message is its compact JSON encoding followed by ``\\n``.
Compact JSON never contains a raw newline (newlines inside strings are
escaped), so ``\\n`` is an unambiguous message terminator: chunking cuts after
a ``\\n``, counting messages counts ``\\n``, and a read of stored bytes becomes
a JSON array by swapping terminators for commas — no re-encoding on reads.

Framing a body: parse with the stdlib decoder (it keeps integers of any
size exact and its C scanner reports where each value ends), re-encode each
message with orjson. A body is refused (400) when it is not strict JSON
(invalid UTF-8, NaN/Infinity, numbers that overflow a double, lone
surrogates) or nests deeper than ``JsonLimits.depth_max``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Final

import orjson

from .errors import ProtocolError, bad_request

TERMINATOR: Final = b"\n"
EMPTY_ARRAY: Final = b"[]"
# orjson.dumps refuses values nested deeper than this ("Recursion limit
# reached"); a stored message must always be encodable.
DEPTH_ENCODABLE_MAX: Final = 254


@dataclasses.dataclass(frozen=True, slots=True)
class JsonLimits:
    depth_max: int = 128  # levels, counting the body's outer array


@dataclasses.dataclass(frozen=True, slots=True)
class Framed:
    """A JSON body in stored form, or the refusal it earned.

    Framing happens before the request reaches its stream's actor; a refusal
    is kept rather than raised so that the actor reports it in precedence
    order (a closed stream or a producer conflict outranks a bad body).
    """

    stored: bytes = b""
    error: ProtocolError | None = None

    def result(self) -> bytes:
        if self.error is not None:
            raise self.error
        return self.stored


def frame(body: bytes, *, allow_empty: bool, limits: JsonLimits) -> Framed:
    try:
        return Framed(encode_messages(body, allow_empty=allow_empty, limits=limits))
    except ProtocolError as exc:
        return Framed(error=exc)


def encode_messages(body: bytes, *, allow_empty: bool, limits: JsonLimits = JsonLimits()) -> bytes:
    """Validates ``body`` and returns it as stored messages (one array level flattened)."""
    value = _decode(_text(body), needs_care(body), limits)
    if count_brackets(body) > limits.depth_max and _deeper_than(value, limits.depth_max):
        raise too_deep(limits)
    items = value if isinstance(value, list) else [value]
    if not items and not allow_empty:
        raise empty_array()
    return b"".join(encode_message(item) for item in items)


def _text(body: bytes) -> str:
    try:
        return str(body, "utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"invalid JSON: the body is not UTF-8 ({exc.reason} at byte {exc.start})", "INVALID_JSON") from None


def _decode(text: str, careful: bool, limits: JsonLimits) -> Any:
    try:
        return (CAREFUL if careful else PLAIN).decode(text)
    except RecursionError:  # far deeper than any limit: depth_max stays below the recursion limit
        raise too_deep(limits) from None
    except ValueError as exc:
        raise invalid(exc) from None


def encode_message(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError as exc:  # lone surrogates
        raise bad_request(f"unsupported JSON value: {exc}", "INVALID_JSON") from None


def invalid(exc: ValueError) -> ProtocolError:
    return bad_request(f"invalid JSON: {exc}", "INVALID_JSON")


def too_deep(limits: JsonLimits) -> ProtocolError:
    return bad_request(f"JSON body nests deeper than {limits.depth_max} levels", "JSON_TOO_DEEP")


def empty_array() -> ProtocolError:
    return bad_request("an append of an empty JSON array has no messages", "EMPTY_JSON_ARRAY")


def count_brackets(text: bytes | str, start: int = 0, end: int | None = None) -> int:
    """Openers, strings included: a cheap upper bound of the nesting depth."""
    if isinstance(text, str):
        return text.count("[", start, end) + text.count("{", start, end)
    return text.count(b"[", start, end) + text.count(b"{", start, end)


def _deeper_than(value: Any, limit: int, depth: int = 1) -> bool:
    """Whether ``value`` (at nesting level ``depth`` if it is a container) nests past ``limit``."""
    stack = [(value, depth)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if level > limit:
            return True
        stack.extend((child, level + 1) for child in children if isinstance(child, (list, dict)))
    return False


# -- numbers ------------------------------------------------------------------
#
# Integers are kept exact at any size and numbers that overflow a double are
# refused. Both need a Python call per number, so they are only paid for when
# the text could hold such a number: a run of 19+ digits (an integer outside
# 64 bits, or a mantissa long enough to overflow) or an exponent of 3+ digits.
# The hooks never change any other number, so the choice only affects speed.

_NUMBER_SHAPE: Final = bytes.maketrans(
    b"0123456789eE+-" + bytes(c for c in range(256) if c not in b"0123456789eE+-"),
    b"9999999999ee++" + b" " * (256 - 14),
)


def needs_care(data: bytes) -> bool:
    shape = data.translate(_NUMBER_SHAPE)
    return b"9" * 19 in shape or b"e999" in shape or b"e+999" in shape


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _exact_int(token: str) -> Any:
    # orjson encodes ints in [-2**63, 2**64); a Fragment writes the digits as
    # they came (valid JSON integers are already canonical) without ever
    # converting a huge one.
    if len(token) <= 20 and -(2**63) <= (number := int(token)) < 2**64:
        return number
    return orjson.Fragment(token)


def _finite_float(token: str) -> float:
    number = float(token)
    if math.isinf(number):
        raise ValueError(f"number {token[:32]} overflows a double")
    return number


PLAIN: Final = json.JSONDecoder(parse_constant=_reject_constant)
CAREFUL: Final = json.JSONDecoder(parse_int=_exact_int, parse_float=_finite_float, parse_constant=_reject_constant)


# -- reads --------------------------------------------------------------------


def to_array(stored: bytes | memoryview) -> bytes:
    """Stored messages (whole ones only) → the JSON array a reader receives."""
    if not stored:
        return EMPTY_ARRAY
    data = bytes(stored)
    assert data.endswith(TERMINATOR), "JSON reads must end on a message boundary"
    return b"[" + data[:-1].replace(TERMINATOR, b",") + b"]"


def message_count(stored: bytes | memoryview) -> int:
    return bytes(stored).count(TERMINATOR)
