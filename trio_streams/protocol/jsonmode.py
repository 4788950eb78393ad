"""JSON mode (PROTOCOL.md 9.1): message framing for application/json streams.

Owns: turning a request body into stored messages and stored messages back
into a JSON array. Never: touches storage or HTTP.

Stored form: each message is its compact JSON encoding followed by ``\\n``.
Compact JSON never contains a raw newline (newlines inside strings are
escaped), so ``\\n`` is an unambiguous message terminator: chunking cuts after
a ``\\n``, counting messages counts ``\\n``, and a read of stored bytes becomes
a JSON array by swapping terminators for commas — no re-encoding on reads.

Framing a body in one call: orjson parses and validates it in C, then each
message is encoded by orjson in one C-level pass over the messages (no
Python loop per message). Where orjson cannot keep a value exactly — it
turns integers beyond 64 bits into floats — and for every body orjson
refuses, the stdlib decoder decides instead (it keeps integers of any size
exact, and its verdicts and messages are the ones clients get), so orjson
only ever speeds up what the stdlib would have accepted with the same
values. The windowed framer parses with the stdlib decoder alone (its C
scanner reports where each value ends). A body is refused (400) when it is not strict JSON
(invalid UTF-8, NaN/Infinity, numbers that overflow a double, lone
surrogates) or nests deeper than ``JsonLimits.depth_max``, and (413) when
it holds more than ``messages_max`` messages or one larger than
``message_bytes_max``.

Two ways to frame, with byte-identical results: ``encode_messages`` parses
the whole body in one call (for small bodies, on the event loop), and
``WindowedFramer`` goes message by message over a bounded window of decoded
text, in steps that are each one short call (for large bodies, in a worker
thread: a single long C call would hold the GIL and stall the event loop
just the same).
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import json
import math
from collections.abc import Iterator
from typing import Any, Final

import orjson

from ..membuf import GrowableBuffer
from .errors import ProtocolError, bad_request

TERMINATOR: Final = b"\n"
EMPTY_ARRAY: Final = b"[]"
# orjson.dumps refuses values nested deeper than this ("Recursion limit
# reached"); a stored message must always be encodable.
DEPTH_ENCODABLE_MAX: Final = 254


@dataclasses.dataclass(frozen=True, slots=True)
class JsonLimits:
    depth_max: int = 128  # levels, counting the body's outer array
    messages_max: int = 100_000  # per body
    # One message's encoded size. Bodies that are framed in one call never
    # meet it (the server keeps it above its inline-framing size).
    message_bytes_max: int = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Framed:
    """A JSON body in stored form, or the refusal it earned.

    Framing happens before the request reaches its stream's actor; a refusal
    is kept rather than raised so that the actor reports it in precedence
    order (a closed stream or a producer conflict outranks a bad body).
    """

    stored: bytes | memoryview = b""
    error: ProtocolError | None = None

    def result(self) -> bytes | memoryview:
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
    body = bytes(body)  # no copy of bytes; a small copy of any other buffer
    shape = body.translate(_NUMBER_SHAPE)
    value = _parse(body, shape, limits)
    if shape.count(b"[") > limits.depth_max and _deeper_than(value, limits.depth_max):
        raise too_deep(limits)
    items = value if isinstance(value, list) else [value]
    if not items and not allow_empty:
        raise empty_array()
    if len(items) > limits.messages_max:
        raise too_many(limits)
    try:
        return b"".join(map(_ENCODE_MESSAGE, items))
    except orjson.JSONEncodeError as exc:  # lone surrogates (the stdlib decoder lets them through)
        raise unsupported(exc) from None


def _parse(body: bytes, shape: bytes, limits: JsonLimits) -> Any:
    """orjson where it keeps every value exactly, else (and for every refusal) the stdlib decoder."""
    if _orjson_keeps_integers(shape):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # the stdlib decoder refuses it too, in its own words, or accepts what orjson cannot hold
    return _decode(_text(body), _has_long_integer(shape) or _has_long_exponent(shape), limits)


def _text(body: bytes) -> str:
    try:
        return str(body, "utf-8")
    except UnicodeDecodeError as exc:
        raise not_utf8(exc) from None


def _decode(text: str, careful: bool, limits: JsonLimits) -> Any:
    try:
        return (CAREFUL if careful else PLAIN).decode(text)
    except RecursionError:  # far deeper than any limit: depth_max stays below the recursion limit
        raise too_deep(limits) from None
    except ValueError as exc:
        raise invalid(exc) from None


def encode_message(value: Any) -> bytes:
    try:
        return _ENCODE_MESSAGE(value)
    except orjson.JSONEncodeError as exc:  # lone surrogates
        raise unsupported(exc) from None


_ENCODE_MESSAGE: Final = functools.partial(orjson.dumps, option=orjson.OPT_APPEND_NEWLINE)


def unsupported(exc: orjson.JSONEncodeError) -> ProtocolError:
    return bad_request(f"unsupported JSON value: {exc}", "INVALID_JSON")


def not_utf8(exc: UnicodeDecodeError) -> ProtocolError:
    return bad_request(f"invalid JSON: the body is not UTF-8 ({exc.reason})", "INVALID_JSON")


def invalid(exc: ValueError) -> ProtocolError:
    return bad_request(f"invalid JSON: {exc}", "INVALID_JSON")


def too_deep(limits: JsonLimits) -> ProtocolError:
    return bad_request(f"JSON body nests deeper than {limits.depth_max} levels", "JSON_TOO_DEEP")


def too_many(limits: JsonLimits) -> ProtocolError:
    return ProtocolError(413, "JSON_TOO_MANY_MESSAGES", f"a JSON body may hold at most {limits.messages_max} messages")


def too_large(limits: JsonLimits) -> ProtocolError:
    return ProtocolError(413, "JSON_MESSAGE_TOO_LARGE",
                         f"a JSON message in a large body may be at most {limits.message_bytes_max} bytes")


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

# The shape of a text: digits, exponent marks, signs and openers ("[" for both
# "[" and "{": their count bounds the nesting depth), everything else blank.
_SHAPE_KEPT: Final = b"0123456789eE+-[{"
_NUMBER_SHAPE: Final = bytes.maketrans(
    _SHAPE_KEPT + bytes(c for c in range(256) if c not in _SHAPE_KEPT),
    b"9999999999ee++[[" + b" " * (256 - len(_SHAPE_KEPT)),
)


def needs_care(data: bytes | memoryview) -> bool:
    shape = bytes(data).translate(_NUMBER_SHAPE)
    return _has_long_integer(shape) or _has_long_exponent(shape)


def _has_long_integer(shape: bytes) -> bool:
    """19+ digits in a row: an integer outside 64 bits (or a long mantissa) may be there."""
    return b"9" * 19 in shape


def _orjson_keeps_integers(shape: bytes) -> bool:
    """orjson keeps integers in [-2**63, 2**64) exact and turns any other into a float:
    those have 20+ digits, or 19 after a minus sign ("+" in the shape)."""
    return b"9" * 20 not in shape and b"+" + b"9" * 19 not in shape


def _has_long_exponent(shape: bytes) -> bool:
    return b"e999" in shape or b"e+999" in shape


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


# -- large bodies ---------------------------------------------------------------

# Bytes decoded to text (and scanned for numbers that need care) per step;
# the text kept is at most this plus the message being parsed.
WINDOW_BYTES: Final = 64 * 1024
# A value that ends this close to the end of the decoded text may continue
# past it ("1" of "1.5e3"); the stdlib scanner never looks further ahead.
_LOOKAHEAD: Final = 8
_WHITESPACE: Final = json.decoder.WHITESPACE
_DIGIT_RUN_OVERLAP: Final = 24


class WindowedFramer:
    """Frames one body message by message; iterate ``steps()`` to do the work.

    Each step is bounded: decoding (and scanning) one window, or parsing and
    encoding one message (at most ``message_bytes_max``). The messages limit
    is enforced as they are found, so an oversized body is refused after
    ``messages_max`` of them, never materialized. The stored form is written
    in place into one buffer (``result()``): the only copy of the body made.
    """

    def __init__(self, body: bytes, *, allow_empty: bool, limits: JsonLimits, window_bytes: int = WINDOW_BYTES) -> None:
        self._body = body
        self._allow_empty = allow_empty
        self._limits = limits
        self._window = window_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._fed = 0  # bytes of the body decoded into text so far
        self._text = ""
        self._at = 0  # index in _text of the first character not yet framed
        self._json = PLAIN
        self._recent = b""  # the last bytes decoded: a digit run may span two windows
        self.messages = 0
        self._stored = GrowableBuffer(len(body))  # compact JSON is rarely longer than its source

    def steps(self) -> Iterator[None]:
        first = self._peek()
        if first != "[":
            yield from self._message(nesting=0)
        else:
            self._at += 1
            if self._peek() == "]":
                self._at += 1
            else:
                yield from self._array_items()
        if self._peek() != "":
            raise bad_request(f"invalid JSON: extra data after the value at character {self._at}", "INVALID_JSON")
        if not self.messages and not self._allow_empty:
            raise empty_array()

    def result(self) -> memoryview:
        """The stored messages, once ``steps()`` has run to its end."""
        return self._stored.freeze()

    def _array_items(self) -> Iterator[None]:
        while True:
            yield from self._message(nesting=1)
            separator = self._peek()
            self._at += 1
            if separator == "]":
                return
            if separator != ",":
                raise bad_request(f"invalid JSON: expecting ',' or ']' after message {self.messages}", "INVALID_JSON")

    def _peek(self) -> str:
        """The next character that is not whitespace ("" at the end), skipping to it."""
        while True:
            self._at = _WHITESPACE.match(self._text, self._at).end()
            if self._at < len(self._text):
                return self._text[self._at]
            if not self._decode_more(0):
                return ""

    def _decode_more(self, chars_at_least: int) -> bool:
        """Appends the next window (at least ``chars_at_least`` bytes) to the text; False at the end."""
        if self._fed == len(self._body):
            return False
        end = min(len(self._body), self._fed + max(self._window, chars_at_least))
        raw = bytes(self._body[self._fed : end])
        # Every byte is looked at before any message in it is parsed, so the
        # careful decoder is in place for every message that needs it.
        seen = self._recent + raw
        if self._json is PLAIN and needs_care(seen):
            self._json = CAREFUL
        self._recent = seen[-_DIGIT_RUN_OVERLAP:]
        try:
            more = self._decoder.decode(raw, end == len(self._body))
        except UnicodeDecodeError as exc:
            raise not_utf8(exc) from None
        self._text = self._text[self._at :] + more
        self._at = 0
        self._fed = end
        return True

    def _message(self, nesting: int) -> Iterator[None]:
        if self.messages == self._limits.messages_max:
            raise too_many(self._limits)
        self._peek()
        start = self._at
        while (parsed := self._parse_at(start)) is None:
            if len(self._text) - start > self._limits.message_bytes_max:
                raise too_large(self._limits)
            self._decode_more(len(self._text) - start)  # doubles the text: bounded re-parsing
            start = 0  # _decode_more moved the message to the start of the text
            yield
        value, end = parsed
        self._check_message(value, start, end, nesting)
        self._stored.append(encode_message(value))
        self.messages += 1
        self._at = end
        yield

    def _parse_at(self, start: int) -> tuple[Any, int] | None:
        """The message at ``start`` and where it ends; None if it may continue past the text."""
        at_end = self._fed == len(self._body)
        try:
            value, end = self._json.raw_decode(self._text, start)
        except RecursionError:  # far deeper than any limit: depth_max stays below the recursion limit
            raise too_deep(self._limits) from None
        except json.JSONDecodeError as exc:
            if at_end or not _may_be_cut(exc, len(self._text)):
                raise invalid(exc) from None
            return None
        except ValueError as exc:  # a number hook: "1e30" may be the start of "1e300"
            if at_end:
                raise invalid(exc) from None
            return None
        if end > len(self._text) - _LOOKAHEAD and not at_end:
            return None
        return value, end

    def _check_message(self, value: Any, start: int, end: int, nesting: int) -> None:
        limits = self._limits
        # A character is 1 to 4 bytes: only a long message needs encoding to be measured.
        if end - start > limits.message_bytes_max // 4 and len(self._text[start:end].encode()) > limits.message_bytes_max:
            raise too_large(limits)
        if count_brackets(self._text, start, end) + nesting > limits.depth_max and _deeper_than(
            value, limits.depth_max, nesting + 1
        ):
            raise too_deep(limits)


def _may_be_cut(exc: json.JSONDecodeError, text_length: int) -> bool:
    """Whether a parse error may only mean that the text ends too early."""
    return exc.msg.startswith("Unterminated string") or exc.pos >= text_length - _LOOKAHEAD


def encode_messages_windowed(body: bytes, *, allow_empty: bool, limits: JsonLimits = JsonLimits(),
                             window_bytes: int = WINDOW_BYTES) -> memoryview:
    """``encode_messages`` by steps, all at once (for tests and tools)."""
    framer = WindowedFramer(body, allow_empty=allow_empty, limits=limits, window_bytes=window_bytes)
    for _ in framer.steps():
        pass
    return framer.result()


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
