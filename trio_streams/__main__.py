"""Command line: ``trio-streams serve`` runs the server under Hypercorn's Trio worker.

The client subcommands (create, append, read, tail, head, close, delete)
live in ``client/cli.py``; this module only registers and dispatches them.

Owns: flags → Settings, Hypercorn configuration, signal handling (SIGTERM
and SIGINT drain in-flight requests, flush the WAL and exit 0). The
pre-flight checks and the exit codes are startup.py's.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from functools import partial
from typing import TYPE_CHECKING, NoReturn

from . import verify_cli
from .auth import cli as auth_cli
from .client import cli as client_cli
from .config import FSYNC_MODES, LOG_FORMATS, LOG_LEVELS, Settings
from .config_file import Configuration, load_configuration
from .ops import cli as ops_cli
from .webhooks import cli as webhook_cli

if TYPE_CHECKING:
    from hypercorn.config import Config

    from . import startup
    from .http.app import App

# The server (Hypercorn, the service, the app) is imported by `serve` only:
# the other commands start in a fraction of the time without it.
EXIT_INVALID_CONFIG = 2  # startup.EXIT_INVALID_CONFIG, without importing the server


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trio-streams", description="Durable Streams server on Trio.")
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("serve", help="serve streams over HTTP")
    s.add_argument("--host", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port to bind (default 4437)")
    s.add_argument("--data-dir", help="directory for the WAL, checkpoints and stream files (default ./data)")
    s.add_argument("--fsync", choices=FSYNC_MODES, help="when appends are acknowledged (default always)")
    s.add_argument("--long-poll-timeout-ms", type=int, help="long-poll wait before 204 (default 30000)")
    s.add_argument("--append-bytes-max", type=int, help="largest request body accepted (default 64 MiB)")
    s.add_argument("--read-chunk-bytes-max", type=int, help="largest read response body (default 1 MiB)")
    s.add_argument("--send-timeout-s", type=float,
                   help="drop a reader whose response write makes no progress for this long (default 30)")
    s.add_argument("--shutdown-grace-s", type=float,
                   help="after SIGTERM, how long requests and writes may still run (default 5)")
    s.add_argument("--stream-prefix", help="URL prefix for streams (default /v1/stream/)")
    s.add_argument("--public-base-url", help="scheme://host[:port] clients use; Location is built from it")
    s.add_argument("--certfile", help="TLS certificate (PEM); serve HTTPS and HTTP/2")
    s.add_argument("--keyfile", help="TLS private key (PEM)")
    s.add_argument("--connections-max", type=int, help="open connections before new ones get 503 (default 1000)")
    s.add_argument("--request-read-timeout-s", type=float,
                   help="drop a client that sends nothing for this long mid-request (default 30)")
    s.add_argument("--keep-alive-timeout-s", type=float, help="close idle keep-alive connections after this (default 30)")
    s.add_argument("--request-header-bytes-max", type=int, help="largest request head; larger is 431 (default 64 KiB)")
    s.add_argument("--log-level", choices=LOG_LEVELS, help="server log level (default info)")
    s.add_argument("--log-format", choices=LOG_FORMATS, help="text lines, or one JSON object per line (default text)")
    s.add_argument("--access-log", action="store_true", default=None,
                   help="log one line per request (logger trio_streams.access)")
    s.add_argument("--metrics-port", type=int,
                   help="also serve /metrics and /healthz* on this port, and /metrics only there (default: 0, off)")
    s.add_argument("--config", help="TOML config file: settings and [auth] (default $TRIO_STREAMS_CONFIG)")
    s.add_argument("--allow-unauthenticated", action="store_true", default=None,
                   help="serve without auth on a non-loopback address (else refused, exit 6)")
    auth_cli.add_command(commands)
    # A mistyped flag is refused like every other start-up error: one line, exit 2.
    s.error = partial(_flag_error, s)  # type: ignore[method-assign]
    client_cli.add_commands(commands)
    verify_cli.add_command(commands)
    ops_cli.add_commands(commands)
    webhook_cli.add_command(commands)
    return parser


def _flag_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.exit(EXIT_INVALID_CONFIG, f"trio-streams: {message} (see {parser.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in client_cli.COMMANDS:
        return client_cli.run(args)
    if args.command == "verify":
        return verify_cli.run(args)
    if args.command in ops_cli.COMMANDS:
        return ops_cli.run(args)
    if args.command == auth_cli.COMMAND:
        return auth_cli.run(args)
    if args.command == webhook_cli.COMMAND:
        return webhook_cli.run(args)
    if args.command == "serve":
        return run_server(args)
    return 2


def run_server(args: argparse.Namespace) -> int:
    """Serves until stopped; returns the exit code (startup.py lists them).

    Every refusal to start is one line on stderr, decided before recovery
    begins and before any client can connect.
    """
    import trio
    from hypercorn.trio import serve

    from . import logsetup, startup
    from .http.app import create_app

    try:
        configuration = _configuration(args)
        settings = configuration.settings
        if auth_cli.refuses_to_serve(configuration):
            raise startup.StartupError(startup.EXIT_UNAUTHENTICATED_BIND, auth_cli.REFUSAL.format(host=settings.host))
        logsetup.configure(settings, replace=True)
        app = create_app(settings, configuration.auth)
        prepared = startup.prepare(settings)
    except ValueError as exc:
        return _refuse(startup.StartupError(startup.EXIT_INVALID_CONFIG, str(exc)))
    except startup.StartupError as exc:
        return _refuse(exc)
    app.service.adopt_lock(prepared.lock_fd)
    config = _hypercorn_config(settings, args, prepared.hypercorn_binds())
    trio.run(partial(serve, app, config, shutdown_trigger=partial(_shutdown_trigger, app)))
    return startup.EXIT_STORAGE_FAILED if app.service.failure is not None else startup.EXIT_OK


def _refuse(error: startup.StartupError) -> int:
    print(f"trio-streams: {error.message}", file=sys.stderr)
    return error.exit_code


def _configuration(args: argparse.Namespace) -> Configuration:
    """Flags over environment over the config file (config_file.py) over defaults."""
    return load_configuration(
        args.config, allow_unauthenticated=args.allow_unauthenticated,
        host=args.host, port=args.port, data_dir=args.data_dir, fsync=args.fsync,
        long_poll_timeout_ms=args.long_poll_timeout_ms, append_bytes_max=args.append_bytes_max,
        read_chunk_bytes_max=args.read_chunk_bytes_max, stream_prefix=args.stream_prefix,
        tls_certfile=args.certfile, tls_keyfile=args.keyfile,
        public_base_url=args.public_base_url, send_timeout_s=args.send_timeout_s, shutdown_grace_s=args.shutdown_grace_s,
        connections_max=args.connections_max, request_read_timeout_s=args.request_read_timeout_s,
        keep_alive_timeout_s=args.keep_alive_timeout_s, request_header_bytes_max=args.request_header_bytes_max,
        log_level=args.log_level, log_format=args.log_format, access_log=args.access_log,
        metrics_port=args.metrics_port,
    )


def _hypercorn_config(settings: Settings, args: argparse.Namespace, binds: list[str]) -> Config:
    from hypercorn.config import Config

    config = Config()
    # The listeners are already bound (startup.listen); Hypercorn adopts them as they are.
    config.bind = binds
    config.graceful_timeout = settings.shutdown_grace_s
    if settings.tls_certfile:
        config.certfile, config.keyfile = settings.tls_certfile, settings.tls_keyfile
    # Hand Hypercorn our configured loggers so every line has one format. The
    # access log is the app's (http/access_log.py): Hypercorn's would add a second line.
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.h11_max_incomplete_size = settings.request_header_bytes_max
    config.keep_alive_timeout = settings.keep_alive_timeout_s
    # Hypercorn's default closes a keep-alive connection after 1000 requests;
    # stream writers and pollers reuse one connection for far longer.
    config.keep_alive_max_requests = 1_000_000
    return config


async def _shutdown_trigger(app: App) -> None:
    """Returns on SIGTERM/SIGINT, or when the storage service has failed."""
    import trio

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            async def on_signal() -> None:
                async for _ in signals:
                    break
                app.drain()  # live readers get their final response before connections close
                nursery.cancel_scope.cancel()

            async def on_failure() -> None:
                await app.service.finished.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_signal)
            nursery.start_soon(on_failure)


if __name__ == "__main__":
    sys.exit(main())
