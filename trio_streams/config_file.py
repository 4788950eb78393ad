"""The TOML config file: settings and the ``[auth]`` table, in one place.

Owns: reading the file named by ``--config`` or ``TRIO_STREAMS_CONFIG``,
and the precedence flags > environment > file > defaults. Top-level keys
are ``Settings`` field names; ``[auth]`` is validated by ``auth.config``.
Every problem is one ValueError naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from typing import Any

from .auth.config import AuthConfig, auth_config
from .config import ENV_PREFIX, Settings, settings_from_env

CONFIG_ENV = "TRIO_STREAMS_CONFIG"
# A config file is a page of settings and tokens; anything this big is a mistake.
CONFIG_FILE_BYTES_MAX = 1024 * 1024
_KINDS: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


@dataclasses.dataclass(frozen=True)
class Configuration:
    settings: Settings
    auth: AuthConfig


def load_configuration(path: str | None = None, environ: Mapping[str, str] | None = None,
                       **flags: Any) -> Configuration:
    """Settings and auth from the file (``path``, else $TRIO_STREAMS_CONFIG, else none), env and flags."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV) or None
    values, auth = read_config_file(path) if path else ({}, AuthConfig())
    try:
        settings = settings_from_env(environ, base=values, **flags)
    except (TypeError, ValueError) as exc:
        from_env = str(exc).startswith(ENV_PREFIX)  # names its variable already
        where = f"config file {path}: " if path and not from_env else ""
        raise ValueError(f"{where}{exc}") from None
    return Configuration(settings, auth)


def read_config_file(path: str) -> tuple[dict[str, Any], AuthConfig]:
    try:
        with open(path, "rb") as f:
            raw = f.read(CONFIG_FILE_BYTES_MAX + 1)
    except OSError as exc:
        raise ValueError(f"config file {path}: {exc.strerror or exc}") from None
    if len(raw) > CONFIG_FILE_BYTES_MAX:
        raise ValueError(f"config file {path}: larger than {CONFIG_FILE_BYTES_MAX} bytes")
    try:
        document = tomllib.loads(raw.decode("utf-8"))
        return _settings_values(document), auth_config(document.get("auth", {}))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"config file {path}: {exc}") from None


def _settings_values(document: Mapping[str, Any]) -> dict[str, Any]:
    fields = {f.name: str(f.type) for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    for key, value in document.items():
        if key == "auth":
            continue
        if key not in fields:
            raise ValueError(f"unknown setting {key!r}")
        kinds = _KINDS[fields[key]]
        # bool is an int in Python; a TOML true is never a number here.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ValueError(f"{key}: expected {fields[key]}, got {type(value).__name__} {value!r:.40}")
        values[key] = float(value) if isinstance(value, int) and fields[key] == "float" else value
    if "auth" in document and not isinstance(document["auth"], dict):
        raise ValueError("auth: must be a table")
    return values
