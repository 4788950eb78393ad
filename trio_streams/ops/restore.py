"""Reading a backup back: checking an archive or a backup directory, and restoring it.

Owns: unpacking a tar (from a file, a pipe or the HTTP response) one member
at a time, writing only the member names a backup may hold, checking them
against the manifest, and ``restore``: into an empty or new directory only,
through a temporary sibling that becomes the data directory only once every
file is checked, durable and verified (``trio-streams verify``).

Never: overwrites anything; trusts a member name, type or size it did not check.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from ..storage.verify import Report, verify_directory
from ..storage.wal import fsync_directory
from . import archive

COPY_CHUNK_BYTES = 1024 * 1024
_SUBDIRECTORIES = ("checkpoints", "wal", "streams")


class IterReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (an HTTP body), optionally
    copying every byte read to ``tee`` (the archive kept as it came)."""

    def __init__(self, chunks: Iterable[bytes], tee: IO[bytes] | None = None) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._tee = tee
        self._pending = memoryview(b"")  # a view: taking a small read off a large chunk copies nothing

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        if self._tee is not None:
            self._tee.write(self._pending[:n])
        self._pending = self._pending[n:]
        return n

    def drain(self) -> None:
        """Reads to the end: the bytes after the archive's end that tar never asks
        for (zero padding) still reach ``tee``."""
        while self.read(COPY_CHUNK_BYTES):
            pass


def unpack(source: IO[bytes], target: Path | None, *, keep_manifest: bool = False) -> dict[str, Any]:
    """Reads a backup tar from ``source`` to its end, writing its files under
    ``target`` (None: check only); returns the manifest, or ArchiveInvalid."""
    totals = archive.Totals()
    manifest: dict[str, Any] | None = None
    try:
        with tarfile.open(fileobj=source, mode="r|") as tar:
            for member in tar:
                if manifest is not None:
                    raise archive.ArchiveInvalid(f"{member.name[:100]!r} follows the manifest")
                reader = tar.extractfile(member) if member.isfile() else None
                if reader is None:
                    raise archive.ArchiveInvalid(f"{member.name[:100]!r} is not a regular file")
                if member.name == archive.MANIFEST_NAME:
                    manifest = _manifest(reader, member.size, totals, target if keep_manifest else None)
                elif archive.member_allowed(member.name):
                    _copy_member(reader, member.name, member.size, target, totals)
                else:
                    raise archive.ArchiveInvalid(f"{member.name[:100]!r} is not a file a backup holds")
    except (tarfile.TarError, EOFError) as error:
        raise archive.ArchiveInvalid(f"the archive is damaged or cut short: {error}") from None
    if manifest is None:
        raise archive.ArchiveInvalid("the archive has no manifest: it was cut short")
    return manifest


def _manifest(reader: IO[bytes], size: int, totals: archive.Totals, target: Path | None) -> dict[str, Any]:
    if size > archive.MANIFEST_BYTES_MAX:
        raise archive.ArchiveInvalid(f"the manifest is {size} bytes, over {archive.MANIFEST_BYTES_MAX}")
    raw = reader.read()
    doc = archive.check_manifest(raw, totals)
    if target is not None:
        _write_file(target / archive.MANIFEST_NAME, [raw])
    return doc


def _copy_member(reader: IO[bytes], name: str, size: int, target: Path | None, totals: archive.Totals) -> None:
    digest = archive.FileDigest(name, size)

    def chunks() -> Iterator[bytes]:
        left = size
        while left:
            chunk = reader.read(min(COPY_CHUNK_BYTES, left))
            if not chunk:
                raise archive.ArchiveInvalid(f"{name} is cut short")
            digest.update(chunk)
            left -= len(chunk)
            yield chunk

    if target is None:
        for _ in chunks():
            pass
    else:
        _write_file(target / name, chunks())
    totals.add(size, digest)


def _write_file(path: Path, chunks: Iterable[bytes]) -> None:
    """A new file (never an existing one), durable when this returns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise archive.ArchiveInvalid(f"{path.name} appears twice in the archive") from None
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def unpack_directory(source: Path, target: Path) -> dict[str, Any]:
    """Checks a backup directory (``trio-streams backup ... DIR``) against its
    manifest while copying its files under ``target``."""
    manifest_path = source / archive.MANIFEST_NAME
    if not manifest_path.is_file():
        raise archive.ArchiveInvalid(f"{source} has no {archive.MANIFEST_NAME}: not a backup, or cut short")
    totals = archive.Totals()
    for name in _backup_files(source):
        size = (source / name).stat().st_size
        with open(source / name, "rb") as reader:
            _copy_member(reader, name, size, target, totals)
    if manifest_path.stat().st_size > archive.MANIFEST_BYTES_MAX:
        raise archive.ArchiveInvalid("the manifest is too large to be ours")
    return archive.check_manifest(manifest_path.read_bytes(), totals)


def _backup_files(source: Path) -> list[str]:
    names = []
    for entry in sorted(os.listdir(source)):
        if entry in _SUBDIRECTORIES and (source / entry).is_dir():
            names += [f"{entry}/{n}" for n in sorted(os.listdir(source / entry))]
        elif entry != archive.MANIFEST_NAME:
            names.append(entry)
    unknown = [n for n in names if not archive.member_allowed(n)]
    if unknown:
        raise archive.ArchiveInvalid(f"{source} holds files a backup does not: {', '.join(unknown[:5])}")
    return names


def refuse_unless_empty(directory: Path) -> None:
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise FileExistsError(f"{directory} exists and is not an empty directory; restore only into a new or empty one")


@contextlib.contextmanager
def staging(final: Path) -> Iterator[Path]:
    """A new sibling directory that becomes ``final`` (new or empty) only if the
    block succeeds; removed otherwise, so a failed restore leaves nothing."""
    refuse_unless_empty(final)
    temp = final.parent / f".{final.name}.partial-{os.getpid()}"
    temp.mkdir(parents=True)
    try:
        yield temp
        for folder in (temp, *(temp / d for d in _SUBDIRECTORIES if (temp / d).is_dir())):
            fsync_directory(folder)
        refuse_unless_empty(final)
        if final.exists():
            final.rmdir()
        os.rename(temp, final)
        fsync_directory(final.parent)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def restore(source: Path | None, data: Path, stdin: IO[bytes] | None = None) -> tuple[dict[str, Any], Report]:
    """Restores a backup (a tar file, a backup directory, or a tar on ``stdin``
    when ``source`` is None) into ``data``; raises ArchiveInvalid, or
    RestoreRefused when the restored directory does not verify."""
    with staging(data) as temp:
        if source is None:
            assert stdin is not None
            manifest = unpack(stdin, temp)
        elif source.is_dir():
            manifest = unpack_directory(source, temp)
        else:
            with open(source, "rb") as reader:
                manifest = unpack(reader, temp)
        (temp / "wal").mkdir(exist_ok=True)
        report = verify_directory(temp)
        if report.damaged or report.unapplied:
            raise RestoreRefused(report)
    return manifest, report


class RestoreRefused(Exception):
    """The backup's files check out but do not verify as a data directory."""

    def __init__(self, report: Report) -> None:
        super().__init__("the restored files do not verify")
        self.report = report
