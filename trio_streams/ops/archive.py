"""The backup archive: a tar of data-directory files, closed by a manifest.

Owns: the member names a backup may hold (nothing else is ever written or
extracted, so a hostile archive cannot name a path outside the target),
the tar framing written piece by piece (a member's size is known before
its bytes are read, so nothing is held whole in memory), and the digest
that lets a restore refuse a truncated or damaged archive.

The digest is order-independent (a sum of per-file SHA-256 values, mod
2**256) so that a backup unpacked into a directory checks the same way as
the tar it came from, and it is O(1) memory however many files there are.
The manifest is the last member: an archive cut short has none.

Never: touches a data directory, imports trio.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tarfile
from typing import Any, Final

import orjson

FORMAT: Final = "trio-streams-backup"
VERSION: Final = 1
MANIFEST_NAME: Final = "MANIFEST.json"
# The manifest is small (counts and a digest); a larger one is not ours.
MANIFEST_BYTES_MAX: Final = 64 * 1024
TAR_BLOCK: Final = 512
_DIGEST_MODULUS: Final = 2**256
# Everything a data directory holds that recovery needs; LOCK and temp files are not.
MEMBER_NAME: Final = re.compile(
    r"\A(?:checkpoints/checkpoint-[0-9]{20}\.snap|wal/[0-9]{20}\.wal|streams/[0-9a-f]{16}\.(?:dat|idx|sum)"
    r"|last-access\.json)\Z"
)


class ArchiveInvalid(Exception):
    """The archive is truncated, damaged or not a backup; the message says how."""


def member_allowed(name: str) -> bool:
    return MEMBER_NAME.match(name) is not None


class FileDigest:
    """The SHA-256 of one member's name, size and bytes, fed as they pass."""

    def __init__(self, name: str, size: int) -> None:
        self._hash = hashlib.sha256(name.encode() + b"\0" + size.to_bytes(8, "little"))

    def update(self, data: bytes | memoryview) -> None:
        self._hash.update(data)

    def value(self) -> int:
        return int.from_bytes(self._hash.digest(), "big")


@dataclasses.dataclass(slots=True)
class Totals:
    """What a manifest vouches for: how many files, how many bytes, their digest."""

    files: int = 0
    bytes: int = 0
    digest: int = 0

    def add(self, size: int, file_digest: FileDigest) -> None:
        self.files += 1
        self.bytes += size
        self.digest = (self.digest + file_digest.value()) % _DIGEST_MODULUS

    def as_manifest(self) -> dict[str, Any]:
        return {"files": self.files, "bytes": self.bytes, "digest": f"{self.digest:064x}"}


def member_header(name: str, size: int, mtime: float) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(mtime), 0o644
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def padding(size: int) -> bytes:
    return b"\0" * (-size % TAR_BLOCK)


def manifest(kind: str, totals: Totals, **fields: Any) -> bytes:
    return orjson.dumps({"format": FORMAT, "version": VERSION, "kind": kind, **fields, **totals.as_manifest()},
                        option=orjson.OPT_INDENT_2)


def closing(manifest_bytes: bytes, mtime: float) -> bytes:
    """The manifest member and the end-of-archive marker."""
    return (member_header(MANIFEST_NAME, len(manifest_bytes), mtime) + manifest_bytes
            + padding(len(manifest_bytes)) + b"\0" * (2 * TAR_BLOCK))


def check_manifest(raw: bytes, totals: Totals) -> dict[str, Any]:
    """The manifest, if it is ours and vouches for exactly the files seen."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise ArchiveInvalid(f"the manifest is not JSON: {error}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ArchiveInvalid("not a trio-streams backup (unknown manifest format)")
    expected = totals.as_manifest()
    if {k: doc.get(k) for k in expected} != expected:
        raise ArchiveInvalid(f"the files do not match the manifest: it lists {doc.get('files')} files of "
                             f"{doc.get('bytes')} bytes, found {totals.files} files of {totals.bytes} bytes"
                             + ("" if (doc.get("files"), doc.get("bytes")) != (totals.files, totals.bytes)
                                else " with different contents"))
    return doc
