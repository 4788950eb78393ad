"""Large bodies are built in place: the bytes come out exactly as they went in."""

from __future__ import annotations

import random

import pytest

from trio_streams.membuf import BodyCollector, GrowableBuffer


@pytest.mark.parametrize("capacity", [0, 10, 1 << 20])
def test_growable_buffer_keeps_every_byte_as_it_grows(capacity: int) -> None:
    rng = random.Random(capacity)
    buffer, expected = GrowableBuffer(capacity), bytearray()
    for _ in range(200):
        chunk = rng.randbytes(rng.randint(0, 20_000))
        buffer.append(chunk)
        expected += chunk
    view = buffer.freeze()
    assert view == expected and len(buffer) == len(expected) and view.readonly


@pytest.mark.parametrize(("declared", "sizes", "large"), [
    (0, [10, 20], False),  # small, length unknown
    (30, [10, 20], False),  # small, declared
    (0, [40_000, 40_000, 1], True),  # chunked, outgrows the small size
    (80_001, [40_000, 40_000, 1], True),  # declared large
    (0, [], False),
])
def test_body_collector(declared: int, sizes: list[int], large: bool) -> None:
    rng = random.Random(declared)
    chunks = [rng.randbytes(n) for n in sizes]
    collector = BodyCollector(declared, small_bytes_max=64 * 1024)
    for chunk in chunks:
        collector.add(chunk)
    body = collector.result()
    assert body == b"".join(chunks) and len(collector) == sum(sizes)
    assert isinstance(body, memoryview) is large
