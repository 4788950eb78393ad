"""/metrics: Prometheus text exposition from the components' statistics().

Owns: names and types of exported series. Never: collects anything itself.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from . import hypercorn_guard

if TYPE_CHECKING:
    from ..service import Service


def render_metrics(service: Service, http: dict[str, int]) -> str:
    lines = [f"trio_streams_ready {int(service.ready.is_set() and service.failure is None)}"]
    lines += [f"trio_streams_http_{name} {value}" for name, value in http.items()]
    registry = service.registry
    if registry is not None:
        for name, value in registry.statistics().items():
            lines.append(f"trio_streams_{name} {value}")
        for name, value in registry.store.statistics().items():
            lines.append(f"trio_streams_{name} {value}")
        for name, value in dataclasses.asdict(registry.log.statistics()).items():
            lines.append(f"trio_streams_log_{name} {float(value)}")
    for name, value in hypercorn_guard.statistics().items():
        lines.append(f"trio_streams_{name} {value}")
    return "\n".join(lines) + "\n"
