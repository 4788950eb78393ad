"""ActorContext: everything a stream actor may use, and nothing more.

Actors decide against durable state and submit events; they do not find
other actors, fan out wake-ups or own the table. Giving them this small,
frozen context instead of the registry keeps the dependency one-way:
the registry builds a context and starts actors with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence

import trio

from ..clock import Clock
from ..config import Settings
from ..protocol.state import Event
from .lifetimes import Lifetimes
from .retention import Retainer
from .view import DurableView


@dataclasses.dataclass(frozen=True)
class ActorContext:
    view: DurableView
    # Returns once the events are durable and applied (the log writer's submit).
    submit: Callable[[Sequence[Event]], Awaitable[None]]
    allocate_stream_id: Callable[[], int]
    lifetimes: Lifetimes
    settings: Settings
    # Held for batches that touch two streams (fork creates and deletes: source refcounts).
    topology_lock: trio.Lock
    clock: Clock
    retainer: Retainer
