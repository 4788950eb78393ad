"""``trio-streams backup | restore | stats | checkpoint``: the operator's commands.

Owns: their flags, output and exit status: 0 done; 1 failed (the server
refused, the archive is damaged or cut short, the restored directory does
not verify); 2 refused before starting (a destination that exists, a
directory in use, bad arguments). Backups are written through a temporary
name and appear under their own name only once checked against their
manifest.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, TextIO

import httpx
import orjson
import trio

from ..verify_cli import print_report
from . import archive, backup, restore, stats

COMMANDS = ("backup", "restore", "stats", "checkpoint", "status")
EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2
DEFAULT_URL = "http://127.0.0.1:4437"
# Connecting and the status answer are quick; a checkpoint (the start of a
# backup) of millions of streams takes seconds to minutes before any answer.
HTTP_TIMEOUT_S = 60.0
CHECKPOINT_TIMEOUT = httpx.Timeout(HTTP_TIMEOUT_S, read=900.0)
LARGEST_STREAMS = 10
# Bytes read from a stopped data directory per call while backing it up.
OFFLINE_CHUNK_BYTES = 1024 * 1024


def add_commands(commands: Any) -> None:
    b = commands.add_parser("backup", help="a consistent backup of a running server (--url) or a stopped data directory")
    source = b.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help=f"the running server (e.g. {DEFAULT_URL}): GET /admin/backup")
    source.add_argument("--data-dir", help="a stopped server's data directory (refused while a server holds it)")
    b.add_argument("--token", help="bearer token with the admin scope (default $TRIO_STREAMS_TOKEN)")
    b.add_argument("dest", metavar="DEST", help="a new directory, a new .tar file, or - for standard output")
    r = commands.add_parser("restore", help="restore a backup into a new or empty data directory, then verify it")
    r.add_argument("src", metavar="SRC", help="a backup directory, a .tar file, or - for standard input")
    r.add_argument("data_dir", metavar="DATA", help="the data directory to create (must not exist or be empty)")
    s = commands.add_parser("stats", help="streams, bytes, WAL and checkpoint of a data directory (read-only)")
    s.add_argument("data_dir", metavar="DATA")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--largest", type=int, default=LARGEST_STREAMS, help="how many of the largest streams to list")
    c = commands.add_parser("checkpoint", help="ask a running server to take a checkpoint now (POST /admin/checkpoint)")
    c.add_argument("--url", default=DEFAULT_URL)
    c.add_argument("--token", help="bearer token with the admin scope (default $TRIO_STREAMS_TOKEN)")
    st = commands.add_parser("status", help="a running server's readiness (GET /healthz/ready, else /healthz)")
    st.add_argument("--url", default=DEFAULT_URL)


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        return _COMMANDS[args.command](args, out, err)
    except (FileExistsError, backup.BackupFailed) as error:
        print(f"trio-streams {args.command}: {error}", file=err)
        return EXIT_REFUSED
    except archive.ArchiveInvalid as error:
        print(f"trio-streams {args.command}: refused: {error}", file=err)
        return EXIT_FAILED
    except (httpx.HTTPError, OSError) as error:
        print(f"trio-streams {args.command}: {type(error).__name__}: {error}", file=err)
        return EXIT_FAILED


def _headers(args: argparse.Namespace) -> dict[str, str]:
    token = args.token or os.environ.get("TRIO_STREAMS_TOKEN")
    return {"authorization": f"Bearer {token}"} if token else {}


def _refused(response: httpx.Response, command: str, err: TextIO) -> int:
    response.read()
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    print(f"trio-streams {command}: the server answered {response.status_code}: {message}", file=err)
    return EXIT_FAILED


def _checkpoint(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    response = httpx.post(f"{args.url.rstrip('/')}/admin/checkpoint", headers=_headers(args), timeout=CHECKPOINT_TIMEOUT)
    if response.status_code != 200:
        return _refused(response, "checkpoint", err)
    print(orjson.dumps(response.json(), option=orjson.OPT_INDENT_2).decode(), file=out)
    return EXIT_OK


def _status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Exit 0 when the server is ready, 1 when it answers otherwise or not at all."""
    base = args.url.rstrip("/")
    response = httpx.get(f"{base}/healthz/ready", timeout=HTTP_TIMEOUT_S)
    if response.status_code == 404:  # a server without the readiness endpoint
        response = httpx.get(f"{base}/healthz", timeout=HTTP_TIMEOUT_S)
    try:
        print(orjson.dumps(response.json(), option=orjson.OPT_INDENT_2).decode(), file=out)
    except ValueError:
        print(response.text[:500], file=out)
    return EXIT_OK if response.status_code == 200 else EXIT_FAILED


def _stats(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    directory = Path(args.data_dir)
    if not directory.is_dir():
        print(f"trio-streams stats: {directory} is not a directory", file=err)
        return EXIT_REFUSED
    figures = stats.collect(directory, max(0, args.largest))
    if args.json:
        print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode(), file=out)
    else:
        stats.print_text(figures, out)
    return EXIT_OK


