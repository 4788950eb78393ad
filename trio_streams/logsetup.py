"""Logging: the server's handler and formats, and the start-up configuration line.

Owns: the ``text`` and ``json`` formats (``log_format``), installing one
stderr handler on the root logger — by ``trio-streams serve``, or by
``create_app()`` under a plain ``hypercorn -k trio`` when nothing else has
configured logging — and redacting secrets from the effective configuration.
Never: decides what is logged where (each module logs on its own logger).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import time
from typing import Any

import orjson

from .config import Settings

# Marks the handler this module installed, so a second app in one process does not add another.
_HANDLER_NAME = "trio_streams"
# Setting names that look secret (a value of this kind is never logged).
_SECRET_NAME = re.compile(r"token|secret|key|password|credential", re.IGNORECASE)
# Names that match but hold no secret: the TLS key's *path* is logged, never its content.
_NOT_SECRET = frozenset({"tls_keyfile"})
REDACTED = "<redacted>"
# LogRecord attributes of every record: anything else a caller passed in ``extra`` is a field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the record's extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """What the caller passed as ``extra=``."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES and not k.startswith("_")}


def _iso_time(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(settings: Settings, *, replace: bool) -> bool:
    """Installs the server's stderr handler on the root logger and sets its level.

    ``replace``: the command line owns the process's logging. Otherwise (an
    app created inside someone else's server) only when the root logger has
    no handler yet — an embedding program's own logging wins. Returns whether
    the handler was installed.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if h.get_name() == _HANDLER_NAME]
    if root.handlers and not replace and not ours:
        return False
    for handler in ours:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter(settings.log_format))
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    return True


def effective_configuration(settings: Settings) -> dict[str, Any]:
    """Every setting by name, with secret-looking string values redacted."""
    return {field.name: _shown(field.name, getattr(settings, field.name)) for field in dataclasses.fields(settings)}


def _shown(name: str, value: Any) -> Any:
    """Flags and numbers say nothing secret (``auth_query_token = true``); any other set value might."""
    if isinstance(value, (bool, int, float)) or not value:
        return value
    return REDACTED if _SECRET_NAME.search(name) and name not in _NOT_SECRET else value


def log_configuration(settings: Settings) -> None:
    config = effective_configuration(settings)
    text = " ".join(f"{name}={value!r}" for name, value in config.items())
    logging.getLogger("trio_streams").info("configuration: %s", text, extra={"settings": config})
