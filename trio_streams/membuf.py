"""GrowableBuffer: a large byte buffer built in place, in pages mapped for it alone.

Owns: accumulating a large body (a request being received, a JSON body
being framed) without whole-body copies or long pauses. A ``bytearray``
that grows reallocates, and below glibc's mmap threshold (up to 32 MiB)
that is a memcpy of everything so far, while the GIL is held; joining a
list of chunks needs the whole body twice. An anonymous mmap instead grows
with ``mremap`` (no copy), fills its pages as they are written, and returns
them to the system as soon as the last view of it is dropped.

Never: shrinks, or changes after ``freeze``.
"""

from __future__ import annotations

import mmap


class GrowableBuffer:
    def __init__(self, capacity_bytes: int) -> None:
        # Private: a shared anonymous mapping cannot grow (pages past its
        # first size raise SIGBUS), a private one grows with mremap.
        self._map = mmap.mmap(-1, max(mmap.PAGESIZE, capacity_bytes), flags=mmap.MAP_PRIVATE)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, data: bytes | bytearray | memoryview) -> None:
        needed = self._size + len(data)
        if needed > len(self._map):
            self._map.resize(max(needed, 2 * len(self._map)))
        self._map[self._size : needed] = data
        self._size = needed

    def freeze(self) -> memoryview:
        """The bytes written, read-only; the pages live as long as this view (or a slice of it)."""
        return memoryview(self._map).toreadonly()[: self._size]


class BodyCollector:
    """Collects a request body chunk by chunk: a small one as bytes, a large one in a GrowableBuffer.

    ``expected_bytes`` (a declared Content-Length, or 0) sizes the buffer up
    front; a chunked body moves to a buffer once it outgrows ``small_bytes_max``.
    """

    def __init__(self, expected_bytes: int, small_bytes_max: int) -> None:
        self._small_bytes_max = small_bytes_max
        self._chunks: list[bytes] = []
        self._size = 0
        self._large = GrowableBuffer(expected_bytes) if expected_bytes > small_bytes_max else None

    def __len__(self) -> int:
        return self._size

    def add(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._large is None and self._size > self._small_bytes_max:
            self._large = GrowableBuffer(2 * self._size)
            for earlier in self._chunks:
                self._large.append(earlier)
            self._chunks.clear()
        if self._large is not None:
            self._large.append(chunk)
        else:
            self._chunks.append(chunk)

    def result(self) -> bytes | memoryview:
        return self._large.freeze() if self._large is not None else b"".join(self._chunks)
