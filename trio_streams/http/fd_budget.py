"""File descriptors: raise the soft limit at start-up and check ``connections_max`` fits under it.

Every client connection holds a descriptor, and so do the listeners, the
WAL, checkpoints, the log writer's open stream files and Trio's own
wake-up machinery. If connections could take them all, the writer's next
``open()`` would fail with EMFILE and take the storage service down with
it; so connections are capped below the limit with room for the rest.
"""

from __future__ import annotations

import logging
import resource

from ..config import Settings

log = logging.getLogger("trio_streams.connections")

# Descriptors besides connections and stream files: stdio, listeners, WAL
# segments, a checkpoint being written, the data directory and its lock,
# Trio's epoll and wake-up pipe, worker-thread file handles, log files.
FD_RESERVE = 64


def fds_needed(settings: Settings) -> int:
    return settings.connections_max + settings.open_stream_files_max + FD_RESERVE


def raise_soft_limit() -> tuple[int, int]:
    """Raises RLIMIT_NOFILE's soft limit to the hard limit where allowed; returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # e.g. a sandbox that forbids it
            log.warning("could not raise the file descriptor limit from %d to %d: %s", soft, hard, exc)
    return soft, hard


def ensure(settings: Settings) -> None:
    """Raises the limit, logs it, and refuses a ``connections_max`` that cannot be honoured."""
    soft, hard = raise_soft_limit()
    needed = fds_needed(settings)
    log.info(
        "file descriptors: limit %d (hard %s); connections_max %d needs %d",
        soft, "unlimited" if hard == resource.RLIM_INFINITY else hard, settings.connections_max, needed,
    )
    if needed > soft:
        fitting = soft - settings.open_stream_files_max - FD_RESERVE
        raise ValueError(
            f"connections_max {settings.connections_max} (with open_stream_files_max "
            f"{settings.open_stream_files_max} and {FD_RESERVE} reserved) needs {needed} file descriptors "
            f"but the limit is {soft}: lower connections_max to at most {max(fitting, 0)} "
            f"or raise the hard limit (ulimit -Hn, LimitNOFILE=)"
        )
