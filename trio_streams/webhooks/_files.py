"""Secret files under ``data_dir/webhook-keys/``: written atomically, readable only by the owner.

Blocking: call at start-up, from the command line or from a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

DIRECTORY_NAME = "webhook-keys"
# The files hold a few hundred bytes; anything larger is not ours.
SECRET_FILE_BYTES_MAX = 64 * 1024


def key_directory(data_dir: Path) -> Path:
    return Path(data_dir) / DIRECTORY_NAME


def read_secret_file(path: Path) -> bytes | None:
    """The file's bytes, None when it does not exist; ValueError (one line) when it cannot be used."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{path} is not a regular file")
        if mode & 0o077:
            # A key others can read may already be copied: refuse rather than sign with it.
            raise ValueError(f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}); chmod 600 it")
        data = os.read(fd, SECRET_FILE_BYTES_MAX + 1)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > SECRET_FILE_BYTES_MAX:
        raise ValueError(f"{path} is larger than {SECRET_FILE_BYTES_MAX} bytes: not a key file")
    return data


def write_secret_file(path: Path, data: bytes) -> None:
    """Temp file (0600) + fsync + rename + directory fsync: a crash leaves the old file or the new one."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True)
        _fsync_directory(path.parent.parent)  # the new directory's entry, durable like the file's
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)  # durable before the rename makes it the key
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
