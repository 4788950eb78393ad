"""Cost of the file-operations seam: the same calls through ``os`` and through ``fileops.REAL``.

Interleaves the two so machine noise hits both alike; reports the best of
several rounds per call (ns) for a small pwrite, a writev and an fdatasync.

    .venv/bin/python scripts/fileops_overhead.py
"""

from __future__ import annotations

import os
import tempfile
import timeit

from trio_streams.storage.fileops import REAL

CALLS = {
    "pwrite 64 B": ("os.pwrite(fd, data, 0)", "REAL.pwrite(fd, data, 0)", 100_000),
    "writev 2x64 B": ("os.writev(fd, parts)", "REAL.writev(fd, parts)", 100_000),
    "fdatasync": ("os.fdatasync(fd)", "REAL.fdatasync(fd)", 1_000),
}


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        fd = os.open(os.path.join(directory, "f"), os.O_WRONLY | os.O_CREAT)
        env = {"os": os, "REAL": REAL, "fd": fd, "data": b"x" * 64, "parts": [b"x" * 64] * 2}
        for label, (direct, seam, number) in CALLS.items():
            best = {direct: float("inf"), seam: float("inf")}
            for _ in range(7):
                for stmt in best:
                    best[stmt] = min(best[stmt], timeit.timeit(stmt, globals=env, number=number) / number)
            print(f"{label:>14}: os {best[direct] * 1e9:8.0f} ns, seam {best[seam] * 1e9:8.0f} ns "
                  f"({(best[seam] - best[direct]) * 1e9:+.0f} ns)")
        os.close(fd)


if __name__ == "__main__":
    main()
