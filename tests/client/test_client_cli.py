"""`trio-streams create|append|read|tail|head|close|delete` as a user runs them.

Against both servers (the ``target`` fixture). Most commands run in this
process through ``trio_streams.__main__.main`` with stdin/stdout/stderr
swapped for buffers (a process start costs more than the command); the
pipe test runs real `python -m trio_streams` processes joined by a pipe,
so stdin, stdout and exit statuses there are exactly what a shell sees.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass

from client_harness import ROOT, Target, cli_env, node_server, target  # noqa: F401 (fixtures)
from trio_streams.__main__ import main

CLI_TIMEOUT_S = 30


@dataclass
class Done:
    returncode: int
    stdout: bytes
    stderr: bytes


def cli(*args: str, stdin: bytes = b"") -> Done:
    out, err = io.BytesIO(), io.BytesIO()
    wrappers = (io.TextIOWrapper(io.BytesIO(stdin)), io.TextIOWrapper(out, write_through=True),
                io.TextIOWrapper(err, write_through=True))
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = wrappers
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
        for wrapper in wrappers:
            wrapper.detach()  # or the wrapper, once collected, would close our buffer
    return Done(code, out.getvalue(), err.getvalue())


def ok(*args: str, stdin: bytes = b"") -> bytes:
    done = cli(*args, stdin=stdin)
    assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stderr.decode()}"
    return done.stdout


def test_json_stream_from_creation_to_deletion(target: Target) -> None:
    url = target.url("cli")
    ok("create", url, "--json", "--ttl", "600")
    ok("append", url, '{"a":1}', "[1,2]", '"text"')
    ok("append", url, stdin=b'{"n":1}\n\n{"n":2}\n[3]')  # NDJSON; a last line without newline counts
    expected = [{"a": 1}, [1, 2], "text", {"n": 1}, {"n": 2}, [3]]
    assert [json.loads(line) for line in ok("read", url).splitlines()] == expected
    batches = [json.loads(line) for line in ok("read", url, "--json").splitlines()]
    assert [i for b in batches for i in b["items"]] == expected and batches[-1]["up_to_date"]
    head = json.loads(ok("head", url, "--json"))
    assert head["offset"] == batches[-1]["offset"] and head["ttl"] == 600 and head["closed"] is False
    # Resume from a batch's offset: only what came after.
    ok("append", url, '"later"')
    assert ok("read", url, "--offset", batches[-1]["offset"]) == b'"later"\n'
    bad = cli("append", url, "{not json")
    assert bad.returncode == 2 and b"not a JSON value" in bad.stderr
    final = ok("close", url, "--body", '{"end":true}').strip().decode()
    late = cli("append", url, "1")
    assert late.returncode == 1 and b"STREAM_CLOSED" in late.stderr and final.encode() in late.stderr
    # A tail of a closed stream prints everything and exits at EOF.
    lines = ok("tail", url, "--offset", "-1").splitlines()
    assert [json.loads(x) for x in lines] == [*expected, "later", {"end": True}]
    ok("delete", url)
    gone = cli("head", url)
    assert gone.returncode == 1 and b"NOT_FOUND" in gone.stderr


def test_tail_follows_a_byte_stream_fed_through_a_pipe(target: Target) -> None:
    url = target.url("cli-bytes")
    ok("create", url, "--content-type", "application/octet-stream", "--body", "-", stdin=b"start:")
    start = json.loads(ok("head", url, "--json"))["offset"]
    tail = subprocess.Popen(
        [sys.executable, "-m", "trio_streams", "tail", url, "--offset", start, "--live", "sse", "-H", "X-Trace: cli-test"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=cli_env(),
    )
    try:
        payload = os.urandom(100_000) + b"\n\x00end"
        # stdin bytes through an idempotent producer, in batches below the server's 64 KiB limit, then EOF.
        append = subprocess.run(
            [sys.executable, "-m", "trio_streams", "append", url, "--close", "--max-batch-bytes", "16384"],
            input=payload, capture_output=True, timeout=CLI_TIMEOUT_S, cwd=ROOT, env=cli_env(),
        )
        assert append.returncode == 0, append.stderr.decode()
        out, err = tail.communicate(timeout=CLI_TIMEOUT_S)
    finally:
        if tail.poll() is None:
            tail.kill()
    assert tail.returncode == 0, err.decode()
    assert out == payload  # only what followed the offset; the tail ended by itself at the close
    assert ok("read", url) == b"start:" + payload


def test_text_close_with_json_result_and_one_shot_create(target: Target) -> None:
    url = target.url("cli-text")
    ok("create", url, "--content-type", "text/plain", "--closed", "--body", "all there is")
    assert ok("read", url) == b"all there is"
    assert json.loads(ok("head", url, "--json"))["closed"] is True
    result = json.loads(ok("close", url, "--json"))  # closing again is fine
    assert result["final_offset"] == json.loads(ok("head", url, "--json"))["offset"]


def test_usage_and_network_errors() -> None:
    bad_header = cli("head", "http://127.0.0.1:9/x", "-H", "no colon")
    assert bad_header.returncode == 2 and b"Name: value" in bad_header.stderr
    refused = cli("read", "http://127.0.0.1:9/v1/stream/x", "--retries", "0")
    assert refused.returncode == 1 and b"NETWORK" in refused.stderr
