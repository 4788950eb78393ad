"""Webhook retry delays: 1 s doubling to 60 s, each within ±20 % (PROTOCOL.md 7.1).

Pure: the caller owns the random source (seeded in tests) and persists the
resulting ``next_attempt_at`` itself.
"""

from __future__ import annotations

import random

RETRY_FIRST_DELAY_S = 1.0
RETRY_DELAY_CAP_S = 60.0
RETRY_JITTER_FRACTION = 0.2
# 2**6 s is past the cap: larger exponents change nothing (and a huge attempt
# count must not build a huge integer).
_EXPONENT_MAX = 6


def retry_delay_s(attempt: int, rng: random.Random) -> float:
    """Seconds to wait after the ``attempt``-th failed delivery (1 for the first failure).

    The jitter applies to the capped delay too, so retries that reached the
    cap still spread out (48–72 s) instead of arriving together.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts failed deliveries from 1, not {attempt}")
    base = min(RETRY_FIRST_DELAY_S * (1 << min(attempt - 1, _EXPONENT_MAX)), RETRY_DELAY_CAP_S)
    return base * rng.uniform(1 - RETRY_JITTER_FRACTION, 1 + RETRY_JITTER_FRACTION)