def _restore(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    data = Path(args.data_dir)
    stdin = sys.stdin.buffer if args.src == "-" else None
    try:
        manifest, report = restore.restore(None if stdin else Path(args.src), data, stdin)
    except restore.RestoreRefused as refused:
        print_report(refused.report, err)
        print(f"trio-streams restore: refused: the backup's files do not verify; {data} was not created", file=err)
        return EXIT_FAILED
    print(f"restored the {manifest.get('kind')} backup taken at log position {manifest.get('position')} into {data}: "
          f"{len(report.streams)} streams, {manifest['files']} files, {manifest['bytes']} bytes; verify: OK", file=out)
    return EXIT_OK


def _backup(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.dest == "-" and sys.stdout.isatty():
        print("trio-streams backup: refusing to write a tar to a terminal; redirect it, or name a file", file=err)
        return EXIT_REFUSED
    if args.dest != "-":
        restore.refuse_unless_empty(Path(args.dest))
    if args.url:
        manifest = _backup_online(args)
    else:
        manifest = _backup_offline(Path(args.data_dir), args.dest)
    where = "standard output" if args.dest == "-" else args.dest
    print(f"backup ({manifest['kind']}) at log position {manifest['position']}: {manifest['files']} files, "
          f"{manifest['bytes']} bytes, written to {where}", file=err if args.dest == "-" else out)
    return EXIT_OK


def _backup_online(args: argparse.Namespace) -> dict[str, Any]:
    url = f"{args.url.rstrip('/')}/admin/backup"
    with httpx.stream("GET", url, headers=_headers(args), timeout=CHECKPOINT_TIMEOUT) as response:
        if response.status_code != 200:
            _refused(response, "backup", sys.stderr)
            raise archive.ArchiveInvalid(f"no backup: the server answered {response.status_code}")
        return _receive(response.iter_raw(), args.dest)


def _receive(chunks: Any, dest: str) -> dict[str, Any]:
    """Checks the archive while it arrives, keeping it as a tar or unpacking it."""
    if dest == "-":
        return _check_copying(chunks, sys.stdout.buffer)
    if dest.endswith(".tar"):
        with _new_file(Path(dest)) as tee:
            return _check_copying(chunks, tee)
    with restore.staging(Path(dest)) as temp:
        return restore.unpack(restore.IterReader(chunks), temp, keep_manifest=True)  # type: ignore[arg-type]


def _check_copying(chunks: Any, tee: IO[bytes]) -> dict[str, Any]:
    reader = restore.IterReader(chunks, tee=tee)
    manifest = restore.unpack(reader, None)  # type: ignore[arg-type]
    reader.drain()
    return manifest


@contextlib.contextmanager
def _new_file(path: Path) -> Iterator[IO[bytes]]:
    """A file written under a temporary name, renamed to ``path`` once complete and durable."""
    temp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(temp, "xb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        if path.exists():
            raise FileExistsError(f"{path} appeared meanwhile")
        os.rename(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def _backup_offline(directory: Path, dest: str) -> dict[str, Any]:
    with backup.locked_directory(directory):
        pieces, fields = backup.offline_pieces(directory)
        if dest == "-":
            return _write_tar(pieces, fields, sys.stdout.buffer)
        if dest.endswith(".tar"):
            with _new_file(Path(dest)) as file:
                return _write_tar(pieces, fields, file)
        with restore.staging(Path(dest)) as temp:
            read, write = os.pipe()
            # The tar goes through a pipe into the same unpacker an online backup
            # uses, so a backup directory is always checked the same way.
            with os.fdopen(write, "wb") as writer, os.fdopen(read, "rb") as reader:
                return _tar_through_pipe(pieces, fields, writer, reader, temp)


def _tar_through_pipe(pieces: list[backup.Piece], fields: dict[str, Any], writer: IO[bytes], reader: IO[bytes],
                      temp: Path) -> dict[str, Any]:
    unpacked: dict[str, Any] = {}

    async def both() -> None:
        async with trio.open_nursery() as nursery:
            async def produce() -> None:
                try:
                    await _write_tar_async(pieces, fields, writer)
                finally:
                    await trio.to_thread.run_sync(writer.close)

            nursery.start_soon(produce)
            unpacked.update(await trio.to_thread.run_sync(_unpack_then_close, reader, temp))

    trio.run(both)
    return unpacked


def _unpack_then_close(reader: IO[bytes], temp: Path) -> dict[str, Any]:
    """Closing the pipe's end on failure ends the writer's blocked write (BrokenPipeError)."""
    try:
        return restore.unpack(reader, temp, keep_manifest=True)
    finally:
        reader.close()


def _write_tar(pieces: list[backup.Piece], fields: dict[str, Any], file: IO[bytes]) -> dict[str, Any]:
    return trio.run(_write_tar_async, pieces, fields, file)


async def _write_tar_async(pieces: list[backup.Piece], fields: dict[str, Any], file: IO[bytes]) -> dict[str, Any]:
    async def out(data: bytes) -> None:
        await trio.to_thread.run_sync(file.write, data)

    sink = backup.TarSink(out, OFFLINE_CHUNK_BYTES)
    totals = await backup.write_archive(backup.listed(pieces), sink, OFFLINE_CHUNK_BYTES, "offline", fields)
    await trio.to_thread.run_sync(file.flush)
    return {"kind": "offline", "position": fields["position"], **totals.as_manifest()}


_COMMANDS = {"backup": _backup, "restore": _restore, "stats": _stats, "checkpoint": _checkpoint, "status": _status}
