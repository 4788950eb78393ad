"""Settings: one frozen dataclass of every limit and knob the server has.

Owns: defaults, units (in the names), parsing from flags and from the
``TRIO_STREAMS_*`` environment. Never: opens files or sockets.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Mapping
from typing import Any

from .auth.cors import parse_allow_origins
from .protocol.urls import normalise_base_url
from .protocol.jsonmode import DEPTH_ENCODABLE_MAX
from .protocol.retention import parse_rules as parse_retention_rules
from .protocol import shards as shard_keys
from .storage.wal import RECORD_PAYLOAD_BYTES_MAX

FSYNC_MODES = ("always", "interval", "never")
STORAGE_FAILURE_MODES = ("exit", "read-only")
# Room in a WAL record for an append's metadata (path, content type, producer) beside its body.
RECORD_META_BYTES_RESERVE = 1024 * 1024
EVENT_DATA_BYTES_MAX = RECORD_PAYLOAD_BYTES_MAX - RECORD_META_BYTES_RESERVE
# What start-up does with a damaged WAL, checkpoint or stream file (docs/storage.md, "Recovery from damage").
WAL_RECOVERY_MODES = ("tolerate_corrupted_tail", "fence_damaged_streams", "absolute_consistency", "point_in_time")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
# A link's JSON in a subscription event beside its path: cursor, flags, punctuation.
SUBSCRIPTION_LINK_JSON_BYTES = 64
# Below this, ordinary browser and client requests would be refused.
REQUEST_HEADER_BYTES_MIN = 1024
# Room for a receiver's {"done": true} with whitespace around it.
WEBHOOK_RESPONSE_BYTES_MIN = 64
# Shorter would refuse ordinary https URLs with a path.
WEBHOOK_URL_BYTES_MIN = 64


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 4437
    data_dir: str = "./data"
    # URL prefix under which streams live; always starts and ends with "/".
    stream_prefix: str = "/v1/stream/"
    # Serve HTTPS (and HTTP/2 via ALPN) when both are set.
    tls_certfile: str = ""
    tls_keyfile: str = ""

    # Durability.
    fsync: str = "always"
    fsync_interval_ms: int = 5
    wal_segment_bytes_max: int = 64 * 1024 * 1024
    checkpoint_wal_bytes: int = 128 * 1024 * 1024
    checkpoint_interval_s: float = 300.0

    # Storage faults.
    # After a failed fsync (or any write the log cannot undo): "exit" drains and exits
    # non-zero so a supervisor restarts and recovery replays the WAL; "read-only" stays
    # up serving reads, refusing writes with 503 until restarted. Either way never retries.
    storage_failure: str = "exit"
    # Retry-After on 507 INSUFFICIENT_STORAGE answers (the disk is full; the next write retries).
    disk_full_retry_after_s: int = 1
    # A checkpoint that failed (disk full) is tried again after this long.
    checkpoint_retry_interval_s: float = 10.0

    # Checkpoints (docs/storage.md, "Checkpoints"): encoded on the event loop in
    # slices while writes go on. A slice covers this many stream ids (a few ms
    # of work at 1000); between slices every other task runs.
    checkpoint_slice_streams: int = 1000
    # Encoded checkpoint bytes gathered before one write to the snapshot file
    # (from a worker thread): the payload is never held whole.
    checkpoint_write_bytes: int = 1024 * 1024

    # Recovery.
    # tolerate_corrupted_tail (default): a torn last write is cut off; any other
    # damage refuses to start, naming the file, byte offset and log position.
    # fence_damaged_streams: start; streams the damage touched answer 503
    # STREAM_DAMAGED, every other stream serves. absolute_consistency: refuse
    # even a torn tail. point_in_time: cut the log at the first damage (drops
    # every later record: acknowledged data is lost, logged at ERROR).
    wal_recovery_mode: str = "tolerate_corrupted_tail"
    # Bytes checksummed at most while searching past damage for the next valid record.
    wal_resync_checksum_bytes_max: int = 4 * 1024 * 1024 * 1024

    # Request limits.
    append_bytes_max: int = 64 * 1024 * 1024
    stream_path_bytes_max: int = 1024

    # Reads.
    read_chunk_bytes_max: int = 1024 * 1024
    long_poll_timeout_ms: int = 30_000
    sse_connection_s: float = 60.0
    # Each SSE connection's lifetime is cut short by a random part, up to this
    # fraction of sse_connection_s, so connections opened together (a deploy, a
    # reconnect storm) are spread out when they end and reconnect.
    sse_connection_jitter_fraction: float = 0.1
    # Longest a response write may make no progress (per 256 KiB piece) before
    # the reader is dropped: a client that stops reading cannot hold a
    # connection, a task or shutdown.
    send_timeout_s: float = 30.0
    hot_tail_bytes_max: int = 256 * 1024
    read_cache_bytes_max: int = 64 * 1024 * 1024

    # Actors and fan-out.
    actor_queue_depth: int = 256
    actor_batch_max: int = 256
    actor_idle_s: float = 30.0
    subscribers_per_stream_max: int = 10_000
    # Live readers woken per scheduler round after a change (streams/fanout.py):
    # smaller keeps appends fast beside thousands of readers; larger finishes a
    # long-poll fan-out sooner (its readers' next requests then wait instead).
    fanout_wakes_per_round: int = 2
    streams_max: int = 10_000_000
    open_stream_files_max: int = 256

    # Log writer (group commit).
    # Events one WAL write takes at most (it collects whole submissions until it
    # reaches this; the first is taken whole, however large).
    log_batch_events_max: int = 1024
    # Submissions (one per actor batch) queued for the log writer; beyond it actors wait.
    log_queue_depth: int = 256

    # Shutdown: after SIGTERM, in-flight requests and response writes get this
    # long; then connections are closed and the log is flushed.
    shutdown_grace_s: float = 5.0

    # JSON bodies (PUT and POST on application/json streams).
    # Deepest nesting accepted, counting the body's outer array; deeper is 400 JSON_TOO_DEEP.
    json_depth_max: int = 128
    # Messages one body may hold (a top-level array is flattened into messages); more is 413.
    json_messages_per_append_max: int = 100_000
    # Bodies up to this size are framed on the event loop in one call (well under a
    # millisecond); larger ones message by message in worker threads.
    json_inline_bytes_max: int = 64 * 1024
    # Largest message of a body framed in a worker thread (parsing one message holds
    # the GIL, and so stalls the event loop, for its whole length); larger is 413.
    json_message_bytes_max: int = 1024 * 1024
    # Worker threads framing large JSON bodies at once; further bodies wait their turn.
    json_workers_max: int = 1

    # Caching: "public" or "private" for Cache-Control on catch-up reads.
    cache_visibility: str = "public"

    # Public URL: ``scheme://host[:port]`` clients reach the server by (behind a
    # proxy, the proxy's). When set, Location is built from it instead of the
    # client-supplied Host header, and an absolute Stream-Forked-From must
    # have this origin. Empty: use the request's scheme and Host.
    public_base_url: str = ""

    # Connections (Hypercorn).
    # Open client connections; above it new ones are answered 503 and closed.
    # Each needs a file descriptor: see fd_budget.py for the headroom.
    connections_max: int = 1000
    # A client mid-request (head or body incomplete) that sends nothing for
    # this long gets 408 and is closed; responses being produced are exempt.
    request_read_timeout_s: float = 30.0
    # An idle keep-alive connection (no request in progress) is closed after this.
    keep_alive_timeout_s: float = 30.0
    # Request line plus headers, through the blank line; larger is 431.
    request_header_bytes_max: int = 64 * 1024

    # Data integrity.
    # Damaged ranges of stream data remembered so that each is logged once, not
    # on every retried read (reads of them are counted either way); past this
    # many distinct ranges the memory starts over.
    data_corrupt_ranges_logged_max: int = 10_000

    # Streams layer: expiry and read caching.
    # How often every stream is checked for expiry (TTL, Expires-At); requests
    # notice an expired stream at once, the sweep deletes the ones nobody asks for.
    expiry_sweep_interval_s: float = 10.0
    # Streams the sweep checks between two yields to other tasks (about 0.3 µs each).
    expiry_sweep_slice_streams: int = 10_000
    # Cache-Control of data chunks (10.1): max-age (capped by a sooner
    # Stream-Expires-At) and stale-while-revalidate.
    cache_max_age_s: int = 60
    cache_stale_while_revalidate_s: int = 300

    # Operations: backups (GET /admin/backup, `trio-streams backup`).
    # Bytes of a stream file read per worker-thread call and sent per response
    # write while a backup streams: with the send, the memory one backup holds.
    backup_read_chunk_bytes: int = 1024 * 1024

    # Access control (auth/, README "Access control"). Tokens and JWT keys are in
    # the config file's [auth] table; these are the knobs around them.
    # Origins browsers may call from, comma-separated ("https://a.example,https://b.example"),
    # "*" for any, "none" for no cross-origin access. Empty: "*" without auth, none with it.
    cors_allow_origins: str = ""
    # The old single-origin name; used when cors_allow_origins is empty.
    cors_allow_origin: str = ""
    # Serve without authentication on a non-loopback address (else start-up refuses, exit 6).
    allow_unauthenticated: bool = False
    # Accept the token as ?access_token= on GET (EventSource cannot send headers).
    # It lands in proxy logs and browser history: off unless a browser needs it.
    auth_query_token: bool = False
    # /metrics answers only the admin scope (else it is public).
    metrics_require_admin: bool = False
    # Longest bearer token accepted; longer is 401 before any parsing.
    auth_token_bytes_max: int = 8192
    # Clock skew allowed on JWT exp and nbf.
    auth_jwt_leeway_s: float = 30.0
    # JWKS (file or URL) reloaded this often; a token with an unknown kid asks for
    # an early reload, at most once per auth_jwks_refetch_min_interval_s.
    auth_jwks_refresh_interval_s: float = 300.0
    auth_jwks_refetch_min_interval_s: float = 30.0
    # One JWKS fetch, connect to last byte; on timeout the cached keys stay in use.
    auth_jwks_fetch_timeout_s: float = 5.0
    # Largest JWKS document and most keys in it; more is refused (cached keys stay).
    auth_jwks_bytes_max: int = 256 * 1024
    auth_jwks_keys_max: int = 64
    # Verified JWTs remembered (until exp or the next JWKS reload) so a client's
    # repeated requests skip PyJWT; each entry holds its token. 0: verify every time.
    auth_jwt_cache_entries_max: int = 1024

    # Observability (logs, metrics, health; README "Monitoring").
    # Level of the server's log (and of the root logger it installs its handler on).
    log_level: str = "info"
    # "text": one human line per record; "json": one object per line (ts, level, logger, msg, fields).
    log_format: str = "text"
    # One line per request on the trio_streams.access logger (at its end, for live reads).
    access_log: bool = False
    # 0: /metrics and /healthz* are served on the streams port. Else they are served on
    # this port too, /metrics only there, and stream routes never there.
    metrics_port: int = 0
    # An incoming X-Request-Id longer than this (or not printable ASCII) is replaced by a generated one.
    request_id_bytes_max: int = 128
    # A recovery that replays for longer logs its progress this often (0: never).
    recovery_progress_interval_s: float = 5.0

    # Webhooks (trio_streams/webhooks/, README "Webhook signing").
    # Development mode: webhook URLs may also be http(s)://localhost and 127.0.0.x
    # (and reach loopback addresses). Off in production; the test suites turn it on.
    webhook_dev_mode: bool = False
    # One delivery, from resolving the host to the last response byte; then it counts as failed.
    webhook_timeout_s: float = 10.0
    # Connecting (TCP and TLS) to one resolved address; webhook_timeout_s still bounds the whole.
    webhook_connect_timeout_s: float = 5.0
    # Deliveries in flight at once; more wait their turn (a slow receiver holds one slot).
    webhook_deliveries_max: int = 64
    # Response bytes read at most (enough for {"done": true}); the rest is never read.
    webhook_response_bytes_max: int = 64 * 1024
    # A retired signing key stays in the JWKS this long after rotation: receivers accept
    # signatures whose timestamp is this close to their clock.
    webhook_key_replay_window_s: float = 300.0
    # Longest webhook URL accepted in a subscription.
    webhook_url_bytes_max: int = 2048

    # Subscriptions (protocol/subscriptions.py, subscriptions/; README "Subscriptions").
    # Live subscriptions at most; a PUT creating one more is 507 SUBSCRIPTIONS_FULL.
    subscriptions_max: int = 1000
    # Streams one subscription links at most (glob and explicit together); links
    # beyond it are refused (explicit: 400) or not made (glob: logged).
    subscription_streams_max: int = 10000
    # Links of all subscriptions together (memory, and what each checkpoint encodes
    # at once); a request that would add more is 507 SUBSCRIPTION_LINKS_FULL.
    subscription_links_total_max: int = 1_000_000
    # Explicit paths one request (PUT or POST .../streams) may name.
    subscription_request_streams_max: int = 1000
    # A subscription id's length; ids are [A-Za-z0-9._~-].
    subscription_id_chars_max: int = 128
    subscription_pattern_chars_max: int = 512
    subscription_description_chars_max: int = 1024
    # Largest __ds request body; larger is 413.
    subscription_body_bytes_max: int = 256 * 1024
    # The range a subscription's lease_ttl_ms may take (the spec's 1 s to 10 min).
    subscription_lease_ttl_ms_min: int = 1000
    subscription_lease_ttl_ms_max: int = 600_000
    # How long a wake-scoped token stays valid (it is fenced sooner by a newer generation).
    subscription_wake_token_ttl_s: float = 3600.0

    # Scale-out (protocol/shards.py; docs/deployment.md, "Scale-out"). Nodes behind a
    # balancer that hashes the first shard_key_segments path segments under
    # stream_prefix (deploy/nginx/sharded.conf, the same number there). A fork whose
    # source has another key is 400 FORK_CROSSES_SHARDS; a subscription reaching
    # streams of a key other than its id's is 400 SUBSCRIPTION_CROSSES_SHARDS.
    # 0: not sharded, no such checks.
    shard_key_segments: int = 0
    # -- Scale-out: shard key by pattern (protocol/shards.py, compile_key_pattern) --
    # Instead of segments: a regular expression (the subset nginx's PCRE and Python's
    # re read alike) whose first capture group, matched at the start of a stream name,
    # is the key; a name it does not match is its own key. Empty: use
    # shard_key_segments (setting both is a start-up error).
    shard_key_pattern: str = ""
    # Ways (repeat counts times alternatives) the pattern may try on a name of the
    # longest length a client can send; a pattern with more is refused at start-up,
    # so no name can make a match slow (one open repeat on 1024 characters: 1025).
    shard_key_pattern_paths_max: int = 65_536

    # -- Retention (docs/storage.md, "Retention"; README "Retention") --------
    # The policy of a stream created without Trio-Streams-Retention-* headers and
    # under no retention_rules prefix: drop data older than this (seconds), and
    # beyond this many bytes, from the head of the stream. 0: no limit of that kind.
    retention_max_age_s: int = 0
    retention_max_bytes: int = 0
    # Per-prefix policies of stream names, "PREFIX max_age_s=N max_bytes=N; PREFIX ...":
    # the longest matching prefix wins, and replaces the default whole.
    retention_rules: str = ""
    # The sweep that trims by age (and any byte budget an append did not already
    # trim): its interval, streams looked at between yields, trims started per pass.
    retention_sweep_interval_s: float = 10.0
    retention_sweep_slice_streams: int = 1000
    retention_sweep_trims_max: int = 100
    # A byte budget is trimmed once a stream holds this much more than it (trims come
    # in steps, not after every append); disk space is freed in 64 KiB blocks.
    retention_trim_step_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {FSYNC_MODES}, not {self.fsync!r}")
        if self.wal_recovery_mode not in WAL_RECOVERY_MODES:
            raise ValueError(f"wal_recovery_mode must be one of {WAL_RECOVERY_MODES}, not {self.wal_recovery_mode!r}")
        if not (self.stream_prefix.startswith("/") and self.stream_prefix.endswith("/")):
            raise ValueError("stream_prefix must start and end with '/'")
        if bool(self.tls_certfile) != bool(self.tls_keyfile):
            raise ValueError("tls_certfile and tls_keyfile must be given together")
        if self.cache_visibility not in ("public", "private"):
            raise ValueError("cache_visibility must be 'public' or 'private'")
        if self.public_base_url:  # frozen: normalise in place once, at start-up
            object.__setattr__(self, "public_base_url", normalise_base_url(self.public_base_url))
        self._validate_json()
        self._validate_storage_faults()
        self._validate_log_writer()
        self._validate_checkpoints()
        if self.backup_read_chunk_bytes < 1:
            raise ValueError("backup_read_chunk_bytes must be at least 1")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"{field.name} must not be negative")
        self._check_connections()
        self._check_streams_layer()
        self._check_access_control()
        self._check_observability()
        self._check_webhooks()
        self._check_subscriptions()
        self._check_retention()
        self._check_shard_key()

    def _check_shard_key(self) -> None:
        if self.shard_key_pattern and self.shard_key_segments:
            raise ValueError("set shard_key_pattern or shard_key_segments, not both: they are two key rules")
        if self.shard_key_pattern:
            self._shard_key_pattern()

    def _shard_key_pattern(self) -> re.Pattern[str]:
        # Names and subscription patterns (the only texts matched) are bounded by these.
        name_chars_max = max(self.stream_path_bytes_max, self.subscription_pattern_chars_max)
        return shard_keys.compile_key_pattern(self.shard_key_pattern, name_chars_max,
                                              self.shard_key_pattern_paths_max)

    @functools.cached_property
    def shard_key_rule(self) -> shard_keys.KeyRule:
        """What protocol.shards computes keys with: the compiled pattern, else the segments."""
        return self._shard_key_pattern() if self.shard_key_pattern else self.shard_key_segments

    def _check_retention(self) -> None:
        parse_retention_rules(self.retention_rules)
        if self.retention_sweep_interval_s <= 0:
            raise ValueError("retention_sweep_interval_s must be positive")
        if min(self.retention_sweep_slice_streams, self.retention_sweep_trims_max, self.retention_trim_step_bytes) < 1:
            raise ValueError("retention_sweep_slice_streams, retention_sweep_trims_max and "
                             "retention_trim_step_bytes must be at least 1")

    def _check_access_control(self) -> None:
        if self.cors_allow_origin and not self.cors_allow_origins:  # frozen: resolve the old name once
            object.__setattr__(self, "cors_allow_origins", self.cors_allow_origin)
        parse_allow_origins(self.cors_allow_origins)
        if self.auth_token_bytes_max < 16 or self.auth_jwks_bytes_max < 1 or self.auth_jwks_keys_max < 1:
            raise ValueError("auth_token_bytes_max must be at least 16; auth_jwks_bytes_max and "
                             "auth_jwks_keys_max at least 1")
        if min(self.auth_jwks_refresh_interval_s, self.auth_jwks_refetch_min_interval_s,
               self.auth_jwks_fetch_timeout_s) <= 0:
            raise ValueError("auth_jwks_*_s settings must be positive")
        if self.auth_jwks_refetch_min_interval_s > self.auth_jwks_refresh_interval_s:
            raise ValueError("auth_jwks_refetch_min_interval_s must be at most auth_jwks_refresh_interval_s")

    def _check_webhooks(self) -> None:
        if self.webhook_timeout_s <= 0 or self.webhook_connect_timeout_s <= 0:
            raise ValueError("webhook_timeout_s and webhook_connect_timeout_s must be positive")
        if self.webhook_deliveries_max < 1:
            raise ValueError("webhook_deliveries_max must be at least 1")
        if self.webhook_response_bytes_max < WEBHOOK_RESPONSE_BYTES_MIN:
            raise ValueError(f"webhook_response_bytes_max must be at least {WEBHOOK_RESPONSE_BYTES_MIN}")
        if self.webhook_key_replay_window_s <= 0:
            raise ValueError("webhook_key_replay_window_s must be positive")
        if self.webhook_url_bytes_max < WEBHOOK_URL_BYTES_MIN:
            raise ValueError(f"webhook_url_bytes_max must be at least {WEBHOOK_URL_BYTES_MIN}")

    def _check_subscriptions(self) -> None:
        if min(self.subscription_streams_max, self.subscription_request_streams_max, self.subscription_id_chars_max,
               self.subscription_pattern_chars_max, self.subscription_body_bytes_max) < 1:
            raise ValueError("subscription_*_max settings must be at least 1")
        if not 1 <= self.subscription_lease_ttl_ms_min <= self.subscription_lease_ttl_ms_max:
            raise ValueError("subscription_lease_ttl_ms_min must be in 1..subscription_lease_ttl_ms_max")
        if self.subscription_wake_token_ttl_s <= 0:
            raise ValueError("subscription_wake_token_ttl_s must be positive")
        # A subscription's creation (its backfilled links) is one WAL record; a path
        # is at most twice its bytes in JSON ('"' escaped; control characters refused).
        if self.subscription_streams_max * (2 * self.stream_path_bytes_max + SUBSCRIPTION_LINK_JSON_BYTES) \
                > RECORD_PAYLOAD_BYTES_MAX:
            raise ValueError("subscription_streams_max links of stream_path_bytes_max must fit one WAL record "
                             f"({RECORD_PAYLOAD_BYTES_MAX} bytes)")

    def _check_observability(self) -> None:
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {LOG_LEVELS}, not {self.log_level!r}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {LOG_FORMATS}, not {self.log_format!r}")
        if self.metrics_port > 65535 or (self.metrics_port and self.metrics_port == self.port):
            raise ValueError("metrics_port must be 0 or a port (1..65535) other than port")
        if self.request_id_bytes_max < 1:
            raise ValueError("request_id_bytes_max must be at least 1")

    def _check_streams_layer(self) -> None:
        if self.expiry_sweep_interval_s <= 0:
            raise ValueError("expiry_sweep_interval_s must be positive")
        if self.expiry_sweep_slice_streams < 1:
            raise ValueError("expiry_sweep_slice_streams must be at least 1")
        if not 0.0 <= self.sse_connection_jitter_fraction < 1.0:
            raise ValueError("sse_connection_jitter_fraction must be at least 0 and below 1")
        if self.fanout_wakes_per_round < 1:
            raise ValueError("fanout_wakes_per_round must be at least 1")

    def _check_connections(self) -> None:
        if self.connections_max < 1:
            raise ValueError("connections_max must be at least 1")
        if self.request_read_timeout_s <= 0 or self.keep_alive_timeout_s <= 0:
            raise ValueError("request_read_timeout_s and keep_alive_timeout_s must be positive")
        if self.request_header_bytes_max < REQUEST_HEADER_BYTES_MIN:
            raise ValueError(f"request_header_bytes_max must be at least {REQUEST_HEADER_BYTES_MIN}")

    def _validate_checkpoints(self) -> None:
        if self.checkpoint_slice_streams < 1 or self.checkpoint_write_bytes < 1:
            raise ValueError("checkpoint_slice_streams and checkpoint_write_bytes must be at least 1")

    def _validate_storage_faults(self) -> None:
        if self.storage_failure not in STORAGE_FAILURE_MODES:
            raise ValueError(f"storage_failure must be one of {STORAGE_FAILURE_MODES}, not {self.storage_failure!r}")
        # A body must fit one WAL record with its metadata; a larger record would stop the log writer.
        if self.append_bytes_max > EVENT_DATA_BYTES_MAX:
            raise ValueError(f"append_bytes_max must be at most {EVENT_DATA_BYTES_MAX} "
                             "(one WAL record, less room for its metadata)")

    def _validate_log_writer(self) -> None:
        if self.log_batch_events_max < 1 or self.log_queue_depth < 1:
            raise ValueError("log_batch_events_max and log_queue_depth must be at least 1")

    def _validate_json(self) -> None:
        if not 1 <= self.json_depth_max <= DEPTH_ENCODABLE_MAX:
            raise ValueError(f"json_depth_max must be in 1..{DEPTH_ENCODABLE_MAX} (what a stored message can be encoded with)")
        if self.json_message_bytes_max < self.json_inline_bytes_max:
            raise ValueError("json_message_bytes_max must be at least json_inline_bytes_max")
        if self.json_messages_per_append_max < 1 or self.json_workers_max < 1:
            raise ValueError("json_messages_per_append_max and json_workers_max must be at least 1")

    @property
    def long_poll_timeout_s(self) -> float:
        return self.long_poll_timeout_ms / 1000.0

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


ENV_PREFIX = "TRIO_STREAMS_"
_FIELD_KINDS = {"int": int, "float": float, "str": str, "bool": bool}


def _coerce(field: dataclasses.Field[Any], raw: str) -> Any:
    kind = _FIELD_KINDS[str(field.type)]
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if kind is int:
        return int(raw)
    if kind is float:
        return float(raw)
    return raw


def settings_from_env(environ: Mapping[str, str] | None = None, base: Mapping[str, Any] | None = None,
                      **overrides: Any) -> Settings:
    """Builds Settings from ``base`` (the config file's values), then ``TRIO_STREAMS_<FIELD>``
    variables, then ``overrides``."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = dict(base or {})
    for field in dataclasses.fields(Settings):
        raw = environ.get(ENV_PREFIX + field.name.upper())
        if raw is not None:
            try:
                values[field.name] = _coerce(field, raw)
            except ValueError as exc:
                raise ValueError(f"{ENV_PREFIX}{field.name.upper()}: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)
