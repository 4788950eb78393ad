"""The file-operations seam: every mutating file call the storage engine makes.

Owns: the narrow interface (open, write, writev, pwrite, fsync, fdatasync,
ftruncate, punch_hole, replace, unlink, close) that ``wal.py``, ``store.py`` and
``snapshot.py`` call instead of ``os``, the classification of what a failed
call means (disk full, or a failed sync that makes the page cache
untrustworthy), and ``FaultyFileOps``, which fails a chosen call with ENOSPC,
EIO or a short write so tests can walk every fault point deterministically.

Each server instance gets its own ``FileOps`` (``Service`` passes it down to
``Store`` and ``SegmentedLog``), so several servers in one process can run
different fault schedules.

Never: buffers, retries, or decides policy (the log writer does that).
Production (``REAL``) calls straight into ``os``: the non-sync operations are
the ``os`` functions themselves, so the seam costs one attribute lookup, as
``os.write`` does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import errno
import fnmatch
import math
import os
from collections.abc import Sequence
from typing import Union

Buffer = Union[bytes, bytearray, memoryview]
PathLike = Union[str, "os.PathLike[str]"]

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_fdatasync = getattr(os, "fdatasync", os.fsync)
# fallocate(2) modes: free the blocks of a range, keeping the file's size (reads of it give zeros).
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def _libc_fallocate() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's fallocate (os has posix_fallocate only, which cannot punch); None off Linux."""
    name = ctypes.util.find_library("c")
    fallocate = getattr(ctypes.CDLL(name, use_errno=True), "fallocate", None) if name else None
    if fallocate is not None:
        fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
        fallocate.restype = ctypes.c_int
    return fallocate


_FALLOCATE = _libc_fallocate()


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Frees the disk blocks of ``[offset, offset + length)``; the file keeps its size.
    OSError (EOPNOTSUPP where the file system cannot) when it fails."""
    if _FALLOCATE is None:
        raise OSError(errno.EOPNOTSUPP, "fallocate is not available on this platform")
    if _FALLOCATE(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class SyncFailed(OSError):
    """An fsync or fdatasync failed. The kernel may already have dropped the
    dirty pages, so a retry could "succeed" over lost data (PostgreSQL's
    "fsyncgate"): the only safe continuation is a restart that replays the WAL."""


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC or EDQUOT from anything but a sync: space may come back, and a write
    that was refused can be undone and retried."""
    return isinstance(error, OSError) and not isinstance(error, SyncFailed) and error.errno in _DISK_FULL_ERRNOS


def _sync_failed(error: OSError, operation: str) -> SyncFailed:
    failure = SyncFailed(error.errno, f"{operation} failed: {error.strerror}")
    failure.__cause__ = error
    return failure


