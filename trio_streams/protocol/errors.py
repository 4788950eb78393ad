"""Protocol errors: the one exception type every rule raises.

Owns: the mapping of a refusal to an HTTP status, a stable machine code and
the extra headers the spec requires on that refusal. Never: formats bodies
for a particular framework (the HTTP layer does that).
"""

from __future__ import annotations

from collections.abc import Sequence


class ProtocolError(Exception):
    """A request the protocol refuses. ``code`` is stable; ``message`` is for people."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = tuple(headers)

    def __repr__(self) -> str:
        return f"ProtocolError({self.status}, {self.code!r}, {self.message!r})"


def bad_request(message: str, code: str = "BAD_REQUEST") -> ProtocolError:
    return ProtocolError(400, code, message)


def not_found(message: str = "stream not found") -> ProtocolError:
    return ProtocolError(404, "NOT_FOUND", message)


def conflict(message: str, code: str = "CONFLICT", headers: Sequence[tuple[str, str]] = ()) -> ProtocolError:
    return ProtocolError(409, code, message, headers)


def internal() -> ProtocolError:
    """A failure of the server itself; the details go to the log, never to the client."""
    return ProtocolError(500, "INTERNAL", "internal server error")


def data_corrupt() -> ProtocolError:
    """Stored bytes failed their checksum: never served; the range goes to the log."""
    return ProtocolError(500, "DATA_CORRUPT", "stored data for this range failed its checksum")
