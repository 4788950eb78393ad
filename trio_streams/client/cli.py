"""Command line client: ``trio-streams create|append|read|tail|head|close|delete URL``.

Owns: these subcommands' flags, stdin → appends, stream → stdout, and exit
statuses (0 done, 1 a stream or network error, 2 bad usage, 3 the data at
the read's offset was removed by the stream's retention, 130 interrupted). Built only on the public client API, run under Trio when it
is installed, else asyncio (a client-only install has no Trio).

Never touches the server: the server's ``trio_streams.__main__`` adds these
subcommands to its parser, and ``client/__main__.py`` (``trio-streams-client``,
``python -m trio_streams.client``) offers them alone; both hand the parsed
arguments to ``run``.

Input and output are pipe-friendly. JSON streams read and write one message
per line (NDJSON); other streams are raw bytes, appended as they arrive on
stdin (``tail -f log | trio-streams append URL``). ``--json`` makes
``read``/``tail`` print one JSON object per batch (with its offset, to
resume from) and ``head``/``close`` print JSON; on ``create`` it is short
for ``--content-type application/json``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Any, BinaryIO

import anyio

from ._protocol import Backoff, TrimmedGap, is_json
from .errors import DurableStreamError, OffsetTrimmedError
from .producer import MAX_BATCH_BYTES, IdempotentProducer
from .response import stream
from .stream import DurableStream

COMMANDS = ("create", "append", "read", "tail", "head", "close", "delete")
STDIN_READ_BYTES = 64 * 1024
LIVE_CHOICES = {"auto": True, "sse": "sse", "long-poll": "long-poll"}
# Its own status, so a script can tell "start again from the earliest offset" from a failure.
EXIT_TRIMMED = 3


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("url", help="the stream's URL, e.g. http://127.0.0.1:4437/v1/stream/chat")
    common.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                        help="extra request header (repeatable), e.g. 'Authorization: Bearer …'")
    common.add_argument("--retries", type=int, metavar="N",
                        help="retries of a transient failure (default 3; tail: forever)")
    c = commands.add_parser("create", parents=[common], help="create a stream")
    c.add_argument("--content-type", help="the stream's content type (default application/octet-stream)")
    c.add_argument("--json", action="store_true", help="a JSON stream (--content-type application/json)")
    c.add_argument("--ttl", type=int, metavar="SECONDS", help="expire after this long without reads or writes")
    c.add_argument("--expires-at", metavar="RFC3339", help="expire at this time")
    c.add_argument("--closed", action="store_true", help="create it closed (a one-shot stream)")
    c.add_argument("--body", help="initial content; '-' reads it from stdin")
    a = commands.add_parser("append", parents=[common], help="append messages (arguments, or stdin)")
    a.add_argument("messages", nargs="*", metavar="MESSAGE",
                   help="one message per argument; without any, stdin (lines for JSON streams, bytes otherwise)")
    a.add_argument("--json", action="store_true", help="input is JSON: arguments are values, stdin is NDJSON")
    a.add_argument("--close", action="store_true", help="close the stream after appending")
    a.add_argument("--producer-id", help="idempotent producer id for stdin (default: a random one per run)")
    a.add_argument("--max-batch-bytes", type=int, default=MAX_BATCH_BYTES, metavar="N",
                   help="largest POST body from stdin (default 1 MiB; keep it under the server's limit)")
    for name, helptext in (("read", "print the stream up to its current end"), ("tail", "follow the stream until it is closed")):
        r = commands.add_parser(name, parents=[common], help=helptext)
        r.add_argument("--offset", default="-1" if name == "read" else "now",
                       help="where to start: an offset, -1 (the start) or now (the end)")
        r.add_argument("--json", action="store_true", help="one JSON object per batch, with its offset")
        if name == "tail":
            r.add_argument("--live", choices=sorted(LIVE_CHOICES), default="auto", help="live mode (default auto)")
        r.add_argument("--resume-trimmed", action="store_true",
                       help="where retention removed data before it was read, note the skipped offsets on stderr "
                            f"and go on from the earliest retained offset (default: stop with status {EXIT_TRIMMED})")
    h = commands.add_parser("head", parents=[common], help="print the stream's metadata")
    h.add_argument("--json", action="store_true", help="as a JSON object")
    cl = commands.add_parser("close", parents=[common], help="close the stream (EOF)")
    cl.add_argument("--body", help="a final message, appended atomically with the close")
    cl.add_argument("--json", action="store_true", help="print the result as JSON")
    commands.add_parser("delete", parents=[common], help="delete the stream")


def run(args: argparse.Namespace) -> int:
    try:
        options = {"headers": _parse_headers(args.header), "backoff": _backoff(args)}
        return anyio.run(_COMMANDS[args.command], args, options, backend=_backend())
    except ValueError as exc:
        print(f"trio-streams {args.command}: {exc}", file=sys.stderr)
        return 2
    except OffsetTrimmedError as exc:
        print(f"trio-streams {args.command}: {exc.code} {exc.status}: {exc.message}; the earliest retained offset "
              f"is {exc.earliest_offset} (read from there with --offset, or pass --resume-trimmed)", file=sys.stderr)
        return EXIT_TRIMMED
    except DurableStreamError as exc:
        status = f" {exc.status}" if exc.status else ""
        print(f"trio-streams {args.command}: {exc.code}{status}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): not an error. Point stdout at
        # /dev/null so the interpreter's final flush stays quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _backoff(args: argparse.Namespace) -> Backoff:
    retries = args.retries
    if retries is None:
        retries = None if args.command == "tail" else 3  # a tail outlives server restarts; one-shots give up
    elif retries < 0:
        raise ValueError("--retries must be >= 0")
    return Backoff(max_retries=retries)


def _backend() -> str:
    try:
        import trio  # noqa: F401
    except ImportError:
        return "asyncio"  # a client-only install
    return "trio"


def _parse_headers(raw: list[str]) -> dict[str, str]:
    headers = {}
    for item in raw:
        name, colon, value = item.partition(":")
        if not colon or not name.strip():
            raise ValueError(f"--header wants 'Name: value', not {item!r}")
        headers[name.strip()] = value.strip()
    return headers


async def _create(args: argparse.Namespace, options: dict[str, Any]) -> int:
    content_type = args.content_type or ("application/json" if args.json else "application/octet-stream")
    body = args.body
    if body == "-":
        body = await anyio.to_thread.run_sync(sys.stdin.buffer.read)
    ds = await DurableStream.create(
        args.url, content_type=content_type, ttl=args.ttl, expires_at=args.expires_at,
        body=body, closed=args.closed, **options,
    )
    await ds.aclose()
    return 0


async def _append(args: argparse.Namespace, options: dict[str, Any]) -> int:
    async with DurableStream(args.url, **options) as ds:
        await ds.head()
        json_mode = args.json or is_json(ds.content_type)
        if args.messages:
            for message in args.messages:
                await ds.append(_message(message, json_mode))
            if args.close:
                await ds.close()
            return 0
        return await _append_stdin(ds, args, json_mode)


def _message(text: str, json_mode: bool) -> Any:
    if not json_mode:
        return text.encode()
    try:
        json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not a JSON value: {text[:60]!r} ({exc})") from None
    return text.encode()  # bytes: one already-encoded JSON value


async def _append_stdin(ds: Any, args: argparse.Namespace, json_mode: bool) -> int:
    """Stdin through an idempotent producer: batched, pipelined, and safe to retry."""
    producer_id = args.producer_id or f"trio-streams-cli-{uuid.uuid4().hex}"
    async with IdempotentProducer(ds, producer_id, auto_claim=True, max_batch_bytes=args.max_batch_bytes) as producer:
        if json_mode:
            async for line in _stdin_lines(sys.stdin.buffer):
                if line.strip():
                    producer.append(_message(line.decode("utf-8"), True))
                    await producer.drain()
        else:
            async for block in _stdin_blocks(sys.stdin.buffer):
                producer.append(block)
                await producer.drain()
        if args.close:
            await producer.close()
        else:
            await producer.flush()
    return 0


async def _stdin_blocks(stream: BinaryIO) -> AsyncIterator[bytes]:
    # read1 returns what a pipe has now, so slow writers' data goes out promptly.
    reader = getattr(stream, "read1", stream.read)
    while block := await anyio.to_thread.run_sync(reader, STDIN_READ_BYTES):
        yield block


async def _stdin_lines(stream: BinaryIO) -> AsyncIterator[bytes]:
    rest = b""
    async for block in _stdin_blocks(stream):
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield line
    if rest:
        yield rest


async def _read(args: argparse.Namespace, options: dict[str, Any]) -> int:
    return await _print_stream(args, options, live=False)


async def _tail(args: argparse.Namespace, options: dict[str, Any]) -> int:
    return await _print_stream(args, options, live=LIVE_CHOICES[args.live])


async def _print_stream(args: argparse.Namespace, options: dict[str, Any], live: Any) -> int:
    out = sys.stdout.buffer
    on_trimmed = _report_gap(args.command) if args.resume_trimmed else None
    async with await stream(args.url, args.offset, live, on_trimmed=on_trimmed, **options) as res:
        if res.is_json:
            async for json_batch in res.json_batches():
                _write_batch(out, args.json, json_batch.items, json_batch, json_items=True)
        else:
            async for byte_batch in res.byte_batches():
                _write_batch(out, args.json, byte_batch.data, byte_batch, json_items=False)
    return 0


def _report_gap(command: str) -> Callable[[TrimmedGap], None]:
    def report(gap: TrimmedGap) -> None:
        print(f"trio-streams {command}: skipped data removed by the stream's retention, "
              f"from offset {gap.from_offset} to {gap.to_offset}", file=sys.stderr, flush=True)

    return report


def _write_batch(out: BinaryIO, as_json: bool, payload: Any, batch: Any, *, json_items: bool) -> None:
    if as_json:
        doc: dict[str, Any] = {"offset": batch.offset, "up_to_date": batch.up_to_date, "closed": batch.closed}
        if json_items:
            doc["items"] = payload
        else:
            doc["data_base64"] = base64.b64encode(payload).decode()
        out.write(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
    elif json_items:
        out.writelines(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" for item in payload)
    else:
        out.write(payload)
    out.flush()


async def _head(args: argparse.Namespace, options: dict[str, Any]) -> int:
    async with DurableStream(args.url, **options) as ds:
        meta = asdict(await ds.head())
    if args.json:
        print(json.dumps(meta))
    else:
        for name, value in meta.items():
            if value is not None:
                print(f"{name}: {str(value).lower() if isinstance(value, bool) else value}")
    return 0


async def _close(args: argparse.Namespace, options: dict[str, Any]) -> int:
    async with DurableStream(args.url, **options) as ds:
        body = None
        if args.body is not None:
            await ds.head()
            body = _message(args.body, is_json(ds.content_type))
        result = await ds.close(body)
    print(json.dumps({"final_offset": result.final_offset}) if args.json else result.final_offset)
    return 0


async def _delete(args: argparse.Namespace, options: dict[str, Any]) -> int:
    async with DurableStream(args.url, **options) as ds:
        await ds.delete()
    return 0


_COMMANDS = {
    "create": _create, "append": _append, "read": _read, "tail": _tail,
    "head": _head, "close": _close, "delete": _delete,
}
