"""/metrics: the Prometheus exposition, one prometheus-client registry per App.

Owns: every exported series' name, type, help and labels (README
"Monitoring" lists them). Request series are observed here as requests end;
the log writer reports its measurements through a ``LogObserver`` (storage
imports no metrics library); everything else — streams, actors, storage
state, WAL, connections — is read from the components' statistics at scrape
time by ``_StateCollector``. Labels are bounded: method, route kind, status
code, reader mode; never a stream path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from prometheus_client import (
    CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics, generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import hypercorn_guard

if TYPE_CHECKING:
    from ..service import Service
    from .access_log import Observed

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NAMESPACE = "trio_streams"
# Seconds: from a fast append (sub-millisecond) to a long-poll wait (30 s) and an SSE connection (60 s).
REQUEST_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                           1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
FSYNC_SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# Events per WAL write: powers of two up to log_batch_events_max's default.
BATCH_EVENTS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CHECKPOINT_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
LIVE_MODES = ("long_poll", "sse")
STORAGE_STATES = ("ok", "disk_full", "failed")


class Metrics:
    """The registry of one App and the instruments its requests update."""

    def __init__(self, service: Callable[[], Service], stalled_writes: Callable[[], int]) -> None:
        # No `_created` series: they double the exposition and no alert uses them
        # (a process-wide switch of prometheus-client, idempotent).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, process_open_fds, ...
        r = self.registry
        self.requests = Counter("requests", "HTTP requests answered, by method, route kind and status code "
                                "(499: the client went away first).", ["method", "kind", "status"],
                                namespace=NAMESPACE, subsystem="http", registry=r)
        self.request_seconds = Histogram(
            "request_duration_seconds", "Time to answer a request, by route kind: for long_poll the wait, for sse "
            "the connection's lifetime.", ["kind"], namespace=NAMESPACE, subsystem="http",
            buckets=REQUEST_SECONDS_BUCKETS, registry=r)
        self.request_bytes = Counter("request_bytes", "Request body bytes received, by route kind.", ["kind"],
                                     namespace=NAMESPACE, subsystem="http", registry=r)
        self.response_bytes = Counter("response_bytes", "Response body bytes sent, by route kind.", ["kind"],
                                      namespace=NAMESPACE, subsystem="http", registry=r)
        self.live_readers = Gauge("live_readers", "Long-poll and SSE readers connected now, by mode.", ["mode"],
                                  namespace=NAMESPACE, registry=r)
        for mode in LIVE_MODES:
            self.live_readers.labels(mode)
        # Bounded like the labels: methods x kinds x status codes the app sends.
        self._children: dict[tuple[str, str, int], _RequestSeries] = {}
        self.observer = _Observer(r)
        r.register(_StateCollector(service, stalled_writes))

    def request_done(self, observed: Observed, seconds: float) -> None:
        key = (observed.method, observed.kind, observed.status)
        children = self._children.get(key)
        if children is None:  # labels() takes a lock and builds a key: once per label set
            method, kind, status = key
            children = self._children[key] = _RequestSeries(
                self.requests.labels(method, kind, str(status)), self.request_seconds.labels(kind),
                self.request_bytes.labels(kind), self.response_bytes.labels(kind))
        children.requests.inc()
        children.seconds.observe(seconds)
        children.bytes_in.inc(observed.bytes_in)
        children.bytes_out.inc(observed.bytes_out)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RequestSeries(NamedTuple):
    """The series one request updates, looked up once per label set."""

    requests: Counter
    seconds: Histogram
    bytes_in: Counter
    bytes_out: Counter


class _Observer:
    """The log writer's measurements as histograms: a storage.log.LogObserver (``fsync``
    arrives from a worker thread: prometheus-client's instruments are thread-safe)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.fsync_seconds = Histogram("fsync_duration_seconds", "Time of one WAL fsync.", namespace=NAMESPACE,
                                       subsystem="log", buckets=FSYNC_SECONDS_BUCKETS, registry=registry)
        self.batch_events = Histogram("batch_events", "Events per group-commit WAL write.", namespace=NAMESPACE,
                                      subsystem="log", buckets=BATCH_EVENTS_BUCKETS, registry=registry)
        self.checkpoint_seconds = Histogram(
            "checkpoint_duration_seconds", "Time to take one checkpoint (sync, encode, write, drop old WAL).",
            namespace=NAMESPACE, buckets=CHECKPOINT_SECONDS_BUCKETS, registry=registry)

    def fsync(self, seconds: float) -> None:
        self.fsync_seconds.observe(seconds)

    def batch(self, events: int) -> None:
        self.batch_events.observe(events)

    def checkpoint(self, seconds: float) -> None:
        self.checkpoint_seconds.observe(seconds)


