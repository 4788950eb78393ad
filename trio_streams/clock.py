"""Clock: the two kinds of time the server reads, injectable from the top.

Owns: ``wall()`` (UNIX seconds: creation times, TTL, Expires-At, cursors)
and ``monotonic()`` (seconds on trio's clock: intervals and deadlines).
The default monotonic reading is ``trio.current_time()``, so a
``trio.testing.MockClock`` drives it; ``trio_driven_clock`` makes the wall
clock follow the same mock, so TTL and Expires-At tests step time without
sleeping. Never: sleeps or schedules anything itself.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import trio


@dataclasses.dataclass(frozen=True, slots=True)
class Clock:
    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = trio.current_time


SYSTEM_CLOCK = Clock()


def trio_driven_clock(wall_start_s: float) -> Clock:
    """A clock whose wall time is ``wall_start_s`` plus trio's time: a MockClock moves both."""
    return Clock(wall=lambda: wall_start_s + trio.current_time())
