"""Stream-Cursor arithmetic (PROTOCOL.md section 10.1).

Owns: the interval clock and the never-go-backwards rule. Never: reads the
clock itself; callers pass ``now`` so the rule is testable.
"""

from __future__ import annotations

import random
from typing import Final

CURSOR_EPOCH_S: Final = 1728432000.0  # 2024-10-09T00:00:00Z
CURSOR_INTERVAL_S: Final = 20
JITTER_S_MIN: Final = 1
JITTER_S_MAX: Final = 3600


def current_interval(now: float) -> int:
    return int((now - CURSOR_EPOCH_S) // CURSOR_INTERVAL_S)


def next_cursor(now: float, client_cursor: str | None, rng: random.Random | None = None) -> str:
    """The cursor for a live response; strictly above a client cursor that caught up."""
    interval = current_interval(now)
    echoed = _parse(client_cursor)
    if echoed is None or echoed < interval:
        return str(interval)
    jitter_s = (rng or random).randint(JITTER_S_MIN, JITTER_S_MAX)
    # Whole intervals of jitter, at least one, so the result is strictly greater.
    return str(echoed + max(1, jitter_s // CURSOR_INTERVAL_S))


def _parse(cursor: str | None) -> int | None:
    if cursor is None or not cursor.isascii() or not cursor.isdigit() or len(cursor) > 18:
        return None
    return int(cursor)
