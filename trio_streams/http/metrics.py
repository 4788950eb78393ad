"""/metrics: Prometheus text exposition from the components' statistics().

Owns: names and types of exported series. Never: collects anything itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import hypercorn_guard

if TYPE_CHECKING:
    from ..service import Service


def render_metrics(service: Service, http: dict[str, int]) -> str:
    ready = service.ready.is_set() and service.health()["status"] in ("ok", "degraded")
    lines = [f"trio_streams_ready {int(ready)}"]
    lines += [f"trio_streams_http_{name} {value}" for name, value in http.items()]
    lines += [f"trio_streams_{name} {value}" for name, value in service.statistics().items()]
    lines += _storage_lines(service.health())
    for name, value in hypercorn_guard.statistics().items():
        lines.append(f"trio_streams_{name} {value}")
    return "\n".join(lines) + "\n"


_STORAGE_STATES = ("ok", "disk_full", "failed")


def _storage_lines(health: dict[str, object]) -> list[str]:
    """trio_streams_storage_*: one 0/1 series per state, its start time, and the counters."""
    storage = health["storage"]
    assert isinstance(storage, dict)
    lines = [f'trio_streams_storage_state{{state="{state}"}} {int(storage["state"] == state)}'
             for state in _STORAGE_STATES]
    if "since" in storage:
        lines.append(f"trio_streams_storage_state_since_seconds {storage['since']}")
        for name in ("disk_full_episodes", "refused_batches", "checkpoint_failures"):
            lines.append(f"trio_streams_storage_{name}_total {storage[name]}")
    return lines