# Service.statistics() keys: (series name, "counter" or "gauge", help), or None for
# what another series already says. A key not listed is still exported (as a gauge
# named after it), so nothing is ever hidden.
STATISTICS: dict[str, tuple[str, str, str] | None] = {
    "streams": ("streams", "gauge", "Streams in the table (soft-deleted ones included)."),
    "actors": ("actors", "gauge", "Stream actors running (one per recently written path)."),
    "subscribed_streams": ("subscribed_streams", "gauge", "Streams with at least one live reader waiting."),
    "subscribers": ("subscribers", "gauge", "Live-reader subscriptions (long-poll and SSE waits)."),
    "fanout_pending": ("fanout_pending", "gauge", "Live readers queued to be woken after a change."),
    "fanout_admissions_waiting": ("fanout_admissions_waiting", "gauge",
                                  "New live reads waiting for the readers queued before them to be woken."),
    "data_corrupt_reads_total": ("data_corrupt_reads", "counter", "Reads refused with 500 DATA_CORRUPT."),
    "data_corrupt_ranges_total": ("data_corrupt_ranges", "counter", "Distinct damaged ranges of stream data found."),
    "log_batches": ("log_batches", "counter", "Group-commit batches written to the WAL."),
    "log_events": ("log_events", "counter", "Events written to the WAL (creates, appends, deletes)."),
    "log_syncs": ("log_fsyncs", "counter", "WAL fsyncs."),
    "log_checkpoints": ("checkpoints", "counter", "Checkpoints written."),
    "log_appends": ("appends", "counter", "Appends made durable (close-only appends included)."),
    "log_messages": ("messages_appended", "counter",
                     "Messages made durable: one per non-empty body, one per JSON message."),
    "log_queue_depth": ("log_queue_depth", "gauge", "Actor submissions waiting for the log writer."),
    "log_last_batch_events": ("log_last_batch_events", "gauge", "Events in the last WAL write."),
    "log_last_sync_s": ("log_last_fsync_seconds", "gauge", "Duration of the last WAL fsync."),
    "log_wal_end_position": ("wal_end_position_bytes", "gauge", "Log position (bytes ever written) of the WAL end."),
    "log_wal_bytes": ("wal_bytes", "gauge", "WAL bytes on disk (the next checkpoint drops most of them)."),
    "log_last_checkpoint_at": ("last_checkpoint_timestamp_seconds", "gauge",
                               "UNIX time the last checkpoint was written (0: none since start)."),
    "log_trims": ("retention_trims", "counter", "Retention trims applied (a stream's head moved)."),
    "log_trim_bytes_reclaimed": ("retention_reclaimed_bytes", "counter",
                                 "Disk space freed below trimmed heads (punched holes)."),
    # Exported as trio_streams_storage_state{state="failed"}, _storage_checkpoint_failures_total
    # and _storage_refused_batches_total.
    "log_failed": None,
    "log_checkpoint_failures": None,
    "log_disk_full_batches": None,
}


class _StateCollector(Collector):
    """Reads the service's and the connection guard's state at each scrape."""

    def __init__(self, service: Callable[[], Service], stalled_writes: Callable[[], int]) -> None:
        self._service = service
        self._stalled_writes = stalled_writes

    def collect(self) -> Iterator[Metric]:
        service = self._service()
        health = service.health()
        yield _gauge("ready", "1 when /healthz/ready answers 200 (serving; not recovering, failed or draining).",
                     health["ready"])
        yield _gauge("recovering", "1 while the WAL is being recovered at start-up.", health["recovering"])
        yield _gauge("fenced_streams", "Streams fenced off after damage found at recovery (503).",
                     len(health["fenced"]))  # type: ignore[arg-type]
        if service.recovery_seconds is not None:
            yield _gauge("recovery_duration_seconds", "Duration of the start-up recovery.", service.recovery_seconds)
            yield _gauge("recovery_replayed_events", "WAL records replayed at start-up.", service.recovery_replayed_events)
        yield from _statistics(service.statistics())
        yield from _storage(health["storage"])  # type: ignore[arg-type]
        yield from _connections(hypercorn_guard.statistics())
        yield _counter("http_stalled_writes", "Readers dropped because a response write made no progress "
                       "for send_timeout_s.", self._stalled_writes())


def _statistics(stats: dict[str, float]) -> Iterator[Metric]:
    for key, value in stats.items():
        series = STATISTICS.get(key, (key, "gauge", f"{key} (Service.statistics)."))
        if series is None:
            continue
        name, kind, help_text = series
        yield (_counter if kind == "counter" else _gauge)(name, help_text, value)


def _storage(storage: dict[str, object]) -> Iterator[Metric]:
    state = GaugeMetricFamily(f"{NAMESPACE}_storage_state", "1 for the storage's current state.", labels=["state"])
    for name in STORAGE_STATES:
        state.add_metric([name], float(storage["state"] == name))
    yield state
    if "since" not in storage:  # still starting
        return
    yield _gauge("storage_state_since_seconds", "UNIX time the current storage state began.", storage["since"])
    yield _counter("storage_disk_full_episodes", "Times the disk became full.", storage["disk_full_episodes"])
    yield _counter("storage_refused_batches", "Batches refused with 507 while the disk was full.",
                   storage["refused_batches"])
    yield _counter("storage_checkpoint_failures", "Checkpoints that failed (retried later).",
                   storage["checkpoint_failures"])


_CONNECTIONS = {
    "connections_open": ("gauge", "Client connections open now."),
    "connections_shed_total": ("counter", "Connections answered 503 at accept (over connections_max)."),
    "connections_failed_total": ("counter", "Connections ended by an error inside Hypercorn (contained)."),
}


def _connections(stats: dict[str, int]) -> Iterator[Metric]:
    for key, value in stats.items():
        kind, help_text = _CONNECTIONS.get(key, ("gauge", f"{key} (hypercorn_guard)."))
        yield (_counter if kind == "counter" else _gauge)(key.removesuffix("_total"), help_text, value)


def _gauge(name: str, help_text: str, value: object) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{NAMESPACE}_{name}", help_text, value=float(value))  # type: ignore[arg-type]


def _counter(name: str, help_text: str, value: object) -> CounterMetricFamily:
    return CounterMetricFamily(f"{NAMESPACE}_{name}", help_text, value=float(value))  # type: ignore[arg-type]
