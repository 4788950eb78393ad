"""Who a request is: a name for logs and the scopes it holds."""

from __future__ import annotations

import dataclasses

from .scopes import Scope


@dataclasses.dataclass(frozen=True)
class Principal:
    # The static token's name or the JWT's subject; never the token itself.
    name: str
    scopes: tuple[Scope, ...]
