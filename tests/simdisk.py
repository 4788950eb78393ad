"""A simulated disk for the deterministic simulation (tests/test_simulation.py).

``SimDisk`` is a ``FaultyFileOps`` whose faults come from a seeded schedule
instead of a fixed list, and which knows what reached the "disk": it keeps,
for every file the storage engine touched, the content as of its last
successful fsync/fdatasync. ``crash()`` freezes that image at the instant of
the crash; ``restore()`` later rewrites the data directory to it, as a
machine that lost power would find it.

The model (stated, because it is a choice):
* file contents are durable only up to the last fsync of that file;
* namespace changes (create, rename, unlink) are durable at once, as on a
  journaling file system with ordered metadata; a created file that was
  never fsynced comes back empty;
* the crash ``mode`` says what happens to unsynced bytes: ``drop`` loses
  them all, ``keep`` keeps the page cache (a process crash, kill -9),
  ``torn`` keeps a random prefix of each file's unsynced appended bytes.
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable
from pathlib import Path

from trio_streams.storage.fileops import Fault, FaultyFileOps, PathLike

WRITES = ("write", "writev", "pwrite")
CRASH_MODES = ("drop", "keep", "torn")


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read()
    except (FileNotFoundError, IsADirectoryError):
        return None


class SimDisk(FaultyFileOps):
    def __init__(self, root: Path, rng: random.Random, trace: Callable[[str], None]) -> None:
        super().__init__()
        self.root = root
        self.rng = rng
        self.trace = trace
        self.armed = False  # no faults while the service recovers
        self.full = False  # an ENOSPC episode: every call that may need a block fails
        self.short_write_p = 0.0
        self.checkpoint_fail_p = 0.0
        self.unlink_fail_p = 0.0
        self.fsync_eio_at: int | None = None  # the armed call count at which one fsync fails
        self.crash_at: int | None = None  # the armed call count at which the machine dies
        self.crash_mode = "drop"
        self.on_crash: Callable[[], None] = lambda: None
        self.armed_calls = 0
        self.image: dict[str, bytes] | None = None
        self._durable: dict[str, bytes] = {}

    # -- what reached the disk ---------------------------------------------

    def _relative(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    def _track(self, path: str) -> None:
        if path not in self._durable and not os.path.isdir(path):
            self._durable[path] = _read(path) or b""

    def _synced(self, fd: int) -> None:
        path = self._paths.get(fd)
        if path is not None and not os.path.isdir(path):
            self._durable[path] = _read(path) or b""

    @property
    def crashed(self) -> bool:
        return self.image is not None

    def crash(self, why: str) -> None:
        """The machine stops now: freeze what the disk holds (per ``crash_mode``)."""
        if self.image is not None:
            return
        self.trace(f"crash ({why}, {self.crash_mode}) after {self.armed_calls} calls")
        image: dict[str, bytes] = {}
        for directory, _, names in os.walk(self.root):
            for name in names:
                path = os.path.join(directory, name)
                current = _read(path) or b""
                image[path] = self._on_disk(path, current)
        self.image = image
        self.on_crash()

    def _on_disk(self, path: str, current: bytes) -> bytes:
        durable = self._durable.get(path)
        if durable is None or self.crash_mode == "keep":
            return current  # untouched since start, or the page cache survives
        if self.crash_mode == "torn" and current.startswith(durable) and len(current) > len(durable):
            return current[: self.rng.randint(len(durable), len(current))]
        return durable

    def restore(self) -> None:
        """Rewrite the directory to the crash image (call once every descriptor is closed)."""
        assert self.image is not None
        for fd in list(self._paths):
            os.close(fd)  # the dead process's descriptors
        self._paths.clear()
        for directory, _, names in os.walk(self.root):
            for name in names:
                path = os.path.join(directory, name)
                if path not in self.image:
                    os.unlink(path)
        for path, content in self.image.items():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as file:
                file.write(content)

    # -- the fault schedule -------------------------------------------------

    def _check(self, operation: str, path: str) -> Fault | None:
        self.calls.append((operation, path))
        if not self.armed or self.crashed:
            return None
        self.armed_calls += 1
        if self.crash_at is not None and self.armed_calls >= self.crash_at:
            self.crash(f"at {operation} {self._relative(path)}")
            return None
        fault = self._scheduled(operation, path)
        if fault is not None:
            self.trace(f"fault {operation} {self._relative(path)}: "
                       + (f"short {fault.short_bytes}" if fault.short_bytes is not None else errno.errorcode[fault.errno]))
            if fault.short_bytes is None:
                raise OSError(fault.errno, f"{os.strerror(fault.errno)} (simulated)", path)
        return fault

    def _scheduled(self, operation: str, path: str) -> Fault | None:
        rng = self.rng
        if operation in ("fsync", "fdatasync") and self.fsync_eio_at is not None and self.armed_calls >= self.fsync_eio_at:
            self.fsync_eio_at = None
            return Fault(operation, errno=errno.EIO)
        # Opening an existing file needs no block; creating one may.
        creates = operation == "open" and not os.path.exists(path)
        if self.full and (operation in (*WRITES, "replace") or creates):
            return Fault(operation, errno=errno.ENOSPC)
        if operation in WRITES and rng.random() < self.short_write_p:
            return Fault(operation, short_bytes=rng.randint(1, 16))
        if operation == "replace" and path.endswith(".snap") and rng.random() < self.checkpoint_fail_p:
            return Fault(operation, errno=rng.choice((errno.ENOSPC, errno.EIO)))
        if operation == "unlink" and path.endswith((".dat", ".idx")) and rng.random() < self.unlink_fail_p:
            return Fault(operation, errno=errno.EIO)
        return None

    # -- bookkeeping around the real calls -------------------------------------

    def open(self, path: PathLike, flags: int, mode: int = 0o777) -> int:  # type: ignore[override]
        self._track(os.fspath(path))
        return super().open(path, flags, mode)

    def replace(self, source: PathLike, target: PathLike) -> None:  # type: ignore[override]
        super().replace(source, target)
        self._durable[os.fspath(target)] = self._durable.pop(os.fspath(source), b"")

    def unlink(self, path: PathLike) -> None:  # type: ignore[override]
        super().unlink(path)
        self._durable.pop(os.fspath(path), None)

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        self._synced(fd)

    def fdatasync(self, fd: int) -> None:
        super().fdatasync(fd)
        self._synced(fd)