class FileOps:
    """The real calls. Syncs re-raise their failures as ``SyncFailed``."""

    open = staticmethod(os.open)
    write = staticmethod(os.write)
    writev = staticmethod(os.writev)
    pwrite = staticmethod(os.pwrite)
    ftruncate = staticmethod(os.ftruncate)
    punch_hole = staticmethod(punch_hole)
    replace = staticmethod(os.replace)
    unlink = staticmethod(os.unlink)
    close = staticmethod(os.close)

    def fsync(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as error:
            raise _sync_failed(error, "fsync") from error

    def fdatasync(self, fd: int) -> None:
        try:
            _fdatasync(fd)
        except OSError as error:
            raise _sync_failed(error, "fdatasync") from error


REAL = FileOps()


# ---------------------------------------------------------------- faults


@dataclasses.dataclass(slots=True)
class Fault:
    """Fail matching calls: the ``nth`` one (1-based) and the ``times - 1`` after it.

    ``path`` is an fnmatch pattern against the file's path (for calls on a
    descriptor, the path it was opened with). ``short_bytes`` set: a write
    call writes only that many bytes and returns normally (a short write),
    instead of raising ``errno``.
    """

    operation: str
    path: str = "*"
    nth: int = 1
    times: float = 1
    errno: int = errno.ENOSPC
    short_bytes: int | None = None
    # Raised instead of an OSError: a bug or crash at this call, not a disk error.
    raises: BaseException | None = None
    seen: int = 0
    fired: int = 0

    def matches(self, operation: str, path: str) -> bool:
        if operation != self.operation or not fnmatch.fnmatch(path, self.path):
            return False
        self.seen += 1
        if self.seen < self.nth or self.fired >= self.times:
            return False
        self.fired += 1
        return True


_WRITES = ("write", "writev", "pwrite")


class FaultyFileOps(FileOps):
    """``FileOps`` that fails calls chosen by operation, path pattern and call count.

    Deterministic: which call fails depends only on the order of calls.
    ``calls`` records every call as ``(operation, path)``; ``disk_full()``
    makes every write-like call fail with ENOSPC until ``clear()``.
    """

    def __init__(self, faults: Sequence[Fault] = ()) -> None:
        self.faults = list(faults)
        self.calls: list[tuple[str, str]] = []
        self._paths: dict[int, str] = {}

    def add(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def disk_full(self) -> None:
        """Every call that could need a new block fails with ENOSPC from now on."""
        for operation in (*_WRITES, "open", "replace"):
            self.add(Fault(operation, times=math.inf))

    def clear(self) -> None:
        self.faults.clear()

    def fired(self) -> int:
        return sum(fault.fired for fault in self.faults)

    def _check(self, operation: str, path: str) -> Fault | None:
        self.calls.append((operation, path))
        # Every fault counts every matching call, so ``nth`` means the same with others armed.
        firing = [fault for fault in self.faults if fault.matches(operation, path)]
        if not firing:
            return None
        fault = firing[0]
        if fault.raises is not None:
            raise fault.raises
        if fault.short_bytes is None:
            raise OSError(fault.errno, f"{os.strerror(fault.errno)} (injected)", path)
        return fault

    def open(self, path: PathLike, flags: int, mode: int = 0o777) -> int:  # type: ignore[override]
        name = os.fspath(path)
        self._check("open", name)
        fd = os.open(name, flags, mode)
        self._paths[fd] = name
        return fd

    def write(self, fd: int, data: Buffer) -> int:  # type: ignore[override]
        short = self._check("write", self._paths.get(fd, "?"))
        return os.write(fd, data if short is None else memoryview(data)[: short.short_bytes])

    def writev(self, fd: int, buffers: Sequence[Buffer]) -> int:  # type: ignore[override]
        short = self._check("writev", self._paths.get(fd, "?"))
        if short is None:
            return os.writev(fd, buffers)
        joined = b"".join(buffers)[: short.short_bytes]
        return os.write(fd, joined) if joined else 0

    def pwrite(self, fd: int, data: Buffer, offset: int) -> int:  # type: ignore[override]
        short = self._check("pwrite", self._paths.get(fd, "?"))
        return os.pwrite(fd, data if short is None else memoryview(data)[: short.short_bytes], offset)

    def ftruncate(self, fd: int, length: int) -> None:  # type: ignore[override]
        self._check("ftruncate", self._paths.get(fd, "?"))
        os.ftruncate(fd, length)

    def punch_hole(self, fd: int, offset: int, length: int) -> None:  # type: ignore[override]
        self._check("punch_hole", self._paths.get(fd, "?"))
        punch_hole(fd, offset, length)

    def replace(self, source: PathLike, target: PathLike) -> None:  # type: ignore[override]
        self._check("replace", os.fspath(target))
        os.replace(source, target)

    def unlink(self, path: PathLike) -> None:  # type: ignore[override]
        self._check("unlink", os.fspath(path))
        os.unlink(path)

    def close(self, fd: int) -> None:  # type: ignore[override]
        os.close(fd)  # closed even when the call is made to fail, as close(2) does
        self._check("close", self._paths.pop(fd, "?"))

    def fsync(self, fd: int) -> None:
        self._check_sync("fsync", fd)
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._check_sync("fdatasync", fd)
        super().fdatasync(fd)

    def _check_sync(self, operation: str, fd: int) -> None:
        try:
            self._check(operation, self._paths.get(fd, "?"))
        except OSError as error:
            raise _sync_failed(error, operation) from error
