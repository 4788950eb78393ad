"""Fork resolution: from a fork request's headers to a divergence position.

Owns: finding the source stream, resolving ``Stream-Fork-Offset`` (default:
the source's tail) and ``Stream-Fork-Sub-Offset`` (bytes, or flattened
messages for JSON streams, past the anchor, never past the end of the
append that contains it) to one position in the shared offset space.

Never: changes state. Runs in the fork path's actor while it holds the
registry's topology lock, so the source cannot be deleted underneath it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ..protocol.errors import ProtocolError, bad_request, conflict
from ..protocol.headers import ForkSpec
from ..protocol.jsonmode import TERMINATOR
from ..protocol.offsets import NOW, START, format_offset, parse_offset
from ..protocol.rules import ResolvedFork
from ..protocol.state import StreamState

if TYPE_CHECKING:
    from .registry import Registry


def damaged_error(state: StreamState) -> ProtocolError:
    return ProtocolError(503, "STREAM_DAMAGED", f"stream data was damaged on disk and is fenced off: {state.damaged}")


async def resolve_fork(registry: Registry, spec: ForkSpec, now: float) -> ResolvedFork:
    source = registry.table.by_path.get(spec.source)
    expired = source is not None and registry.is_expired(source, now)
    if source is None or (expired and source.refcount == 0):
        raise ProtocolError(404, "NOT_FOUND", "the Stream-Forked-From source stream does not exist")
    if source.soft_deleted or expired:  # expiry soft-deletes a source that has forks
        raise conflict("the source stream has been deleted", "CONFLICT_SOFT_DELETED")
    if source.damaged is not None:
        raise damaged_error(source)
    anchor = _anchor(spec, source)
    if source.json_mode and 0 < anchor < source.tail:
        before = await registry.store.read(registry.table, source, anchor - 1, anchor)
        if before != TERMINATOR:
            raise bad_request("Stream-Fork-Offset is not at a message boundary of the JSON source", "INVALID_FORK")
    base = anchor
    if spec.sub_offset:
        base = await _sub_position(registry, source, anchor, spec.sub_offset)
    return ResolvedFork(source, spec.source, anchor, spec.sub_offset, base)


def with_default_offset(registry: Registry, spec: ForkSpec) -> ForkSpec:
    """``spec`` with an omitted (or ``now``) Stream-Fork-Offset spelled out: the source's tail now.

    A re-create is idempotent only if it would fork at the same point (4.2),
    so the default is resolved at the time of the repeat, not remembered
    from the first create. Left as is when the source is not there.
    """
    source = registry.table.by_path.get(spec.source)
    if source is None or spec.offset not in (None, NOW):
        return spec
    return dataclasses.replace(spec, offset=format_offset(source.tail))


def _anchor(spec: ForkSpec, source: StreamState) -> int:
    if spec.offset is None:
        return source.tail
    try:
        position = parse_offset(spec.offset)
    except ProtocolError:
        raise bad_request(f"malformed Stream-Fork-Offset {spec.offset[:64]!r}", "INVALID_FORK") from None
    if position == START:
        return 0
    if position == NOW:
        return source.tail
    assert isinstance(position, int)
    if position > source.tail:
        raise bad_request("Stream-Fork-Offset is beyond the source stream's tail", "INVALID_FORK")
    return position


async def _sub_position(registry: Registry, source: StreamState, anchor: int, sub_offset: int) -> int:
    """anchor + sub_offset bytes (or messages), within the append starting at anchor."""
    store, table = registry.store, registry.table
    boundary = await store.next_boundary(table, source, anchor)
    if not source.json_mode:
        if anchor + sub_offset > boundary:
            raise bad_request("Stream-Fork-Sub-Offset goes past the end of the append at the anchor", "INVALID_FORK")
        return anchor + sub_offset
    data = await store.read(table, source, anchor, boundary)
    cut = -1
    for _ in range(sub_offset):
        cut = data.find(TERMINATOR, cut + 1)
        if cut < 0:
            raise bad_request("Stream-Fork-Sub-Offset is more messages than the append at the anchor has", "INVALID_FORK")
    return anchor + cut + 1
