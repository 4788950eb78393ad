"""Start-up pre-flight: what `trio-streams serve` can fail at, checked before recovery and HTTP.

Every refusal is a ``StartupError`` with its own exit code, so a supervisor
or an operator's script can tell a busy port from a locked directory
without reading logs; ``__main__`` prints its message as one line.

The checks run in order of what an operator fixes first: the TLS material
(a configuration mistake), the data directory (created, locked, writable),
then the listening socket. The socket is bound and listening here, before
recovery, and handed to Hypercorn as an ``fd://`` bind: Hypercorn adopts
the descriptor as it is, so there is no window between checking the port
and using it in which another process could take it.

Owns: the exit codes of ``serve``, the data directory pre-flight, the listening sockets.
Never: recovery, HTTP, settings parsing.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from .config import Settings
from .service import DataDirectoryLocked, lock_data_directory

EXIT_OK = 0
EXIT_STORAGE_FAILED = 1
EXIT_INVALID_CONFIG = 2
EXIT_DATA_DIR_LOCKED = 3
EXIT_DATA_DIR_NOT_WRITABLE = 4
EXIT_CANNOT_BIND = 5
EXIT_UNAUTHENTICATED_BIND = 6

# Pending connections the kernel queues before Hypercorn accepts them (Hypercorn's own default).
LISTEN_BACKLOG = 100
_PROBE_NAME = ".write-probe"


class StartupError(Exception):
    """A refusal to start: ``message`` is the whole story, ``exit_code`` says which kind."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


@dataclass
class Prepared:
    """What the pre-flight holds for the server: the data directory's lock and the listeners."""

    lock_fd: int
    listeners: list[socket.socket] = field(default_factory=list)

    def hypercorn_binds(self) -> list[str]:
        """The listeners as Hypercorn ``fd://`` binds; from here on Hypercorn owns the descriptors."""
        return [f"fd://{sock.detach()}" for sock in self.listeners]


def prepare(settings: Settings) -> Prepared:
    """Runs every check; on success the caller owns the lock and the bound sockets."""
    check_tls(settings)
    lock_fd = claim_data_directory(Path(settings.data_dir))
    listeners: list[socket.socket] = []
    try:
        listeners.append(listen(settings.host, settings.port))
        if settings.metrics_port:  # the app tells the two apart by scope["server"]
            listeners.append(listen(settings.host, settings.metrics_port))
        return Prepared(lock_fd, listeners)
    except BaseException:
        for sock in listeners:
            sock.close()
        os.close(lock_fd)
        raise


def check_tls(settings: Settings) -> None:
    """Loads the certificate and key the way Hypercorn will, so a bad file is refused now."""
    if not settings.tls_certfile:
        return
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_certfile, settings.tls_keyfile)
    except (OSError, ssl.SSLError) as error:
        raise StartupError(EXIT_INVALID_CONFIG, f"cannot load the TLS certificate {settings.tls_certfile} "
                           f"and key {settings.tls_keyfile}: {_reason(error)}") from None


def claim_data_directory(directory: Path) -> int:
    """Creates and locks the data directory and proves it writable; returns the lock's descriptor."""
    try:
        lock_fd = lock_data_directory(directory)
    except DataDirectoryLocked as error:
        raise StartupError(EXIT_DATA_DIR_LOCKED, str(error)) from None
    except OSError as error:
        raise _not_writable(directory, error) from None
    try:
        _probe_writable(directory)
    except OSError as error:
        os.close(lock_fd)
        raise _not_writable(directory, error) from None
    return lock_fd


def _probe_writable(directory: Path) -> None:
    """Creates and removes a file: the one test that also fails for root (a read-only mount,
    a full inode table), where permission bits would say yes. An existing LOCK file opens
    on a read-only mount for reading only, so taking the lock proves nothing."""
    probe = directory / _PROBE_NAME
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.close(fd)
    os.unlink(probe)


def _not_writable(directory: Path, error: OSError) -> StartupError:
    reason = "it exists and is not a directory" if error.errno == errno.EEXIST else _reason(error)
    return StartupError(EXIT_DATA_DIR_NOT_WRITABLE, f"data directory {directory} cannot be created or written: {reason}")


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket with the options Hypercorn gives its own (SO_REUSEADDR, TCP_NODELAY)."""
    host = host.strip("[]")  # an IPv6 literal may come bracketed, as in a URL
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    except OSError as error:
        raise StartupError(EXIT_CANNOT_BIND, f"cannot listen on {where}: {_reason(error)}") from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Lets a restart bind while the old process's connections sit in TIME_WAIT;
        # a port another process listens on is still refused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as error:
        sock.close()
        raise StartupError(EXIT_CANNOT_BIND, f"cannot listen on {where}: {_bind_reason(error)}") from None
    return sock


def _bind_reason(error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return "address already in use (another server is listening on it)"
    if error.errno == errno.EACCES:
        return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    if error.errno == errno.EADDRNOTAVAIL:
        return "address not available (no local interface has it)"
    return _reason(error)


def _reason(error: BaseException) -> str:
    """The OS's words for an error, without the errno prefix and file name Python adds."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror[0].lower() + error.strerror[1:]
    return str(error)
