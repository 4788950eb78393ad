"""Fork resolution: from a fork request's headers to a divergence position.

Owns: the data reads fork resolution needs — the byte before a JSON anchor
and the append that starts at the anchor — fed to the pure decisions in
``protocol.rules`` (source checks, anchor, sub-offset). Never: changes
state. Runs in the fork path's actor while it holds the topology lock, so
the source cannot be deleted underneath it.
"""

from __future__ import annotations

from ..protocol import rules
from ..protocol.headers import ForkSpec
from ..protocol.rules import ResolvedFork
from ..protocol.state import StreamState
from .context import ActorContext


async def resolve_fork(context: ActorContext, spec: ForkSpec) -> ResolvedFork:
    source = context.view.at(spec.source)
    source = rules.fork_source(source, source is not None and context.lifetimes.is_expired(source))
    anchor = rules.fork_anchor(spec, source)
    # At or below the head a fork reads nothing of its source (its head is its base), and the
    # byte before may be trimmed away.
    if source.json_mode and source.head < anchor < source.tail:
        rules.require_fork_boundary(await context.view.read(source, anchor - 1, anchor))
    base = anchor
    if spec.sub_offset:
        base = await _sub_position(context, source, anchor, spec.sub_offset)
    return ResolvedFork(source, spec.source, anchor, spec.sub_offset, base)


def with_default_offset(context: ActorContext, spec: ForkSpec) -> ForkSpec:
    return rules.with_default_offset(spec, context.view.at(spec.source))


async def _sub_position(context: ActorContext, source: StreamState, anchor: int, sub_offset: int) -> int:
    """anchor + sub_offset bytes (or messages), within the append starting at anchor."""
    boundary = await context.view.next_boundary(source, anchor)
    if not source.json_mode:
        return rules.byte_sub_position(anchor, sub_offset, boundary)
    return rules.message_sub_position(anchor, sub_offset, await context.view.read(source, anchor, boundary))
